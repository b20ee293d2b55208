"""The ledger: the one owner of the books, behind the tracker's one lock.

It holds the queue ``track()`` appends to, the sequence, what is in flight, the
outstanding counts and bytes, the conditions ``flush()`` and a blocked ``track()`` wait
on, the :class:`State` and :class:`Counters` (:mod:`._ledger_state`), and the
:class:`~._schedule.Schedule` (pure, under the same lock). With a spool, ``spool``
(:class:`~._spool.books.SpoolBooks`, None without one) holds the spool's part.
This module owns admission, settling and planning; its mixins own the rest.

Invariants (what must never break):

* Every accepted (or adopted) event is in exactly one place: the queue, being written
  (``spool.spooling``), staged or in the backlog (spool), in flight (``inflight_raw``,
  ``inflight``), the schedule, delivered, or dropped with a reason (counted, reported).
* ``outstanding`` and ``outstanding_bytes`` count what memory holds of those places (with
  a spool, ``on_disk`` the rest): accepted + adopted = delivered + dropped + outstanding
  + on disk + left in the spool + disabled (``Stats.balanced``), and the bytes are back
  to zero when nothing is outstanding.
* Only this module (and its mixins) writes the books and calls ``notify_all()``. The one
  documented exception is ``track()``'s inline admission (``Tracker.track``), which
  reads ``outstanding``, ``outstanding_bytes``, ``state`` and ``worker_gone`` and writes
  ``seq``, ``outstanding``, ``outstanding_bytes`` and the queue directly: it is the hot
  path, and a call would cost more than the check. Every other writer calls a method.
* Methods named ``*_locked`` are called with ``lock`` held; none runs user code or logs:
  drops go to a ``Reports`` list the caller hands to the reporter once it is released.
* ``state`` only moves forward: OPEN, STOPPING (``begin_stop_locked``), CLOSED
  (``close_locked``); once closed, the outcome of a request still running is ignored.

Who calls what (all the ledger's own methods; the sender's and the spooler's moves are
kept in its mixins :mod:`._ledger_send` and :mod:`._ledger_spool`, the state's moves
and the snapshot in :mod:`._ledger_state`):

* ``track()``: its inline admission; ``refuse_locked`` (a full queue, or not open).
* ``flush()``/``shutdown()`` (the caller's thread): ``settled_locked``, ``wait_settled``,
  ``ask_prompt_send_locked``, ``add_flush_waiter_locked``/``flush_waiter_gone``,
  ``begin_stop_locked``, ``finish_on_sender``, ``close_locked``, ``snapshot``.
* The sender thread (``_worker``): ``plan_locked``, ``begin_send_locked``/
  ``finish_send_locked`` (which applies the outcome: ``_outcomes``, through the
  ``count_request_locked`` ... ``request_failed_locked`` methods and the moves
  ``delivered_locked``, ``drop_locked``, ``backoff_locked``, ``retry_locked``), the fresh
  batch's ``begin_fresh_locked``/``fresh_delivered_locked``/``fresh_unsure_locked``,
  ``recover_locked``, ``handed_over``.
* The spooler thread (``_spool``, through ``SpoolBooks``): ``take_queued_locked``,
  ``requeue_locked``, ``grown_locked``, ``ready_locked``, ``to_disk_locked``/
  ``to_memory_locked``, ``lose_unread_locked``, ``left_disk_locked``,
  ``spooled_locked``, ``drop_locked``.
* Both threads: ``thread_started``/``thread_gone``, ``count_internal_error_locked``,
  ``note_error_locked``, ``take_finished_locked`` with ``begin_commit_locked``/
  ``end_commit_locked`` (rows deleted, dead letters stored, receipts folded).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from ._config import Config
from ._ledger_send import SenderMoves
from ._ledger_spool import SpoolerMoves
from ._ledger_state import Counters, LedgerState, State
from ._model import DropKind, DropReason
from ._record import (
    Pending,
    QueuedEvent,
    held,
    seq_of,
)
from ._reporting import Reports
from ._schedule import NO_SEQ, Schedule
from ._spool.books import SpoolBooks
from ._spool.dead_letters import DEAD_KINDS

__all__ = ["Counters", "Ledger", "State"]


class Ledger(SenderMoves, SpoolerMoves, LedgerState):
    """Books, queue and schedule of one tracker (one per process: a fork builds anew)."""

    __slots__ = (
        "_committing",
        "_deadline",
        "_finish_on_worker",
        "_finished",
        "_flush_waiters",
        "_receipts",
        "_reporting",
        "_room",
        "_settled",
        "config",
        "counters",
        "flush_asked",
        "id_prefix",
        "inflight",
        "inflight_body",
        "inflight_raw",
        "lock",
        "outstanding",
        "outstanding_bytes",
        "queue",
        "schedule",
        "seq",
        "spool",
        "state",
        "worker_gone",
    )

    def __init__(self, config: Config, schedule: Schedule, id_prefix: str) -> None:
        self.config = config
        self.lock = threading.Lock()
        self._settled = threading.Condition(self.lock)  # an event settled (flush waits)
        self._room = threading.Condition(self.lock)  # queue space freed ("block" policy)
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
        self._flush_waiters = 0
        self.flush_asked = False  # flush() from the sender thread: send what is queued now
        self._reporting = 0  # drops counted but not yet handed to on_drop (flush waits)
        self.state = State.OPEN
        self._deadline = math.inf  # shutdown()'s
        self._finish_on_worker = False  # shutdown() came from the sender thread itself
        self.worker_gone = True  # no sender thread running (never started, or it died)
        self.counters = Counters()
        #: The spool's books (``_spool.books``); None without a spool, and then no
        #: spool code runs.
        self.spool = SpoolBooks(self) if config.spool_dir is not None else None
        #: Settled events whose rows may now be deleted (or receipts folded): taken
        #: after each locked section, with the spool's dead letters.
        self._finished: list[Pending] = []
        self._committing = 0  # disk commits under way (flush() waits for them)
        #: Receipts are kept (``_receipts``): every settled event goes to ``finished``,
        #: with or without a spool row, to be folded by the sender thread.
        self._receipts = False

    @property
    def flush_waiters(self) -> int:
        """``flush()`` calls waiting now (the threads send at once while any waits)."""
        return self._flush_waiters

    # --------------------------------------------------------------- admission

    def refuse_locked(self, size: int, *, may_block: bool) -> DropReason | None:
        """Why an event of ``size`` bytes cannot be queued, or None if room was made
        (``block`` policy; ``may_block`` is False on the sender thread, which frees it)."""
        if self.state is not State.OPEN:
            return self._count_refusal("closed", "track() after shutdown()")
        cfg = self.config
        if cfg.queue_full_policy == "block" and may_block:
            deadline = time.monotonic() + cfg.block_timeout
            while self._is_full_locked(size) and self.state is State.OPEN:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._room.wait(remaining)
            if not self._is_full_locked(size) and self.state is State.OPEN:
                return None
            if self.state is not State.OPEN:
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
            self.counters.disabled += len(queue)
            self.outstanding -= len(queue)
            self.outstanding_bytes -= sum([held(q) for q in queue])
            queue.clear()
            self._settled.notify_all()
            self._room.notify_all()

    def _is_full_locked(self, size: int) -> bool:
        cfg = self.config
        return (
            self.outstanding >= cfg.max_queue_size
            or self.outstanding_bytes + size > cfg.max_queue_bytes
        )

    def _count_refusal(self, kind: DropKind, message: str) -> DropReason:
        refused = self.counters.refused
        refused[kind] = refused.get(kind, 0) + 1
        return DropReason(kind=kind, message=message)

    # ---------------------------------------------------------------- settling

    def settled_locked(self, seq: int) -> bool:
        """Every event up to ``seq`` is delivered or dropped, and its drop reported (and,
        with a spool, its row deleted or its dead letter stored)."""
        return (
            self._reporting == 0
            and not self._finished
            and not self._committing
            and self.min_unsettled_locked() > seq
        )

    def min_unsettled_locked(self) -> int:
        """The lowest sequence not yet settled, in O(log n) amortised: the queue is in
        sequence order, in-flight events are one batch, and the schedule keeps the rest
        (events out of order) in a heap."""
        low = seq_of(self.queue[0]) if self.queue else NO_SEQ
        if self.inflight_raw:
            low = min(low, seq_of(self.inflight_raw[0]))
        for p in self.inflight:
            if p.seq < low:
                low = p.seq
        if self.spool is not None:
            low = self.spool.low_water(low)
        return min(low, self.schedule.low_water())

    def durable_seq_locked(self) -> int:
        """Every event accepted up to this sequence is on disk or settled (with a
        spool); without one, settled."""
        if self.spool is not None:
            return self.spool.durable_seq_locked()
        return min(self.min_unsettled_locked() - 1, self.seq)

    @property
    def on_disk(self) -> int:
        """Events on disk only (the spool's backlog), not counted in ``outstanding``."""
        return self.spool.on_disk if self.spool is not None else 0

    def take_finished_locked(self) -> tuple[list[Pending], list[tuple[bytes, DropReason]]]:
        """The settled events and the dead letters to store, since the last call."""
        finished, self._finished = self._finished, []
        return finished, self.spool.take_dead_locked() if self.spool is not None else []

    def settled_now(self, seq: int) -> bool:
        """``settled_locked``, taking the lock."""
        with self.lock:
            return self.settled_locked(seq)

    def wait_settled(self, seq: int, deadline: float) -> bool:
        """Wait (lock not held) until every event up to ``seq`` is settled, or ``deadline``."""
        with self._settled:
            while not self.settled_locked(seq):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._settled.wait(min(remaining, threading.TIMEOUT_MAX))
            return True

    def wait_locked(self, timeout: float) -> None:
        """With the lock held: wait until an event settles (or ``timeout``)."""
        self._settled.wait(timeout)

    def plan_locked(self, now: float) -> tuple[list[Pending | QueuedEvent], float | None]:
        """What to send now, or how long to sleep; what is taken counts as in flight."""
        urgent = self.state is not State.OPEN or self._flush_waiters > 0 or self.flush_asked
        source: deque[Any] = self.spool.staged if self.spool is not None else self.queue
        # Room to gather a fuller request in: events that may still arrive before the
        # queue is half full (by count or by bytes), so that holding a full batch never
        # pushes track() into queue_full or "block". None with a spool: its staged rows
        # are stored batches, and holding them would only slow the drain.
        room = 0
        if self.spool is None:
            cfg = self.config
            n = self.outstanding
            room = cfg.max_queue_size // 2 - n
            if n:
                room = min(
                    room,
                    (cfg.max_queue_bytes // 2 - self.outstanding_bytes)
                    * n
                    // max(self.outstanding_bytes, 1),
                )
        taken, wait = self.schedule.plan(now, source, urgent=urgent, room=room)
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

    def drop_locked(self, group: Iterable[Pending], reason: DropReason, reports: Reports) -> None:
        """Events that will never be delivered: counted now, reported by the caller (who
        decodes what the report needs once the lock is released: ``Reporter``)."""
        dropped = list(group)
        dead = self.spool.dead if self.spool is not None and reason.kind in DEAD_KINDS else None
        for p in dropped:
            p.done = True
            self.outstanding -= 1
            self.outstanding_bytes -= p.size
            p.receipt = reason
            if p.row is not None or self._receipts:
                self._finished.append(p)
            if dead is not None and p.body:
                dead.append((p.body, reason))
        counters = self.counters
        counters.dropped[reason.kind] = counters.dropped.get(reason.kind, 0) + len(dropped)
        counters.last_error = str(reason)
        reports.append((dropped, reason))
        self._reporting += 1

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
            self._reporting -= n
            self._settled.notify_all()

    # ------------------------------------------------- the threads (sender, spooler)

    def thread_started(self) -> None:
        """A thread of the tracker is about to start: ``track()`` stops kicking."""
        self.worker_gone = False

    def thread_gone(self) -> None:
        """No sender thread runs (it could not start, or it ended): ``track()`` kicks."""
        self.worker_gone = True

    def begin_commit_locked(self) -> None:
        """Settled events are being written to disk (rows deleted, dead letters stored,
        receipts folded): ``flush()`` waits for it (``settled_locked``)."""
        self._committing += 1

    def end_commit_locked(self) -> None:
        self._committing -= 1
        self._settled.notify_all()

    # ---------------------------------------------------------------- flush()

    def keep_receipts(self) -> None:
        """Receipts are kept (``_receipts``): every settled event goes to ``finished``,
        with or without a spool row, to be folded by the sender thread."""
        self._receipts = True

    def ask_prompt_send_locked(self) -> None:
        """``flush()`` from the sender thread: the next rounds send without waiting."""
        self.flush_asked = True

    def add_flush_waiter_locked(self) -> None:
        """A ``flush()`` waits: the sender sends what is queued at once (``plan_locked``)."""
        self._flush_waiters += 1

    def flush_waiter_gone(self) -> None:
        with self.lock:
            self._flush_waiters -= 1
