"""``SpoolBooks``: the ledger's books for the spool stage (``Ledger.spool``; None without one).

Every field is read and written under the ledger's lock, and every method whose name
ends in ``_locked`` is called with it held; like the ledger's own, none of them runs
user code or logs. They move events between the ledger's shared books (``queue``,
``outstanding``, ``outstanding_bytes``, ``dropped``) and the spool's:

* ``spooling``: taken from the queue by the spooler, being written;
* ``staged``: on disk and in memory, never sent, in order (the sender takes from here
  instead of the queue);
* the backlog (``backlog_own``, ``backlog_adopted``, ``unread_adopted``): rows on disk
  whose events are not in memory, counted in ``on_disk`` and not in ``outstanding``;
* ``volatile``: events sent from memory after the disk refused them (not durable);
* ``dead``: dead letters to store, taken with the settled events after each locked
  section (``Ledger.take_finished_locked``).

With a spool, ``outstanding`` and ``outstanding_bytes`` count what is in *memory* and
``on_disk`` the rest: every accepted (or adopted) event is in exactly one place.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING, Any

from .._model import DropReason
from .._record import Pending, QueuedEvent, seq_of, unencoded
from .._reporting import Reports
from .._schedule import NO_SEQ

if TYPE_CHECKING:
    from .._ledger import Ledger
    from .files import StoredBatch

__all__ = ["SpoolBooks"]


class SpoolBooks:
    """The spool's part of one tracker's books; ``ledger`` holds the shared part."""

    __slots__ = (
        "adopted",
        "backlog_adopted",
        "backlog_own",
        "clock",
        "dead",
        "dead_evicted",
        "dead_letters",
        "foreign_files",
        "gate",
        "ledger",
        "left_in_spool",
        "on_disk",
        "own_bytes",
        "room_freed",
        "skipped_files",
        "spooling",
        "staged",
        "unread_adopted",
        "volatile",
    )

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.spooling: list[QueuedEvent] = []  # taken by the spooler, being written
        self.staged: deque[Pending] = deque()  # on disk and in memory, never sent, in order
        self.backlog_own: deque[StoredBatch] = deque()  # rows on disk only, in order
        self.backlog_adopted: deque[StoredBatch] = deque()  # rows of adopted files: sent first
        self.on_disk = 0  # events of the backlog (not counted in outstanding)
        #: Events of adopted files not yet read into ``backlog_adopted`` (in on_disk):
        #: rows are read in chunks as they are sent, never an object per row at once.
        self.unread_adopted = 0
        self.adopted = 0
        self.left_in_spool = 0
        self.clock: float | None = None  # when the oldest queued event was seen
        self.gate = 0.0  # no write before it (after the disk refused one)
        #: Rows were deleted while a batch was held back for a full spool: its next try
        #: holds it again if it still finds no room (the sender is draining), instead of
        #: dropping it; only a hold that ran out its backoff with nothing freed drops.
        self.room_freed = False
        self.own_bytes = 0  # bytes of this process's spool file
        self.dead_letters = 0
        self.dead_evicted = 0
        self.foreign_files = 0  # spool files of another identity in the directory
        self.skipped_files = 0  # spool files that may not or cannot be opened now
        #: Dead letters to store: the spooler takes them with the settled events.
        self.dead: list[tuple[bytes, DropReason]] = []
        #: Events sent without being on disk (the disk failed): (seq, Pending) heap.
        self.volatile: list[tuple[int, Pending]] = []

    # ------------------------------------------------------------------ writing

    def plan_locked(self, now: float) -> tuple[list[QueuedEvent], float | None]:
        """Queued events to write to disk now, or how long until some are due."""
        led = self.ledger
        queue = led.queue
        if not queue:
            self.clock = None
            return [], None
        if now < self.gate:
            return [], self.gate - now
        cfg = led.config
        if self.clock is None:
            self.clock = now
        due = (
            led.state > 0  # not State.OPEN: stopping or closed
            or led.flush_waiters > 0
            or led.flush_asked
            or len(queue) >= cfg.max_batch_size
            or now - self.clock >= cfg.spool_interval
        )
        if not due:
            return [], self.clock + cfg.spool_interval - now
        taken = led.take_queued_locked(cfg.max_batch_size)
        if not queue:
            self.clock = None
        self.spooling = taken
        return taken, 0.0

    def window_locked(self) -> bool:
        """Whether memory is comfortable enough to hold another row's events."""
        led = self.ledger
        return led.outstanding_bytes <= led.config.max_queue_bytes // 2 and (
            len(self.staged) + len(led.schedule.ready) < 2 * led.config.max_batch_size
        )

    def stage_locked(self, pendings: list[Pending], row: StoredBatch) -> None:
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

    def release_locked(self, pendings: list[Pending], row: StoredBatch) -> None:
        self.backlog_own.append(row)
        self.on_disk += len(pendings)
        self.ledger.to_disk_locked(pendings)

    def recover_locked(self) -> None:
        """After an unexpected error in the spooler: what it had taken goes back in line
        (written twice at worst: the same eventIds, deduplicated by Enso)."""
        if self.spooling:
            self.ledger.requeue_locked(self.spooling)
            self.spooling = []

    # ------------------------------------------------------------------ the backlog

    def load_locked(self, pendings: list[Pending], *, own: bool) -> None:
        """A backlog row's events are back in memory: own ones join ``staged`` (newest
        last, in order), adopted ones go first (ready, like retries)."""
        led = self.ledger
        (self.backlog_own if own else self.backlog_adopted).popleft()
        self.on_disk -= len(pendings)
        led.to_memory_locked(pendings)
        if own:
            self.staged.extend(pendings)
        else:
            led.ready_locked(pendings)

    def adopt_locked(self, rows: list[StoredBatch], unread: int = 0) -> None:
        """Rows of adopted files join the backlog, and ``unread`` events of theirs that
        are still to be read (``refill_locked``)."""
        self.backlog_adopted.extend(rows)
        n = sum(r.n for r in rows) + unread
        self.on_disk += n
        self.adopted += n
        self.unread_adopted += unread

    def refill_locked(self, rows: list[StoredBatch]) -> None:
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
        self._count_corrupt_locked(events, why, reports)

    def corrupt_locked(
        self, row: StoredBatch, own: bool, raw: bytes, why: str, reports: Reports
    ) -> None:
        """A backlog row failed its CRC (or no longer parses): its events are lost to
        Enso; the bytes are kept as a dead letter."""
        (self.backlog_own if own else self.backlog_adopted).popleft()
        self.on_disk -= row.n
        reason = self._count_corrupt_locked(row.n, why, reports)
        self.dead.append((raw, reason))

    def _count_corrupt_locked(self, events: int, why: str, reports: Reports) -> DropReason:
        reason = DropReason(kind="corrupt", message=why)
        self.ledger.lose_unread_locked(events, reason, reports)
        return reason

    # ------------------------------------------------------------------ the ledger asks

    def low_water(self, low: int) -> int:
        """``low``, or the lowest sequence the spool's own lists hold if lower."""
        if self.spooling:
            low = min(low, seq_of(self.spooling[0]))
        if self.staged:
            low = min(low, self.staged[0].seq)
        if self.backlog_own:
            low = min(low, self.backlog_own[0].first_seq)
        return low

    def durable_seq_locked(self) -> int:
        """Every event accepted up to this sequence is on disk or settled."""
        led = self.ledger
        low = seq_of(led.queue[0]) if led.queue else NO_SEQ
        if self.spooling:
            low = min(low, seq_of(self.spooling[0]))
        heap = self.volatile
        while heap and heap[0][1].done:
            heapq.heappop(heap)
        if heap:
            low = min(low, heap[0][0])
        return min(low - 1, led.seq)

    def take_dead_locked(self) -> list[tuple[bytes, DropReason]]:
        dead, self.dead = self.dead, []
        return dead

    def take_left_locked(self) -> list[Pending]:
        """At close: the staged events and those being written, out of the spool's lists."""
        left = [
            *self.staged,
            *map(unencoded, self.spooling),
        ]
        self.staged.clear()
        self.spooling = []
        return left

    def keep_on_disk_locked(self, left: list[Pending]) -> list[Pending]:
        """At close: events on disk are not dropped but left for the next tracker on the
        directory (``left_in_spool``); returns the rest."""
        led = self.ledger
        on_disk = [p for p in left if p.row is not None]
        self.left_in_spool += len(on_disk) + self.on_disk
        led.to_disk_locked(on_disk)
        self.on_disk = 0
        self.backlog_own.clear()
        self.backlog_adopted.clear()
        self.unread_adopted = 0
        return [p for p in left if p.row is None]

    def stats_locked(self) -> dict[str, Any]:
        """The spool's fields of ``Stats``."""
        led = self.ledger
        # In memory and on disk: all but the queued, the being-written, and the events
        # sent from memory after a failed write (volatile, not yet settled).
        volatile = sum(1 for _, p in self.volatile if not p.done)
        return {
            "spooled": self.on_disk
            + led.outstanding
            - len(led.queue)
            - len(self.spooling)
            - volatile,
            "spool_bytes": self.own_bytes,
            "adopted": self.adopted,
            "left_in_spool": self.left_in_spool,
            "dead_letters": self.dead_letters,
            "dead_letters_evicted": self.dead_evicted,
            "foreign_spool_files": self.foreign_files,
            "skipped_spool_files": self.skipped_files,
        }
