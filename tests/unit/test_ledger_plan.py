"""The ledger's own planning, driven as the sender drives it: retries put back in line
go first, fresh events fill the rest of the batch, and what is taken is in flight as
what it is (encoded retries, raw fresh events); the audit checks the books each step."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from enso_tracker import Config, Retry
from enso_tracker._ledger import Ledger
from enso_tracker._log import DeferredLog, ErrorCounter
from enso_tracker._record import SEQ, Pending, held
from enso_tracker._reporting import Reports
from enso_tracker._retry import RetryPolicy
from enso_tracker._schedule import Schedule
from tests.unit.audit import audit
from tests.unit.test_ledger import accept, answer, ledger, settle, take
from tests.unit.test_settled_events_released import as_pendings
from tests.unit.test_spool_books import encoded, row_of
from tests.unit.test_spool_books import ledger as spool_ledger

pytestmark = pytest.mark.timeout(30)  # a planning loop that never ends fails, not hangs


def test_a_batch_of_retries_then_fresh_events_is_in_flight_as_each_is() -> None:
    led = ledger()  # batch_size=4
    accept(led, 2)
    first = take(led)  # encoded, as the sender encodes a batch before sending it
    settle(led, first, Retry("HTTP 429", 429))  # back in line, ready (429: not bisected)
    audit(led)
    led.schedule.gate_until = 0.0
    accept(led, 3)
    with led.lock:
        taken, _ = led.plan_locked(100.0)
    assert [p.seq if isinstance(p, Pending) else p[SEQ] for p in taken] == [1, 2, 3, 4]
    assert led.inflight == first  # the retries, encoded once and sent as they are
    assert [item[SEQ] for item in led.inflight_raw] == [3, 4]  # fresh: encoded only now
    assert [item[SEQ] for item in led.queue] == [5]
    held = audit(led)
    assert sorted(held.seqs) == [1, 2, 3, 4, 5]
    assert led.snapshot(0, 0).in_flight == 4


def test_three_retries_and_fresh_events_split_where_the_retries_end() -> None:
    led = ledger()
    accept(led, 3)
    settle(led, take(led), Retry("HTTP 429", 429))
    led.schedule.gate_until = 0.0
    accept(led, 2)
    with led.lock:
        led.plan_locked(100.0)
    assert [p.seq for p in led.inflight] == [1, 2, 3]
    assert [item[SEQ] for item in led.inflight_raw] == [4]
    assert audit(led).events == 5


def test_a_mixed_batch_once_encoded_is_in_flight_once_and_settles_whole() -> None:
    # The sender encodes the fresh part and hands the whole batch back to the ledger
    # (begin_send_locked): from then on each event is in flight once, as a Pending; the
    # raw items it was taken as are no longer held, so a delivery settles all of it.
    led = ledger()
    accept(led, 2)
    settle(led, take(led), Retry("HTTP 429", 429))
    led.schedule.gate_until = 0.0
    accept(led, 2)
    with led.lock:
        taken, _ = led.plan_locked(100.0)
    encoded = [
        e if isinstance(e, Pending) else Pending(0.0, e[SEQ], e, b"{}", held(e)) for e in taken
    ]
    with led.lock:
        batch, too_large = led.begin_send_locked(encoded, 0)
    assert ([p.seq for p in batch], too_large) == ([1, 2, 3, 4], [])
    assert led.inflight_raw == []
    assert sorted(audit(led).seqs) == [1, 2, 3, 4]  # each once
    assert led.snapshot(0, 0).in_flight == 4
    reports: Reports = []
    with led.lock:
        led.finish_send_locked(batch, answer(4), 101.0, reports, DeferredLog(ErrorCounter()))
        assert led.settled_locked(4)
    assert (led.counters.delivered, led.outstanding, reports) == (4, 0, [])
    assert audit(led).events == 0


@pytest.mark.parametrize("spooled", [False, True], ids=["queue", "spool"])
def test_a_full_batch_is_held_for_a_fuller_request_from_the_queue_never_from_the_spool(
    spooled: bool, tmp_path: Path
) -> None:
    # min_request_interval: a full batch taken soon after the last take waits to gather
    # more, if at the rate the queue fills that leaves room in memory. Staged spool rows
    # are stored batches: holding them would only slow the drain.
    # Memory holds 4 events of 500 bytes: below half of max_queue_size (5) and of
    # max_queue_bytes (2,500), so at that rate there is room to gather more.
    config = Config(
        max_queue_size=10,
        max_queue_bytes=5_000,
        max_batch_size=4,
        spool_dir=str(tmp_path) if spooled else None,
    )
    policy = RetryPolicy(max_retries=2, max_event_age=100.0, backoff_base=1.0, backoff_max=4.0)
    schedule = Schedule(
        policy,
        batch_size=4,
        backlog_size=16,
        byte_limit=10_000,
        flush_interval=10.0,
        min_request_interval=5.0,
        rng=random.Random(3),
    )
    led = Ledger(config, schedule, "evt_test_")

    def arrive(n: int) -> None:
        accept(led, n)
        if led.spool is not None:  # the spooler writes them to a row: staged
            with led.lock:
                raw = led.take_queued_locked(n)
                written = encoded(raw)
                led.spool.stage_locked(written, row_of(written))

    def plan(now: float) -> tuple[list[int], float | None]:
        with led.lock:
            taken, wait = led.plan_locked(now)
        return [p.seq if isinstance(p, Pending) else p[SEQ] for p in taken], wait

    arrive(4)
    assert plan(100.0) == ([1, 2, 3, 4], 0.0)  # the first full batch goes at once
    with led.lock:
        batch, _ = led.begin_send_locked(as_pendings([*led.inflight, *led.inflight_raw]), 0)
        led.finish_send_locked(batch, answer(4), 100.0, [], DeferredLog(ErrorCounter()))
    arrive(1)
    assert plan(101.0) == ([], 10.0)  # one event: flush_interval
    arrive(3)
    taken, wait = plan(104.5)  # full again, 4.5 s after the last take
    if spooled:
        assert (taken, wait) == ([5, 6, 7, 8], 0.0)
    else:
        assert (taken, wait) == ([], 0.5)  # held until 5 s after the last take
        assert plan(105.0) == ([5, 6, 7, 8], 0.0)
    audit(led)


def test_queued_events_go_at_once_while_a_flush_waits_and_wait_again_once_it_left() -> None:
    led = ledger()  # batch_size=4, flush_interval=1.0
    accept(led, 1)
    with led.lock:
        assert led.plan_locked(100.0) == ([], 1.0)  # alone: waits for flush_interval
        led.add_flush_waiter_locked()
        taken, _ = led.plan_locked(100.0)
    assert taken == list(led.inflight_raw)  # a flush() waits: sent now
    assert [item[SEQ] for item in led.inflight_raw] == [1]
    led.flush_waiter_gone()
    settle(led, take_in_flight(led), answer(1))
    accept(led, 1)
    with led.lock:
        assert led.plan_locked(100.5) == ([], 1.0)  # no flush() waits any more
    assert led.flush_waiters == 0
    audit(led)


def take_in_flight(led: Ledger) -> list[Pending]:
    """What plan_locked put in flight, encoded and cut as the sender does."""
    with led.lock:
        batch, _ = led.begin_send_locked(as_pendings([*led.inflight, *led.inflight_raw]), 0)
    for p in batch:
        p.attempts, p.first_sent = 1, 100.0
    return batch


@pytest.mark.parametrize(
    ("max_queue_bytes", "arriving"),
    [(100_000, 4), (4096, 3)],
    ids=["half the queue by count", "half the queue by bytes"],
)
def test_a_full_batch_goes_at_once_when_holding_it_could_fill_half_the_queue(
    max_queue_bytes: int, arriving: int
) -> None:
    # As above, but memory is at half of max_queue_size (5 of 10 events), or of
    # max_queue_bytes (4 events of 500 bytes, 2,048 the half): holding the batch could
    # push track() into queue_full, so it goes now.
    config = Config(max_queue_size=10, max_queue_bytes=max_queue_bytes, max_batch_size=4)
    policy = RetryPolicy(max_retries=2, max_event_age=100.0, backoff_base=1.0, backoff_max=4.0)
    schedule = Schedule(
        policy,
        batch_size=4,
        backlog_size=16,
        byte_limit=10_000,
        flush_interval=10.0,
        min_request_interval=5.0,
        rng=random.Random(3),
    )
    led = Ledger(config, schedule, "evt_test_")
    accept(led, 4)
    with led.lock:
        led.plan_locked(100.0)  # the first full batch: the last take at 100.0
    settle(led, take_in_flight(led), answer(4))
    accept(led, 1)
    with led.lock:
        assert led.plan_locked(101.0) == ([], 10.0)
    accept(led, arriving)
    with led.lock:
        taken, wait = led.plan_locked(104.5)
    assert wait == 0.0
    assert len(taken) == 1 + arriving
    audit(led)


def test_a_prompt_send_asked_on_the_sender_thread_lasts_until_the_queue_is_empty() -> None:
    led = ledger()  # flush_interval=1.0
    accept(led, 1)
    with led.lock:
        led.ask_prompt_send_locked()  # flush() from on_drop
        taken, _ = led.plan_locked(100.0)
    assert len(taken) == 1
    settle(led, take_in_flight(led), answer(1))
    accept(led, 1)
    with led.lock:  # asked for what was queued then, not for every later event
        assert led.plan_locked(100.5) == ([], 1.0)
    audit(led)


def test_with_a_spool_a_prompt_send_lasts_while_events_wait_to_be_written(tmp_path: Path) -> None:
    led = spool_ledger(tmp_path)  # max_batch_size=4, spool_interval=1.0
    spool = led.spool
    assert spool is not None
    accept(led, 4)
    with led.lock:
        raw = led.take_queued_locked(4)
        written = encoded(raw)
        spool.stage_locked(written, row_of(written))
    accept(led, 2)  # still in the queue, not yet written
    with led.lock:
        led.ask_prompt_send_locked()
        taken, _ = led.plan_locked(100.0)
        assert taken == written  # the staged row goes
        # The two queued are still asked for: the spooler writes them now, not after
        # spool_interval.
        raw, wait = spool.plan_locked(100.0)
    assert ([q[SEQ] for q in raw], wait) == ([5, 6], 0.0)


def test_a_batch_of_retries_only_is_in_flight_from_the_plan_on() -> None:
    # Between the plan and the request the sender works outside the lock: what it took
    # must be counted in flight (flush() must not see it settled, the audit held once).
    led = ledger()
    accept(led, 3)
    settle(led, take(led), Retry("HTTP 429", 429))
    led.schedule.gate_until = 0.0
    with led.lock:
        taken, _ = led.plan_locked(100.0)
    assert [p.seq for p in led.inflight] == [1, 2, 3]
    assert led.inflight == taken
    assert led.inflight_raw == []
    assert sorted(audit(led).seqs) == [1, 2, 3]
    assert led.min_unsettled_locked() == 1
    assert not led.settled_locked(1)


def test_one_retry_then_fresh_events_split_after_the_retry() -> None:
    led = ledger()
    accept(led, 1)
    settle(led, take(led), Retry("HTTP 429", 429))  # alone: on its own backoff (< 4 s)
    led.schedule.gate_until = 0.0
    accept(led, 3)
    with led.lock:
        led.plan_locked(110.0)  # the retry is due; with it, a full batch
    assert [p.seq for p in led.inflight] == [1]
    assert [item[SEQ] for item in led.inflight_raw] == [2, 3, 4]
    assert audit(led).events == 4
