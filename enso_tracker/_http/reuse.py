"""Which answer belongs to which request on a kept-alive connection.

HTTP/1.1 has no request ids: an answer is whatever bytes come next on the connection.
When a server or a middlebox sends one answer twice, the copy waits on the connection
and is read as the answer to the next request, which the server may never have
processed: its events would be counted delivered on an answer about other events. So:

* **Nothing after an answer.** Once an answer has been read to its end, a connection
  with more bytes (buffered by the HTTP parser, held by TLS, or waiting in the socket),
  or already at its end, is closed and never carries another request
  (:func:`surplus`, :func:`discard`).
* **Nothing before an answer.** An answer that needed no read after its request was
  written was wholly there before the request was sent; a 2xx answer whose bytes were
  already waiting before the request's last byte went out cannot be about that request
  either (a server answers a batch only once it has all of it). Either is not trusted:
  the batch is resent, on another connection, with the same eventIds
  (:func:`stale_reason`; the watching is done by :class:`~.deadline.DeadlineStream`).

What no HTTP/1.1 client can tell apart: a copy that arrives only after the next request
was wholly written, and before that request's own answer. Nothing in the bytes says
which request an answer is about.

Owns: :func:`stale_reason`, :func:`surplus` and :func:`discard`, used by the sender
and the login alike.
"""

from __future__ import annotations

import contextlib

import httpx

from .deadline import DeadlineStream

__all__ = ["discard", "stale_reason", "surplus"]

#: How deep :func:`_parser_buffer` looks through httpx/httpcore's response stream
#: wrappers (httpx's bound stream, its transport stream, httpcore's pool stream).
_WRAPPERS = 6


def _network_stream(response: httpx.Response) -> object:
    return response.extensions.get("network_stream")


def stale_reason(response: httpx.Response) -> str | None:
    """Why this answer cannot be the answer to the request just sent, or None.

    Known only on connections we opened (their streams are
    :class:`~.deadline.DeadlineStream`); a caller's own transport is not watched.
    """
    stream = _network_stream(response)
    if not isinstance(stream, DeadlineStream):
        return None
    if stream.reads == 0:
        return "the answer was on the connection before the request was sent"
    if stream.early and 200 <= response.status_code < 300:
        return "the answer began arriving before the request was fully sent"
    return None


def _parser_buffer(response: httpx.Response) -> bytes | None:
    """Bytes h11 received on this connection past the end of the answer.

    httpx and httpcore offer no public way to see them; this follows their stream
    wrappers to httpcore's HTTP/1.1 connection (``test_reuse.py`` pins the path, so an
    upgrade that moves it fails there). None when the path is not found: the socket
    checks and :func:`stale_reason` still apply.
    """
    stream: object = response.stream
    for _ in range(_WRAPPERS):
        connection = getattr(stream, "_connection", None)
        state = getattr(connection, "_h11_state", None)
        trailing = getattr(state, "trailing_data", None)
        if isinstance(trailing, tuple) and trailing and isinstance(trailing[0], bytes):
            return trailing[0]
        inner = getattr(stream, "_stream", None) or getattr(stream, "_httpcore_stream", None)
        if inner is None:
            return None
        stream = inner
    return None


def surplus(response: httpx.Response) -> bool:
    """Whether the connection of this fully read answer holds more than the answer.

    More bytes (parsed-ahead by h11, decrypted by TLS, or in the socket) or the
    connection's end: either way it must not carry another request.
    """
    if _parser_buffer(response):
        return True
    stream = _network_stream(response)
    get_extra_info = getattr(stream, "get_extra_info", None)
    if get_extra_info is None:
        return False  # no socket behind it (a mock transport): nothing to reuse
    try:
        return bool(get_extra_info("is_readable"))
    except (OSError, ValueError):
        return True  # a socket that cannot even say: not one to reuse


def discard(response: httpx.Response) -> None:
    """Close the answer's connection so that its pool never hands it out again.

    Call before ``response.close()``: httpcore's pool then finds the stream closed
    ("readable") when it next looks, and drops the connection.
    """
    stream = _network_stream(response)
    close = getattr(stream, "close", None)
    if callable(close):
        with contextlib.suppress(OSError):
            close()
