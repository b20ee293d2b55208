"""The ledger and the settling of outcomes, deterministic: no thread, socket or sleep."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import pytest

from enso_tracker import (
    Answered,
    BatchAnswer,
    Config,
    FailedRecord,
    Rejected,
    Retry,
    TooLarge,
    Unauthorized,
)
from enso_tracker._ledger import Ledger, State
from enso_tracker._log import DeferredLog, ErrorCounter
from enso_tracker._outcomes import apply_outcome
from enso_tracker._record import EVENT_OVERHEAD, SEQ, Pending, QueuedEvent, held
from enso_tracker._reporting import Reports
from enso_tracker._retry import RetryPolicy
from enso_tracker._schedule import NO_SEQ, Schedule
from tests.unit.audit import audit

CONFIG = Config(max_queue_size=10, max_queue_bytes=10_000, max_retries=2)


def dropped_seqs(items: Sequence[Pending] | Sequence[QueuedEvent]) -> list[int]:
    """Seqs of a report's events: Pendings as the ledger held them (the Reporter decodes
    them, outside the lock), or queued tuples."""
    return [e.seq if isinstance(e, Pending) else e[SEQ] for e in items]


def ledger() -> Ledger:
    policy = RetryPolicy(max_retries=2, max_event_age=100.0, backoff_base=1.0, backoff_max=4.0)
    schedule = Schedule(
        policy, batch_size=4, byte_limit=10_000, flush_interval=1.0, rng=random.Random(3)
    )
    return Ledger(CONFIG, schedule, "evt_test_")


def accept(led: Ledger, n: int, size: int = 500) -> None:
    """What track() does under the lock."""
    for _ in range(n):
        led.seq += 1
        item = (led.seq, f"evt_{led.seq}", "ent", "m", 1, 0, None, None, size - EVENT_OVERHEAD)
        led.queue.append(item)
        led.outstanding += 1
        led.outstanding_bytes += size


def take(led: Ledger, now: float = 100.0) -> list[Pending]:
    """What the worker does: plan, then encode (here: a fixed body) and cut."""
    led.flush_asked = True  # as flush() does: no waiting for flush_interval
    taken, _ = led.plan_locked(now)
    batch = [
        e if isinstance(e, Pending) else Pending(0.0, e[SEQ], e, b"{}", held(e)) for e in taken
    ]
    led.inflight, led.inflight_raw = batch, []
    for p in batch:
        p.attempts += 1
        p.first_sent = p.first_sent or now
    return batch


def answer(n: int, *failed: FailedRecord) -> Answered:
    return Answered(
        BatchAnswer(
            failed=list(failed),
            summary_total=n,
            summary_failed=len(failed),
            summary_success=n - len(failed),
            status="success",
        )
    )


def settle(led: Ledger, batch: list[Pending], outcome: object) -> tuple[Reports, DeferredLog]:
    reports: Reports = []
    log = DeferredLog(ErrorCounter())
    with led.lock:  # the contract of every *_locked call
        apply_outcome(led, batch, outcome, 100.0, reports, log)  # type: ignore[arg-type]
        led.inflight = []
    return reports, log


def balanced(led: Ledger) -> bool:
    audit(led)  # what the queues hold, event by event, is what the books say
    stats = led.snapshot(0, 0)
    return stats.balanced and stats.accepted == led.seq


# -- admission -------------------------------------------------------------------------


def test_refusals_say_why_and_are_counted() -> None:
    led = ledger()
    accept(led, 10)
    reason = led.refuse_locked(100, may_block=False)
    assert reason is not None
    assert reason.kind == "queue_full"
    assert "max_queue_size=10" in reason.message
    led.state = State.STOPPING
    reason = led.refuse_locked(100, may_block=False)
    assert reason is not None
    assert reason.kind == "closed"
    assert led.counters.refused == {"queue_full": 1, "closed": 1}


# -- settling outcomes -----------------------------------------------------------------


def test_an_answer_accounting_for_everything_delivers_the_batch() -> None:
    led = ledger()
    accept(led, 4)
    batch = take(led)
    reports, _ = settle(led, batch, answer(4))
    assert reports == []
    assert (led.counters.delivered, led.outstanding, led.outstanding_bytes) == (4, 0, 0)
    assert led.counters.requests == 1
    assert led.settled_locked(led.seq)
    assert balanced(led)


def test_per_record_failures_are_rejected_or_retried_by_their_status() -> None:
    led = ledger()
    accept(led, 4)
    batch = take(led)
    outcome = answer(
        4,
        FailedRecord(index=1, error="Customer entity not found", code=2002, statusCode=404),
        FailedRecord(index=3, error="busy", code="transient", statusCode="503"),
    )
    reports, _ = settle(led, batch, outcome)
    assert led.counters.delivered == 2
    [(items, reason)] = reports
    assert dropped_seqs(items) == [2]
    assert (reason.kind, reason.code, reason.status) == ("rejected", 2002, 404)
    assert [p.seq for p in led.schedule.retry] == [4]  # backs off alone
    assert led.counters.retried == 1
    assert led.min_unsettled_locked() == 4
    assert not led.settled_locked(led.seq)
    assert balanced(led)


def test_an_answer_that_does_not_reconcile_delivers_nothing() -> None:
    led = ledger()
    accept(led, 3)
    batch = take(led)
    bad = Answered(BatchAnswer(failed=[], summary_total=0, summary_failed=0, summary_success=0))
    reports, _ = settle(led, batch, bad)
    assert reports == []
    assert led.counters.delivered == 0
    assert led.counters.failed_requests == 1
    assert led.counters.last_error is not None
    assert "does not account" in led.counters.last_error
    assert [p.seq for p in led.schedule.ready] == [1, 2, 3]
    assert balanced(led)


@pytest.mark.parametrize(
    ("outcome", "dropped"),
    [
        (Rejected("HTTP 403: Forbidden", 403), {"rejected": 2}),
        (TooLarge("HTTP 413"), {}),  # two events: split, not dropped
        (Retry("HTTP 503", 503), {}),
        (Unauthorized("HTTP 401", 401), {}),
    ],
)
def test_request_level_outcomes(outcome: object, dropped: dict[str, int]) -> None:
    led = ledger()
    accept(led, 2)
    batch = take(led)
    settle(led, batch, outcome)
    assert led.counters.dropped == dropped
    assert led.counters.failed_requests == 1
    assert balanced(led)


def test_unauthorized_is_logged_once_and_keeps_the_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    led = ledger()
    accept(led, 2)
    _, log = settle(led, take(led), Unauthorized("HTTP 401", 401))
    assert led.counters.auth_state == "unauthorized"
    assert led.outstanding == 2
    with caplog.at_level(logging.ERROR, logger="enso_tracker"):
        log.emit()  # queued under the lock, emitted only now
    assert "refuses the credentials" in caplog.text


def test_a_lone_413_event_is_dropped_as_too_large() -> None:
    led = ledger()
    accept(led, 1)
    reports, _ = settle(led, take(led), TooLarge("HTTP 413"))
    assert led.counters.dropped == {"too_large": 1}
    assert reports[0][1].status == 413


def test_retries_end_as_retries_exhausted_with_the_last_error() -> None:
    led = ledger()
    accept(led, 2)
    for _ in range(3):  # max_retries=2: the third failure spends the budget
        led.schedule.gate_until = 0.0
        reports, _ = settle(led, take(led), Retry("HTTP 429: slow down", 429))
    assert led.counters.dropped == {"retries_exhausted": 2}
    assert all("HTTP 429: slow down" in r.message for _, r in reports)
    assert led.outstanding == 0
    assert balanced(led)


def test_exhausted_events_name_the_cause_once_however_many_and_however_often() -> None:
    # Each drop sets last_error: the cause must be taken once, before the group's drops,
    # and never be a previous exhaustion's text (it nested once per event and round).
    led = ledger()
    for _ in range(2):  # two rounds of exhaustion
        accept(led, 4)
        messages: list[str] = []
        while led.outstanding:
            led.schedule.gate_until = 0.0
            reports, _ = settle(led, take(led), Retry("HTTP 503: busy", 503))
            messages += [r.message for _, r in reports]
        assert len(messages) == 4
        assert all(m.count("last error:") == 1 and m.endswith("HTTP 503: busy") for m in messages)
    assert led.counters.last_error is not None
    assert led.counters.last_error.count("last error:") == 1
    assert led.counters.dropped == {"retries_exhausted": 8}
    assert balanced(led)


def test_an_exhausted_event_names_the_requests_error_whole_whatever_it_says() -> None:
    # Enso's text is quoted as it came, even if it reads like one of our own causes.
    led = ledger()
    accept(led, 1)
    message = "HTTP 503: proxy said; last error: upstream reset"
    for _ in range(3):  # max_retries=2
        led.schedule.gate_until = 0.0
        for p in led.schedule.retry:
            p.due = 0.0
        reports, _ = settle(led, take(led), Retry(message, 503))
    [(_, reason)] = reports
    assert reason.kind == "retries_exhausted"
    assert reason.message.endswith(f"s; last error: {message}")
    assert balanced(led)


def test_a_failed_record_without_a_status_is_rejected_never_resent() -> None:
    # RetryPolicy.is_retryable_status(None) is False: resending it would loop forever.
    led = ledger()
    accept(led, 3)
    batch = take(led)
    reports, _ = settle(led, batch, answer(3, FailedRecord(index=1, error="bad", code=2001)))
    [(items, reason)] = reports
    assert dropped_seqs(items) == [2]
    assert (reason.kind, reason.code, reason.status) == ("rejected", 2001, None)
    assert (led.counters.delivered, led.counters.retried, led.counters.requests) == (2, 0, 1)
    assert (led.schedule.retry, list(led.schedule.ready)) == ([], [])
    assert led.outstanding == 0
    assert balanced(led)


def test_an_event_failing_alone_past_its_budget_ends_retries_exhausted() -> None:
    led = ledger()
    accept(led, 2)
    now = 100.0
    for attempt in range(1, 4):  # max_retries=2: the third per-record 503 spends it
        batch = take(led, now)
        assert [p.seq for p in batch] == ([1, 2] if attempt == 1 else [1])
        assert batch[0].attempts == attempt
        failed = FailedRecord(index=0, error="busy", code="transient", statusCode=503)
        reports, _ = settle(led, batch, answer(len(batch), failed))
        now += 100.0  # past any backoff (backoff_max=4)
    [(items, reason)] = reports
    assert dropped_seqs(items) == [1]
    assert reason.kind == "retries_exhausted"
    assert led.counters.dropped == {"retries_exhausted": 1}
    assert (led.counters.delivered, led.counters.retried) == (1, 2)
    assert (led.schedule.retry, list(led.schedule.ready)) == ([], [])  # in no queue
    assert led.outstanding == 0
    assert balanced(led)


@pytest.mark.parametrize(
    ("outcome", "group"),
    [
        (Retry("ConnectError"), 2),  # no answer: maybe this batch's doing, so bisected
        (Retry("HTTP 502", 502), 2),
        (Retry("HTTP 429: slow down", 429), 1 << 30),  # a rate limit says nothing of it
        (Retry("HTTP 408", 408), 1 << 30),
    ],
)
def test_only_suspect_failures_bisect_the_batch(outcome: Retry, group: int) -> None:
    led = ledger()
    accept(led, 4)
    settle(led, take(led), outcome)
    assert [p.group for p in led.schedule.ready] == [group] * 4
    assert led.counters.retried == 4
    assert balanced(led)


# -- the low-water mark and shutdown ---------------------------------------------------


def test_min_unsettled_follows_queue_inflight_and_schedule() -> None:
    led = ledger()
    assert led.min_unsettled_locked() == NO_SEQ
    accept(led, 6)
    assert led.min_unsettled_locked() == 1
    batch = take(led)  # 1-4 in flight, 5-6 queued
    assert led.min_unsettled_locked() == 1
    settle(led, batch, answer(4))
    assert led.min_unsettled_locked() == 5
    assert led.settled_locked(4)
    assert not led.settled_locked(5)


def test_a_retried_event_delivered_by_a_partly_failed_answer_is_settled() -> None:
    # Retried events are noted out of order (the low-water heap); one delivered by an
    # answer that rejects another must leave it, or flush() waits for it forever.
    led = ledger()
    accept(led, 2)
    settle(led, take(led), Retry("HTTP 429", 429))  # both back in line, noted
    led.schedule.gate_until = 0.0
    batch = take(led)
    assert [p.seq for p in batch] == [1, 2]
    reports, _ = settle(
        led, batch, answer(2, FailedRecord(index=1, error="bad", code=2001, statusCode=400))
    )
    assert (led.counters.delivered, led.counters.dropped) == (1, {"rejected": 1})
    assert led.min_unsettled_locked() == NO_SEQ
    assert not led.settled_locked(2)  # until the drop is reported
    led.handed_over(len(reports))
    assert led.settled_locked(2)
    assert balanced(led)


def test_close_drops_everything_left_as_shutdown() -> None:
    led = ledger()
    accept(led, 6)
    batch = take(led)
    settle(led, batch, Retry("down", None))
    reports: Reports = []
    with led.lock:
        left = led.close_locked(reports)
    assert len(left) == 6
    assert led.counters.dropped == {"shutdown": 6}
    assert led.state is State.CLOSED
    assert led.outstanding == 0
    assert balanced(led)
