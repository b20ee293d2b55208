"""``enso-tracker import``: stream rows from files into Enso, exactly once per row.

Delivery goes through the public ``Tracker`` (``track``/``flush``/``shutdown``/``stats``/
``on_drop``) with ``queue_full_policy="block"``: when Enso is slower than the reader, the
reader waits (memory stays bounded) instead of refusing rows. Every row gets a
deterministic eventId (see ``_backfill``), so a re-run of the same command, after a crash
or not, bills nothing twice: Enso deduplicates by eventId.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from ..._backfill import (
    ID_PREFIX,
    MAX_NAME,
    Occurrences,
    TooManyDistinct,
    content,
    content_key,
    event_id,
    shard_of_key,
)
from ..._config import Config
from ..._errors import InvalidEventError, short_repr
from ..._model import DropReason, Event, Stats
from ..._tracker import Tracker
from ..._validate import MAX_EXACT_INT, timestamp_ns
from .._args import make_tracker
from .._output import (
    EXIT_DAMAGED,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNDELIVERED,
)
from .errors_out import ErrorsOut
from .mapping import Mapper, RowError, api_shape, is_event, parse_number, validate
from .progress import Display, Snapshot
from .receipts import RunReceipts
from .rows import Input, InputDamaged, JsonChunk, Record, derive_event_id, shard_of
from .timestamps import explain as explain_timestamp

__all__ = ["Importer", "Stop"]

#: Drops Enso decided for good (fix the data); any other drop means "could not deliver".
DATA_DROPS = frozenset({"rejected", "too_large"})
#: Distinct reasons counted in the summary (each row is in the errors file regardless).
MAX_REASONS = 50
#: Timestamp texts remembered with their instant by the fast path (cleared when full).
_INSTANTS_KEPT: Final = 65_536
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_encode = msgspec.json.encode
_sha256 = hashlib.sha256


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
        self.api_mapper = Mapper.api()
        self.shard: tuple[int, int] | None = args.shard
        self.dry_run: bool = args.dry_run
        self.stall_timeout: float = args.stall_timeout
        self.line_ids: bool = args.id_rule == "line"
        self.namespace: str = args.id_namespace or ""
        self.occurrences = Occurrences(args.max_distinct)
        self.tracker: Tracker | None = None
        #: The run's receipts when its tracker keeps them (--receipts-dir, --spool-dir).
        self.receipts: RunReceipts | None = None
        self.track: Callable[..., str | None] = _no_tracker  # the tracker's, once started
        self.config = Config()
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
        self._where: dict[str, tuple[int, int]] = {}
        self._window = 4 * args.max_queue
        self._progress_mark = (0, time.monotonic())
        # The fast path (_fast_row) takes the common row: a derived id, no shard, not a
        # dry run. The id's first occurrence (k = 0) is hashed once, and that digest is
        # also the counting key (see _key): without --shard the key is never seen outside
        # this process, so it need not be _backfill.content_key (which --shard needs).
        self._fast = (
            not self.dry_run
            and not self.line_ids
            and self.shard is None
            and self.mapper.id_column is None
        )
        self._first = f"{self.namespace}\n0\n".encode()
        self._max_name = 0  # the tracker's (and content()'s) bound, once started
        #: RFC 3339 text -> (the datetime handed to track(), its UTC millisecond).
        self._instants: dict[str, tuple[datetime, int]] = {}

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
            # Only a spool given for this run (checked empty): never $ENSO_SPOOL_DIR, an
            # application's, whose leftovers this tracker would adopt and count as ours.
            spool_dir=self.args.spool_dir,
            # Likewise only --receipts-dir, never $ENSO_RECEIPTS_DIR (with --spool-dir and
            # no --receipts-dir, receipts are kept in the spool directory, as any tracker's).
            receipts_dir=self.args.receipts_dir,
        )
        self.config = self.tracker.config
        self._max_name = min(self.config.max_name_length, MAX_NAME)
        if self.tracker._worker.receipts is not None:  # the store's totals before the run
            self.receipts = RunReceipts(self.tracker)
        self.track = self.tracker.track

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
                try:
                    for block in inp.blocks():
                        if type(block) is list:
                            fast = self._fast_row if self._fast else _not_fast
                            for record in block:
                                fields = record.fields
                                if fields is None or not fast(index, record.line, fields):
                                    self._row(index, inp, source, record)
                        else:
                            assert isinstance(block, JsonChunk)
                            self._chunk(index, inp, source, block)
                except InputDamaged as exc:
                    self._damaged(index, exc)
                    return
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

    def _chunk(self, index: int, inp: Input, source: str, chunk: JsonChunk) -> None:
        """JSONL lines that all decoded: a Record is made only for a row the fast path
        leaves to ``_row``."""
        fast = self._fast_row if self._fast else _not_fast
        first = chunk.first
        for i, fields in enumerate(chunk.values):
            if type(fields) is not dict or not fast(index, first + i, fields):
                self._row(index, inp, source, chunk.record(i))

    def _fast_row(self, index: int, line: int, fields: dict[str, Any]) -> bool:
        """The common row, in the fewest steps: True once it is handled (accepted, or
        counted and stopped), False (having changed nothing) to leave it to ``_row``,
        which says what is wrong. It computes what ``_row`` would (the same content, id
        and ``track()`` arguments); anything unusual (another mapping, a bad or
        non-ASCII value, metadata trouble, a row of an errors file) goes to ``_row``."""
        if "deadLetter" in fields:
            return False
        explicit = fields.get("eventId")
        if explicit is not None and explicit != "":
            return False
        mapper = self.mapper
        try:
            entity = fields[mapper.entity]
            metric = mapper.metric_name
            if metric is None:
                metric = fields[mapper.metric]
            value = fields[mapper.value]
        except KeyError:
            return False
        limit = self._max_name
        if (
            type(entity) is not str
            or type(metric) is not str
            or not entity.isascii()
            or not metric.isascii()
            or not 0 < len(entity) <= limit
            or not 0 < len(metric) <= limit
            or entity.isspace()
            or metric.isspace()
        ):
            return False
        try:
            if type(value) is str:
                value = parse_number(value)
            if type(value) is int:
                if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
                    return False
                number = float(value)
            elif type(value) is float and value - value == 0:  # finite
                number = value + 0.0  # -0.0 and 0.0 are one value (as content() says)
            else:
                return False
            timestamp = fields.get(mapper.timestamp)
            if timestamp is None or timestamp == "":
                return False
            if mapper.parse_timestamp is not None:
                timestamp = mapper.parse_timestamp(timestamp)
            if type(timestamp) is str:
                instant = self._instants.get(timestamp)
                if instant is None:
                    ms = timestamp_ns(timestamp) // 1_000_000
                    instant = (_EPOCH + timedelta(milliseconds=ms), ms)
                    if len(self._instants) >= _INSTANTS_KEPT:
                        self._instants.clear()
                    self._instants[timestamp] = instant
                timestamp, ms = instant
            else:
                ms = timestamp_ns(timestamp) // 1_000_000
            metadata = None
            if mapper.metadata or "metadata" in fields:
                metadata = mapper._metadata(fields)
        except Exception:
            return False  # _row meets it again, and says why
        job_id = mapper.job_id
        if job_id is None:
            job_id = fields.get("JobId") or fields.get("jobId") or None
        if self.interrupt:
            raise Interrupted
        self.rows += 1
        if self.rows & 1023 == 0:
            self._housekeeping()
        # _backfill's rule, k = 0 hashed once (see _key).
        data = _encode([entity, metric, repr(number), ms])
        digest = _sha256(self._first + data).digest()
        key = digest[:16]
        k = self.occurrences.take(key)
        own = ID_PREFIX + key.hex() if k == 0 else event_id(data, k, self.namespace)
        track = self.track
        try:
            accepted = track(
                entity,
                metric,
                value,
                timestamp=timestamp,
                metadata=metadata,
                event_id=own,
                job_id=job_id,
            )
            while accepted is None:  # the queue stayed full for block_timeout
                if self.interrupt:
                    raise Interrupted
                self._housekeeping()
                accepted = track(
                    entity,
                    metric,
                    value,
                    timestamp=timestamp,
                    metadata=metadata,
                    event_id=own,
                    job_id=job_id,
                )
        except InvalidEventError:  # e.g. metadata track() refuses: _row says why
            self.occurrences.give_back(key)
            self.rows -= 1
            return False
        where = self._where
        where[accepted] = (index, line)
        if len(where) > self._window:
            for old in list(itertools.islice(where, len(where) // 2)):
                del where[old]
        return True

    def _key(self, data: bytes) -> tuple[bytes, str | None]:
        """The counting key of a content, and the eventId of its first occurrence when
        that came for free. With --shard the key is ``content_key`` (it picks the shard,
        the same in every process); without, the first 16 bytes of the k = 0 id's own
        SHA-256 (one hash instead of two for most rows), which groups identical content
        just as well. One run uses one kind of key throughout."""
        if self.shard is not None:
            return content_key(data), None
        key = _sha256(self._first + data).digest()[:16]
        return key, ID_PREFIX + key.hex()

    def _row(self, index: int, inp: Input, source: str, record: Record) -> None:
        # The general path: every row the fast path leaves, with every check and reason.
        if self.interrupt:
            raise Interrupted
        self.rows += 1
        if self.rows & 1023 == 0:
            self._housekeeping()
        fields = record.fields
        if fields is None:
            if self._mine(record.raw):
                self._invalid(index, record, "row", record.problem or "unreadable", None)
            return
        mapper = self.mapper
        if "deadLetter" in fields and is_event(fields):
            mapper = self.api_mapper  # a row of an errors file, in the API's shape
        # Shard ownership: a row with its own id by that id, a valid row by its content
        # (so all identical rows meet in one shard, which counts them), a bad row by its
        # bytes. Each is a function of the row alone: shards are disjoint and complete.
        try:
            if mapper.id_column is None:
                explicit = fields.get("eventId")
                if explicit == "":
                    explicit = None
            else:
                explicit = mapper.explicit_id(fields)
            if explicit is None and self.line_ids:  # the 0.x rule: by file name and line
                explicit = derive_event_id(source, record.line, record.raw)
            a = mapper.map(fields, explicit)
        except RowError as exc:
            if self._mine(record.raw):
                self._invalid(index, record, exc.field, exc.reason, None)
            return
        except InvalidEventError as exc:  # a timestamp parsed once for many rows
            if self._mine(record.raw):
                self._invalid(index, record, exc.field, self._reason(exc, mapper), None)
            return
        key = first_id = None
        if explicit is None:
            try:
                data = content(a.entity, a.metric, a.value, a.timestamp)
            except InvalidEventError as exc:
                if self._mine(record.raw):
                    self._invalid(index, record, exc.field, self._reason(exc, mapper), None)
                return
            key, first_id = self._key(data)
            if self.shard is not None and not self._mine_key(key):
                return
        elif self.shard is not None and not self._mine(
            explicit if isinstance(explicit, str) else record.raw
        ):
            return
        own = explicit if isinstance(explicit, str) else None
        try:
            if self.dry_run:
                validate(self.config, a)
                return
            if key is not None:
                k = self.occurrences.take(key)
                a.event_id = first_id if k == 0 and first_id else event_id(data, k, self.namespace)
            track = self.track
            accepted = track(
                a.entity,
                a.metric,
                a.value,
                timestamp=a.timestamp,
                metadata=a.metadata,
                event_id=a.event_id,
                job_id=a.job_id,
            )
            while accepted is None:  # the queue stayed full for block_timeout
                if self.interrupt:
                    raise Interrupted
                self._housekeeping()
                accepted = track(
                    a.entity,
                    a.metric,
                    a.value,
                    timestamp=a.timestamp,
                    metadata=a.metadata,
                    event_id=a.event_id,
                    job_id=a.job_id,
                )
        except InvalidEventError as exc:
            if key is not None and not self.dry_run:
                self.occurrences.give_back(key)  # only accepted rows are counted
            self._invalid(index, record, exc.field, self._reason(exc, mapper), own)
            return
        where = self._where
        where[accepted] = (index, record.line)
        if len(where) > self._window:
            # Forget the older half at once (insertion order): cheaper than one per row.
            for old in list(itertools.islice(where, len(where) // 2)):
                del where[old]

    @staticmethod
    def _reason(exc: InvalidEventError, mapper: Mapper) -> str:
        reason = _problem(exc)
        if exc.field == "timestamp" and mapper.parse_timestamp is None:
            reason = explain_timestamp(exc.value, reason)
        return reason

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


def _not_fast(index: int, line: int, fields: dict[str, Any]) -> bool:
    return False


def _no_tracker(*args: Any, **kwargs: Any) -> str | None:
    raise RuntimeError("the tracker is not started (dry run)")
