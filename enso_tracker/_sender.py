"""The sender: one HTTP request per batch, its answer classified into an :data:`Outcome`.

The batching worker (``_tracker.py``) knows nothing of HTTP; this module knows nothing
of queues. The boundary is :class:`Sender`, so tests and other transports can stand in.
Classification follows ``shared/enso-api.md`` §10:

===========================  ===============================================
answer                       outcome
===========================  ===============================================
2xx, parseable               :class:`Answered` (per-record accounting)
2xx, unparseable, oversized  :class:`Retry` (never counted as a success)
408, 425, 429, 5xx, network  :class:`Retry` (``Retry-After`` honoured)
timeout (whole request)      :class:`Retry`
413                          :class:`TooLarge` (the worker splits the batch)
401                          re-login once and replay; then :class:`Unauthorized`
403, other 4xx, 3xx          :class:`Rejected` (permanent)
===========================  ===============================================

Two bounds hold whatever the server does:

* **Time.** ``send(body, timeout)`` returns within about ``timeout``: it is a deadline
  for the whole call (connect, TLS, the login if one is due, writing the body, the
  status line, headers and every byte of the answer, and the replay after a 401), not
  a per-read timeout that a server trickling one byte at a time could stretch forever.
  httpx has no such deadline, so :class:`_DeadlineBackend` (httpcore's public
  ``NetworkBackend`` API) caps every socket operation at the time left. Only name
  resolution escapes it (``getaddrinfo`` cannot be interrupted).
* **Memory.** An answer is streamed and abandoned (closing the connection) once it
  passes :func:`~._wire.answer_limit`, compressed or decoded; see :func:`~._wire.read_answer`.

No exception text from the HTTP stack is ever quoted (it can hold our headers): only
:func:`~._errors.describe_exception`. Error bodies from Enso are quoted, truncated.
"""

from __future__ import annotations

import email.utils
import logging
import math
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable
from typing import Protocol

import httpcore
import httpx
import msgspec

from ._auth import AuthFailure, Credentials
from ._config import Config
from ._errors import describe_exception
from ._version import __version__
from ._wire import (
    ERROR_ANSWER_BYTES,
    AnswerError,
    BatchAnswer,
    answer_limit,
    parse_batch_answer,
    parse_error_message,
    printable,
    read_answer,
)

__all__ = [
    "Answered",
    "HttpSender",
    "Outcome",
    "Rejected",
    "Retry",
    "Sender",
    "TooLarge",
    "Unauthorized",
    "parse_retry_after",
]

log = logging.getLogger("enso_tracker")

USER_AGENT = f"enso-tracker-python/{__version__} httpx/{httpx.__version__}"
RETRYABLE_STATUS = frozenset({408, 425, 429})
#: What the Client advertises (httpx's default adds br/zstd when those packages are
#: installed): only encodings read_answer can inflate within its bound.
ACCEPT_ENCODING = "gzip, deflate"


class Answered(msgspec.Struct, frozen=True):
    answer: BatchAnswer


class Retry(msgspec.Struct, frozen=True):
    message: str
    status: int | None = None
    #: Seconds the server asked us to wait (already clamped), if it said.
    retry_after: float | None = None


class TooLarge(msgspec.Struct, frozen=True):
    message: str


class Unauthorized(msgspec.Struct, frozen=True):
    message: str
    status: int | None = None


class Rejected(msgspec.Struct, frozen=True):
    message: str
    status: int


Outcome = Answered | Retry | TooLarge | Unauthorized | Rejected


class Sender(Protocol):
    """Delivers one encoded ``{"events": [...]}`` body and says what became of it."""

    def send(self, body: bytes, timeout: float) -> Outcome: ...

    def close(self) -> None: ...

    def after_fork(self) -> None:
        """Forget connections inherited from the parent (called in the child)."""
        ...

    @property
    def logins(self) -> int: ...


def parse_retry_after(value: str | None, limit: float, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), limit)


class _Deadline(threading.local):
    """When the current ``send()`` must be over (per thread; ``inf`` outside one)."""

    at: float = math.inf

    def left(self, timeout: float | None, expired: type[Exception]) -> float | None:
        """The socket timeout for one operation: ``timeout``, cut to the time left."""
        at = self.at
        if at == math.inf:
            return timeout
        left = at - time.monotonic()
        if left <= 0:
            raise expired("the request's deadline passed")
        return left if timeout is None or left < timeout else timeout


#: Writes go out in slices so that a server reading slowly meets the deadline too.
_WRITE_SLICE = 64 * 1024


