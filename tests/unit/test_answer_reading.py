"""Reading an answer (``_http.answer.read_answer``): never more than the bound, before or
after decompression; a body past it or one that does not decode is an ``AnswerError``
(never a partial answer read as whole); a corrupt gzip or deflate body ends, never loops.

Each answer is an ``httpx.Response`` over a stream that counts what was pulled from it,
so "stops reading" is checked, not assumed. No socket, no server."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from enso_tracker import Config
from enso_tracker._http.answer import (
    ANSWER_BASE_BYTES,
    ANSWER_BYTES_PER_BODY_BYTE,
    ERROR_ANSWER_BYTES,
    LOGIN_ANSWER_BYTES,
    AnswerError,
    answer_limit,
    read_answer,
)
from enso_tracker._http.auth import ApiKey, AuthFailure, ClientCredentials
from enso_tracker._http.sender import HttpSender, Retry

#: A corrupt body must end in an AnswerError; a decode loop fails the test, not the suite.
pytestmark = pytest.mark.timeout(20)


class Chunks(httpx.SyncByteStream):
    """A response body given in these chunks, counting how many were pulled."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


def response(
    chunks: list[bytes], encoding: str | None = None, length: int | None = None
) -> tuple[httpx.Response, Chunks]:
    headers = {}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if length is not None:
        headers["Content-Length"] = str(length)
    stream = Chunks(chunks)
    return httpx.Response(200, headers=headers, stream=stream), stream


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def raw_deflate(data: bytes) -> bytes:
    return zlib.compress(data, wbits=-zlib.MAX_WBITS)


# ------------------------------------------------------------------ the bound, plain


def test_the_limit_of_a_2xx_answer_grows_with_the_body_sent() -> None:
    assert answer_limit(b"") == ANSWER_BASE_BYTES == 1024 * 1024
    assert answer_limit(b"x" * 1000) == 1024 * 1024 + 16 * 1000
    assert ANSWER_BYTES_PER_BODY_BYTE == 16


@pytest.mark.parametrize("size", [0, 1, 99, 100])
def test_a_plain_answer_up_to_the_limit_is_read_whole(size: int) -> None:
    body = bytes(range(256)) * 2
    answer, stream = response(pieces(body[:size], 7))
    assert read_answer(answer, 100) == body[:size]
    assert stream.pulled == len(stream.chunks)


def test_a_plain_answer_one_byte_past_the_limit_is_refused_and_not_read_further() -> None:
    answer, stream = response([b"a" * 60, b"b" * 41, b"c" * 1000, b"d" * 1000])
    with pytest.raises(AnswerError, match=r"^answer is over the 100-byte limit; not read further$"):
        read_answer(answer, 100)
    assert stream.pulled == 2  # stopped at the chunk that passed the bound


def test_an_error_answer_past_the_limit_is_cut_to_the_limit() -> None:
    answer, stream = response([b"a" * 60, b"b" * 60, b"c" * 1000])
    assert read_answer(answer, 100, truncate=True) == b"a" * 60 + b"b" * 40
    assert stream.pulled == 2


def test_a_declared_length_past_the_limit_is_refused_before_any_byte_is_read() -> None:
    answer, stream = response([b"x" * 101], length=101)
    with pytest.raises(AnswerError, match=r"^answer of 101 bytes is over the 100-byte limit$"):
        read_answer(answer, 100)
    assert stream.pulled == 0


def test_a_declared_length_at_the_limit_is_read() -> None:
    answer, _ = response([b"x" * 100], length=100)
    assert read_answer(answer, 100) == b"x" * 100


def test_a_declared_length_past_the_limit_of_an_error_answer_is_read_and_cut() -> None:
    answer, _ = response([b"x" * 150], length=150)
    assert read_answer(answer, 100, truncate=True) == b"x" * 100


