"""The import's line reader, its timestamp cache and the sender's timestamp text, against
plain references (property tests): bounded lines whatever the chunking, JSONL records
(line, bytes, fields or reason) as a line-by-line reader makes them, the same acceptance
and millisecond as ``track()``, exact RFC 3339 text."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
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


JSONL_LINES = st.sampled_from(
    [
        b'{"a": 1}',
        b'  {"a": 2}  ',
        b'{"a": 3}\r',
        b"",
        b"   ",
        b"\r",
        b"{not json",
        b"[1, 2]",
        b"7",
        b'{"a": 1} {"b": 2}',
        b"\x0c{}\x0c",
        b'{"deep": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"long": "' + b"x" * 60 + b'"}',
        b'{"bad utf-8": "\xff"}',
    ]
)


def jsonl_reference(data: bytes, limit: int) -> list[tuple[int, bytes, Any, str | None]]:
    """What a line-by-line reader makes of JSONL: (line, bytes, fields, problem)."""
    out: list[tuple[int, bytes, Any, str | None]] = []
    for n, line in enumerate(reference(data, limit), 1):
        if line is None:
            problem = f"line too long: over {limit:,} bytes (--max-line-bytes), skipped"
            out.append((n, b"", None, problem))
            continue
        raw = line.strip()
        if not raw:
            continue
        try:
            fields = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            out.append((n, raw, None, f"not valid JSON: {exc}"))
            continue
        except RecursionError:
            out.append((n, raw, None, "not valid JSON: nested too deeply"))
            continue
        if type(fields) is not dict:
            out.append((n, raw, None, "not a JSON object"))
            continue
        out.append((n, raw, fields, None))
    return out


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(JSONL_LINES, max_size=40),
    chunk=st.integers(1, 200),
    final_newline=st.booleans(),
)
def test_jsonl_blocks_are_the_records_of_a_line_by_line_reader(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], chunk: int, final_newline: bool
) -> None:
    """Chunks whose lines all decode come as a JsonChunk (no record per line), the others
    line by line: either way each line keeps its number, bytes and reason."""
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    path = Path(tmp_path_factory.mktemp("jsonl")) / "rows.jsonl"
    path.write_bytes(data)
    limit = 5000
    got = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_rows, "_CHUNK", chunk)
        for block in _rows.Input(str(path), "auto", limit).blocks():
            if isinstance(block, _rows.JsonChunk):
                assert len(block.lines) == len(block.values)
                records = [block.record(i) for i in range(len(block.lines))]
            else:
                records = block
            got += [(r.line, r.raw, r.fields, r.problem) for r in records]
    assert got == jsonl_reference(data, limit)


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
