"""An in-process fake of the Enso usage-billing API, for tests.

:class:`FakeEnso` speaks the wire contract of ``/events/batch``, ``/events`` and
``/auth/system-login`` as documented (see ``docs/wire-contract.md``), including the parts
that surprise clients: top-level ``"status": "success"`` with every record failed, the polymorphic
``code`` (``2002`` vs ``"27"``), unsorted ``failedRecords`` and content-derived event ids.
Two ways in, one state:

* ``start()`` (or ``with FakeEnso() as fake``) serves real HTTP/1.1 on ``127.0.0.1`` in a
  background daemon thread, so tests exercise connection reuse, resets, timeouts and
  restarts exactly as production code sees them;
* ``transport()`` returns an ``httpx.MockTransport`` with the same behaviour and no socket,
  for fast unit tests (``Tracker(..., transport=fake.transport())``).

Typical use::

    import httpx
    from enso_tracker.testing import FakeEnso, Fault

    def test_retries_on_503() -> None:
        with FakeEnso(known_entities={"ent_1"}) as fake:
            fake.script(Fault(status=503, retry_after="0"))
            ...  # point the client at fake.url with api key "test-api-key"
            assert fake.wait_for_events(1, timeout=5.0)
            assert len(fake.batch_requests()) == 2

Inspection (``events``, ``requests``, ``duplicates`` ...) is thread-safe and returns copies,
so assertions never race with the server threads. ``wait_for`` blocks on a condition that
is notified after every request, so tests wait for facts instead of sleeping.

For pytest, ``pytest_plugins = ["enso_tracker.testing.pytest_plugin"]`` in a
``conftest.py`` gives a session-wide ``fake_enso`` (reset before each test), a
``tracker`` factory fixture and ``fake_enso_env`` (the environment pointed at the fake,
for ``init()``/``from_env()``); it is opt-in, never loaded by merely installing the
package. :class:`DropRecorder` is an ``on_drop`` hook that records what was dropped.

Layout: ``_enso.py`` is the fake's state and the controls a test calls, ``_inspection.py``
what a test reads and waits on, ``_state.py`` the state's declarations, ``_serving.py``
its request path, ``_api.py`` the API's stateless rules (validation, envelopes, JWTs),
``_recorded.py`` what a test reads of a request, ``_faults.py`` the scripted faults,
``_server.py`` the socket plumbing, ``_transport.py`` the socketless one, ``_drops.py``
the drop recorder.
"""

from ._drops import DropRecorder
from ._enso import (
    CLICKHOUSE_TIMESTAMP_ERROR,
    FakeEnso,
    RecordedRequest,
    ResponseShape,
    derive_event_id,
)
from ._faults import Fault

__all__ = [
    "CLICKHOUSE_TIMESTAMP_ERROR",
    "DropRecorder",
    "FakeEnso",
    "Fault",
    "RecordedRequest",
    "ResponseShape",
    "derive_event_id",
]
