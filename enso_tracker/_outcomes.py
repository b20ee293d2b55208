"""Outcomes: what the sender's outcome of a request means for each event of its batch.

Owns the reading of an ``Outcome`` (``_http.sender``: answered, retry, too large,
rejected, unauthorized) into the ledger's moves: :func:`apply_outcome` for a batch of
``Pending`` events, :func:`apply_fresh_delivery` for a fresh batch Enso vouched for as a
whole. "Settled" keeps the ledger's one meaning (delivered or dropped, and reported:
``Ledger.settled_locked``); this module only applies outcomes.

Design constraints (what must never break):

* Called by the ledger (``Ledger.finish_send_locked``, ``fresh_delivered_locked``) with
  its lock held: it only moves events between the books and the schedule, through the
  ledger's methods; drops go to ``reports`` and log records to the deferred log, both
  handed over once the lock is released (no user code, no logging under the lock).
* An event is delivered only when Enso's answer accounts for it (``_wire.reconcile``);
  an answer that does not add up vouches for nothing, and its batch is resent.
* Every outcome type is handled (``assert_never``): a new one fails type checking.
* Which failures are retried and which are suspect are the retry policy's answers
  (:mod:`._retry`), not decided here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, assert_never

from ._http.sender import Answered, Outcome, Rejected, Retry, TooLarge, Unauthorized
from ._log import DeferredLog
from ._model import DropReason
from ._record import Pending, QueuedEvent
from ._reporting import Reports
from ._wire import reconcile

if TYPE_CHECKING:  # the ledger calls these (``Ledger.finish_send_locked``)
    from ._ledger import Ledger

__all__ = ["apply_fresh_delivery", "apply_outcome"]


def apply_fresh_delivery(ledger: Ledger, items: list[QueuedEvent], held_total: int) -> None:
    """A fresh batch sent as one body was wholly delivered, as Enso's answer vouched
    (``reconcile``: every event accounted for, none failed): its books in O(1), no
    ``Pending`` ever made. ``held_total`` is what the events held (``held()`` summed)."""
    ledger.count_request_locked()
    ledger.credentials_ok_locked()
    ledger.success_locked()
    ledger.delivered_fresh_locked(items, held_total)


def apply_outcome(
    ledger: Ledger,
    batch: list[Pending],
    outcome: Outcome,
    now: float,
    reports: Reports,
    log: DeferredLog,
) -> None:
    """The outcome of the request that carried ``batch``, applied to each of its
    events (the ledger's lock held)."""
    ledger.count_request_locked()
    for p in batch:  # done from here, unless parked again for a retry
        p.done = True
    match outcome:
        case Answered():
            _answered_locked(ledger, batch, outcome, now, reports, log)
            return
        case Retry(message=message, status=status, retry_after=retry_after):
            _failed_locked(ledger, message)
            suspect = ledger.schedule.policy.is_suspect(status)
            ledger.backoff_locked(batch, now, retry_after, reports, suspect=suspect)
            log(
                logging.WARNING,
                "retry",
                "Enso request failed, will retry %d events: %s",
                len(batch),
                message,
            )
        case TooLarge(message=message):
            _failed_locked(ledger, message)
            body = ledger.schedule.on_too_large(batch)
            if body is None:
                ledger.drop_locked(
                    batch, DropReason(kind="too_large", message=message, status=413), reports
                )
                return
            # Enso's limit is undocumented: later batches stay at half this body's size.
            log(
                logging.WARNING,
                "413",
                "Enso answered 413 to a %d-byte batch; batches are now cut at %d bytes",
                body,
                ledger.schedule.byte_limit,
            )
        case Rejected(message=message, status=status):
            _failed_locked(ledger, message)
            ledger.drop_locked(
                batch, DropReason(kind="rejected", message=message, status=status), reports
            )
        case Unauthorized(message=message):  # keep the events while their budget lasts
            _failed_locked(ledger, message)
            if ledger.credentials_refused_locked():
                log.always(
                    logging.ERROR,
                    "Enso refuses the credentials; events stay queued and are "
                    "retried with backoff: %s",
                    message,
                )
            ledger.backoff_locked(batch, now, None, reports)
        case _:
            assert_never(outcome)


def _failed_locked(ledger: Ledger, message: str) -> None:
    ledger.request_failed_locked(message)


def _answered_locked(
    ledger: Ledger,
    batch: list[Pending],
    outcome: Answered,
    now: float,
    reports: Reports,
    log: DeferredLog,
) -> None:
    n = len(batch)
    # docs/wire-contract.md, Accounting: delivered only when the answer accounts for it.
    verdict = reconcile(outcome.answer, n)
    ledger.credentials_ok_locked()  # a 2xx
    if not verdict.reconciled:
        # Counts that do not add up vouch for nothing, not even the listed failures: a
        # failed request, the whole batch resent (same eventIds: dedup makes that safe)
        # until its retry budget runs out, then reported as retries_exhausted.
        _failed_locked(ledger, f"Enso's answer does not account for the batch: {verdict.problem}")
        log(
            logging.WARNING,
            "unreconciled",
            "Enso's answer does not account for a %d-event batch (%s); resending it",
            n,
            verdict.problem,
        )
        ledger.backoff_locked(batch, now, None, reports)
        return
    ledger.success_locked()
    failed = verdict.failures
    # Counts that add up but list fewer failures than they count: which of the others
    # failed is unknown, so they are all resent rather than guessed delivered.
    unsure = not verdict.vouched
    if unsure:
        ledger.note_error_locked(f"Enso's answer leaves events unaccounted for: {verdict.problem}")
        log(
            logging.WARNING,
            "unlisted",
            "Enso's answer to a %d-event batch leaves events unaccounted for (%s); resending them",
            n,
            verdict.problem,
        )
    if not failed and not unsure:  # the common case: everything delivered
        ledger.delivered_locked(batch)
        return
    policy = ledger.schedule.policy
    # Each retried event with its own cause: a retries_exhausted drop names the failure
    # of that event, never another record's (the ledger-wide last_error).
    retry: list[tuple[Pending, str]] = []
    rejected: dict[tuple[Any, Any, str], list[Pending]] = {}
    for i, p in enumerate(batch):
        failure = failed.get(i)
        if failure is None:
            if unsure:
                retry.append((p, "not accounted for in Enso's answer"))
            else:
                ledger.forget_locked(p)
            continue
        status = failure.status
        if policy.is_retryable_status(status):  # none: rejected, never a resend loop
            error = failure.error or "record failed"
            retry.append((p, f"{error} (status={status}, code={failure.code})"))
        else:
            key = (failure.code, status, failure.error or "rejected by Enso")
            rejected.setdefault(key, []).append(p)
    for (code, status, message), group in rejected.items():
        ledger.drop_locked(
            group, DropReason(kind="rejected", message=message, code=code, status=status), reports
        )
    if retry:
        ledger.note_error_locked(ledger.counters.last_error or "per-record failures")
        for p, cause in retry:
            ledger.retry_locked(p, now, reports, cause=cause)
