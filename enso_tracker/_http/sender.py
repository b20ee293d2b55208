"""The sender: one HTTP request per batch, its answer classified into an :data:`Outcome`.

Owns: the :class:`Sender` protocol, :class:`HttpSender`, the outcome types and the
status table below.

Invariants:

* ``send`` returns within about its ``timeout`` and holds at most an answer's bound.
* ``send`` does not raise for transport trouble: it returns a :class:`Retry`.
* An answer counts only for the request it answers (:mod:`.reuse`).
* A 2xx is :class:`Answered` only when it parses as a batch result.

The batching worker (``_worker.py``) knows nothing of HTTP; this module knows nothing
of queues. The boundary is :class:`Sender`, so tests and other transports can stand in.
Classification follows ``docs/wire-contract.md`` (Classification):

===========================  ===============================================
answer                       outcome
===========================  ===============================================
2xx, parseable               :class:`Answered` (per-record accounting)
2xx, unparseable, oversized  :class:`Retry` (never counted as a success)
408, 425, 429, 5xx, network  :class:`Retry` (``Retry-After`` honoured)
timeout (whole request)      :class:`Retry`
413                          :class:`TooLarge` (the worker splits the batch)
415 / 400 to a gzip body     resent plain at once; 415 (or a 2xx to the plain
                             resend) turns compression off for the tracker
401                          re-login once and replay; then :class:`Unauthorized`
403, other 4xx, 3xx          :class:`Rejected` (permanent)
===========================  ===============================================

Which statuses are retryable and how ``Retry-After`` reads are the retry policy's
(:meth:`~.._retry.RetryPolicy.is_retryable_status`, :meth:`~.._retry.RetryPolicy.retry_after`).

Two bounds hold whatever the server does:

* **Time.** ``send(body, timeout)`` returns within about ``timeout``: it is a deadline
  for the whole call (connect, TLS, the login if one is due, writing the body, the
  status line, headers and every byte of the answer, and the replay after a 401), not
  a per-read timeout that a server trickling one byte at a time could stretch forever.
  httpx has no such deadline, so :class:`~.deadline.DeadlineBackend` (httpcore's public
  ``NetworkBackend`` API) caps every socket operation at the time left. Only name
  resolution escapes it (``getaddrinfo`` cannot be interrupted).
* **Memory.** An answer is streamed and abandoned (closing the connection) once it
  passes :func:`~.answer.answer_limit`, compressed or decoded; see
  :func:`~.answer.read_answer`.

An answer is read only as the answer to the request just sent (:mod:`.reuse`): a
connection with bytes after an answer, or one abandoned mid-answer, is closed and never
reused, and an answer that was there before its request went out is a :class:`Retry`.

No exception text from the HTTP stack is ever quoted (it can hold our headers): only
:func:`~.._errors.describe_exception`. Error bodies from Enso are quoted, truncated.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

import httpx
import msgspec

from .._config import Config
from .._errors import describe_exception
from .._retry import RetryPolicy
from .._version import __version__
from .._wire import BatchAnswer, parse_batch_answer, parse_error_message, printable
from .answer import ERROR_ANSWER_BYTES, AnswerError, answer_limit, read_answer
from .auth import AuthFailure, Credentials
from .compress import gzip_body
from .deadline import Deadline, arm
from .proxy import check_environment_proxies, environment_proxy
from .reuse import discard, stale_reason, surplus

__all__ = [
    "Answered",
    "HttpSender",
    "Outcome",
    "Rejected",
    "Retry",
    "Sender",
    "TooLarge",
    "Unauthorized",
]

log = logging.getLogger("enso_tracker")

USER_AGENT = f"enso-tracker-python/{__version__} httpx/{httpx.__version__}"
#: What the Client advertises (httpx's default adds br/zstd when those packages are
#: installed): only encodings read_answer can inflate within its bound.
ACCEPT_ENCODING = "gzip, deflate"


class Answered(msgspec.Struct, frozen=True):
    """A 2xx answer that parses as a batch result; the worker reconciles it per event."""

    answer: BatchAnswer


class Retry(msgspec.Struct, frozen=True):
    """The whole request failed for now (network, timeout, 408/425/429, 5xx, a 2xx that
    is not a batch result): every event is sent again after a backoff."""

    message: str
    status: int | None = None
    #: Seconds the server asked us to wait (already clamped), if it said.
    retry_after: float | None = None


class TooLarge(msgspec.Struct, frozen=True):
    """413: the batch is split in half and the byte limit learned."""

    message: str


class Unauthorized(msgspec.Struct, frozen=True):
    """Enso refuses the credentials: events stay queued and are retried with backoff."""

    message: str
    status: int | None = None


class Rejected(msgspec.Struct, frozen=True):
    """A permanent refusal of the whole request (403, other 4xx, 3xx): dropped."""

    message: str
    status: int


Outcome = Answered | Retry | TooLarge | Unauthorized | Rejected


class Sender(Protocol):
    """Delivers one encoded ``{"events": [...]}`` body and says what became of it.

    ``Tracker(sender=...)`` takes anything with this shape in place of HTTP (for tests,
    or another transport); ``send`` must return within about ``timeout`` seconds and
    should not raise (an exception is counted and the batch retried).
    """

    def send(self, body: bytes, timeout: float) -> Outcome: ...

    def close(self) -> None: ...

    def after_fork(self) -> None:
        """Forget connections inherited from the parent (called in the child)."""
        ...

    @property
    def logins(self) -> int: ...


class HttpSender:
    """:class:`Sender` over httpx, POSTing to ``{base_url}/events/batch``.

    Batches go straight to an ``httpx.HTTPTransport`` (httpx's public transport API)
    rather than through ``httpx.Client``: the Client's per-request machinery (URL
    merging, cookie extraction, auth and redirect flows) cost ~40 % of the CPU of each
    request here, and that CPU is GIL time taken from the application's threads. The
    Client is still built, for the login call and for when an environment proxy applies
    to ``base_url`` (the Client is what honours ``HTTPS_PROXY``/``NO_PROXY``). Every
    transport built here gets the :class:`~.deadline.DeadlineBackend`, on both paths.
    """

    def __init__(
        self,
        config: Config,
        credentials: Credentials,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if config.trust_env:
            check_environment_proxies()  # a proxy that cannot work fails here, not later
        self._config = config
        #: Which statuses mean "later", and how a ``Retry-After`` reads.
        self._policy = RetryPolicy.from_config(config)
        self._credentials = credentials
        self._transport = transport
        self._url = httpx.URL(config.base_url.rstrip("/") + "/events/batch")
        self._client: httpx.Client | None = None
        self._direct: httpx.BaseTransport | None = None
        self._deadline = Deadline()
        #: Connections closed because bytes followed an answer (see :mod:`.reuse`).
        self.discarded = 0
        #: Bodies go out gzip-compressed (``compression="gzip"``), until Enso refuses it.
        self.gzip = config.compression == "gzip"
        self.gzip_refused = False
        #: Resend a refused gzip body plain (off only in ``doctor``'s compression probe).
        self.fallback = True
        #: Called with every answer that got as far as a status line, and what was read
        #: of its body (bounded; empty when unread or unreadable): how ``doctor``'s probe
        #: (``probe.py``) sees the status, ``Date`` and error code without a second HTTP path.
        self.on_answer: Callable[[httpx.Response, bytes], None] | None = None

    @property
    def logins(self) -> int:
        return self._credentials.logins

    def _http(self) -> httpx.Client:
        # Built on first use, on the sender thread: no I/O in __init__ or in a fork hook.
        if self._client is None:
            client = httpx.Client(
                timeout=self._config.timeout,
                verify=self._config.verify,
                trust_env=self._config.trust_env,
                transport=self._transport,
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
                follow_redirects=False,
            )
            if self._transport is not None:
                self._direct = self._transport
            else:
                # The Client's own transport (login, no proxy) and its proxy mounts.
                mounts = getattr(client, "_mounts", {})
                armed = [arm(client._transport, self._deadline)]
                armed += [arm(t, self._deadline) for t in mounts.values() if t is not None]
                proxied = environment_proxy(self._config.base_url) is not None
                if not (self._config.trust_env and proxied):
                    self._direct = httpx.HTTPTransport(
                        verify=self._config.verify, trust_env=self._config.trust_env
                    )
                    armed.append(arm(self._direct, self._deadline))
                if not all(armed):
                    log.warning(
                        "this httpx/httpcore version does not let enso-tracker enforce its "
                        "request deadline; timeout applies to each socket operation only"
                    )
            self._client = client
        return self._client

    def close(self) -> None:
        client, self._client = self._client, None
        direct, self._direct = self._direct, None
        if client is not None:
            client.close()
        if direct is not None and direct is not self._transport:
            direct.close()

    def after_fork(self) -> None:
        # The parent's sockets are shared with the child: never close them from here.
        self._client = None
        self._direct = None

    def send(self, body: bytes, timeout: float) -> Outcome:
        client = self._http()
        self._deadline.at = time.monotonic() + timeout
        try:
            return self._send(client, body, timeout)
        finally:
            self._deadline.at = math.inf

    def _send(self, client: httpx.Client, body: bytes, timeout: float) -> Outcome:
        relogged = False
        limit = answer_limit(body)
        #: What goes on the wire: the body, or (compression="gzip") its gzip.
        wire = gzip_body(body) if self.gzip else body
        plain_after_400 = False
        while True:
            try:
                authorization = self._credentials.authorization(client, timeout)
            except AuthFailure as exc:
                if exc.retryable:
                    return Retry(str(exc), exc.status)
                return Unauthorized(str(exc), exc.status)
            try:
                gzipped = wire is not body
                response = self._post(client, wire, authorization, timeout, gzipped=gzipped)
                content: bytes | AnswerError = b""
                try:
                    content, whole = self._read(response, limit)
                    stale = stale_reason(response)
                    if stale is not None or (whole and surplus(response)):
                        self._discard(response)
                finally:
                    response.close()  # with the body unread, this closes the connection
                    if self.on_answer is not None:
                        self.on_answer(response, content if isinstance(content, bytes) else b"")
            except (httpx.HTTPError, UnicodeError) as exc:
                # Never str(exc): httpx/h11 texts can quote our headers (the token).
                return Retry(describe_exception(exc))
            status = response.status_code
            if stale is not None:  # another request's answer: it vouches for nothing
                return Retry(f"HTTP {status} not trusted: {stale}; resent on a new connection")
            if isinstance(content, AnswerError):  # a 2xx we will not read: not a success
                return Retry(f"HTTP {status}: {content}")
            if status == 401 and not relogged and self._credentials.invalidate(authorization):
                relogged = True  # one fresh login, then replay the very same body
                continue
            if wire is not body and status in (400, 415) and self.fallback:
                # The encoding refused (415), or perhaps not read (a 400: a server that
                # ignores Content-Encoding parses gzip as JSON): the same body, plain.
                if status == 415:
                    self._gzip_refused(f"HTTP 415: {parse_error_message(content, 120)}")
                else:
                    plain_after_400 = True
                wire = body
                continue
            if plain_after_400 and 200 <= status < 300:
                self._gzip_refused("HTTP 400 to the gzip body, 2xx to the same body plain")
            return self._classify(response, content)

    def _gzip_refused(self, why: str) -> None:
        """Enso does not take gzip bodies: plain from now on, for this tracker; said once."""
        self.gzip = False
        self.gzip_refused = True
        log.warning(
            "Enso refused a gzip-compressed request body (%s); compression is off for this "
            "tracker, and the batch was resent uncompressed (same eventIds)",
            why,
        )

    def _discard(self, response: httpx.Response) -> None:
        discard(response)
        self.discarded += 1
        if self.discarded == 1:
            log.warning(
                "enso-tracker closed a connection to %s that had bytes after an answer "
                "(a server or proxy sending an answer twice?); such connections are never "
                "reused (not logged again)",
                self._url.host,
            )

    @staticmethod
    def _read(response: httpx.Response, limit: int) -> tuple[bytes | AnswerError, bool]:
        """A 2xx answer up to ``limit`` (else the error); an error answer's first bytes;
        and whether the answer was read to its end (else its connection is closed)."""
        if 200 <= response.status_code < 300:
            try:
                return read_answer(response, limit), True
            except AnswerError as exc:
                return exc, False
        try:
            content = read_answer(response, ERROR_ANSWER_BYTES, truncate=True)
        except AnswerError:
            return b"", False  # undecodable: the status alone decides
        return content, len(content) < ERROR_ANSWER_BYTES

    def _post(
        self,
        client: httpx.Client,
        body: bytes,
        authorization: str,
        timeout: float,
        *,
        gzipped: bool = False,
    ) -> httpx.Response:
        """The response with its body not read yet: the caller reads it, bounded."""
        headers = {
            "User-Agent": USER_AGENT,
            "Authorization": authorization,
            "Content-Type": "application/json",
        }
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        direct = self._direct
        if direct is None:
            request = client.build_request(
                "POST", self._url, content=body, headers=headers, timeout=timeout
            )
            return client.send(request, stream=True)
        request = httpx.Request(
            "POST",
            self._url,
            content=body,
            headers=headers,
            extensions={"timeout": httpx.Timeout(timeout).as_dict()},
        )
        return direct.handle_request(request)

    def _classify(self, response: httpx.Response, content: bytes) -> Outcome:
        status = response.status_code
        if 200 <= status < 300:
            answer = parse_batch_answer(content)
            if answer is None:
                snippet = parse_error_message(content, 120)
                return Retry(f"HTTP {status} with an answer that is not a batch result: {snippet}")
            return Answered(answer)
        message = f"HTTP {status}: {parse_error_message(content)}"
        if self._policy.is_retryable_status(status):
            retry_after = self._policy.retry_after(response.headers.get("Retry-After"))
            return Retry(message, status, retry_after)
        if status == 413:
            return TooLarge(message)
        if status == 401:
            return Unauthorized(message, status)
        if 300 <= status < 400:
            location = printable(response.headers.get("Location", "?"), 200)
            return Rejected(f"{message} (redirect to {location}: check base_url)", status)
        return Rejected(message, status)
