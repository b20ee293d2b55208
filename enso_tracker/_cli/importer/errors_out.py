"""The errors file: every row that was not delivered, with its line and reason, as JSONL.

Default: next to each input, ``<input>.errors.jsonl`` (``<source-id>.errors.jsonl`` in the
current directory for stdin), with ``.shard-I-of-N`` before ``.errors.jsonl`` when
sharding, so parallel shards never write the same file. A default file is removed at
the end when it stayed empty, so a stale one from an earlier run never misleads.
Each record is the row as it was read (for an event Enso refused: the event in the API's
shape), with the eventId it was given, plus a ``deadLetter`` member saying why: ``kind``
(``invalid``, ``unreadable``, or Enso's drop kind such as ``rejected``), ``code``,
``status``, ``message``, and where: ``field``, ``file``, ``line``. That is the vocabulary
of ``spool export`` and ``spool dead-letters --json``; the importer ignores
``deadLetter``, so once fixed the file is re-imported as it is, and each row keeps its
eventId: nothing is billed twice. A row that could not be parsed has ``raw`` (its text)
instead of fields.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass, field
from typing import IO, Any

from .._output import json_line

__all__ = ["ErrorsOut"]


@dataclass
class _File:
    path: str
    explicit: bool
    handle: IO[str] | None = None
    count: int = 0
    by_input: dict[int, int] = field(default_factory=dict)


class ErrorsOut:
    """One file for the run (``--errors-out``), or one per input."""

    def __init__(
        self,
        explicit: str | None,
        inputs: list[tuple[str, bool, str]],  # (path, is_stdin, source id)
        shard: tuple[int, int] | None,
    ) -> None:
        self._lock = threading.Lock()
        suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
        self._files: list[_File] = []
        if explicit is not None:
            self._files = [_File(explicit, True)] * len(inputs)
        else:
            for path, is_stdin, source in inputs:
                if is_stdin:
                    name = re.sub(r"[^A-Za-z0-9._-]", "_", source) or "stdin"
                    self._files.append(_File(f"{name}{suffix}.errors.jsonl", False))
                else:
                    self._files.append(_File(f"{path}{suffix}.errors.jsonl", False))

    def open(self) -> None:
        """Create (truncate) every file now: a folder we cannot write to is a usage error
        found before anything is sent, not a crash half-way through."""
        for f in self._unique():
            f.handle = open(f.path, "w", encoding="utf-8")  # noqa: SIM115

    def _unique(self) -> list[_File]:
        seen: dict[int, _File] = {}
        for f in self._files:
            seen.setdefault(id(f), f)
        return list(seen.values())

    def write(self, index: int, record: dict[str, Any]) -> None:
        f = self._files[index]
        line = json_line(record)
        with self._lock:
            if f.handle is None:
                return
            f.handle.write(line + "\n")
            f.count += 1
            f.by_input[index] = f.by_input.get(index, 0) + 1

    def path_for(self, index: int) -> str:
        return self._files[index].path

    def close(self) -> list[dict[str, Any]]:
        """Close the files; drop empty default ones; list what was written where."""
        written: list[dict[str, Any]] = []
        with self._lock:
            for f in self._unique():
                if f.handle is None:
                    continue
                f.handle.close()
                f.handle = None
                if f.count == 0 and not f.explicit:
                    with contextlib.suppress(OSError):
                        os.remove(f.path)
                    continue
                written.append({"path": os.path.abspath(f.path), "records": f.count})
        return written
