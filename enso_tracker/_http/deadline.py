"""A deadline for a whole HTTP request, which httpx does not have.

httpx's ``timeout`` applies to each socket operation: a server answering one byte every
two seconds keeps a request with ``timeout=10`` open forever. :class:`DeadlineBackend`
wraps httpcore's network backend (its public ``NetworkBackend``/``NetworkStream`` API) so
that every connect, TLS handshake, read and write is cut to the time left before
:attr:`Deadline.at`, and fails with httpcore's own timeout errors past it (httpx maps
them to ``httpx.ReadTimeout`` & co). Only name resolution escapes it (``getaddrinfo``
cannot be interrupted). Cost: one clock read per socket operation.

Being the one wrapper around every connection we open, :class:`DeadlineStream` also
keeps what :mod:`.reuse` needs to tell a stale answer from a fresh one: whether bytes
were waiting before a request was fully written, and whether its answer needed any read.

Owns: :class:`Deadline` (per thread), :class:`DeadlineBackend` and :func:`arm`.

Invariants:

* With a deadline set, no socket operation outlives it; with none (``inf``), none is cut.
* Every transport the sender builds is armed (a warning says so when httpx/httpcore
  does not allow it); a caller's own transport is left alone.
"""

from __future__ import annotations

import math
import ssl
import threading
import time
from collections.abc import Iterable

import httpcore
import httpx

__all__ = ["Deadline", "DeadlineBackend", "arm"]


class Deadline(threading.local):
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


class DeadlineStream(httpcore.NetworkStream):
    """One connection's socket operations, each cut to the deadline.

    It also watches request/answer cycles (writes, then reads) for :mod:`.reuse`:
    :attr:`early` is set when, on a reused connection, bytes were already waiting
    before a non-empty write of the current request (no answer can precede its
    request's last byte), and :attr:`reads` counts reads since the request began (an
    answer that needed none was wholly buffered before the request was sent).
    """

    __slots__ = ("_closed", "_cycles", "_deadline", "_inner", "_reading", "early", "reads")

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline
        self._closed = False
        self._cycles = 0
        self._reading = True  # the first write begins a request cycle
        self.early = False
        self.reads = 0

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._reading = True
        self.reads += 1
        return self._inner.read(max_bytes, self._deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            # h11 ends a Content-Length body with an empty write, after the server may
            # rightly have answered: nothing to send, and no evidence of anything.
            return
        if self._reading:  # a write after reads: the next request begins
            self._reading = False
            self._cycles += 1
            self.early = False
            self.reads = 0
        left = self._deadline.left
        if len(buffer) <= _WRITE_SLICE:
            self._check_early()
            self._inner.write(buffer, left(timeout, httpcore.WriteTimeout))
            return
        for start in range(0, len(buffer), _WRITE_SLICE):
            piece = buffer[start : start + _WRITE_SLICE]
            self._check_early()
            self._inner.write(piece, left(timeout, httpcore.WriteTimeout))

    def _check_early(self) -> None:
        # Not on a connection's first request: nothing can be stale there, and TLS 1.3
        # session tickets make a fresh socket readable with no answer in it.
        if self._cycles > 1 and not self.early and self.get_extra_info("is_readable"):
            self.early = True

    def close(self) -> None:
        self._closed = True
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
        return DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable":
            # httpcore asks this of an idle connection before reusing it ("readable"
            # means the server closed it). TLS may hold decrypted bytes the socket no
            # longer shows, and a stream we closed must never be picked again.
            if self._closed or self._inner.get_extra_info("is_readable"):
                return True
            tls = self._inner.get_extra_info("ssl_object")
            pending = getattr(tls, "pending", None)
            return bool(pending()) if callable(pending) else False
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with every socket operation cut to the deadline.

    Reads, writes, connects and TLS handshakes each get ``min(their timeout, time
    left)`` and fail with httpcore's own timeout errors past it, which httpx maps to
    ``httpx.ReadTimeout`` & co. Cost: one clock read per socket operation.
    """

    def __init__(self, inner: httpcore.NetworkBackend, deadline: Deadline) -> None:
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
        return DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, self._deadline.left(timeout, httpcore.ConnectTimeout), socket_options
        )
        return DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def arm(transport: httpx.BaseTransport | None, deadline: Deadline) -> bool:
    """Put the deadline under an httpx transport we built; False if it cannot be done.

    httpx offers no public way to choose httpcore's network backend, so this swaps
    the connection pool's (``ConnectionPool``/``HTTPProxy``/``SOCKSProxy`` all keep it
    in ``_network_backend`` and read it for each new connection). Done before the
    first request; tests pin it (``test_defect9_every_transport_is_armed``), so an
    httpx upgrade that moves it fails loudly rather than silently.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, DeadlineBackend):
        return True
    if not isinstance(backend, httpcore.NetworkBackend):
        return False
    pool._network_backend = DeadlineBackend(backend, deadline)  # type: ignore[union-attr]
    return True