def test_an_asynchronous_stream_is_refused() -> None:
    class Async(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"{}"

    answer = httpx.Response(200, stream=Async())
    with pytest.raises(AnswerError, match=r"^answer is not a synchronous stream$"):
        read_answer(answer, 100)


# ---------------------------------------------------------- encodings that are inflated


BODY = b'{"summary":{"success":3,"failed":0,"total":3},"failedRecords":[]}' * 20


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", gzip.compress),
        (" gzip , identity", gzip.compress),
        ("identity, deflate", zlib.compress),  # zlib-wrapped, as the RFC says
        ("deflate", raw_deflate),  # raw, as some servers send it
    ],
)
# Chunks of 2 bytes at least: a raw deflate body whose first read is 1 byte is not
# recognised as raw (nor is it by httpx's own decoder); a network read is never that short.
@pytest.mark.parametrize("chunk", [2, 5, 64, 100_000], ids=lambda n: f"chunks of {n}")
def test_a_compressed_answer_is_inflated_whole_whatever_its_chunks(
    encoding: str, compress: object, chunk: int
) -> None:
    data = compress(BODY)  # type: ignore[operator]
    answer, stream = response(pieces(data, chunk), encoding)
    assert read_answer(answer, len(BODY)) == BODY
    assert stream.pulled == len(stream.chunks)


@pytest.mark.parametrize("encoding", ["", "identity", "Identity , "])
def test_an_identity_answer_is_read_as_sent(encoding: str) -> None:
    data = gzip.compress(BODY)  # bytes that look compressed are not inflated unasked
    answer, _ = response([data], encoding)
    assert read_answer(answer, len(data)) == data


@pytest.mark.parametrize(
    ("encoding", "named"),
    [("br", "'br'"), ("zstd", "'zstd'"), ("gzip, gzip", "'gzip,gzip'"), ("gzip, br", "'gzip,br'")],
)
def test_an_encoding_not_advertised_is_refused(encoding: str, named: str) -> None:
    answer, stream = response([gzip.compress(BODY)], encoding)
    with pytest.raises(AnswerError, match=rf"^answer in an unsupported Content-Encoding {named}$"):
        read_answer(answer, len(BODY))
    assert stream.pulled == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_answer_inflating_exactly_to_the_limit_is_read(encoding: str) -> None:
    data = (gzip.compress if encoding == "gzip" else zlib.compress)(BODY)
    answer, _ = response(pieces(data, 16), encoding)
    assert read_answer(answer, len(BODY)) == BODY


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("chunk", [16, 100_000], ids=lambda n: f"chunks of {n}")
def test_a_compressed_answer_one_byte_past_the_limit_is_refused(encoding: str, chunk: int) -> None:
    data = (gzip.compress if encoding == "gzip" else zlib.compress)(BODY)
    answer, _ = response(pieces(data, chunk), encoding)
    limit = len(BODY) - 1
    with pytest.raises(AnswerError, match=rf"^answer is over the {limit}-byte limit"):
        read_answer(answer, limit)


def test_an_error_answer_inflating_past_the_limit_is_cut_to_the_limit() -> None:
    answer, _ = response(pieces(gzip.compress(BODY), 16), "gzip")
    assert read_answer(answer, 100, truncate=True) == BODY[:100]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_is_abandoned_at_the_bound_without_reading_on(encoding: str) -> None:
    # 4 MiB of zeros compress to ~4 KiB: read in 1 KiB chunks, the bound (1 KiB inflated)
    # is passed within the first chunk; nothing more is pulled from the network.
    bomb = (gzip.compress if encoding == "gzip" else zlib.compress)(bytes(4 * 1024 * 1024))
    answer, stream = response(pieces(bomb, 1024), encoding)
    with pytest.raises(AnswerError, match=r"^answer is over the 1024-byte limit"):
        read_answer(answer, 1024)
    assert stream.pulled == 1
    answer, stream = response(pieces(bomb, 1024), encoding)
    assert read_answer(answer, 1024, truncate=True) == bytes(1024)
    assert stream.pulled == 1


def test_the_raw_bytes_count_against_the_bound_too() -> None:
    # A gzip body whose compressed bytes pass the bound before its inflated ones do
    # (random bytes do not compress): refused on the raw count.
    import random

    noise = random.Random(7).randbytes(4000)
    data = gzip.compress(noise)
    assert len(data) > len(noise)
    answer, _ = response(pieces(data, 1000), "gzip")
    with pytest.raises(AnswerError, match=r"^answer is over the 4000-byte limit"):
        read_answer(answer, 4000)


# --------------------------------------------------- corrupt bodies end, never loop


def _gzip_garbage() -> bytes:
    return b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"\xff" * 40  # a gzip header, then garbage


