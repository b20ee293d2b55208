"""The schedule's rules, deterministic: no lock, thread, socket, clock or sleep."""

from __future__ import annotations

import random
from collections import deque

from enso_tracker._record import Pending, QueuedEvent
from enso_tracker._retry import RetryPolicy
from enso_tracker._schedule import NO_SEQ, Schedule
from enso_tracker._wire import BODY_OVERHEAD

POLICY = RetryPolicy(max_retries=3, max_event_age=100.0, backoff_base=1.0, backoff_max=8.0)


def schedule(batch_size: int = 4, byte_limit: int = 10_000, seed: int = 7) -> Schedule:
    return Schedule(
        POLICY,
        batch_size=batch_size,
        byte_limit=byte_limit,
        flush_interval=1.0,
        rng=random.Random(seed),
    )


def item(seq: int) -> QueuedEvent:
    return (seq, f"evt_{seq}", "ent", "m", seq, 0, None, None, 100)


def queue(*seqs: int) -> deque[QueuedEvent]:
    return deque(item(s) for s in seqs)


def pending(seq: int, body: int = 10, attempts: int = 1, first_sent: float = 0.0) -> Pending:
    return Pending(0.0, seq, item(seq), b"x" * body, 100, attempts, first_sent)


def seqs(taken: list[Pending | QueuedEvent]) -> list[int]:
    return [e.seq if isinstance(e, Pending) else e[0] for e in taken]


# -- planning --------------------------------------------------------------------------


def test_a_partial_batch_waits_for_the_flush_interval_then_goes() -> None:
    s = schedule()
    q = queue(1, 2)
    assert s.plan(10.0, q, urgent=False) == ([], 1.0)
    assert s.plan(10.6, q, urgent=False) == ([], 0.40000000000000036)
    taken, wait = s.plan(11.0, q, urgent=False)
    assert (seqs(taken), wait, list(q)) == ([1, 2], 0.0, [])


def test_a_full_batch_or_an_urgent_caller_does_not_wait() -> None:
    s = schedule(batch_size=2)
    q = queue(1, 2, 3)
    assert seqs(s.plan(0.0, q, urgent=False)[0]) == [1, 2]
    assert s.plan(0.0, q, urgent=False)[0] == []  # one left: waits
    assert seqs(s.plan(0.0, q, urgent=True)[0]) == [3]


def test_nothing_to_do_means_wait_until_woken() -> None:
    assert schedule().plan(0.0, deque(), urgent=True) == ([], None)


def test_ready_retries_go_before_the_queue() -> None:
    s = schedule()
    s.put_back([pending(1), pending(2)])
    taken, _ = s.plan(0.0, queue(3, 4, 5), urgent=True)
    assert seqs(taken) == [1, 2, 3, 4]


# -- a failed request: gate, budgets, turn-taking, bisection ---------------------------


def test_a_failed_request_shuts_the_gate_for_retry_after() -> None:
    s = schedule()
    batch = [pending(1), pending(2)]
    assert s.on_failure(batch, 100.0, 5.0, suspect=False) == []
    assert s.gate_until == 105.0
    assert s.plan(104.0, queue(3), urgent=True) == ([], 1.0)
    assert seqs(s.plan(105.0, queue(), urgent=True)[0]) == [1, 2]


def test_backoff_is_full_jitter_on_consecutive_failures() -> None:
    rng = random.Random(1)
    expected = [rng.uniform(0, min(8.0, 1.0 * 2**n)) for n in (1, 2, 3, 4)]
    s = schedule(seed=1)
    for n, want in enumerate(expected):
        s.on_failure([pending(2 * n), pending(2 * n + 1)], 0.0, None, suspect=False)
        assert s.gate_until == want
        s.ready.clear()
    assert s.failures == 4
    s.on_success()
    assert s.failures == 0


def test_spent_budgets_are_returned_not_put_back() -> None:
    s = schedule()
    tired = pending(1, attempts=4)  # max_retries=3
    old = pending(2, first_sent=-200.0)  # max_event_age=100
    fine = pending(3)
    assert s.on_failure([tired, old, fine], 0.0, None, suspect=False) == [tired, old]
    assert list(s.ready) == [fine]


