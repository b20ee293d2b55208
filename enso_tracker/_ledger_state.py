"""The ledger's state and what it shows: :class:`State` (open, stopping, closed), the
:class:`Counters` ``stats()`` reads beyond the books' own lists, the moves of the state
(``shutdown()`` begins, finishes on the sender thread, closes), the errors either thread
notes, and the snapshot.

A mixin of :class:`~._ledger.Ledger` (which sets every attribute; its invariants and
lock discipline are listed in ``_ledger``).

Design constraints (what must never break):

* ``state`` only moves forward: OPEN, STOPPING (``begin_stop_locked``), CLOSED
  (``close_locked``, or ``inherit_closed`` in a forked child of a stopped tracker).
* ``State`` is falsy only when OPEN: ``track()``'s inline admission reads it as
  "refuse" in one load.
* Closing leaves nothing held in memory: whatever is left is dropped as ``shutdown``
  (counted, reported by the caller) or, with a spool, left on disk for the next tracker;
  ``flush()`` waiters and blocked ``track()`` calls are woken.
* ``Counters`` are written only by the ledger, under its lock; ``snapshot`` copies them
  (``locked=False`` only from a signal handler whose interrupted frame holds the lock).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Literal

from ._ledger_fields import LedgerFields
from ._model import DropReason, Stats
from ._record import Pending, held, unencoded
from ._reporting import Reports

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["Counters", "LedgerState", "State"]


class State(enum.IntEnum):
    """Where a tracker is in its life; it only moves forward. Falsy only when OPEN:
    ``track()``'s inline admission reads ``Ledger.state`` as "refuse" in one load."""

    OPEN = 0  # accepting and sending
    STOPPING = 1  # shutdown() began: nothing more is accepted; sending until its deadline
    CLOSED = 2  # shutdown() finished (or a fork of a stopped tracker): nothing more is sent


class Counters:
    """What ``stats()`` counts beyond the books' own lists: written only by the ledger
    (under its lock), copied by :meth:`Ledger.snapshot`."""

    __slots__ = (
        "auth_state",
        "delivered",
        "disabled",
        "dropped",
        "failed_requests",
        "last_error",
        "last_success_at",
        "refused",
        "requests",
        "retried",
        "worker_errors",
    )

    def __init__(self) -> None:
        self.delivered = 0
        self.disabled = 0  # validated by a disabled tracker and let go, never sent
        self.dropped: dict[str, int] = {}  # by reason (``DropKind``)
        self.refused: dict[str, int] = {}  # by reason, refused by track()
        self.retried = 0
        self.requests = 0
        self.failed_requests = 0
        self.worker_errors = 0  # internal errors of a round (and a sender that raised)
        self.auth_state: Literal["ok", "unauthorized"] = "ok"
        self.last_error: str | None = None
        self.last_success_at: float | None = None  # time.time() of the last 2xx


class LedgerState(LedgerFields):
    """The state's part of ``Ledger``'s methods (``Ledger`` sets every attribute)."""

    if not TYPE_CHECKING:  # Ledger's instances stay slotted; mypy checks its slots there
        __slots__ = ()

    if TYPE_CHECKING:  # the ledger's own

        def drop_locked(
            self, group: Iterable[Pending], reason: DropReason, reports: Reports
        ) -> None: ...

        def durable_seq_locked(self) -> int: ...

        @property
        def on_disk(self) -> int: ...

    # -------------------------------------------------------------------- state

    @property
    def deadline(self) -> float:
        """``shutdown()``'s (``time.monotonic()``; ``inf`` until it began)."""
        return self._deadline

    @property
    def finish_on_worker(self) -> bool:
        """``shutdown()`` was called on the sender thread, which finishes it."""
        return self._finish_on_worker

    @property
    def closed(self) -> bool:
        """``state is State.CLOSED``: shutdown() finished, nothing more is sent."""
        return self.state is State.CLOSED

    def begin_stop_locked(self, deadline: float) -> bool:
        """``shutdown()`` begins: nothing more is accepted, every backoff is cut short
        for one more prompt try, blocked ``track()`` calls give up. False if it had
        begun already (nothing done)."""
        if self.state is not State.OPEN:
            return False
        self.state = State.STOPPING
        self._deadline = deadline
        self.schedule.expedite()
        self._room.notify_all()
        return True

    def finish_on_sender(self) -> None:
        """``shutdown()`` was called on the sender thread (``on_drop``, a log handler),
        which cannot wait for itself: that thread finishes it (``Worker.step``)."""
        with self.lock:
            if self.state is not State.CLOSED:
                self._finish_on_worker = True

    def inherit_closed(self) -> None:
        """A forked child of a tracker shut down (or stopping) stays so."""
        self.state = State.CLOSED

    def close_locked(self, reports: Reports) -> list[Pending]:
        """Stop for good; everything still held is dropped as ``shutdown`` and returned."""
        self.state = State.CLOSED
        spool = self.spool
        left: list[Pending] = [
            *self.schedule.drain(),
            *self.inflight,
            *(spool.take_left_locked() if spool is not None else ()),
            *map(unencoded, self.inflight_raw),
            *map(unencoded, self.queue),
        ]
        self.inflight = []
        self.inflight_raw = []
        self.queue.clear()
        if spool is not None:
            left = spool.keep_on_disk_locked(left)  # on disk: left for the next tracker
        if left:
            self.drop_locked(
                left,
                DropReason(
                    kind="shutdown",
                    message="not delivered before the shutdown deadline "
                    f"(last error: {self.counters.last_error}); events in flight may still "
                    "have reached Enso, and resending them is safe (same eventIds)",
                ),
                reports,
            )
        self._settled.notify_all()
        self._room.notify_all()
        return left

    # ----------------------------------------------------------- what stats() shows

    def count_internal_error_locked(self, message: str | None = None) -> None:
        """An unexpected error in a round (or a sender that raised): a worker error;
        ``message``, when given, is the new ``last_error``."""
        self.counters.worker_errors += 1
        if message is not None:
            self.counters.last_error = message

    def note_error_locked(self, message: str) -> None:
        """``last_error``, with nothing counted (spool trouble, an answer left unsure)."""
        self.counters.last_error = message

    def snapshot(self, logins: int, hook_errors: int, *, locked: bool = True) -> Stats:
        """The counters; ``locked=False`` reads them without the lock (see stats())."""
        if not locked:
            return self._snapshot_locked(logins, hook_errors)
        with self.lock:
            return self._snapshot_locked(logins, hook_errors)

    def _snapshot_locked(self, logins: int, hook_errors: int) -> Stats:
        counters = self.counters
        in_flight = len(self.inflight) + len(self.inflight_raw)
        spool = self.spool.stats_locked() if self.spool is not None else {}
        return Stats(
            accepted=self.seq,
            delivered=counters.delivered,
            disabled=counters.disabled,
            dropped=dict(counters.dropped),
            refused=dict(counters.refused),
            retried=counters.retried,
            queued=self.outstanding + self.on_disk - in_flight,
            queued_bytes=self.outstanding_bytes
            - self.inflight_body
            - sum(p.size for p in self.inflight)
            - sum(held(item) for item in self.inflight_raw),
            in_flight=in_flight,
            requests=counters.requests,
            failed_requests=counters.failed_requests,
            logins=logins,
            worker_errors=counters.worker_errors,
            hook_errors=hook_errors,
            auth_state=counters.auth_state,
            last_error=counters.last_error,
            last_success_at=counters.last_success_at,
            durable_seq=self.durable_seq_locked(),
            **spool,
        )
