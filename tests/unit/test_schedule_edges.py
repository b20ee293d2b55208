"""Edges of the schedule's rules the first suite left open (found by a mutation pass):
turn-taking starts only after a *retry* fails, a batch is due as soon as ready retries
and queued events fill it, and 413 learning never cuts below one event's body."""

from __future__ import annotations

from enso_tracker._schedule import Schedule
from enso_tracker._wire import BODY_OVERHEAD
from tests.unit.test_schedule import pending, queue, schedule, seqs


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