class _DeadlineStream(httpcore.NetworkStream):
    __slots__ = ("_deadline", "_inner")

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        left = self._deadline.left
        if len(buffer) <= _WRITE_SLICE:
            self._inner.write(buffer, left(timeout, httpcore.WriteTimeout))
            return
        for start in range(0, len(buffer), _WRITE_SLICE):
            piece = buffer[start : start + _WRITE_SLICE]
            self._inner.write(piece, left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # CPython's handshake counts its timeout as a deadline across all its reads.
        inner = self._inner.start_tls(
            ssl_context, server_hostname, self._deadline.left(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with every socket operation cut to the deadline.

    Reads, writes, connects and TLS handshakes each get ``min(their timeout, time
    left)`` and fail with httpcore's own timeout errors past it, which httpx maps to
    ``httpx.ReadTimeout`` & co. Cost: one clock read per socket operation.
    """

    def __init__(self, inner: httpcore.NetworkBackend, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host,
            port,
            self._deadline.left(timeout, httpcore.ConnectTimeout),
            local_address,
            socket_options,
        )
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, self._deadline.left(timeout, httpcore.ConnectTimeout), socket_options
        )
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _arm(transport: httpx.BaseTransport | None, deadline: _Deadline) -> bool:
    """Put the deadline under an httpx transport we built; False if it cannot be done.

    httpx offers no public way to choose httpcore's network backend, so this swaps
    the connection pool's (``ConnectionPool``/``HTTPProxy``/``SOCKSProxy`` all keep it
    in ``_network_backend`` and read it for each new connection). Done before the
    first request; tests pin it (``test_defect9_every_transport_is_armed``), so an
    httpx upgrade that moves it fails loudly rather than silently.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, _DeadlineBackend):
        return True
    if not isinstance(backend, httpcore.NetworkBackend):
        return False
    pool._network_backend = _DeadlineBackend(backend, deadline)  # type: ignore[union-attr]
    return True


class HttpSender:
    """:class:`Sender` over httpx, POSTing to ``{base_url}/events/batch``.

    Batches go straight to an ``httpx.HTTPTransport`` (httpx's public transport API)
    rather than through ``httpx.Client``: the Client's per-request machinery (URL
    merging, cookie extraction, auth and redirect flows) cost ~40 % of the CPU of each
    request here, and that CPU is GIL time taken from the application's threads. The
    Client is still built, for the login call and for when an environment proxy applies
    to ``base_url`` (the Client is what honours ``HTTPS_PROXY``/``NO_PROXY``). Every
    transport built here gets the :class:`_DeadlineBackend`, on both paths.
    """

    def __init__(
        self,
        config: Config,
        credentials: Credentials,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = config
        self._credentials = credentials
        self._transport = transport
        self._url = httpx.URL(config.base_url.rstrip("/") + "/events/batch")
        self._client: httpx.Client | None = None
        self._direct: httpx.BaseTransport | None = None
        self._deadline = _Deadline()

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
                armed = [_arm(client._transport, self._deadline)]
                armed += [_arm(t, self._deadline) for t in mounts.values() if t is not None]
                if not (self._config.trust_env and _proxy_applies(self._url)):
                    self._direct = httpx.HTTPTransport(
                        verify=self._config.verify, trust_env=self._config.trust_env
                    )
                    armed.append(_arm(self._direct, self._deadline))
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
        while True:
            try:
                authorization = self._credentials.authorization(client, timeout)
            except AuthFailure as exc:
                if exc.retryable:
                    return Retry(str(exc), exc.status)
                return Unauthorized(str(exc), exc.status)
            try:
                response = self._post(client, body, authorization, timeout)
                try:
                    content = self._read(response, limit)
                finally:
                    response.close()  # with the body unread, this closes the connection
            except (httpx.HTTPError, UnicodeError) as exc:
                # Never str(exc): httpx/h11 texts can quote our headers (the token).
                return Retry(describe_exception(exc))
            status = response.status_code
            if isinstance(content, AnswerError):  # a 2xx we will not read: not a success
                return Retry(f"HTTP {status}: {content}")
            if status == 401 and not relogged and self._credentials.invalidate(authorization):
                relogged = True  # one fresh login, then replay the very same body
                continue
            return self._classify(response, content)

    @staticmethod
    def _read(response: httpx.Response, limit: int) -> bytes | AnswerError:
        """A 2xx answer up to ``limit`` (else the error); an error answer's first bytes."""
        if 200 <= response.status_code < 300:
            try:
                return read_answer(response, limit)
            except AnswerError as exc:
                return exc
        try:
            return read_answer(response, ERROR_ANSWER_BYTES, truncate=True)
        except AnswerError:
            return b""  # undecodable: the status alone decides

    def _post(
        self, client: httpx.Client, body: bytes, authorization: str, timeout: float
    ) -> httpx.Response:
        """The response with its body not read yet: the caller reads it, bounded."""
        headers = {
            "User-Agent": USER_AGENT,
            "Authorization": authorization,
            "Content-Type": "application/json",
        }
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
        if status in RETRYABLE_STATUS or status >= 500:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), self._config.max_retry_after
            )
            return Retry(message, status, retry_after)
        if status == 413:
            return TooLarge(message)
        if status == 401:
            return Unauthorized(message, status)
        if 300 <= status < 400:
            location = printable(response.headers.get("Location", "?"), 200)
            return Rejected(f"{message} (redirect to {location}: check base_url)", status)
        return Rejected(message, status)


def _proxy_applies(url: httpx.URL) -> bool:
    """Whether an environment proxy (``HTTPS_PROXY``, ``ALL_PROXY``…) covers ``url``."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.host)
