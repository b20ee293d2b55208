"""``enso-tracker import``: stream rows from files into Enso, exactly once per row.

Delivery goes through the public ``Tracker`` (``track``/``flush``/``shutdown``/``stats``/
``on_drop``) with ``queue_full_policy="block"``: when Enso is slower than the reader, the
reader waits (memory stays bounded) instead of refusing rows. Every row gets a
deterministic eventId (see ``_backfill``), so a re-run of the same command, after a crash
or not, bills nothing twice: Enso deduplicates by eventId.
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from .._backfill import Occurrences, TooManyDistinct, content, content_key, event_id, shard_of_key
from .._config import Config
from .._errors import InvalidEventError
from .._model import DropReason, Event, Stats
from .._tracker import Tracker
from ._args import make_tracker
from ._errors_out import ErrorsOut
from ._mapping import Mapper, RowError, TrackArgs, api_shape, validate
from ._output import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNDELIVERED
from ._progress import Display, Snapshot
from ._rows import Input, Record, derive_event_id, shard_of

__all__ = ["Importer", "Stop"]

#: Drops Enso decided for good (fix the data); any other drop means "could not deliver".
DATA_DROPS = frozenset({"rejected", "too_large"})
SHOWN_PROBLEMS = 20


class Stop(Exception):
    """Stop reading: delivery cannot make progress (the reason is for humans)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, noticed at a point where stopping leaves nothing half-done."""


class Importer:
    """One run of ``import`` over its inputs (also the dry-run)."""

    def __init__(
        self,
        args: argparse.Namespace,
        inputs: list[Input],
        errors: ErrorsOut,
        display: Display,
    ) -> None:
        self.args = args
        self.inputs = inputs
        self.errors = errors
        self.display = display
        self.mapper = Mapper(args)
        self.shard: tuple[int, int] | None = args.shard
        self.dry_run: bool = args.dry_run
        self.stall_timeout: float = args.stall_timeout
        self.line_ids: bool = args.id_rule == "line"
        self.namespace: str = args.id_namespace or ""
        self.occurrences = Occurrences(args.max_distinct)
        self.tracker: Tracker | None = None
        self.config = Config()
        self.rows = 0
        self.other_shard = 0
        self.invalid = 0
        self.problems: list[str] = []  # the first invalid rows, as file:line: field: reason
        self.drop_reasons: dict[str, int] = {}  # why Enso's answers dropped events, counted
        self.stopped: str | None = None
        #: What the summary tells a user to do after a stop (a sentence's start).
        self.rerun_advice = "Re-run the same command"
        self.interrupted = False
        self.interrupt = False  # set by the signal handler; acted on between rows
        self.started = time.monotonic()
        self._current = 0
        self._done_bytes = 0
        self._total_bytes = (
            sum(i.size or 0 for i in inputs) if all(i.size is not None for i in inputs) else None
        )
        self._drops: deque[tuple[Sequence[Event], DropReason]] = deque()
        #: eventId -> (input, line) of recently accepted events, so a drop reported later
        #: names its line. Bounded: a drop older than the window is reported by eventId.
        self._where: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._window = 2 * args.max_queue
        self._progress_mark = (0, time.monotonic())

    # ----------------------------------------------------------------- setup

    def start_tracker(self) -> None:
        self.tracker = make_tracker(
            self.args,
            on_drop=self._on_drop,
            queue_full_policy="block",
            block_timeout=0.5,
            max_batch_size=self.args.batch_size,
            max_queue_size=self.args.max_queue,
            flush_interval=0.25,
        )
        self.config = self.tracker.config

    def request_interrupt(self) -> None:
        """From a signal handler: stop at the next row; a second signal stops at once."""
        if self.interrupt:
            raise KeyboardInterrupt
        self.interrupt = True

    def _on_drop(self, events: Sequence[Event], reason: DropReason) -> None:
        # Runs on the sender thread; the importing thread writes them out. Refusals by
        # track() are handled where they happen: the row is offered again.
        if reason.kind not in ("queue_full", "closed"):
            self._drops.append((events, reason))

    # ----------------------------------------------------------------- the run

    def run(self) -> None:
        try:
            for index, inp in enumerate(self.inputs):
                self._current = index
                source = self.args.source_id or inp.default_source
                for record in inp.open():
                    self._row(index, inp, source, record)
                self._done_bytes += inp.size or 0
        except Stop as exc:
            self.stopped = str(exc)
        except TooManyDistinct as exc:
            self.stopped = str(exc)
            self.rerun_advice = "Re-run it split with --shard I/N, each I of N,"
        except (Interrupted, KeyboardInterrupt):
            self.interrupted = True
            self.stopped = "interrupted"
        finally:
            self._finish()

    def _row(self, index: int, inp: Input, source: str, record: Record) -> None:
        if self.interrupt:
            raise Interrupted
        self.rows += 1
        if self.rows & 1023 == 0:
            self._housekeeping()
        fields = record.fields
        if fields is None:
            if self._mine(record.raw):
                self._invalid(index, record, "row", record.problem or "unreadable")
            return
        # Shard ownership: a row with its own id by that id, a valid row by its content
        # (so all identical rows meet in one shard, which counts them), a bad row by its
        # bytes. Each is a function of the row alone: shards are disjoint and complete.
        try:
            explicit = self.mapper.explicit_id(fields)
            if explicit is None and self.line_ids:  # the 0.x rule: by file name and line
                explicit = derive_event_id(source, record.line, record.raw)
            a = self.mapper.map(fields, explicit, inp.format == "csv")
        except RowError as exc:
            if self._mine(record.raw):
                self._invalid(index, record, exc.field, exc.reason)
            return
        key = None
        if explicit is None:
            try:
                data = content(a.entity, a.metric, a.value, a.timestamp)
            except InvalidEventError as exc:
                if self._mine(record.raw):
                    self._invalid(index, record, exc.field, str(exc))
                return
            key = content_key(data)
            if self.shard is not None and not self._mine_key(key):
                return
        elif not self._mine(explicit if isinstance(explicit, str) else record.raw):
            return
        if self.dry_run:
            try:
                validate(self.config, a)
            except InvalidEventError as exc:
                self._invalid(index, record, exc.field, str(exc))
            return
        if key is not None:
            a.event_id = event_id(data, self.occurrences.take(key), self.namespace)
        try:
            accepted = self._track(a)
        except InvalidEventError as exc:
            if key is not None:
                self.occurrences.give_back(key)  # only accepted rows are counted
            self._invalid(index, record, exc.field, str(exc))
            return
        self._remember(accepted, index, record.line)

    def _remember(self, event_id: str, index: int, line: int) -> None:
        """Where an accepted event came from, so that a later drop names its line."""
        where = self._where
        where[event_id] = (index, line)
        if len(where) > self._window:
            where.popitem(last=False)

    def _track(self, a: TrackArgs) -> str:
        """``track()`` with back-pressure: waits (doing housekeeping) while the queue is
        full; raises ``InvalidEventError`` for a bad row."""
        assert self.tracker is not None
        track = self.tracker.track
        kwargs: dict[str, Any] = {
            "timestamp": a.timestamp,
            "metadata": a.metadata,
            "event_id": a.event_id,
            "job_id": a.job_id,
        }
        accepted = track(a.entity, a.metric, a.value, **kwargs)
        while accepted is None:  # the queue stayed full for block_timeout
            if self.interrupt:
                raise Interrupted
            self._housekeeping()
            accepted = track(a.entity, a.metric, a.value, **kwargs)
        return accepted

    def _mine(self, key: str | bytes) -> bool:
        """Whether this shard owns a row keyed by an eventId (str) or its bytes."""
        if self.shard is None:
            return True
        if isinstance(key, bytes):
            mine = shard_of_key(content_key(key), self.shard[1]) == self.shard[0]
        else:
            mine = shard_of(key, self.shard[1]) == self.shard[0]
        if mine:
            return True
        self.other_shard += 1
        return False

    def _mine_key(self, key: bytes) -> bool:
        assert self.shard is not None
        if shard_of_key(key, self.shard[1]) == self.shard[0]:
            return True
        self.other_shard += 1
        return False

    def _invalid(self, index: int, record: Record, field: str, reason: str) -> None:
        self.invalid += 1
        name = self.inputs[index].name
        self.errors.write(
            index,
            {
                "file": name,
                "line": record.line,
                "kind": "invalid",
                "field": field,
                "reason": reason,
                "row": record.display(),
            },
        )
        if len(self.problems) < SHOWN_PROBLEMS:
            self.problems.append(f"{name}:{record.line}: {field}: {reason}")

    # ------------------------------------------------------------ delivery health

    def _housekeeping(self) -> None:
        """Write out drops, and stop when delivery has stalled or is refused."""
        self._write_drops()
        if self.tracker is None:
            return
        s = self.tracker.stats()
        if s.auth_state == "unauthorized":
            raise Stop(
                "Enso refuses the credentials (run `enso-tracker doctor`): "
                f"{s.last_error or 'HTTP 401'}"
            )
        settled = s.delivered + sum(s.dropped.values())
        now = time.monotonic()
        if settled != self._progress_mark[0]:
            self._progress_mark = (settled, now)
        elif s.pending and now - self._progress_mark[1] > self.stall_timeout:
            raise Stop(
                f"no delivery progress for {self.stall_timeout:g} s: {s.last_error or 'no answer'}"
            )

    def _write_drops(self) -> None:
        while self._drops:
            events, reason = self._drops.popleft()
            for e in events:
                index, line = self._where.get(e.event_id, (self._current, 0))
                self.errors.write(
                    index,
                    {
                        "file": self.inputs[index].name,
                        "line": line or None,
                        "kind": reason.kind,
                        "field": None,
                        "reason": str(reason),
                        "code": reason.code,
                        "status": reason.status,
                        "event": api_shape(
                            e.entity,
                            e.metric,
                            e.value,
                            e.timestamp,
                            e.event_id,
                            e.metadata,
                            e.job_id,
                        ),
                    },
                )
            key = str(reason)
            self.drop_reasons[key] = self.drop_reasons.get(key, 0) + len(events)

    def _finish(self) -> None:
        tracker = self.tracker
        if tracker is None:
            return
        try:
            while not self.interrupted and not tracker.flush(0.5):
                if self.interrupt:
                    raise Interrupted
                self._housekeeping()
        except Stop as exc:
            self.stopped = self.stopped or str(exc)
        except (Interrupted, KeyboardInterrupt):
            self.interrupted = True
            self.stopped = "interrupted"
        # Interrupted: one prompt try for what is queued, then report the rest. Stopped:
        # Enso is not answering, so a long last try would only delay the report.
        tracker.shutdown(2.0 if self.interrupted else 1.0 if self.stopped else 5.0)
        self._write_drops()

    # ------------------------------------------------------------- reporting

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
            "drop_reasons": dict(self.drop_reasons),
            "stopped": self.stopped,
            "elapsed": round(time.monotonic() - self.started, 3),
        }

    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        dropped = self.tracker.stats().dropped if self.tracker is not None else {}
        if self.stopped or any(k not in DATA_DROPS and n for k, n in dropped.items()):
            return EXIT_UNDELIVERED
        if self.invalid or any(dropped.values()):
            return EXIT_INCOMPLETE
        return EXIT_OK
