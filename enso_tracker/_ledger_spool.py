"""The ledger's moves for the spool stage: the shared books, as the spooler moves events.

A mixin of :class:`~._ledger.Ledger` (which sets every attribute below; its invariants
and lock discipline are listed in ``_ledger``). The spool's own books are
``SpoolBooks`` (``_spool.books``); these are the moves of the shared ones it makes:
taking queued events to write and putting them back, memory's counts as events go to
disk and come back, events lost on disk, and waking ``flush()`` and a blocked
``track()``. Every method is called with the ledger's lock held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._ledger_fields import LedgerFields
from ._model import DropReason
from ._record import Pending, QueuedEvent
from ._reporting import Reports

if TYPE_CHECKING:
    pass

__all__ = ["SpoolerMoves"]


class SpoolerMoves(LedgerFields):
    """The spooler's half of ``Ledger``'s moves (``Ledger`` sets every attribute)."""

    if not TYPE_CHECKING:  # Ledger's instances stay slotted; mypy checks its slots there
        __slots__ = ()

    def take_queued_locked(self, n: int) -> list[QueuedEvent]:
        """Up to ``n`` events from the head of the queue (the spooler writes them)."""
        queue = self.queue
        return [queue.popleft() for _ in range(min(len(queue), n))]

    def ready_locked(self, pendings: list[Pending]) -> None:
        """Events to send first, like retries (adopted rows, or sent from memory after
        the disk refused them)."""
        self.schedule.enqueue(pendings)

    def requeue_locked(self, items: list[QueuedEvent]) -> None:
        """Events taken from the queue go back to its head, in order, not encoded."""
        self.queue.extendleft(reversed(items))

    def grown_locked(self, grown: int) -> None:
        """Events now encoded hold ``grown`` bytes more: their bodies (max_queue_bytes)."""
        self.outstanding_bytes += grown

    def to_disk_locked(self, pendings: list[Pending]) -> None:
        """Events now on disk only (the spool's backlog, or left there at shutdown):
        out of memory's counts, into ``on_disk`` (``SpoolBooks``)."""
        self.outstanding -= len(pendings)
        self.outstanding_bytes -= sum([p.size for p in pendings])

    def to_memory_locked(self, pendings: list[Pending]) -> None:
        """A backlog row's events are back in memory (``SpoolBooks.load_locked``)."""
        self.outstanding += len(pendings)
        self.outstanding_bytes += sum([p.size for p in pendings])

    def lose_unread_locked(self, events: int, reason: DropReason, reports: Reports) -> None:
        """Events lost on disk, never in memory (``corrupt`` rows): counted and reported
        without a ``Pending``; ``drop_locked``'s one side door."""
        dropped = self.counters.dropped
        dropped[reason.kind] = dropped.get(reason.kind, 0) + events
        self.counters.last_error = str(reason)
        reports.append(([], reason))
        self._reporting += 1

    def left_disk_locked(self) -> None:
        """Events left the spool's backlog (``SpoolBooks.corrupt_locked``): ``flush()``
        and ``shutdown()`` look again."""
        self._settled.notify_all()

    def spooled_locked(self) -> None:
        """The spooler moved events (rows written, staged or on disk only, drops): memory
        may have been freed, events settled."""
        self._room.notify_all()
        self._settled.notify_all()
