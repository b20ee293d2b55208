"""Reading inputs as a stream of records, and the deterministic eventId of each.

Inputs are JSONL or CSV, optionally gzipped (detected by magic bytes), or ``-`` for
stdin. Nothing reads a whole file: records come one at a time with the line they start
on, the bytes that identify them, and their fields.

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
import io
import os
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, Any, Final, cast

import msgspec

__all__ = ["Input", "Record", "derive_event_id", "shard_of"]

_GZIP_MAGIC: Final = b"\x1f\x8b"
_BOM: Final = b"\xef\xbb\xbf"
_JSONL_SUFFIXES: Final = (".jsonl", ".ndjson", ".json")
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


class Input:
    """One input: a path or ``-``; opened lazily, read once, as a stream."""

    def __init__(self, path: str, fmt: str) -> None:
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

    def open(self) -> Generator[Record, None, None]:
        """The records; raises OSError if the file cannot be opened or read."""
        raw: IO[bytes] = sys.stdin.buffer if self.is_stdin else open(self.path, "rb")  # noqa: SIM115
        self._raw = raw
        stream: IO[bytes] = raw
        try:
            if _peek(raw, 2)[:2] == _GZIP_MAGIC:
                stream = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
            self.format = self._detect(stream)
            if self.format == "csv":
                yield from self._csv(stream)
            else:
                yield from self._jsonl(stream)
        finally:
            if stream is not raw:
                stream.close()
            if not self.is_stdin:
                raw.close()

    def read_header(self) -> list[str] | None:
        """Open, detect the format and read a CSV header (the preflight check)."""
        records = self.open()
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

    def _jsonl(self, stream: IO[bytes]) -> Iterator[Record]:
        for line_no, line in enumerate(stream, 1):
            raw = line.strip()
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :].strip()
            if not raw:
                continue
            try:
                fields = _decode(raw)
            except msgspec.DecodeError as exc:
                yield Record(line_no, raw, None, f"not valid JSON: {exc}")
                continue
            if not isinstance(fields, dict):
                yield Record(line_no, raw, None, "not a JSON object")
                continue
            yield Record(line_no, raw, fields)

    def _csv(self, stream: IO[bytes]) -> Iterator[Record]:
        # surrogateescape: undecodable bytes survive to track(), which names the field.
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise OSError(f"{self.name}: cannot read the CSV header: {exc}") from None
        self.header = [h.strip() for h in header]
        width = len(self.header)
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Record(start, b"", None, f"not valid CSV: {exc}")
                continue
            if not fields or fields == [""]:
                continue
            raw = "\x1f".join(fields).encode("utf-8", "surrogateescape")
            if len(fields) != width:
                yield Record(start, raw, None, f"has {len(fields)} fields, the header {width}")
                continue
            yield Record(start, raw, dict(zip(self.header, fields, strict=True)))


def _peek(stream: IO[bytes], n: int) -> bytes:
    peek = getattr(stream, "peek", None)
    if peek is None:  # every stream opened here is buffered; stay correct if not
        raise OSError("input stream cannot be peeked")
    data: bytes = peek(n)
    return data[:n]