def test_after_a_failed_retry_the_next_batch_is_fresh() -> None:
    s = schedule()
    retried = [pending(1, attempts=2), pending(2, attempts=2)]
    s.on_failure(retried, 0.0, 0.0, suspect=False)
    taken, _ = s.plan(0.0, queue(3, 4), urgent=False)
    assert seqs(taken) == [3, 4]  # fresh events first, even before flush_interval
    taken, _ = s.plan(0.0, queue(), urgent=False)
    assert seqs(taken) == [1, 2]


def test_a_batch_failing_while_the_server_is_healthy_is_bisected_to_the_culprit() -> None:
    s = schedule(batch_size=8)
    batch = [pending(i) for i in range(8)]
    s.on_failure(batch, 0.0, 0.0, suspect=True)  # first failure after a success
    first, _ = s.plan(0.0, deque(), urgent=True)
    assert seqs(first) == [0, 1, 2, 3]  # halves: groups of 4
    second, _ = s.plan(0.0, deque(), urgent=True)
    assert seqs(second) == [4, 5, 6, 7]
    s.on_success()
    s.on_failure([p for p in first if isinstance(p, Pending)], 0.0, 0.0, suspect=True)
    assert seqs(s.plan(0.0, deque(), urgent=True)[0]) == [0, 1]
    # A lone failing event leaves the line: it waits on its own backoff in the heap.
    s.on_success()
    s.on_failure([pending(9)], 0.0, None, suspect=True)
    assert [p.seq for p in s.retry] == [9]
    assert s.retry[0].due > 0.0


def test_rate_limits_and_refused_credentials_do_not_bisect() -> None:
    s = schedule(batch_size=8)
    s.on_failure([pending(i) for i in range(8)], 0.0, 0.0, suspect=False)
    assert seqs(s.plan(0.0, deque(), urgent=True)[0]) == list(range(8))


def test_a_record_level_retry_backs_off_alone_and_respects_its_budget() -> None:
    s = schedule()
    p = pending(1, attempts=1)
    assert s.retry_later(p, 0.0)
    assert s.retry == [p]
    assert 0.0 <= p.due <= 2.0
    assert not s.retry_later(pending(2, attempts=4), 0.0)


# -- 413 and cutting by bytes ----------------------------------------------------------


def test_413_halves_the_byte_limit_and_a_split_is_not_an_attempt() -> None:
    s = schedule(byte_limit=10_000)
    batch = [pending(i, body=100, attempts=1) for i in range(4)]
    body = s.on_too_large(batch)
    assert body == BODY_OVERHEAD + 4 * 100 + 3
    assert s.byte_limit == body // 2
    assert [p.attempts for p in batch] == [0, 0, 0, 0]
    assert [p.seq for p in s.ready] == [0, 1, 2, 3]
    assert s.on_too_large([pending(9)]) is None  # alone: beyond help
    cut, too_large = s.cut([p for p in s.ready], hard_limit=1_000_000)
    assert [p.seq for p in cut] == [0]  # 2 x 100 bytes would pass the learned limit
    assert too_large == []


def test_cut_keeps_the_rest_in_order_and_picks_out_oversized_events() -> None:
    s = schedule(byte_limit=BODY_OVERHEAD + 25)
    events = [pending(1, body=10), pending(2, body=10), pending(3, body=10)]
    batch, too_large = s.cut(events, hard_limit=1_000)
    assert [p.seq for p in batch] == [1, 2]
    assert too_large == []
    assert [p.seq for p in s.ready] == [3]
    huge = pending(4, body=5_000)
    batch, too_large = schedule().cut([huge, pending(5)], hard_limit=1_000)
    assert too_large == [huge]
    assert [p.seq for p in batch] == [5]


# -- shutdown and the low-water mark ---------------------------------------------------


def test_expedite_cuts_every_backoff_and_keeps_acceptance_order() -> None:
    s = schedule()
    for seq, due in ((3, 50.0), (1, 90.0), (2, 70.0)):
        p = pending(seq)
        p.due = due
        s.retry.append(p)
    s.retry.sort()
    s.gate_until = 99.0
    s.expedite()
    taken, _ = s.plan(0.0, deque(), urgent=True)
    assert seqs(taken) == [1, 2, 3]


def test_drain_takes_everything_out() -> None:
    s = schedule()
    s.put_back([pending(1)])
    s.retry_later(pending(2), 0.0)
    assert sorted(p.seq for p in s.drain()) == [1, 2]
    assert not s.ready
    assert not s.retry
    assert s.low_water() == NO_SEQ


