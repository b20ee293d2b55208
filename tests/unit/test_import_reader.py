"""The import's line reader, its timestamp cache and the sender's timestamp text, against
plain references (property tests): bounded lines whatever the chunking, the same
acceptance and millisecond as ``track()``, exact RFC 3339 text."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enso_tracker._cli.importer import rows as _rows
from enso_tracker._cli.importer.timestamps import RepeatCache
from enso_tracker._errors import InvalidEventError
from enso_tracker._validate import timestamp_ns
from enso_tracker._wire import EventEncoder


class Trickle(io.RawIOBase):
    """A stream whose reads return at most ``step`` bytes, like a pipe."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._step, len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n

    def read1(self, size: int = -1) -> bytes:
        out = bytes(self._data[: min(size, self._step)])
        self._data = self._data[len(out) :]
        return out


def reference(data: bytes, limit: int) -> list[bytes | None]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # a final newline ends the last line; it does not start one
    return [None if len(line) > limit else line for line in lines]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    final_newline=st.booleans(),
    bom=st.booleans(),
    limit=st.integers(1, 30),
    chunk=st.integers(1, 50),
    step=st.integers(1, 50),
)
def test_lines_are_those_of_split_whatever_the_chunks(
    lines: list[bytes],
    final_newline: bool,
    bom: bool,
    limit: int,
    chunk: int,
    step: int,
) -> None:
    data = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines)
    if final_newline and lines:
        data += b"\n"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_rows, "_CHUNK", chunk)
        blocks = _rows._blocks(Trickle(data, step), limit, "t")  # type: ignore[arg-type]
        got = [line for block in blocks for line in block]
    assert got == reference(data, limit)


@settings(max_examples=2000, deadline=None)
@given(ms=st.lists(st.integers(0, 253402300799999), min_size=1, max_size=20))
def test_the_wire_timestamp_is_the_utc_text_of_its_millisecond(ms: list[int]) -> None:
    encoder = EventEncoder()
    for value in sorted(ms) + ms:  # in order (cache hits) and not
        when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
        want = f"{when:%Y-%m-%dT%H:%M:%S}.{value % 1000:03d}Z"
        assert encoder.timestamp(value * 1_000_000 + 999_999) == want


TEXTS = st.one_of(
    st.builds(
        lambda ms, sep, frac, zone: (
            f"{datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms):%Y-%m-%d}"
            f"{sep}{datetime(1970, 1, 1) + timedelta(milliseconds=ms):%H:%M:%S}{frac}{zone}"
        ),
        st.integers(0, 253402300799999),
        st.sampled_from(["T", "t", " "]),
        st.sampled_from(["", ".5", ".123", ".123456789", "."]),
        st.sampled_from(["Z", "z", "+02:00", "-11:30", "", "+2:00"]),
    ),
    st.text(max_size=30),
)


@settings(max_examples=1000, deadline=None)
@given(texts=st.lists(TEXTS, min_size=1, max_size=10))
def test_the_repeat_cache_accepts_and_refuses_exactly_as_track_does(texts: list[str]) -> None:
    cache = RepeatCache()
    for text in texts + texts:  # misses, then hits
        try:
            want: int | str = timestamp_ns(text) // 1_000_000
        except InvalidEventError as exc:
            want = str(exc)
        try:
            got: int | str = timestamp_ns(cache(text)) // 1_000_000
        except InvalidEventError as exc:
            got = str(exc)
        assert got == want
