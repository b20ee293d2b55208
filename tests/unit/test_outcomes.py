"""What each outcome of a request does beyond moving events (``_outcomes``): the request
is counted, a 2xx proves the credentials, an answer that accounts for its batch resets
the backoff and dates the last success, ``last_error`` names the trouble, and the
warnings a person reads say what happened to how many events. Ledger-level tests drive
``apply_outcome`` directly (no thread, socket or sleep); the fresh-batch path, which
only a real ``Tracker`` takes, runs over FakeEnso's socketless transport."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from enso_tracker import (
    Answered,
    BatchAnswer,
    FailedRecord,
    Retry,
    TooLarge,
    Tracker,
    Unauthorized,
)
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, accepted
from tests.unit.audit import audit
from tests.unit.test_ledger import accept, answer, balanced, ledger, settle, take


def emitted(log: Any, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The records a settle queued (emitted only now, outside the lock), as read."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="enso_tracker"):
        log.emit()
    return [r.getMessage() for r in caplog.records]


# ------------------------------------------------------------- per-batch settling


def test_a_2xx_proves_the_credentials_even_when_its_answer_does_not_add_up() -> None:
    led = ledger()
    accept(led, 2)
    settle(led, take(led), Unauthorized("HTTP 401", 401))
    assert led.counters.auth_state == "unauthorized"
    led.schedule.gate_until = 0.0
    unreconciled = Answered(BatchAnswer(failed=[], summary_total=5, summary_failed=0))
    settle(led, take(led), unreconciled)
    # Enso took the token: only the counts are off.
    assert led.snapshot(0, 0).auth_state == "ok"
    assert led.counters.delivered == 0
    assert balanced(led)


def test_an_answered_batch_dates_the_last_success() -> None:
    led = ledger()
    accept(led, 3)
    before = time.time()
    settle(led, take(led), answer(3, FailedRecord(index=0, error="no", code=2002)))
    assert led.counters.last_success_at is not None
    assert before <= led.counters.last_success_at <= time.time()


def test_an_answer_that_does_not_add_up_is_no_success() -> None:
    led = ledger()
    accept(led, 3)
    settle(led, take(led), Answered(BatchAnswer(failed=[], summary_total=3, summary_failed=1)))
    assert led.counters.last_success_at is None
    assert led.counters.failed_requests == 1


def test_an_answered_batch_resets_the_backoff_so_the_next_suspect_failure_bisects() -> None:
    # A suspect failure (a 502) right after a success bisects its batch; one after
    # another failure does not (the batch is not what is wrong). An answered request in
    # between, even one with a failed record, is a success.
    led = ledger()
    accept(led, 4)
    settle(led, take(led), Retry("HTTP 502", 502))
    assert [p.group for p in led.schedule.ready] == [2] * 4  # the first failure: bisected
    led.schedule.gate_until = 0.0
    batch = take(led)
    assert len(batch) == 2
    failed = FailedRecord(index=0, error="Customer entity not found", code=2002, statusCode=404)
    settle(led, batch, answer(2, failed))
    led.schedule.gate_until = 0.0
    rest = take(led)
    assert [p.seq for p in rest] == [3, 4]
    settle(led, rest, Retry("HTTP 502", 502))
    assert [p.group for p in led.schedule.ready] == [1, 1]  # bisected again
    assert balanced(led)


def test_per_record_retries_leave_a_last_error_even_with_none_before() -> None:
    led = ledger()
    accept(led, 3)
    assert led.counters.last_error is None
    failed = FailedRecord(index=2, error=None, code=None, statusCode=503)
    settle(led, take(led), answer(3, failed))
    assert led.counters.retried == 1
    assert led.counters.last_error == "per-record failures"


def test_per_record_retries_keep_the_last_error_they_found() -> None:
    led = ledger()
    accept(led, 3)
    settle(led, take(led), Retry("HTTP 429: slow down", 429))  # not bisected: whole again
    led.schedule.gate_until = 0.0
    failed = FailedRecord(index=0, error="busy", code="transient", statusCode=503)
    settle(led, take(led, now=200.0), answer(3, failed))
    assert led.counters.retried == 4
    assert led.counters.last_error == "HTTP 429: slow down"


# ------------------------------------------------------- what the warnings say


def test_a_failed_request_warns_how_many_events_are_retried_and_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    led = ledger()
    accept(led, 3)
    _, log = settle(led, take(led), Retry("HTTP 503: busy", 503))
    assert emitted(log, caplog) == ["Enso request failed, will retry 3 events: HTTP 503: busy"]
    assert caplog.records[0].levelno == logging.WARNING


def test_a_413_warns_of_the_limit_learnt(caplog: pytest.LogCaptureFixture) -> None:
    led = ledger()
    accept(led, 2)  # bodies of b"{}": 11 + 2 + 1 + 2 + 2 = 18 bytes
    _, log = settle(led, take(led), TooLarge("HTTP 413"))
    assert emitted(log, caplog) == [
        "Enso answered 413 to a 18-byte batch; batches are now cut at 15 bytes"
    ]
    assert led.counters.dropped == {}
    assert balanced(led)


def test_a_lone_event_refused_as_too_large_is_dropped_and_no_limit_is_learnt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    led = ledger()
    accept(led, 1)
    limit = led.schedule.byte_limit
    reports, log = settle(led, take(led), TooLarge("HTTP 413: too big"))
    [(_, reason)] = reports
    assert (reason.kind, reason.message, reason.status) == ("too_large", "HTTP 413: too big", 413)
    assert not any("batches are now cut" in m for m in emitted(log, caplog))
    assert led.schedule.byte_limit == limit
    assert balanced(led)


def test_an_answer_that_does_not_add_up_warns_that_the_batch_is_resent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    led = ledger()
    accept(led, 3)
    bad = Answered(BatchAnswer(failed=[], summary_total=4, summary_failed=0, summary_success=4))
    _, log = settle(led, take(led), bad)
    assert emitted(log, caplog) == [
        "Enso's answer does not account for a 3-event batch (the summary counts 4 events "
        "for a batch of 3); resending it"
    ]


def test_an_answer_counting_unlisted_failures_warns_that_events_are_resent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    led = ledger()
    accept(led, 3)
    unlisted = Answered(
        BatchAnswer(
            failed=[], summary_total=3, summary_failed=1, summary_success=2, status="success"
        )
    )
    _, log = settle(led, take(led), unlisted)
    assert emitted(log, caplog) == [
        "Enso's answer to a 3-event batch leaves events unaccounted for (the summary "
        "counts 1 failures but lists 0); resending them"
    ]
    assert led.counters.retried == 3
    assert led.counters.delivered == 0
    assert balanced(led)


# ------------------------------------------------ a fresh batch, through a Tracker

BASE_URL = "https://enso.test"
Make = Callable[..., Tracker]


@pytest.fixture
def fake() -> FakeEnso:
    """Served through ``transport()`` only: never started, no socket."""
    return FakeEnso()


@pytest.fixture
def drops() -> DropRecorder:
    return DropRecorder()


@pytest.fixture
def make(fake: FakeEnso, drops: DropRecorder) -> Iterator[Make]:
    made: list[Tracker] = []

    def build(transport: httpx.BaseTransport | None = None, **options: Any) -> Tracker:
        options.setdefault("on_drop", drops)
        options.setdefault("backoff_base", 0.001)
        options.setdefault("backoff_max", 0.01)
        options.setdefault("flush_interval", 0.05)
        options.setdefault("handle_sigterm", False)
        tracker = Tracker(
            api_key=API_KEY, base_url=BASE_URL, transport=transport or fake.transport(), **options
        )
        made.append(tracker)
        return tracker

    yield build
    for tracker in made:
        tracker.shutdown(5.0)


def test_a_fresh_batch_delivered_whole_counts_its_request_and_its_success(
    make: Make, fake: FakeEnso
) -> None:
    tracker = make()
    before = time.time()
    ids = [accepted(tracker.track("ent_1", "api_calls", i)) for i in range(3)]
    assert tracker.flush(10.0)
    assert fake.event_ids() == ids
    assert len(fake.batch_requests()) == 1
    stats = tracker.stats()
    assert (stats.requests, stats.failed_requests, stats.delivered) == (1, 0, 3)
    assert stats.last_success_at is not None
    assert before <= stats.last_success_at <= time.time()
    assert stats.auth_state == "ok"
    assert audit(tracker).events == 0


def test_a_fresh_batch_delivered_after_a_refused_key_says_the_credentials_are_ok(
    make: Make, fake: FakeEnso, drops: DropRecorder
) -> None:
    behind = fake.transport()
    refusals = [1]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events/batch") and refusals:
            refusals.pop()
            request.read()
            return httpx.Response(401, json={"status": "error", "message": "bad key"})
        return behind.handle_request(request)

    tracker = make(httpx.MockTransport(handle), max_retries=0)
    refused = accepted(tracker.track("ent_1", "api_calls", 1))
    assert tracker.flush(10.0)
    assert [e.event_id for e in drops.events("retries_exhausted")] == [refused]
    assert tracker.stats().auth_state == "unauthorized"
    later = accepted(tracker.track("ent_1", "api_calls", 2))
    assert tracker.flush(10.0)
    assert fake.event_ids() == [later]
    stats = tracker.stats()
    assert stats.auth_state == "ok"
    assert (stats.requests, stats.failed_requests) == (2, 1)
