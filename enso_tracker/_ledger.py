"""The ledger: the one owner of the books, behind the tracker's one lock.

It holds the queue ``track()`` appends to, the sequence, what is in flight, the
outstanding counts and bytes, the conditions ``flush()`` and a blocked ``track()`` wait
on, every counter ``stats()`` shows, and the :class:`~._schedule.Schedule` (which is pure
and lives under the same lock). Every method whose name ends in ``_locked`` is called
with ``lock`` held; none of them runs user code or logs: drops are appended to a
``Reports`` list that the caller hands to the reporter once the lock is released.

The books always balance: every accepted event is in exactly one of the queue, in
flight, the schedule, delivered, or dropped with a reason. With a spool (``_spool``) the
ledger also holds ``staged`` (written to disk, not yet sent), the backlog (rows on disk
whose events are not in memory) and what was left on disk at shutdown; ``outstanding``
and ``outstanding_bytes`` then count what is in *memory*, ``on_disk`` the rest.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Literal

from ._config import Config
from ._items import (
    ENTITY,
    ID,
    IN_BODY,
    JOB,
    META,
    SEQ,
    SIZE,
    WHOLE_BODY,
    Pending,
    QueuedEvent,
    event_id_of,
    held,
    metadata_of,
)
from ._model import DropKind, DropReason, Stats
from ._reporting import Reports
from ._schedule import NO_SEQ, Schedule
from ._spool.dead_letters import DEAD_KINDS
from ._wire_decode import item_of

__all__ = ["Ledger"]

#: How a retries_exhausted drop names the error that spent the budget.
_CAUSE = "; last error: "


class Ledger:
    """Books, queue and schedule of one tracker (one per process: a fork builds anew)."""

    __slots__ = (
        "adopted",
        "auth_state",
        "backlog_adopted",
        "backlog_own",
        "closed",
        "committing",
        "config",
        "dead",
        "dead_evicted",
        "dead_letters",
        "deadline",
        "delivered",
        "disabled",
        "dropped",
        "failed_requests",
        "finish_on_worker",
        "finished",
        "flush_asked",
        "flush_waiters",
        "foreign_files",
        "id_prefix",
        "inflight",
        "inflight_body",
        "inflight_raw",
        "last_error",
        "last_success_at",
        "left_in_spool",
        "lock",
        "on_disk",
        "outstanding",
        "outstanding_bytes",
        "queue",
        "receipts",
        "refused",
        "reporting",
        "requests",
        "retried",
        "room",
        "schedule",
        "seq",
        "settled",
        "skipped_files",
        "spool",
        "spool_bytes",
        "spool_clock",
        "spool_gate",
        "spooling",
        "staged",
        "stopping",
        "unread_adopted",
        "volatile",
        "worker_errors",
        "worker_gone",
    )

    def __init__(self, config: Config, schedule: Schedule, id_prefix: str) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.settled = threading.Condition(self.lock)  # an event settled (flush waits)
        self.room = threading.Condition(self.lock)  # queue space freed ("block" policy)
        self.schedule = schedule
        self.id_prefix = id_prefix
        self.seq = 0  # sequence number of the last accepted event == accepted count
        self.queue: deque[QueuedEvent] = deque()
        self.inflight: list[Pending] = []
        self.inflight_raw: list[QueuedEvent] = []  # taken from the queue, being encoded
        #: Bytes of the one-call body of a fresh batch in flight (in outstanding_bytes).
        self.inflight_body = 0
        self.outstanding = 0  # events queued, in flight or in the schedule
        self.outstanding_bytes = 0
        self.flush_waiters = 0
        self.flush_asked = False  # flush() from the sender thread: send what is queued now
        self.reporting = 0  # drops counted but not yet handed to on_drop (flush waits)
        self.stopping = False  # shutdown() began: nothing more is accepted
        self.closed = False  # shutdown() finished: nothing more is sent
        self.deadline = math.inf  # shutdown()'s
        self.finish_on_worker = False  # shutdown() came from the sender thread itself
        self.worker_gone = True  # no sender thread running (never started, or it died)
        self.delivered = 0
        self.disabled = 0  # validated by a disabled tracker and let go, never sent
        self.dropped: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.retried = 0
        self.requests = 0
        self.failed_requests = 0
        self.worker_errors = 0
        self.auth_state: Literal["ok", "unauthorized"] = "ok"
        self.last_error: str | None = None
        self.last_success_at: float | None = None
        # ---- the durable spool (all empty and unused without one)
        self.spool = config.spool_dir is not None
        self.spooling: list[QueuedEvent] = []  # taken by the spooler, being written
        self.staged: deque[Pending] = deque()  # on disk and in memory, never sent, in order
        self.backlog_own: deque[Any] = deque()  # StoredBatch rows on disk only, in order
        self.backlog_adopted: deque[Any] = deque()  # rows of adopted files: sent first
        self.on_disk = 0  # events of the backlog (not counted in outstanding)
        #: Events of adopted files not yet read into ``backlog_adopted`` (in on_disk):
        #: rows are read in chunks as they are sent, never an object per row at once.
        self.unread_adopted = 0
        self.adopted = 0
        self.left_in_spool = 0
        self.spool_clock: float | None = None  # when the oldest queued event was seen
        self.spool_gate = 0.0  # no write before it (after the disk refused one)
        self.spool_bytes = 0
        self.dead_letters = 0
        self.dead_evicted = 0
        self.foreign_files = 0  # spool files of another identity in the directory
        self.skipped_files = 0  # spool files that may not or cannot be opened now
        #: Settled events whose rows may now be deleted, and dead letters to store: the
        #: sender thread takes both after each locked section.
        self.finished: list[Pending] = []
        self.dead: list[tuple[bytes, DropReason]] = []
        self.committing = 0  # disk commits under way (flush() waits for them)
        #: Events sent without being on disk (the disk failed): (seq, Pending) heap.
        self.volatile: list[tuple[int, Pending]] = []
        #: Receipts are kept (``_receipts``): every settled event goes to ``finished``,
        #: with or without a spool row, to be folded by the sender thread.
        self.receipts = False

    # --------------------------------------------------------------- admission

    def refuse_locked(self, size: int, *, may_block: bool) -> DropReason | None:
        """Why an event of ``size`` bytes cannot be queued, or None if room was made
        (``block`` policy; ``may_block`` is False on the sender thread, which frees it)."""
        if self.stopping:
            return self._count_refusal("closed", "track() after shutdown()")
        cfg = self.config
        if cfg.queue_full_policy == "block" and may_block:
            deadline = time.monotonic() + cfg.block_timeout
            while self._is_full_locked(size) and not self.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.room.wait(remaining)
            if not self._is_full_locked(size) and not self.stopping:
                return None
            if self.stopping:
                return self._count_refusal("closed", "track() after shutdown()")
        return self._count_refusal(
            "queue_full",
            f"queue full ({self.outstanding} events, ~{self.outstanding_bytes} bytes; "
            f"max_queue_size={cfg.max_queue_size}, max_queue_bytes={cfg.max_queue_bytes})",
        )

    def let_go_locked(self) -> None:
        """A disabled tracker (``_disabled``): what ``track()`` queued was validated; it
        is counted as ``disabled`` and let go, never sent."""
        queue = self.queue
        if queue:
            self.disabled += len(queue)
            self.outstanding -= len(queue)
            self.outstanding_bytes -= sum([held(q) for q in queue])
            queue.clear()
            self.settled.notify_all()
            self.room.notify_all()

    def _is_full_locked(self, size: int) -> bool:
        cfg = self.config
        return (
            self.outstanding >= cfg.max_queue_size
            or self.outstanding_bytes + size > cfg.max_queue_bytes
        )

    def _count_refusal(self, kind: DropKind, message: str) -> DropReason:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        return DropReason(kind=kind, message=message)

    # ---------------------------------------------------------------- settling

    def settled_locked(self, seq: int) -> bool:
        """Every event up to ``seq`` is delivered or dropped, and its drop reported (and,
        with a spool, its row deleted or its dead letter stored)."""
        return (
            self.reporting == 0
            and not self.finished
            and not self.committing
            and self.min_unsettled_locked() > seq
        )

    def min_unsettled_locked(self) -> int:
        """The lowest sequence not yet settled, in O(log n) amortised: the queue is in
        sequence order, in-flight events are one batch, and the schedule keeps the rest
        (events out of order) in a heap."""
        low = self.queue[0][SEQ] if self.queue else NO_SEQ
        if self.inflight_raw:
            low = min(low, self.inflight_raw[0][SEQ])
        for p in self.inflight:
            if p.seq < low:
                low = p.seq
        if self.spooling:
            low = min(low, self.spooling[0][SEQ])
        if self.staged:
            low = min(low, self.staged[0].seq)
        if self.backlog_own:
            low = min(low, self.backlog_own[0].first_seq)
        return min(low, self.schedule.low_water())

    def durable_seq_locked(self) -> int:
        """Every event accepted up to this sequence is on disk or settled (with a
        spool); without one, settled."""
        if not self.spool:
            return min(self.min_unsettled_locked() - 1, self.seq)
        low = self.queue[0][SEQ] if self.queue else NO_SEQ
        if self.spooling:
            low = min(low, self.spooling[0][SEQ])
        heap = self.volatile
        while heap and heap[0][1].done:
            heapq.heappop(heap)
        if heap:
            low = min(low, heap[0][0])
        return min(low - 1, self.seq)

    # ------------------------------------------------------------------ spool

    def spool_plan_locked(self, now: float) -> tuple[list[QueuedEvent], float | None]:
        """Queued events to write to disk now, or how long until some are due."""
        queue = self.queue
        if not queue:
            self.spool_clock = None
            return [], None
        if now < self.spool_gate:
            return [], self.spool_gate - now
        cfg = self.config
        if self.spool_clock is None:
            self.spool_clock = now
        due = (
            self.stopping
            or self.flush_waiters > 0
            or self.flush_asked
            or len(queue) >= cfg.max_batch_size
            or now - self.spool_clock >= cfg.spool_interval
        )
        if not due:
            return [], self.spool_clock + cfg.spool_interval - now
        taken = [queue.popleft() for _ in range(min(len(queue), cfg.max_batch_size))]
        if not queue:
            self.spool_clock = None
        self.spooling = taken
        return taken, 0.0

    def window_locked(self) -> bool:
        """Whether memory is comfortable enough to hold another row's events."""
        return self.outstanding_bytes <= self.config.max_queue_bytes // 2 and (
            len(self.staged) + len(self.schedule.ready) < 2 * self.config.max_batch_size
        )

    def stage_locked(self, pendings: list[Pending], row: Any) -> None:
        """A batch is on disk: its events wait in memory (``staged``), or, when memory
        is tight or older rows wait on disk, only on disk (the backlog)."""
        self.spooling = []
        if (
            self.backlog_own
            or self.backlog_adopted
            or self.unread_adopted
            or not self.window_locked()
        ):
            self.release_locked(pendings, row)
        else:
            self.staged.extend(pendings)

    def release_locked(self, pendings: list[Pending], row: Any) -> None:
        self.backlog_own.append(row)
        self.on_disk += len(pendings)
        self.outstanding -= len(pendings)
        self.outstanding_bytes -= sum([p.size for p in pendings])

    def load_locked(self, pendings: list[Pending], *, own: bool) -> None:
        """A backlog row's events are back in memory: own ones join ``staged`` (newest
        last, in order), adopted ones go first (ready, like retries)."""
        (self.backlog_own if own else self.backlog_adopted).popleft()
        self.on_disk -= len(pendings)
        self.outstanding += len(pendings)
        self.outstanding_bytes += sum([p.size for p in pendings])
        if own:
            self.staged.extend(pendings)
        else:
            self.schedule.enqueue(pendings)

    def adopt_locked(self, rows: list[Any], unread: int = 0) -> None:
        """Rows of adopted files join the backlog, and ``unread`` events of theirs that
        are still to be read (``refill_locked``)."""
        self.backlog_adopted.extend(rows)
        n = sum(r.n for r in rows) + unread
        self.on_disk += n
        self.adopted += n
        self.unread_adopted += unread

    def refill_locked(self, rows: list[Any]) -> None:
        """The next rows of adopted files, read from disk (already counted)."""
        self.backlog_adopted.extend(rows)
        self.unread_adopted -= sum(r.n for r in rows)

    def lose_unread_locked(self, events: int, why: str, reports: Reports) -> None:
        """Rows of an adopted file that became unreadable before they were read: their
        events are lost to Enso (counted as ``corrupt``)."""
        if events <= 0:
            return
        self.unread_adopted -= events
        self.on_disk -= events
        reason = DropReason(kind="corrupt", message=why)
        self.dropped["corrupt"] = self.dropped.get("corrupt", 0) + events
        self.last_error = str(reason)
        reports.append(([], reason))
        self.reporting += 1

    def corrupt_locked(self, row: Any, own: bool, raw: bytes, why: str, reports: Reports) -> None:
        """A backlog row failed its CRC (or no longer parses): its events are lost to
        Enso; the bytes are kept as a dead letter."""
        (self.backlog_own if own else self.backlog_adopted).popleft()
        self.on_disk -= row.n
        reason = DropReason(kind="corrupt", message=why)
        self.dropped["corrupt"] = self.dropped.get("corrupt", 0) + row.n
        self.last_error = str(reason)
        self.dead.append((raw, reason))
        reports.append(([], reason))
        self.reporting += 1

    def take_finished_locked(self) -> tuple[list[Pending], list[tuple[bytes, DropReason]]]:
        finished, dead = self.finished, self.dead
        self.finished, self.dead = [], []
        return finished, dead

    def settled_now(self, seq: int) -> bool:
        """``settled_locked``, taking the lock."""
        with self.lock:
            return self.settled_locked(seq)

    def wait_settled(self, seq: int, deadline: float) -> bool:
        """Wait (lock not held) until every event up to ``seq`` is settled, or ``deadline``."""
        with self.settled:
            while not self.settled_locked(seq):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.settled.wait(min(remaining, threading.TIMEOUT_MAX))
            return True

    def plan_locked(self, now: float) -> tuple[list[Pending | QueuedEvent], float | None]:
        """What to send now, or how long to sleep; what is taken counts as in flight."""
        urgent = self.stopping or self.flush_waiters > 0 or self.flush_asked
        source: deque[Any] = self.staged if self.spool else self.queue
        taken, wait = self.schedule.plan(now, source, urgent=urgent)
        if taken:
            if not source and not self.queue:
                self.flush_asked = False
            # The schedule puts Pendings (retries, staged) before raw queue items, which
            # become Pending once encoded, or not at all (a fresh batch that all goes
            # through); in flight from now on. Split without a per-event isinstance.
            if isinstance(taken[-1], Pending):
                self.inflight = taken  # type: ignore[assignment]  # all Pendings
                self.inflight_raw = []
            elif not isinstance(taken[0], Pending):
                self.inflight = []
                self.inflight_raw = taken  # type: ignore[assignment]  # all fresh
            else:
                split = 1
                while isinstance(taken[split], Pending):
                    split += 1
                self.inflight = taken[:split]  # type: ignore[assignment]
                self.inflight_raw = taken[split:]  # type: ignore[assignment]
        return taken, wait

    def delivered_locked(self, batch: list[Pending]) -> None:
        """Every event of ``batch`` is delivered: O(1) Python operations but the sum."""
        self.delivered += len(batch)
        self.outstanding -= len(batch)
        self.outstanding_bytes -= sum([p.size for p in batch])
        if self.spool or self.receipts:
            self.finished.extend(batch)

    def delivered_fresh_locked(self, items: list[QueuedEvent], held_total: int) -> None:
        """Every event of a fresh batch (never a Pending: see ``Worker.send_fresh``) is
        delivered; ``held_total`` is what they held. O(1)."""
        n = len(items)
        self.delivered += n
        self.outstanding -= n
        self.outstanding_bytes -= held_total
        if self.receipts:  # folded by the receipts (never a spool row on this path)
            self.finished.extend([Pending(0.0, item[SEQ], item, b"") for item in items])

    def forget_locked(self, p: Pending) -> None:
        """One event delivered."""
        p.done = True
        self.delivered += 1
        self.outstanding -= 1
        self.outstanding_bytes -= p.size
        if p.row is not None or self.receipts:
            self.finished.append(p)

    def drop_locked(self, group: Iterable[Pending], reason: DropReason, reports: Reports) -> None:
        """Events that will never be delivered: counted now, reported by the caller."""
        items = []
        keep = self.spool and reason.kind in DEAD_KINDS
        for p in group:
            p.done = True
            item = p.item
            if item[META] is IN_BODY:  # reported with its metadata, read back from the body
                item = (*item[:META], metadata_of(p.body), item[JOB], item[SIZE])
            elif item[META] is WHOLE_BODY:  # read back from the spool
                item = item_of(p.body, p.seq)
            if item[ID] is None:  # reported with its generated id (see _items.ID)
                item = (item[SEQ], event_id_of(item, self.id_prefix), *item[ENTITY:])
            items.append(item)
            self.outstanding -= 1
            self.outstanding_bytes -= p.size
            p.receipt = reason
            if p.row is not None or self.receipts:
                self.finished.append(p)
            if keep and p.body:
                self.dead.append((p.body, reason))
        self.dropped[reason.kind] = self.dropped.get(reason.kind, 0) + len(items)
        self.last_error = str(reason)
        reports.append((items, reason))
        self.reporting += 1

    def exhaust_locked(self, group: list[Pending], now: float, reports: Reports) -> None:
        # The cause as it was before these drops (each drop sets last_error): never a
        # previous exhaustion's text, which would nest once per event and per round.
        cause = self.last_error or "none"
        if cause.startswith("retries_exhausted: ") and _CAUSE in cause:
            cause = cause.split(_CAUSE, 1)[1]
        for p in group:
            self.drop_locked(
                [p],
                DropReason(
                    kind="retries_exhausted",
                    message=f"gave up after {p.attempts} attempts over "
                    f"{now - p.first_sent:.1f} s{_CAUSE}{cause}",
                ),
                reports,
            )

    def backoff_locked(
        self,
        batch: list[Pending],
        now: float,
        retry_after: float | None,
        reports: Reports,
        *,
        suspect: bool = False,
    ) -> None:
        """A whole request failed: the schedule pauses sending and puts the batch back
        in line (bisecting it if it looks like the trouble); spent budgets are dropped."""
        exhausted = self.schedule.on_failure(batch, now, retry_after, suspect=suspect)
        self.retried += len(batch) - len(exhausted)
        if exhausted:
            self.exhaust_locked(exhausted, now, reports)

    def retry_locked(self, p: Pending, now: float, reports: Reports) -> None:
        """One event failed on its own: it backs off alone, while its budget lasts."""
        if self.schedule.retry_later(p, now):
            self.retried += 1
        else:
            self.exhaust_locked([p], now, reports)

    def spool_recover_locked(self) -> None:
        """After an unexpected error in the spooler: what it had taken goes back in line
        (written twice at worst: the same eventIds, deduplicated by Enso)."""
        if self.spooling:
            self.queue.extendleft(reversed(self.spooling))
            self.spooling = []

    def recover_locked(self) -> None:
        """After an unexpected error mid-round: put what it had taken back in line."""
        self.outstanding_bytes -= self.inflight_body  # a fresh batch's body is gone
        self.inflight_body = 0
        if self.inflight_raw:
            self.queue.extendleft(reversed(self.inflight_raw))
            self.inflight_raw = []
        self.schedule.put_back(self.inflight)
        self.inflight = []

    def handed_over(self, n: int) -> None:
        """``n`` reports reached ``on_drop``: a waiting ``flush()`` may now return."""
        with self.lock:
            self.reporting -= n
            self.settled.notify_all()

    # ---------------------------------------------------------------- shutdown

    def close_locked(self, reports: Reports) -> list[Pending]:
        """Stop for good; everything still held is dropped as ``shutdown`` and returned."""
        self.closed = True
        left: list[Pending] = [
            *self.schedule.drain(),
            *self.inflight,
            *self.staged,
            *(Pending(0.0, q[SEQ], q, b"", held(q)) for q in self.spooling),
            *(Pending(0.0, q[SEQ], q, b"", held(q)) for q in self.inflight_raw),
            *(Pending(0.0, q[SEQ], q, b"", held(q)) for q in self.queue),
        ]
        self.inflight = []
        self.inflight_raw = []
        self.spooling = []
        self.queue.clear()
        self.staged.clear()
        if self.spool:
            # On disk: not dropped, left for the next tracker on the directory.
            on_disk = [p for p in left if p.row is not None]
            left = [p for p in left if p.row is None]
            self.left_in_spool += len(on_disk) + self.on_disk
            self.outstanding -= len(on_disk)
            self.outstanding_bytes -= sum([p.size for p in on_disk])
            self.on_disk = 0
            self.backlog_own.clear()
            self.backlog_adopted.clear()
            self.unread_adopted = 0
        if left:
            self.drop_locked(
                left,
                DropReason(
                    kind="shutdown",
                    message="not delivered before the shutdown deadline "
                    f"(last error: {self.last_error}); events in flight may still "
                    "have reached Enso, and resending them is safe (same eventIds)",
                ),
                reports,
            )
        self.settled.notify_all()
        self.room.notify_all()
        return left

    # ------------------------------------------------------------------- stats

    def snapshot(self, logins: int, hook_errors: int, *, locked: bool = True) -> Stats:
        """The counters; ``locked=False`` reads them without the lock (see stats())."""
        if not locked:
            return self._snapshot_locked(logins, hook_errors)
        with self.lock:
            return self._snapshot_locked(logins, hook_errors)

    def _snapshot_locked(self, logins: int, hook_errors: int) -> Stats:
        in_flight = len(self.inflight) + len(self.inflight_raw)
        spooled = self.on_disk
        if self.spool:
            # In memory and on disk: all but the queued, the being-written, and the
            # events sent from memory after a failed write (volatile, not yet settled).
            volatile = sum(1 for _, p in self.volatile if not p.done)
            spooled += self.outstanding - len(self.queue) - len(self.spooling) - volatile
        return Stats(
            accepted=self.seq,
            delivered=self.delivered,
            disabled=self.disabled,
            dropped=dict(self.dropped),
            refused=dict(self.refused),
            retried=self.retried,
            queued=self.outstanding + self.on_disk - in_flight,
            queued_bytes=self.outstanding_bytes
            - self.inflight_body
            - sum(p.size for p in self.inflight)
            - sum(held(item) for item in self.inflight_raw),
            in_flight=in_flight,
            requests=self.requests,
            failed_requests=self.failed_requests,
            logins=logins,
            worker_errors=self.worker_errors,
            hook_errors=hook_errors,
            auth_state=self.auth_state,
            last_error=self.last_error,
            last_success_at=self.last_success_at,
            durable_seq=self.durable_seq_locked(),
            spooled=spooled,
            spool_bytes=self.spool_bytes,
            adopted=self.adopted,
            left_in_spool=self.left_in_spool,
            dead_letters=self.dead_letters,
            dead_letters_evicted=self.dead_evicted,
            foreign_spool_files=self.foreign_files,
            skipped_spool_files=self.skipped_files,
        )
