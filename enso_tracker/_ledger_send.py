"""The ledger's moves for the sender thread: one request's books, and its outcome's.

A mixin of :class:`~._ledger.Ledger` (which sets every attribute below; its invariants
and lock discipline are listed in ``_ledger``): what the sender's one-request path
(``_send``) and the outcome it applies (``_outcomes``) do to the books. Every method is
called with the ledger's lock held.

* A request: ``begin_send_locked`` puts the cut batch in flight, ``finish_send_locked``
  applies the outcome (``_outcomes``) and wakes ``flush()`` and a blocked ``track()``; a
  fresh batch sent as one body has ``begin_fresh_locked``, then
  ``fresh_delivered_locked`` (all vouched for) or ``fresh_unsure_locked``.
* An outcome: events delivered (``delivered_locked``, ``forget_locked``), backed off
  (``backoff_locked``, ``retry_locked``) or, once their budget is spent, dropped
  (``exhaust_locked``); the counters of a request (``count_request_locked`` ...
  ``request_failed_locked``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final, cast

from ._http.sender import Outcome
from ._ledger_fields import LedgerFields
from ._log import DeferredLog
from ._model import DropReason
from ._outcomes import apply_fresh_delivery, apply_outcome
from ._record import Pending, QueuedEvent, delivered
from ._reporting import Reports

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._ledger import Ledger

__all__ = ["SenderMoves"]

#: How a retries_exhausted drop names the error that spent the budget.
_CAUSE: Final = "; last error: "


class SenderMoves(LedgerFields):
    """The sender's half of ``Ledger``'s moves (``Ledger`` sets every attribute)."""

    if not TYPE_CHECKING:  # Ledger's instances stay slotted; mypy checks its slots there
        __slots__ = ()

    if TYPE_CHECKING:  # the ledger's own

        @property
        def closed(self) -> bool: ...

        def drop_locked(
            self, group: Iterable[Pending], reason: DropReason, reports: Reports
        ) -> None: ...

    def delivered_locked(self, batch: list[Pending]) -> None:
        """Every event of ``batch`` is delivered: O(1) Python operations but the sum."""
        self.counters.delivered += len(batch)
        self.outstanding -= len(batch)
        self.outstanding_bytes -= sum([p.size for p in batch])
        if self.spool is not None or self._receipts:
            self._finished.extend(batch)

    def delivered_fresh_locked(self, items: list[QueuedEvent], held_total: int) -> None:
        """Every event of a fresh batch (never a Pending: see ``Worker.send_fresh``) is
        delivered; ``held_total`` is what they held. O(1)."""
        n = len(items)
        self.counters.delivered += n
        self.outstanding -= n
        self.outstanding_bytes -= held_total
        if self._receipts:  # folded by the receipts (never a spool row on this path)
            self._finished.extend(delivered(items))

    def forget_locked(self, p: Pending) -> None:
        """One event delivered."""
        p.done = True
        self.counters.delivered += 1
        self.outstanding -= 1
        self.outstanding_bytes -= p.size
        if p.row is not None or self._receipts:
            self._finished.append(p)

    def exhaust_locked(
        self, group: list[Pending], now: float, reports: Reports, *, cause: str | None = None
    ) -> None:
        # The cause: the event's own failure when the caller knows it (a failed record);
        # else the request's, as it was before these drops (each drop sets last_error):
        # never a previous exhaustion's text, which would nest once per event and round.
        if cause is None:
            cause = self.counters.last_error or "none"
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
        self.counters.retried += len(batch) - len(exhausted)
        if exhausted:
            self.exhaust_locked(exhausted, now, reports)

    def retry_locked(
        self, p: Pending, now: float, reports: Reports, *, cause: str | None = None
    ) -> None:
        """One event failed on its own (``cause``: how): it backs off alone, while its
        budget lasts."""
        if self.schedule.retry_later(p, now):
            self.counters.retried += 1
        else:
            self.exhaust_locked([p], now, reports, cause=cause)

    def begin_send_locked(
        self, encoded: list[Pending], grown: int
    ) -> tuple[list[Pending], list[Pending]]:
        """What ``plan_locked`` took, now encoded (holding ``grown`` bytes more): cut
        into the batch of one request, in flight from now on; returns it and the events
        too large for any request (the caller drops them)."""
        self.outstanding_bytes += grown
        batch, too_large = self.schedule.cut(encoded, self.config.max_batch_bytes)
        self.inflight = batch
        self.inflight_raw = []
        return batch, too_large

    def finish_send_locked(
        self,
        batch: list[Pending],
        outcome: Outcome,
        now: float,
        reports: Reports,
        log: DeferredLog,
    ) -> None:
        """The outcome of the request that carried ``batch``, applied (``_outcomes``);
        then ``flush()`` and a blocked ``track()`` look again. Ignored once closed:
        ``shutdown()`` reported these as dropped at its deadline."""
        if self.closed:
            self.inflight = []
            return
        apply_outcome(cast("Ledger", self), batch, outcome, now, reports, log)
        # Emptied only now: should the accounting above fail, the loop's recovery puts
        # the batch back in line instead of losing it.
        self.inflight = []
        self._settled.notify_all()
        self._room.notify_all()

    def begin_fresh_locked(self, size: int) -> None:
        """A fresh batch (``inflight_raw``) goes as one body of ``size`` bytes, counted
        in ``outstanding_bytes`` while the request runs (``Worker.send_fresh``)."""
        self.outstanding_bytes += size
        self.inflight_body = size

    def fresh_delivered_locked(self, items: list[QueuedEvent], size: int, held_total: int) -> None:
        """Enso vouched for every event of the fresh batch: settled per batch, in O(1)
        (unless closed meanwhile: ``shutdown()`` reported them)."""
        self.outstanding_bytes -= size
        self.inflight_body = 0
        if not self.closed:
            apply_fresh_delivery(cast("Ledger", self), items, held_total)
        self.inflight_raw = []
        self._settled.notify_all()
        self._room.notify_all()

    def fresh_unsure_locked(self, size: int, pendings: list[Pending], grown: int) -> bool:
        """Enso's answer does not vouch for the whole fresh batch: its body is gone and
        its events, encoded one by one (``grown`` bytes more), are the batch in flight,
        settled as any other (``finish_send_locked``). False if closed meanwhile
        (``shutdown()`` reported them)."""
        self.outstanding_bytes -= size
        self.inflight_body = 0
        if self.closed:
            self.inflight_raw = []
            return False
        self.outstanding_bytes += grown
        self.inflight = pendings
        self.inflight_raw = []
        return True

    def count_request_locked(self) -> None:
        self.counters.requests += 1

    def credentials_ok_locked(self) -> None:
        """A 2xx: Enso took the credentials."""
        self.counters.auth_state = "ok"

    def credentials_refused_locked(self) -> bool:
        """A 401/403; True if the credentials were taken until now (log it once)."""
        first = self.counters.auth_state != "unauthorized"
        self.counters.auth_state = "unauthorized"
        return first

    def success_locked(self) -> None:
        """An answer that accounts for its batch: the schedule's backoff resets."""
        self.schedule.on_success()
        self.counters.last_success_at = time.time()

    def request_failed_locked(self, message: str) -> None:
        self.counters.failed_requests += 1
        self.counters.last_error = message
