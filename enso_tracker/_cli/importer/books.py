"""The books of one import run: what it counted and what it reports.

* Every row read is counted once: delivered (by the tracker's books), invalid (with its
  reason, in the errors file), or in another shard.
* Invalid rows are summarised by reason (at most ``MAX_REASONS`` distinct ones, the
  rest counted as "other"); every one is in the errors file regardless.
* The exit code speaks of this run's rows only (``exit_code``).

``Importer`` (``engine``) reads and delivers; this base class keeps the counts, writes
the errors file's records and answers the summary's questions.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..._errors import InvalidEventError, short_repr
from ..._model import DropReason, Event, Stats
from ..._tracker import Tracker
from .._output import (
    EXIT_DAMAGED,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNDELIVERED,
)
from .errors_out import ErrorsOut
from .mapping import Mapper, api_shape
from .progress import Snapshot
from .rows import Input, InputDamaged, Record
from .timestamps import explain as explain_timestamp

__all__ = ["DATA_DROPS", "MAX_REASONS", "Books", "Interrupted", "Stop"]

#: Drops Enso decided for good (fix the data); any other drop means "could not deliver".
DATA_DROPS = frozenset({"rejected", "too_large"})
#: Distinct reasons counted in the summary (each row is in the errors file regardless).
MAX_REASONS = 50


class Stop(Exception):
    """Stop reading: delivery cannot make progress (the reason is for humans)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, noticed at a point where stopping leaves nothing half-done."""


class Books:
    """The counts of one run, and the records and summary made of them."""

    def __init__(
        self,
        inputs: list[Input],
        errors: ErrorsOut,
        dry_run: bool,
        shard: tuple[int, int] | None,
        window: int,
    ) -> None:
        self.inputs = inputs
        self.errors = errors
        self.dry_run = dry_run
        self.shard = shard
        self.tracker: Tracker | None = None
        self.rows = 0
        self.other_shard = 0
        self.invalid = 0
        #: (field, reason) -> [invalid rows, where the first was]: the summary counts
        #: reasons instead of repeating one line per row.
        self.reasons: dict[tuple[str, str], list[Any]] = {}
        self.other_reasons = 0  # rows whose reason came after MAX_REASONS distinct ones
        self.drop_reasons: dict[str, int] = {}  # why Enso's answers dropped events, counted
        self.stopped: str | None = None
        self.damaged: str | None = None  # an input that could not be read to its end
        #: What the summary tells a user to do after a stop (a sentence's start).
        self.rerun_advice = "Re-run the same command"
        self.interrupted = False
        self.started = time.monotonic()
        self._current = 0
        self._done_bytes = 0
        self._total_bytes = (
            sum(i.size or 0 for i in inputs) if all(i.size is not None for i in inputs) else None
        )
        self._drops: deque[tuple[Sequence[Event], DropReason]] = deque()
        #: eventId -> (input, line) of recently accepted events, so a drop reported later
        #: names its line. Bounded: a drop older than the window is reported by eventId.
        self._where: dict[str, tuple[int, int]] = {}
        self._window = window

    @staticmethod
    def _reason(exc: InvalidEventError, mapper: Mapper) -> str:
        reason = _problem(exc)
        if exc.field == "timestamp" and mapper.parse_timestamp is None:
            reason = explain_timestamp(exc.value, reason)
        return reason

    def _invalid(
        self, index: int, record: Record, field: str, reason: str, event_id: str | None
    ) -> None:
        """One errors-file record: the row as it was, and why. A row with an eventId of
        its own keeps it there. A derived id is left out: it depends on the row's content
        and on how many identical rows came before it in the whole input, which a bad row
        does not have yet, so the fixed row gets the same id from the errors file as from
        a re-run of the whole input (unless it then equals another row: docs/backfills.md)."""
        self.invalid += 1
        name = self.inputs[index].name
        row: dict[str, Any] = {}
        if record.fields is not None:
            row.update(record.fields)
            if event_id is not None:
                row["eventId"] = event_id
        else:
            row["raw"] = record.display()
        row["deadLetter"] = {
            "kind": "invalid",
            "code": None,
            "status": None,
            "message": reason,
            "field": field,
            "file": name,
            "line": record.line,
        }
        self.errors.write(index, row)
        key = (field, reason.split(": ", 1)[0] if field == "row" else reason)
        count = self.reasons.get(key)
        if count is not None:
            count[0] += 1
        elif len(self.reasons) < MAX_REASONS:
            self.reasons[key] = [1, f"{name}:{record.line}"]
        else:
            self.other_reasons += 1

    def _damaged(self, index: int, exc: InputDamaged) -> None:
        """The rest of this input cannot be read: recorded, and the run ends (what was
        read is still delivered). A damaged file rarely comes alone: fix, then re-run."""
        self.damaged = str(exc)
        self.errors.write(
            index,
            {
                "deadLetter": {
                    "kind": "unreadable",
                    "code": None,
                    "status": None,
                    "message": exc.reason,
                    "field": "row",
                    "file": self.inputs[index].name,
                    "line": exc.line,
                }
            },
        )

    def _write_drops(self) -> None:
        while self._drops:
            events, reason = self._drops.popleft()
            for e in events:
                index, line = self._where.get(e.event_id, (self._current, 0))
                row = api_shape(
                    e.entity, e.metric, e.value, e.timestamp, e.event_id, e.metadata, e.job_id
                )
                row["deadLetter"] = {
                    "kind": reason.kind,
                    "code": reason.code,
                    "status": reason.status,
                    "message": reason.message,
                    "field": None,
                    "file": self.inputs[index].name,
                    "line": line or None,
                }
                self.errors.write(index, row)
            key = str(reason)
            self.drop_reasons[key] = self.drop_reasons.get(key, 0) + len(events)

    def snapshot(self) -> Snapshot:
        s = self.tracker.stats() if self.tracker is not None else None
        fraction = None
        if self._total_bytes:
            done = self._done_bytes + self.inputs[self._current].position()
            fraction = min(done / self._total_bytes, 1.0)
        note = None
        if s is not None and s.pending and s.last_error and s.failed_requests:
            note = f"last error: {s.last_error}"
        return Snapshot(
            rows=self.rows,
            elapsed=time.monotonic() - self.started,
            delivered=s.delivered if s else 0,
            invalid=self.invalid,
            refused=sum(s.dropped.values()) if s else 0,
            fraction=fraction,
            note=note,
        )

    def books(self) -> dict[str, Any]:
        s: Stats | None = self.tracker.stats() if self.tracker is not None else None
        return {
            "dry_run": self.dry_run,
            "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
            "rows_read": self.rows,
            "other_shards": self.other_shard,
            "invalid": self.invalid,
            "valid": self.rows - self.other_shard - self.invalid,
            "accepted": s.accepted if s else 0,
            "delivered": s.delivered if s else 0,
            "dropped": dict(s.dropped) if s else {},
            # Not this run's rows (0 unless another process died in --spool-dir meanwhile).
            "adopted": s.adopted if s else 0,
            "drop_reasons": dict(self.drop_reasons),
            "stopped": self.stopped,
            "damaged": self.damaged,
            "elapsed": round(time.monotonic() - self.started, 3),
        }

    def invalid_reasons(self) -> list[dict[str, Any]]:
        """The invalid rows by reason, most frequent first."""
        ranked = sorted(self.reasons.items(), key=lambda item: -item[1][0])
        out = [
            {"field": field, "reason": reason, "count": n, "first": first}
            for (field, reason), (n, first) in ranked
        ]
        if self.other_reasons:
            out.append({"field": None, "reason": "other", "count": self.other_reasons})
        return out

    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        dropped = self.tracker.stats().dropped if self.tracker is not None else {}
        if self.stopped or any(k not in DATA_DROPS and n for k, n in dropped.items()):
            return EXIT_UNDELIVERED
        if self.damaged:
            return EXIT_DAMAGED
        if self.invalid or any(dropped.values()):
            return EXIT_INCOMPLETE
        return EXIT_OK


def _problem(exc: InvalidEventError) -> str:
    """``track()``'s reason without the value it quotes, so that equal reasons count."""
    text = str(exc)
    prefix = f"{exc.field}={short_repr(exc.value)}: "
    return text[len(prefix) :] if text.startswith(prefix) else text
