"""The sender thread's one-request path, and its hand-over after each locked section.

A mixin of :class:`~._worker.Worker` (which sets every attribute below; the thread,
its loop and shutdown are the worker's). One request, as ``Worker.step`` runs it:

* encode what ``Ledger.plan_locked`` took, outside the lock (only this thread touches
  those objects now): a fresh batch in one msgspec call (:meth:`SendPath.send_fresh`),
  anything else event by event (:meth:`SendPath.encode_all`);
* under the lock, ``Ledger.begin_send_locked`` cuts it to one request and puts it in
  flight; what can never be sent is dropped here (:meth:`SendPath.drop_unsendable_locked`);
* send it with the lock released (:meth:`SendPath.request`: a sender that raises is a
  retry, never a lost batch), within ``timeout`` and ``shutdown()``'s deadline;
* under the lock, ``Ledger.finish_send_locked`` applies the outcome (``_outcomes``);
* then :meth:`SendPath.hand_over` reports drops, emits logs and commits to disk, with
  the lock released.

It writes no field of the ledger: every change to the books is a ledger method.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._config import Config
from ._debug import log_request
from ._errors import describe_exception
from ._http.sender import Answered, Outcome, Retry, Sender
from ._ledger import Ledger
from ._model import DropReason
from ._record import (
    EVENT_OVERHEAD,
    Pending,
    QueuedEvent,
    encode_record,
    held,
    pending_of,
    size_of,
    unencoded,
)
from ._reporting import Reporter, Reports
from ._spool.errors import Problem
from ._wire import EventEncoder, join_batch, reconcile

if TYPE_CHECKING:
    from ._spool.spooler import Spooler

__all__ = ["SendPath"]


class SendPath:
    """The one-request half of ``Worker`` (which sets every attribute below)."""

    config: Config
    ledger: Ledger
    sender: Sender
    reporter: Reporter
    spooler: Spooler | None
    receipts: Any
    request_observer: Callable[[float, int, Outcome], None] | None
    _encoder: EventEncoder
    _inline_deadline: float

    def encode(self, item: QueuedEvent) -> bytes:
        return encode_record(self._encoder, item, self.ledger.id_prefix)

    def encode_all(
        self, taken: Sequence[Pending | QueuedEvent]
    ) -> tuple[list[Pending], list[tuple[Pending, Exception]], int]:
        """Encode what is not yet (outside the lock: only this thread touches these
        objects now): the Pendings, those that could not be encoded, and the bytes the
        events now hold beyond what they held."""
        encoded: list[Pending] = []
        unencodable: list[tuple[Pending, Exception]] = []
        grown = 0
        for entry in taken:
            if isinstance(entry, Pending):
                p = entry
            else:
                try:
                    body = self.encode(entry)
                except Exception as exc:  # validation should make this impossible
                    unencodable.append((unencoded(entry), exc))
                    continue
                # The body is what is kept from now on (``_record.pending_of``).
                p = pending_of(entry, body)
                grown += p.size - held(entry)
            encoded.append(p)
        return encoded, unencodable, grown

    def drop_unsendable_locked(
        self,
        too_large: list[Pending],
        unencodable: list[tuple[Pending, Exception]],
        reports: Reports,
    ) -> None:
        """Events that can never go in a request: alone over ``max_batch_bytes``, or
        that msgspec could not encode."""
        if too_large:
            self.ledger.drop_locked(
                too_large,
                DropReason(
                    kind="too_large",
                    message="event alone is larger than "
                    f"max_batch_bytes={self.config.max_batch_bytes}",
                ),
                reports,
            )
        for p, error in unencodable:
            self.ledger.drop_locked(
                [p],
                DropReason(kind="unencodable", message=f"cannot be encoded as JSON: {error!r}"),
                reports,
            )

    def send(self, taken: list[Pending | QueuedEvent]) -> None:
        if not isinstance(taken[0], Pending) and self.send_fresh(taken):  # type: ignore[arg-type]
            return  # fresh events only (the schedule puts Pendings first): one body
        ledger = self.ledger
        encoded, unencodable, grown = self.encode_all(taken)
        now = time.monotonic()
        reports: Reports = []
        try:
            with ledger.lock:
                if ledger.closed:
                    return
                batch, too_large = ledger.begin_send_locked(encoded, grown)
                self.drop_unsendable_locked(too_large, unencodable, reports)
                deadline = min(ledger.deadline, self._inline_deadline)
        finally:
            self.hand_over(reports)
        if not batch:
            return
        for p in batch:
            p.attempts += 1
            if p.first_sent == 0.0:
                p.first_sent = now
        timeout = self.config.timeout
        if deadline != math.inf:
            timeout = max(min(timeout, deadline - now), 0.05)
        outcome = self.request(join_batch([p.body for p in batch]), timeout, batch)
        reports = []
        try:
            with ledger.lock:
                ledger.finish_send_locked(
                    batch, outcome, time.monotonic(), reports, self.reporter.log
                )
        finally:
            self.hand_over(reports)

    def request(self, body: bytes, timeout: float, batch: Sequence[Pending] | int) -> Outcome:
        """The sender's outcome for one body (``batch``: its events, or how many on a
        first try); a sender that raises is a retry. Logged at DEBUG (``ENSO_DEBUG``)."""
        started = time.monotonic()
        try:
            outcome = self.sender.send(body, timeout)
        except Exception as exc:  # a bug in a sender must not lose the batch
            what = describe_exception(exc)
            self.reporter.log(logging.ERROR, "sender", "sender raised %s; will retry", what)
            with self.ledger.lock:
                self.ledger.count_internal_error_locked()
            outcome = Retry(f"sender raised {what}")
        took = time.monotonic() - started
        log_request(self.reporter.log, batch, len(body), outcome, took)
        observer = self.request_observer
        if observer is not None:
            try:
                observer(took, len(body), outcome)
            except Exception:  # a metrics pipeline must not cost a batch
                self.reporter.hook_errors.add()
        return outcome

    def send_fresh(self, items: list[QueuedEvent]) -> bool:
        """Send events straight from the queue as one body encoded in one msgspec call,
        with books kept per batch: no per-event body, ``Pending`` or loop when Enso takes
        them all (the common case). Only when it does not are the events encoded one by
        one and settled as any other batch (retries, bisection, 413 and partial failures
        need per-event bodies). False, having done nothing, when the per-event path must
        cut the batch: it does not encode, or its body is over the byte limit.

        Memory: the body is counted in ``outstanding_bytes`` while the request runs, on
        top of the queued events' own estimates, which stay as they were.
        """
        ledger = self.ledger
        try:
            body = self._encoder.encode_batch(items, ledger.id_prefix)
        except Exception:  # an event msgspec refuses: the per-event path isolates it
            return False
        size = len(body)
        if size > ledger.schedule.byte_limit:  # only this thread changes it
            return False
        n = len(items)
        now = time.monotonic()
        with ledger.lock:
            if ledger.closed:
                return True  # shutdown() accounted for them (inflight_raw)
            ledger.begin_fresh_locked(size)
            deadline = min(ledger.deadline, self._inline_deadline)
        timeout = self.config.timeout
        if deadline != math.inf:
            timeout = max(min(timeout, deadline - now), 0.05)
        outcome = self.request(body, timeout, n)
        del body
        if isinstance(outcome, Answered):
            verdict = reconcile(outcome.answer, n)  # pure: apply_outcome checks it again
            if verdict.vouched and not verdict.failures:
                held_total = sum(map(size_of, items)) + n * EVENT_OVERHEAD
                with ledger.lock:
                    ledger.fresh_delivered_locked(items, size, held_total)
                if self.receipts is not None:  # folded and written before flush() returns
                    self.report_problems(self.receipts.commit_settled(ledger))
                self.reporter.log.emit()
                return True
        # Per-event objects, only now: the schedule retries, bisects and splits them.
        pendings, unencodable, grown = self.encode_all(items)
        for p in pendings:
            p.attempts = 1
            p.first_sent = now
        if unencodable:  # cannot happen (the batch encoded); indices would not match
            outcome = Retry("an event of the batch no longer encodes alone")
        reports: Reports = []
        try:
            with ledger.lock:
                if not ledger.fresh_unsure_locked(size, pendings, grown):
                    return True  # shutdown() already reported these as dropped
                self.drop_unsendable_locked([], unencodable, reports)
                ledger.finish_send_locked(
                    pendings, outcome, time.monotonic(), reports, self.reporter.log
                )
        finally:
            self.hand_over(reports)
        return True

    def report_problems(self, problems: list[Problem]) -> None:
        if not problems:
            return
        log = self.reporter.log
        with self.ledger.lock:
            self.ledger.note_error_locked(problems[-1][1])
        for kind, message in problems:
            log.always(logging.ERROR, "enso-tracker spool (%s): %s", kind, message)
        log.emit()

    def hand_over(self, reports: Reports) -> None:
        """Report drops counted under the lock, then let ``flush()`` see them done.

        Called with the lock released, after every locked section of the sender: it is
        also where log records queued under the lock are emitted, and, with a spool,
        where dead letters are stored and settled rows deleted (before ``flush()`` may
        return: a caller who flushed finds its dead letters stored).
        """
        if self.spooler is not None:
            self.spooler.commit()
        elif self.receipts is not None:
            self.report_problems(self.receipts.commit_settled(self.ledger))
        self.reporter.hand_over(reports, self.ledger.handed_over)
