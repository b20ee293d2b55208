"""Reading an answer without holding more than a bound, before or after decompression.

A batch answer is small; a hostile or broken server's need not be (a 1 GiB body, or a
1 MiB gzip body that inflates to 1 GiB). httpx's own decoder inflates a whole network
read at once, so answers are streamed here and abandoned past the bound: the caller
closes the response, which closes the connection without reading the rest.

Owns: the answer bounds (``answer_limit``, ``ERROR_ANSWER_BYTES``,
``LOGIN_ANSWER_BYTES``) and the one bounded gzip/deflate reader, ``read_answer``.

Invariants:

* No more than the bound is ever held, compressed or inflated.
* An answer past its bound, or one that does not decode, is an :class:`AnswerError`
  (or, with ``truncate``, its first bytes): never a partial answer read as whole. A
  compressed body must reach its end (deflate's final block; gzip's, then its
  checksum): one that stops before, however well its first bytes inflated, is
  incomplete.
* Only gzip and deflate (what the sender advertises) are inflated; any other
  ``Content-Encoding`` is an :class:`AnswerError`.
"""

from __future__ import annotations

import zlib

import httpx

from .._errors import short_repr

__all__ = [
    "ANSWER_BASE_BYTES",
    "ANSWER_BYTES_PER_BODY_BYTE",
    "ERROR_ANSWER_BYTES",
    "LOGIN_ANSWER_BYTES",
    "AnswerError",
    "answer_limit",
    "read_answer",
]


#: An answer to a batch may hold this much, plus :data:`ANSWER_BYTES_PER_BODY_BYTE` per
#: byte sent. The smallest event encodes to ~100 bytes, so that is >= 1.5 KiB per event:
#: room for a failure record quoting the event back (Enso's ``"27"`` errors do).
ANSWER_BASE_BYTES = 1024 * 1024
ANSWER_BYTES_PER_BODY_BYTE = 16
#: An error answer is only quoted (300 characters): more than this is not even read.
ERROR_ANSWER_BYTES = 64 * 1024
#: A login answer holds one JWT.
LOGIN_ANSWER_BYTES = 1024 * 1024


def answer_limit(body: bytes) -> int:
    """Most bytes a 2xx answer to ``body`` may take, compressed or decoded:
    ``1 MiB + 16 * len(body)`` (17 MiB for a full default 1 MiB batch)."""
    return ANSWER_BASE_BYTES + ANSWER_BYTES_PER_BODY_BYTE * len(body)


class AnswerError(Exception):
    """An answer too large to read, or in an encoding we cannot decode within a bound.

    Its text holds numbers and encoding names only, never body content.
    """


class _Inflater:
    """gzip/deflate decoding that never produces more than ``limit`` bytes.

    httpx's own decoder inflates a whole network read at once: a 64 KiB read of a
    "gzip bomb" becomes ~64 MiB. Here ``max_length`` caps every step instead.
    """

    __slots__ = ("_first", "_gzip", "_zlib")

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._first = True
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16 if gzip else zlib.MAX_WBITS)

    def feed(self, data: bytes, room: int) -> bytes:
        """``data`` decoded, stopping once ``room`` bytes are out (the caller's "too big")."""
        out: list[bytes] = []
        produced = 0
        while data and produced < room:
            try:
                piece = self._zlib.decompress(data, room - produced)
            except zlib.error:
                if self._gzip or not self._first:
                    raise
                # "deflate" is sent both zlib-wrapped (as specified) and raw: try raw.
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                self._first = False
                continue
            self._first = False
            out.append(piece)
            produced += len(piece)
            # Input is left over only when max_length stopped the output.
            data = self._zlib.unconsumed_tail
            if data and not piece:
                raise zlib.error("no progress")  # cannot happen; never loop on it
        return b"".join(out)

    def finish(self) -> bytes:
        return self._zlib.flush()

    @property
    def complete(self) -> bool:
        """The compressed stream reached its end (gzip: its checksum checked)."""
        return self._zlib.eof


def _decoder(response: httpx.Response) -> _Inflater | None:
    names = [
        name.strip().lower()
        for name in response.headers.get("Content-Encoding", "").split(",")
        if name.strip() and name.strip().lower() != "identity"
    ]
    if not names:
        return None
    if len(names) == 1 and names[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflater(gzip=names[0] != "deflate")
    raise AnswerError(f"answer in an unsupported Content-Encoding {short_repr(','.join(names))}")


def read_answer(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """The decoded content of ``response``, reading and holding at most ``limit`` bytes.

    Streams the body and stops as soon as the raw or the decoded size passes ``limit``,
    without reading the rest: the caller closes the response, which closes the
    connection. Past ``limit`` it raises :class:`AnswerError`, or with ``truncate``
    returns the first ``limit`` decoded bytes (for error answers, which are only
    quoted). An undecodable body raises :class:`AnswerError`. Network errors are
    httpx's, raised as they come.
    """
    declared = response.headers.get("Content-Length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise AnswerError(f"answer of {int(declared)} bytes is over the {limit}-byte limit")
    stream = response.stream
    if not isinstance(stream, httpx.SyncByteStream):
        raise AnswerError("answer is not a synchronous stream")
    inflater = _decoder(response)
    chunks: list[bytes] = []
    raw = size = 0
    over = False
    for chunk in stream:
        raw += len(chunk)
        if inflater is not None:
            try:
                chunk = inflater.feed(chunk, limit - size + 1)
            except zlib.error:
                raise AnswerError("answer's compressed body is corrupt") from None
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or raw > limit:
            over = True
            break
    if not over and inflater is not None:
        try:
            tail = inflater.finish()
        except zlib.error:
            raise AnswerError("answer's compressed body is corrupt") from None
        if raw and not inflater.complete:  # a cut stream inflates to a prefix of the answer
            raise AnswerError("answer's compressed body is incomplete")
        chunks.append(tail)
        size += len(tail)
        over = size > limit
    content = b"".join(chunks)
    if over:
        if truncate:
            return content[:limit]
        raise AnswerError(f"answer is over the {limit}-byte limit; not read further")
    return content
