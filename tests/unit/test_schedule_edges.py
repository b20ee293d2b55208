"""Edges of the schedule's rules the first suite left open (found by mutation passes):
turn-taking starts only after a *retry* fails and lasts one batch, a batch is due as
soon as ready retries and queued events fill it, 413 learning never cuts below one
event's body, an event failing alone waits out its own backoff, a bisected half goes
without fresh events, and a backlog request is sized by the byte estimate."""

from __future__ import annotations

import random
from collections import deque

from enso_tracker._schedule import Schedule
from enso_tracker._wire import BODY_OVERHEAD
from tests.unit.test_schedule import POLICY, gathering, pending, queue, schedule, seqs


def test_after_a_first_failure_retries_still_go_first_and_fresh_events_fill_the_batch() -> None:
    s: Schedule = schedule(batch_size=4)
    s.on_failure([pending(1, attempts=1), pending(2, attempts=1)], 0.0, 0.0, suspect=False)
    assert not s.queue_turn  # a fresh batch failed once: no turn to take yet
    # Two ready plus two queued fill a batch: due now, not after flush_interval.
    taken, wait = s.plan(0.0, queue(3, 4), urgent=False)
    assert (seqs(taken), wait) == ([1, 2, 3, 4], 0.0)


def test_ready_retries_and_a_queue_short_of_a_batch_wait_for_the_queue() -> None:
    s = schedule(batch_size=4)
    s.on_failure([pending(1, attempts=1)], 0.0, 0.0, suspect=False)  # alone: retry heap
    s.put_back([pending(2, attempts=1)])
    q = queue(3)
    taken, _ = s.plan(0.0, q, urgent=False)
    assert seqs(taken) == [2]  # the ready retry goes; the queue is not due yet
    assert [e[0] for e in q] == [3]


def test_413_learning_never_cuts_below_one_minimal_event() -> None:
    s = schedule(byte_limit=10_000)
    for _ in range(20):  # every split answered 413 again
        s.on_too_large([pending(1, body=1), pending(2, body=1)])
        s.ready.clear()
    assert s.byte_limit == BODY_OVERHEAD + 2  # '{"events":[' + '{}' + ']}'


def test_an_event_failing_on_its_own_is_not_resent_before_its_backoff() -> None:
    s = schedule()
    p = pending(1, attempts=1)
    assert s.retry_later(p, 100.0)
    assert p.due > 100.0
    assert s.plan(100.0, deque(), urgent=True) == ([], p.due - 100.0)
    taken, _ = s.plan(p.due, deque(), urgent=True)
    assert seqs(taken) == [1]


def test_the_queues_turn_after_a_failed_retry_lasts_one_batch() -> None:
    s = schedule()  # batch_size=4
    s.on_failure([pending(1, attempts=2), pending(2, attempts=2)], 0.0, 0.0, suspect=False)
    taken, _ = s.plan(0.0, queue(3, 4), urgent=True)
    assert seqs(taken) == [3, 4]  # the queue's turn
    taken, _ = s.plan(0.0, queue(5, 6), urgent=True)
    assert seqs(taken) == [1, 2, 5, 6]  # then the retries first again


def test_a_turn_taking_the_whole_queue_starts_the_next_batch_clock_afresh() -> None:
    s = schedule()  # flush_interval=1.0
    s.on_failure([pending(1, attempts=2), pending(2, attempts=2)], 0.0, 0.0, suspect=False)
    assert seqs(s.plan(0.0, queue(3), urgent=False)[0]) == [3]  # the turn empties it
    assert seqs(s.plan(0.0, deque(), urgent=False)[0]) == [1, 2]
    # A new event at 0.5 waits a whole flush_interval from when it was seen.
    assert s.plan(0.5, queue(4), urgent=False) == ([], 1.0)


def test_a_bisected_half_goes_alone_without_fresh_events() -> None:
    s = schedule(batch_size=8)
    s.on_failure([pending(i) for i in range(8)], 0.0, 0.0, suspect=True)
    taken, _ = s.plan(0.0, queue(100, 101), urgent=True)
    assert seqs(taken) == [0, 1, 2, 3]  # the suspect half, nothing else with it


