"""The HTTP seam: one POST of a batch body to Enso, within a deadline and a bound.

Everything that speaks HTTP to Enso lives here, and nothing here knows of queues,
the ledger or the spool: the pipeline hands :class:`~.sender.HttpSender` encoded
bytes and gets an :data:`~.sender.Outcome` back.

* ``sender.py``: ``HttpSender`` and the outcome types; the status table.
* ``auth.py``: API keys and client credentials (login, token renewal).
* ``answer.py``: reading an answer within its byte bound, decoded or not.
* ``deadline.py``: one deadline for a whole request, on every socket operation.
* ``reuse.py``: which answer belongs to which request on a kept-alive connection.
* ``compress.py``: opt-in gzip request bodies.
* ``proxy.py``: environment proxies, checked at construction.
* ``probe.py``: ``doctor``'s and ``import``'s empty-batch probe, through ``HttpSender``.

Design constraints:

* **One implementation.** The tracker, ``send_events``, ``doctor`` and ``import``'s
  preflight all log in and POST through these modules; no second HTTP path exists.
* **Bounded.** A call returns within about its ``timeout`` and reads at most its
  answer bound, whatever the server does.
* **Nothing secret escapes.** No exception text from the HTTP stack (it can quote our
  headers) and no credential reaches a log record, ``repr`` or exception.
* **Retry rules are not decided here.** Which statuses are retryable and how
  ``Retry-After`` reads are :class:`~.._retry.RetryPolicy`'s.
"""
