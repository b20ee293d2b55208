"""Reading inputs as a stream of records, and the deterministic eventId of each.

Inputs are JSONL or CSV, optionally gzipped (detected by magic bytes), or ``-`` for
stdin. Nothing reads a whole file: records come in blocks of one read chunk (or a few
hundred CSV records), each with the line it starts on, the bytes that identify it, and
its fields; a JSONL chunk whose lines all decode comes as lines and values, without a
record per line (the import's fast path).

**The eventId formula of ``--id-rule line``** (enso-tracker 0.x; the default rule is
in ``enso_tracker._backfill``; a stable contract: changing it would bill re-runs twice)::

    eventId = "imp_" + sha256(f"{source}\\n{line}\\n".encode() + record).hexdigest()[:32]

* ``source``: ``--source-id`` if given, else the input's file name without its directory
  and without a trailing ``.gz`` (``/data/usage.csv.gz`` -> ``usage.csv``), so the same
  file re-imported from another directory or machine, compressed or not, gets the same ids.
* ``line``: the 1-based line the record starts on (the CSV header is line 1), so two
  identical rows of one file stay two events.
* ``record``: the record's own bytes: a JSONL line without surrounding whitespace and line
  ending; for CSV the record's fields, as parsed, joined by ``\\x1f`` and UTF-8 encoded.
  The mapping flags are deliberately not part of it: a re-run with different flags
  must not bill the same row again.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import sys
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, Any, Final, cast

import msgspec

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "Input",
    "InputDamaged",
    "JsonChunk",
    "Record",
    "derive_event_id",
    "shard_of",
]

#: Longest line read (``--max-line-bytes``): a longer one is an error row, never held.
DEFAULT_MAX_LINE_BYTES: Final = 1024 * 1024

_GZIP_MAGIC: Final = b"\x1f\x8b"
_BOM: Final = b"\xef\xbb\xbf"
_JSONL_SUFFIXES: Final = (".jsonl", ".ndjson", ".json")
#: CSV records handed over at a time (the reader's own state bounds memory anyway).
_CSV_BATCH: Final = 512
_decode = msgspec.json.decode


def derive_event_id(source: str, line: int, record: bytes) -> str:
    digest = hashlib.sha256(f"{source}\n{line}\n".encode() + record)
    return "imp_" + digest.hexdigest()[:32]


def shard_of(event_id: str, shards: int) -> int:
    """The shard an event belongs to: a stable hash of its eventId (not Python's ``hash``,
    which changes per process), so shards are disjoint and together complete."""
    digest = hashlib.sha256(event_id.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % shards


@dataclass(slots=True)
class Record:
    line: int
    raw: bytes
    #: The row's fields (JSONL: the decoded object; CSV: header -> text), or None when
    #: the record could not be parsed (then ``problem`` says why).
    fields: dict[str, Any] | None
    problem: str | None = None

    def display(self) -> Any:
        """What the errors file shows of the row."""
        if self.fields is not None:
            return self.fields
        return self.raw.decode("utf-8", "replace")


@dataclass(slots=True)
class JsonChunk:
    """Consecutive JSONL lines that each decoded on their own (the fast path): ``lines[i]``
    is line ``first + i`` as read (surrounding whitespace kept), ``values[i]`` its JSON
    value (a row when it is a dict; anything else is an error row, see ``record``)."""

    first: int
    lines: list[bytes]
    values: list[Any]

    def record(self, i: int) -> Record:
        """Line ``i`` as the record the per-line reader would have made of it."""
        value = self.values[i]
        raw = self.lines[i].strip()
        if type(value) is not dict:
            return Record(self.first + i, raw, None, "not a JSON object")
        return Record(self.first + i, raw, value)


class Input:
    """One input: a path or ``-``; opened lazily, read once, as a stream."""

    def __init__(self, path: str, fmt: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.path = path
        self.is_stdin = path == "-"
        self.name = "<stdin>" if self.is_stdin else path
        base = os.path.basename(path)
        self.default_source = base[:-3] if base.endswith(".gz") else base
        self.size: int | None = None if self.is_stdin else os.path.getsize(path)
        self._fmt = fmt
        self._raw: IO[bytes] | None = None
        self.format = ""
        self.header: list[str] | None = None

    def position(self) -> int:
        """Bytes of the (possibly compressed) input consumed so far, for the ETA."""
        raw = self._raw
        if raw is None or self.is_stdin:
            return 0
        try:
            return raw.tell()
        except (OSError, ValueError):
            return 0

    def blocks(
        self, csv_batch: int = _CSV_BATCH
    ) -> Generator[list[Record] | JsonChunk, None, None]:
        """The records in blocks, in order: a :class:`JsonChunk` for JSONL lines that
        all decoded (no ``Record`` per line: the import's hot path), else lists of
        records (CSV: up to ``csv_batch`` at a time). Raises OSError if the file cannot
        be opened or read; ``InputDamaged`` after the blocks before the damage."""
        raw: IO[bytes] = sys.stdin.buffer if self.is_stdin else open(self.path, "rb")  # noqa: SIM115
        self._raw = raw
        stream: IO[bytes] = raw
        try:
            try:
                if _peek(raw, 2)[:2] == _GZIP_MAGIC:
                    stream = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
                self.format = self._detect(stream)
            except (EOFError, OSError, zlib.error) as exc:  # a damaged gzip header
                raise InputDamaged(self.name, 1, _damage(exc)) from None
            if self.format == "csv":
                yield from _batched(self._csv(stream), csv_batch)
            else:
                yield from self._jsonl(stream)
        finally:
            if stream is not raw:
                stream.close()
            if not self.is_stdin:
                raw.close()

    def read_header(self) -> list[str] | None:
        """Open, detect the format and read a CSV header (the preflight check)."""
        records = self.blocks(csv_batch=1)  # the header alone, not rows past it
        try:
            next(records, None)
        finally:
            records.close()
        return self.header

    def _detect(self, stream: IO[bytes]) -> str:
        if self._fmt != "auto":
            return self._fmt
        stem = self.default_source.lower()
        if stem.endswith(_JSONL_SUFFIXES):
            return "jsonl"
        if stem.endswith(".csv"):
            return "csv"
        head = _peek(stream, 256).lstrip(_BOM).lstrip()
        return "jsonl" if head.startswith(b"{") else "csv"

    def _jsonl(self, stream: IO[bytes]) -> Iterator[list[Record] | JsonChunk]:
        decode = _decode
        line_no = 0
        for lines in _blocks(stream, self.max_line_bytes, self.name):
            first = line_no + 1
            line_no += len(lines)
            if None not in lines:
                # One C-level pass for the whole chunk. Each line is decoded alone (not
                # with decode_lines, which skips blank lines and reads two objects on one
                # line: the values would no longer match their lines). Any trouble (a
                # blank or bad line, too deep) and the chunk goes line by line below.
                done = cast("list[bytes]", lines)
                try:
                    values = [decode(line) for line in done]
                except (msgspec.DecodeError, RecursionError):
                    pass
                else:
                    yield JsonChunk(first, done, values)
                    continue
            records = []  # a list per chunk: bounded by the chunk, as the lines are
            for n, line in enumerate(lines, first):
                record = self._jsonl_record(n, line)
                if record is not None:
                    records.append(record)
            yield records

    def _jsonl_record(self, line_no: int, line: bytes | None) -> Record | None:
        """One line as a record, None for a blank one (the slow path: every reason
        spelled out)."""
        if line is None:
            return Record(line_no, b"", None, self._too_long())
        raw = line.strip()
        if not raw:
            return None
        try:
            fields = _decode(raw)
        except msgspec.DecodeError as exc:
            return Record(line_no, raw, None, f"not valid JSON: {exc}")
        except RecursionError:  # msgspec's own depth limit: not a stack overflow
            return Record(line_no, raw, None, "not valid JSON: nested too deeply")
        if type(fields) is not dict:
            return Record(line_no, raw, None, "not a JSON object")
        return Record(line_no, raw, fields)

    def _too_long(self) -> str:
        return f"line too long: over {self.max_line_bytes:,} bytes (--max-line-bytes), skipped"

    def _csv(self, stream: IO[bytes]) -> Iterator[Record]:
        # Lines are decoded one by one, strictly: a line that is not UTF-8 (or too long)
        # reaches the csv module as an empty line and makes its record an error row,
        # named by line; the rest of the file is read as usual.
        problems: dict[int, str] = {}
        shown: list[str] = []  # what the errors file shows of the bad lines
        too_long = self._too_long()

        def text() -> Iterator[str]:
            line_no = 0
            for lines in _blocks(stream, self.max_line_bytes, self.name):
                for line in lines:
                    line_no += 1
                    if line is None:
                        problems[line_no] = too_long
                        yield "\n"
                        continue
                    try:
                        yield line.decode() + "\n"
                    except UnicodeDecodeError as exc:
                        problems[line_no] = f"not valid UTF-8: line {line_no}, byte {exc.start + 1}"
                        shown.append(line.decode("utf-8", "replace"))
                        yield "\n"

        # A quoted field may span lines: the csv module's field limit (process-wide; this
        # is the CLI's process) bounds it like a line.
        csv.field_size_limit(max(self.max_line_bytes, _CSV_FIELD_DEFAULT))
        reader = csv.reader(text())
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise OSError(f"{self.name}: cannot read the CSV header: {exc}") from None
        if problems:
            raise OSError(f"{self.name}: cannot read the CSV header: {problems[1]}")
        self.header = header = [h.strip() for h in header]
        width = len(header)
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                problems.clear()
                shown.clear()
                yield Record(start, b"", None, f"not valid CSV: {exc}")
                continue
            if problems:
                reasons = [problems.pop(n) for n in sorted(problems)]
                raw = "\n".join(shown).encode()
                shown.clear()
                yield Record(start, raw, None, "; ".join(reasons))
                continue
            if not fields or fields == [""]:
                continue
            raw = "\x1f".join(fields).encode()
            if len(fields) != width:
                yield Record(
                    start, raw, None, f"wrong number of fields: {len(fields)}, the header {width}"
                )
                continue
            yield Record(start, raw, dict(zip(header, fields)))  # noqa: B905 (width checked)


class InputDamaged(Exception):
    """The input cannot be read past this point (a truncated gzip, an I/O error)."""

    def __init__(self, name: str, line: int, reason: str) -> None:
        super().__init__(f"{name}: unreadable from line {line} on: {reason}")
        self.line = line
        self.reason = reason


_CSV_FIELD_DEFAULT: Final = 131_072  # the csv module's own default
#: Bytes asked of the stream at a time: large enough that reading costs little per line.
_CHUNK: Final = 1 << 18


def _blocks(stream: IO[bytes], limit: int, name: str) -> Iterator[list[bytes | None]]:
    """The input's lines, without their newline, a list per chunk read (consecutive; the
    consumer numbers them). ``None`` stands for a line longer than ``limit`` bytes, which
    is skipped without being held: memory stays within ``limit`` plus one chunk whatever
    the input. A leading UTF-8 BOM is dropped. ``InputDamaged`` when reading fails: the
    lines before it have been given, a partial last line is not."""
    read = getattr(stream, "read1", stream.read)
    given = 0
    tail = b""
    skipping = False  # inside a line already found too long
    first = True
    head = b""
    while True:
        try:
            block = read(_CHUNK)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputDamaged(name, given + 1, _damage(exc)) from None
        if first:  # a BOM may come in pieces from a pipe
            more = bool(block)
            block = head + block
            if more and len(block) < len(_BOM) and _BOM.startswith(block):
                head = block
                continue
            first = False
            if block.startswith(_BOM):
                block = block[len(_BOM) :]
                if not block:
                    continue  # the BOM alone: not the end
        if not block:
            if skipping:
                yield [None]
            elif tail:
                yield [tail]
            return
        lines = block.split(b"\n")
        last = lines.pop()
        if lines:
            if skipping:
                lines[0] = b""  # the end of a line already found too long: None below
            elif tail:
                lines[0] = tail + lines[0]
            out = cast("list[bytes | None]", lines)
            if max(map(len, lines)) > limit:
                out = [None if len(line) > limit else line for line in lines]
            if skipping:
                out[0] = None
                skipping = False
            given += len(out)
            yield out
            tail = last
        elif not skipping:
            tail += last
        if len(tail) > limit:
            tail = b""
            skipping = True


def _batched(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    """Lists of up to ``size`` records; on ``InputDamaged`` the records read before it
    come first, then the exception."""
    batch: list[Record] = []
    try:
        for record in records:
            batch.append(record)
            if len(batch) >= size:
                yield batch
                batch = []
    except InputDamaged:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def _damage(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the compressed stream ends early (a truncated .gz?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _peek(stream: IO[bytes], n: int) -> bytes:
    peek = getattr(stream, "peek", None)
    if peek is None:  # every stream opened here is buffered; stay correct if not
        raise OSError("input stream cannot be peeked")
    data: bytes = peek(n)
    return data[:n]
