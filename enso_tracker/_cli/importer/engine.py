"""``enso-tracker import``: stream rows from files into Enso, exactly once per row.

Delivery goes through the public ``Tracker`` (``track``/``flush``/``shutdown``/``stats``/
``on_drop``) with ``queue_full_policy="block"``: when Enso is slower than the reader, the
reader waits (memory stays bounded) instead of refusing rows. Every row gets a
deterministic eventId (see ``_backfill``), so a re-run of the same command, after a crash
or not, bills nothing twice: Enso deduplicates by eventId.

``Importer`` owns the run: reading the inputs block by block, the general path for a row
(``_row``: every check, every reason, shards, the dry run), delivery health (stalls,
refused credentials) and the end of the run. The common row goes through ``fast``
(``FastPath``) first; the counts and what is reported of them are ``books``'.

* A row is counted once, on whichever path takes it; a path that leaves a row has
  changed nothing.
* Only accepted rows take an occurrence number (a refused one gives it back), so a bad
  row never shifts the ids of the rows after it.
* One run uses one kind of counting key (``_key``) on both paths.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

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
from ..._errors import InvalidEventError
from ..._model import DropReason, Event
from .._args import make_tracker
from .books import Books, Interrupted, Stop
from .errors_out import ErrorsOut
from .fast import FastPath
from .mapping import Mapper, RowError, is_event, validate
from .progress import Display
from .receipts import RunReceipts
from .rows import Input, InputDamaged, JsonChunk, Record, derive_event_id, shard_of

__all__ = ["Importer", "Stop"]

_sha256 = hashlib.sha256


class Importer(Books):
    """One run of ``import`` over its inputs (also the dry-run)."""

    def __init__(
        self,
        args: argparse.Namespace,
        inputs: list[Input],
        errors: ErrorsOut,
        display: Display,
    ) -> None:
        super().__init__(inputs, errors, args.dry_run, args.shard, 4 * args.max_queue)
        self.args = args
        self.display = display
        self.mapper = Mapper(args)
        self.api_mapper = Mapper.api()
        self.stall_timeout: float = args.stall_timeout
        self.line_ids: bool = args.id_rule == "line"
        self.namespace: str = args.id_namespace or ""
        self.occurrences = Occurrences(args.max_distinct)
        #: The run's receipts when its tracker keeps them (--receipts-dir, --spool-dir).
        self.receipts: RunReceipts | None = None
        self.track: Callable[..., str | None] = _no_tracker  # the tracker's, once started
        self.config = Config()
        self.interrupt = False  # set by the signal handler; acted on between rows
        self._progress_mark = (0, time.monotonic())
        #: What the k = 0 id hashes before the content (see _key).
        self.first_prefix = f"{self.namespace}\n0\n".encode()
        #: The fast path (``fast``) for the common row, once the tracker is started: only
        #: for a derived id, without --shard, not in a dry run.
        self.fast: FastPath | None = None

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
        if not self.line_ids and self.shard is None and self.mapper.id_column is None:
            self.fast = FastPath(self, min(self.config.max_name_length, MAX_NAME))
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
                            fast = self.fast.row if self.fast is not None else _not_fast
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
        fast = self.fast.row if self.fast is not None else _not_fast
        first = chunk.first
        for i, fields in enumerate(chunk.values):
            if type(fields) is not dict or not fast(index, first + i, fields):
                self._row(index, inp, source, chunk.record(i))

    def _key(self, data: bytes) -> tuple[bytes, str | None]:
        """The counting key of a content, and the eventId of its first occurrence when
        that came for free. With --shard the key is ``content_key`` (it picks the shard,
        the same in every process); without, the first 16 bytes of the k = 0 id's own
        SHA-256 (one hash instead of two for most rows), which groups identical content
        just as well. One run uses one kind of key throughout."""
        if self.shard is not None:
            return content_key(data), None
        key = _sha256(self.first_prefix + data).digest()[:16]
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


def _not_fast(index: int, line: int, fields: dict[str, Any]) -> bool:
    return False


def _no_tracker(*args: Any, **kwargs: Any) -> str | None:
    raise RuntimeError("the tracker is not started (dry run)")