CORRUPT: list[tuple[str, list[bytes]]] = [
    ("gzip", [_gzip_garbage()]),
    ("gzip", pieces(_gzip_garbage(), 3)),
    ("gzip", [b"not gzip at all"]),
    ("deflate", [b"\xff\xff\xff\xff" * 10]),  # neither zlib-wrapped nor raw deflate
    ("deflate", pieces(b"\xff\xff\xff\xff" * 10, 3)),
]


@pytest.mark.parametrize(("encoding", "chunks"), CORRUPT)
@pytest.mark.parametrize("truncate", [False, True], ids=["answer", "error answer"])
def test_a_corrupt_compressed_answer_is_an_answer_error_not_a_loop(
    encoding: str, chunks: list[bytes], truncate: bool
) -> None:
    answer, _ = response(chunks, encoding)
    with pytest.raises(AnswerError, match=r"^answer's compressed body is corrupt$"):
        read_answer(answer, 10_000, truncate=truncate)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_corrupt_body_is_refused_even_past_what_the_bound_would_allow(encoding: str) -> None:
    # The first chunk decodes well and stays within the bound; the corruption comes later.
    data = (gzip.compress if encoding == "gzip" else zlib.compress)(BODY)
    answer, _ = response([data[: len(data) // 2], b"\x00\xff" * 50], encoding)
    with pytest.raises(AnswerError, match=r"^answer's compressed body is corrupt$"):
        read_answer(answer, 10 * len(BODY))


# ------------------------------------ a body cut short is incomplete, not an answer


INCOMPLETE: list[tuple[str, bytes]] = [
    ("gzip", gzip.compress(BODY)[:-8]),  # every byte of the answer, but no checksum
    ("gzip", gzip.compress(BODY)[:-1]),
    ("gzip", gzip.compress(BODY)[: len(gzip.compress(BODY)) // 2]),
    ("deflate", zlib.compress(BODY)[:-4]),  # every byte, but no Adler-32
    ("deflate", raw_deflate(BODY)[:-1]),  # its final block unfinished
    ("gzip", gzip.compress(BODY)[:20] + b"\xff" * 100),  # garbage inflating as literals
    ("deflate", zlib.compress(BODY)[:30] + b"\xff" * 100),
]


@pytest.mark.parametrize(
    ("encoding", "data"),
    INCOMPLETE,
    ids=[
        "gzip without checksum",
        "gzip cut by 1",
        "gzip cut by half",
        "zlib without Adler-32",
        "raw deflate cut by 1",
        "gzip then garbage",
        "zlib then garbage",
    ],
)
@pytest.mark.parametrize("truncate", [False, True], ids=["answer", "error answer"])
def test_a_compressed_body_that_stops_before_its_end_is_incomplete(
    encoding: str, data: bytes, truncate: bool
) -> None:
    # Before the fix, each of these was read as a whole answer: the first four inflate
    # to every byte of BODY, vouching for a batch with the checksum never checked.
    answer, _ = response(pieces(data, 64), encoding)
    with pytest.raises(AnswerError, match=r"^answer's compressed body is incomplete$"):
        read_answer(answer, 10 * len(BODY), truncate=truncate)


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate"])
def test_an_empty_body_in_a_compressed_encoding_is_empty(encoding: str) -> None:
    answer, _ = response([], encoding)  # nothing compressed, so nothing cut short
    assert read_answer(answer, 100) == b""


def test_the_sender_resends_a_batch_whose_gzip_answer_lacks_its_checksum() -> None:
    whole = (
        b'{"status":"success","message":"Success",'
        b'"data":{"summary":{"success":1,"failed":0,"total":1},"failedRecords":[]}}'
    )
    cut = gzip.compress(whole)[:-8]
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=cut, headers={"Content-Encoding": "gzip"})
    )
    sender = HttpSender(Config(base_url="https://enso.test"), ApiKey("k"), transport=transport)
    try:
        outcome = sender.send(b'{"events":[{"eventId":"e1"}]}', 5.0)
    finally:
        sender.close()
    assert outcome == Retry("HTTP 200: answer's compressed body is incomplete")


# --------------------------------------------------------- memory, and the checksum


def _zeros_gzipped(mib: int) -> bytes:
    """``mib`` MiB of zeros, gzipped (~230:1 at level 1)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    return b"".join([packer.compress(bytes(1024 * 1024)) for _ in range(mib)]) + packer.flush()


def _peak(answer: httpx.Response, limit: int) -> float:
    """The most memory ``read_answer`` held, in multiples of ``limit``; it must refuse."""
    tracemalloc.start()
    try:
        with pytest.raises(AnswerError, match=rf"^answer is over the {limit}-byte limit"):
            read_answer(answer, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / limit


def test_a_bomb_in_one_network_read_is_never_inflated_past_the_bound() -> None:
    # 8 MiB of zeros in one ~36 KiB read: inflated whole, it would be held at once.
    answer, _ = response([_zeros_gzipped(8)], "gzip")
    assert _peak(answer, 64 * 1024) < 8  # ~2: what was inflated, and the join of it


def test_a_bomb_after_a_modest_first_read_is_held_to_the_bound_too() -> None:
    # The first read inflates to ~half the bound; the second could inflate to 8 MiB and
    # may give only what is left of the bound (not the bound again on top of it).
    bomb = _zeros_gzipped(8)
    answer, _ = response([bomb[:2048], bomb[2048:]], "gzip")
    assert _peak(answer, 1024 * 1024) < 3  # ~2 held; ~4 if the room were not shrunk


def test_a_deflate_answer_whose_checksum_fails_is_corrupt_however_the_rest_reads() -> None:
    # The zlib stream inflates well, then its Adler-32 does not match: corrupt. The bytes
    # that fail it happen to be a whole raw deflate stream: read as one, they would
    # append text of their own to an answer whose checksum failed.
    head = zlib.compress(BODY)[:-4]
    tail = raw_deflate(b', "extra": 1')
    assert tail[:4] != zlib.compress(BODY)[-4:]
    answer, _ = response([head, tail], "deflate")
    with pytest.raises(AnswerError, match=r"^answer's compressed body is corrupt$"):
        read_answer(answer, 10 * len(BODY))


# ------------------------------------------- the other bounds: error and login answers


def test_an_error_answer_is_read_up_to_64_kib_and_no_further() -> None:
    assert ERROR_ANSWER_BYTES == 64 * 1024
    body = b'{"message":"busy"}' + b" " * (200 * 1024)
    transport = httpx.MockTransport(lambda request: httpx.Response(503, content=body))
    sender = HttpSender(Config(base_url="https://enso.test"), ApiKey("k"), transport=transport)
    seen: list[bytes] = []
    sender.on_answer = lambda response, content: seen.append(content)
    try:
        outcome = sender.send(b'{"events":[{"eventId":"e1"}]}', 5.0)
    finally:
        sender.close()
    assert isinstance(outcome, Retry)
    assert outcome.message == "HTTP 503: busy"
    assert seen == [body[:ERROR_ANSWER_BYTES]]


def _login_answer(size: int) -> bytes:
    answer = b'{"data":{"accessToken":"a.b.c"}}'
    return answer + b" " * (size - len(answer))


@pytest.mark.parametrize("size", [LOGIN_ANSWER_BYTES - 1, LOGIN_ANSWER_BYTES])
def test_a_login_answer_up_to_1_mib_is_read(size: int) -> None:
    assert LOGIN_ANSWER_BYTES == 1024 * 1024
    body = _login_answer(size)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    credentials = ClientCredentials("key", "secret", "https://enso.test")
    with httpx.Client(transport=transport) as client:
        assert credentials.authorization(client, 5.0) == "Bearer a.b.c"


@pytest.mark.parametrize("declared", [True, False], ids=["Content-Length", "chunked"])
def test_a_login_answer_past_1_mib_is_refused_unread(declared: bool) -> None:
    body = _login_answer(LOGIN_ANSWER_BYTES + 1)

    def answer(request: httpx.Request) -> httpx.Response:
        if declared:
            return httpx.Response(200, content=body)
        return httpx.Response(200, stream=Chunks(pieces(body, 64 * 1024)))

    credentials = ClientCredentials("key", "secret", "https://enso.test")
    with (
        httpx.Client(transport=httpx.MockTransport(answer)) as client,
        pytest.raises(AuthFailure) as raised,
    ):
        credentials.authorization(client, 5.0)
    assert str(raised.value) == "login answer is over 1048576 bytes or undecodable; not read"
    assert raised.value.retryable
