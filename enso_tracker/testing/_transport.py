"""The socketless front end of :class:`~.FakeEnso`: an ``httpx.MockTransport``.

Requests go straight from httpx to the fake's dispatch in the calling thread: no socket,
no server thread, no port, so a unit test pays microseconds per request. What a socket
alone can show is approximated: a reset connection raises ``httpx.ReadError``, and a hang
or delay longer than the request's read timeout raises ``httpx.ReadTimeout`` once that
timeout has passed.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from ._messages import Dispatch, Incoming, route_of

__all__ = ["make_transport"]


def _never() -> bool:
    return False


def _read_timeout(request: httpx.Request) -> float | None:
    timeouts: Any = request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        read = timeouts.get("read")
        if isinstance(read, int | float):
            return float(read)
    return None


def make_transport(dispatch: Dispatch) -> httpx.MockTransport:
    """A transport whose every request is served by ``dispatch``, whatever the host."""

    def handle(request: httpx.Request) -> httpx.Response:
        received_at = time.monotonic()
        headers: dict[str, str] = {}
        for name, value in request.headers.multi_items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        raw_path = request.url.raw_path.decode("ascii", "replace")
        incoming = Incoming(
            request.method, raw_path, route_of(raw_path), headers, request.read(), received_at
        )
        reply = dispatch(incoming, interrupted=_never, read_timeout=_read_timeout(request))
        if reply.timed_out:
            raise httpx.ReadTimeout(
                "FakeEnso did not answer within the read timeout", request=request
            )
        if reply.drop:
            raise httpx.ReadError("FakeEnso reset the connection", request=request)
        content = b"" if request.method == "HEAD" else reply.body
        return httpx.Response(
            reply.status,
            headers=[*reply.headers, ("Content-Type", "application/json")],
            content=content,
            request=request,
        )

    return httpx.MockTransport(handle)
