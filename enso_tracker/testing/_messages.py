"""What travels between the plumbing (socket server, mock transport) and the fake API.

Both front ends turn a request into an :class:`Incoming`, hand it to the same
:class:`Dispatch` and turn the :class:`Reply` back into their own kind of response, so
the API's behaviour lives in one place whatever carries it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit

__all__ = ["DROP", "TIMED_OUT", "Dispatch", "Incoming", "Reply", "route_of"]


@dataclass(frozen=True, slots=True)
class Incoming:
    method: str
    raw_path: str
    route: str
    headers: dict[str, str]
    body: bytes | None  # None: the body could not be read (malformed framing)
    received_at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False  # no response at all: the connection is reset
    timed_out: bool = False  # the client's read timeout ran out first (transport only)
    twice: bool = False  # written twice on the connection (socket only; Fault.answer_twice)


DROP: Final = Reply(status=0, drop=True)
TIMED_OUT: Final = Reply(status=0, drop=True, timed_out=True)


class Dispatch(Protocol):
    """Serve one request.

    ``interrupted`` is polled (under the fake's lock) while a request hangs or is delayed:
    the socket server's ``stop()`` makes it true. ``read_timeout`` is the client's own
    read timeout when the front end knows it (the mock transport does, a socket does not):
    a hang that outlasts it ends the request with :data:`TIMED_OUT`.
    """

    def __call__(
        self,
        request: Incoming,
        *,
        interrupted: Callable[[], bool],
        read_timeout: float | None,
    ) -> Reply: ...


def route_of(raw_path: str) -> str:
    """Route key of a request target: no query, no trailing slash (old docs show /events/)."""
    route = urlsplit(raw_path).path
    return route.rstrip("/") if len(route) > 1 else route