def test_after_a_backlog_take_the_rest_goes_at_once_even_soon_after_a_request() -> None:
    s = gathering(batch_size=2, backlog_size=3)  # min_request_interval=0.1
    assert seqs(s.plan(10.0, queue(1, 2), urgent=False, room=1_000)[0]) == [1, 2]
    q = queue(3, 4, 5, 6, 7)  # a burst: more than a backlog request
    assert seqs(s.plan(10.05, q, urgent=False, room=1_000)[0]) == [3, 4, 5]
    # Draining, not keeping up: the rest is not held for min_request_interval.
    assert seqs(s.plan(10.06, q, urgent=False, room=1_000)[0]) == [6, 7]


def test_a_backlog_request_takes_as_many_events_as_fit_nine_tenths_of_the_byte_limit() -> None:
    # 20 queued events estimated at 100 + WIRE_ESTIMATE (160) bytes each: 5,200 bytes;
    # 90 % of a 4,000-byte limit is 3,600: 20 * 3,600 // 5,200 = 13 events.
    s = Schedule(
        POLICY,
        batch_size=2,
        backlog_size=100,
        byte_limit=4_000,
        flush_interval=1.0,
        rng=random.Random(7),
    )
    q = queue(*range(1, 21))
    taken, _ = s.plan(0.0, q, urgent=True)
    assert seqs(taken) == list(range(1, 14))
    assert len(q) == 7


def test_holding_a_full_batch_stops_exactly_where_the_queue_would_fill_the_room() -> None:
    # Seen at 10.0 right after a take, full at 10.5: 4 events in 0.5 s; holding until
    # 11.0 would bring 4 more, exactly the room of 4: not less than it, so it goes.
    s = Schedule(
        POLICY,
        batch_size=4,
        backlog_size=16,
        byte_limit=10_000,
        flush_interval=4.0,
        min_request_interval=1.0,
        rng=random.Random(7),
    )
    assert seqs(s.plan(10.0, queue(1, 2, 3, 4), urgent=False, room=4)[0]) == [1, 2, 3, 4]
    q = queue(5)
    assert s.plan(10.0, q, urgent=False, room=4) == ([], 4.0)
    q.extend(queue(6, 7, 8))
    assert seqs(s.plan(10.5, q, urgent=False, room=4)[0]) == [5, 6, 7, 8]


def test_a_queue_emptied_elsewhere_leaves_nothing_to_wait_for() -> None:
    s = schedule()
    q = queue(1)
    assert s.plan(0.0, q, urgent=False) == ([], 1.0)
    q.clear()  # taken by someone else (a shutdown, a disabled tracker letting go)
    assert s.plan(0.5, q, urgent=False) == ([], None)


def test_ready_retries_fill_at_most_one_batch() -> None:
    s = schedule()  # batch_size=4
    s.put_back([pending(i) for i in range(1, 7)])
    assert seqs(s.plan(0.0, deque(), urgent=True)[0]) == [1, 2, 3, 4]
    assert seqs(s.plan(0.0, deque(), urgent=True)[0]) == [5, 6]


def test_an_event_of_a_bisected_half_never_joins_a_batch_larger_than_its_half() -> None:
    s = schedule(batch_size=8)
    whole = [pending(1), pending(2)]  # put back whole (a rate limit)
    half = [pending(3), pending(4)]
    for p in half:
        p.group = 2  # a suspect batch of 4 was cut in two
    s.put_back(whole + half)
    assert seqs(s.plan(0.0, deque(), urgent=True)[0]) == [1, 2]  # 3 would make a third
    assert seqs(s.plan(0.0, deque(), urgent=True)[0]) == [3, 4]


def test_events_filling_the_byte_limit_exactly_go_in_one_body() -> None:
    # '{"events":[' + body + ',' + body + ']}': the limit to the byte, then one byte less.
    exact = BODY_OVERHEAD + 10 + 1 + 10
    s = schedule(byte_limit=exact)
    batch, too_large = s.cut([pending(1, body=10), pending(2, body=10)], exact)
    assert (seqs(list(batch)), too_large, list(s.ready)) == ([1, 2], [], [])
    s = schedule(byte_limit=exact - 1)
    batch, too_large = s.cut([pending(1, body=10), pending(2, body=10)], exact)
    assert (seqs(list(batch)), too_large, [p.seq for p in s.ready]) == ([1], [], [2])


def test_events_enqueued_ready_are_unsettled_until_settled() -> None:
    # Sent from memory after the disk refused them (or loaded from the spool): in line
    # like retries, and flush() must wait for them.
    s = schedule()
    a, b = pending(5), pending(7)
    s.enqueue([a, b])
    assert [p.seq for p in s.ready] == [5, 7]
    assert s.low_water() == 5
    a.done = True
    assert s.low_water() == 7