def test_low_water_is_the_lowest_parked_event_not_settled_since() -> None:
    s = schedule()
    a, b, c = pending(5), pending(2), pending(9)
    s.put_back([a, b])
    s.retry_later(c, 0.0)
    assert s.low_water() == 2
    b.done = True  # settled
    assert s.low_water() == 5
    s.park(b)  # back for a retry: counts again
    assert s.low_water() == 2
    a.done = b.done = c.done = True
    assert s.low_water() == NO_SEQ


# -- fuller requests at high rates (Config.min_request_interval) ------------------------


def gathering(batch_size: int = 2, backlog_size: int = 100) -> Schedule:
    return Schedule(
        POLICY,
        batch_size=batch_size,
        backlog_size=backlog_size,
        byte_limit=10_000,
        flush_interval=1.0,
        min_request_interval=0.1,
        rng=random.Random(7),
    )


def test_a_full_batch_soon_after_a_request_waits_out_the_gap_then_goes_fuller() -> None:
    s = gathering()
    q = queue(1, 2)
    taken, _ = s.plan(10.0, q, urgent=False, room=1_000)  # the first request: at once
    assert seqs(taken) == [1, 2]
    q.extend(queue(3, 4))
    assert s.plan(10.02, q, urgent=False, room=1_000) == ([], 0.08000000000000007)
    q.extend(queue(5, 6, 7))
    taken, wait = s.plan(10.1, q, urgent=False, room=1_000)
    assert (seqs(taken), wait, list(q)) == ([3, 4, 5, 6, 7], 0.0, [])


def test_nothing_is_held_when_urgent_without_room_with_a_retry_or_a_full_backlog() -> None:
    # urgent (flush or shutdown waiting)
    s = gathering()
    s.plan(10.0, queue(1, 2), urgent=False, room=1_000)
    assert seqs(s.plan(10.01, queue(3, 4), urgent=True, room=1_000)[0]) == [3, 4]
    # no room: the queue is half full, or a spool stages stored batches
    s = gathering()
    s.plan(10.0, queue(1, 2), urgent=False, room=1_000)
    assert seqs(s.plan(10.01, queue(3, 4), urgent=False, room=0)[0]) == [3, 4]
    # a full backlog request is already queued
    s = gathering(backlog_size=3)
    s.plan(10.0, queue(1, 2), urgent=False, room=1_000)
    assert seqs(s.plan(10.01, queue(3, 4, 5), urgent=False, room=1_000)[0]) == [3, 4, 5]
    # a retry is ready: it goes, with the queue behind it
    s = gathering()
    s.plan(10.0, queue(1, 2), urgent=False, room=1_000)
    s.ready.append(pending(9))
    assert seqs(s.plan(10.01, queue(3, 4), urgent=False, room=1_000)[0]) == [9, 3]


def test_a_full_batch_is_not_held_when_the_queue_would_outgrow_the_room_meanwhile() -> None:
    s = gathering(batch_size=10, backlog_size=1_000)
    s.plan(10.0, queue(*range(10)), urgent=False, room=1_000)
    q = queue(*range(10, 20))
    assert s.plan(10.05, q, urgent=False, room=1_000)[0] == []  # starts the batch clock
    # 10 events in 1 ms: 10,000/s, 500 more by the end of the gap, within the room of 1,000
    assert s.plan(10.051, q, urgent=False, room=1_000)[0] == []
    # the same rate with room for 400: it goes now
    assert len(s.plan(10.051, q, urgent=False, room=400)[0]) == 10


def test_after_a_take_that_left_a_backlog_behind_the_rest_goes_at_once() -> None:
    # the tail of a burst: the sender is draining, not keeping up; holding would only
    # add latency
    s = gathering(batch_size=2, backlog_size=3)
    q = queue(1, 2, 3, 4, 5)
    assert seqs(s.plan(10.0, q, urgent=False, room=1_000)[0]) == [1, 2, 3]
    assert seqs(s.plan(10.001, q, urgent=False, room=1_000)[0]) == [4, 5]
    # that take emptied the queue: the next full batch waits out the gap again
    q.extend(queue(6, 7))
    assert s.plan(10.002, q, urgent=False, room=1_000)[0] == []


def test_without_min_request_interval_every_full_batch_goes_at_once() -> None:
    s = schedule(batch_size=2)
    s.plan(10.0, queue(1, 2), urgent=False, room=1_000)
    assert seqs(s.plan(10.001, queue(3, 4), urgent=False, room=1_000)[0]) == [3, 4]
