"""A caller waiting on the ledger is woken by the move of the books that lets it go: a
``track()`` blocked for room (``queue_full_policy="block"``) by a delivery, by events the
spooler leaves on disk only, or by ``shutdown()`` beginning (refused as ``closed``); a
``flush()`` by the end of the disk commit that released its events' rows. A move that
does not wake it leaves the caller blocked for its whole timeout with its answer ready.

Driven on the ledger as its threads drive it (no sender, spooler or socket): the waiting
caller runs in a thread of its own, and the books move only once it waits
(:func:`tests.unit.audit.watch_waits`), so the check is the wake-up, not the timing of a
caller that looked late. The callers' timeouts are far longer than the test's deadline:
a missing wake-up fails the test instead of ending at the timeout.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from enso_tracker import Config, DropReason, FailedRecord
from enso_tracker._ledger import Ledger
from enso_tracker._log import DeferredLog, ErrorCounter
from enso_tracker._reporting import Reports
from enso_tracker._retry import RetryPolicy
from enso_tracker._schedule import Schedule
from tests.unit.audit import audit, watch_waits
from tests.unit.test_ledger import accept, answer, take
from tests.unit.test_settled_events_released import finish, staged_in_flight
from tests.unit.test_spool_books import encoded, row_of
from tests.unit.test_spool_books import ledger as spool_ledger

pytestmark = pytest.mark.timeout(60)

#: How long the blocked caller would wait without a wake-up; and the test's deadline.
BLOCK_TIMEOUT = 120.0
DEADLINE = 10.0
SIZE = 500  # what tests.unit.test_ledger.accept and test_spool_books.accept hold


def blocking_ledger(**options: object) -> Ledger:
    options.setdefault("queue_full_policy", "block")
    options.setdefault("block_timeout", BLOCK_TIMEOUT)
    config = Config(**options)  # type: ignore[arg-type]
    policy = RetryPolicy(max_retries=2, max_event_age=100.0, backoff_base=1.0, backoff_max=4.0)
    schedule = Schedule(
        policy, batch_size=4, byte_limit=10_000, flush_interval=1.0, rng=random.Random(3)
    )
    return Ledger(config, schedule, "evt_test_")


class BlockedTrack:
    """``track()``'s admission of one more event, blocked in a thread of its own."""

    def __init__(self, led: Ledger, size: int) -> None:
        self.waiting = watch_waits(led, "room")
        self.result: list[DropReason | None] = []

        def admit() -> None:
            with led.lock:
                self.result.append(led.refuse_locked(size, may_block=True))

        self.thread = threading.Thread(target=admit, name="blocked-track", daemon=True)
        self.thread.start()
        assert self.waiting.wait(DEADLINE), "track() did not block for room"

    def answer(self) -> DropReason | None:
        """What the caller got, once it returned (within the test's deadline)."""
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "track() still blocked: nothing woke it"
        [answer] = self.result
        return answer

    def admitted(self) -> bool:
        """The caller returned, admitted (``refuse_locked`` gave no reason)."""
        return self.answer() is None


def test_a_blocked_track_is_admitted_as_soon_as_a_delivery_frees_room() -> None:
    led = blocking_ledger(max_queue_size=2)
    accept(led, 2)
    batch = take(led)  # both in flight: the queue is full by count
    blocked = BlockedTrack(led, SIZE)
    assert not blocked.result  # still blocked: nothing was freed yet
    reports: Reports = []
    with led.lock:
        led.finish_send_locked(batch, answer(2), 100.0, reports, DeferredLog(ErrorCounter()))
    assert blocked.admitted()
    assert led.counters.refused == {}
    assert (led.counters.delivered, reports) == (2, [])
    audit(led)


def test_a_blocked_track_is_admitted_as_soon_as_a_fresh_batch_is_delivered_whole() -> None:
    # The common case: the queue's events go as one body and Enso vouches for them all.
    led = blocking_ledger(max_queue_size=2)
    accept(led, 2)
    led.flush_asked = True
    with led.lock:
        led.plan_locked(100.0)
        items = list(led.inflight_raw)
        led.begin_fresh_locked(300)
    assert len(items) == 2
    blocked = BlockedTrack(led, SIZE)
    with led.lock:
        led.fresh_delivered_locked(items, 300, 2 * SIZE)
    assert blocked.admitted()
    assert (led.counters.delivered, led.counters.refused) == (2, {})
    audit(led)


def test_a_blocked_track_is_admitted_as_soon_as_the_spooler_leaves_events_on_disk(
    tmp_path: Path,
) -> None:
    # Memory full by bytes; the spooler writes the queued events, and with memory past
    # half of max_queue_bytes the row stays on disk only: its events leave memory.
    led = blocking_ledger(max_queue_bytes=4 * SIZE, spool_dir=str(tmp_path), max_batch_size=4)
    spool = led.spool
    assert spool is not None
    accept(led, 4)
    blocked = BlockedTrack(led, SIZE)
    with led.lock:
        led.flush_asked = True  # due now
        raw, _ = spool.plan_locked(100.0)
        written = encoded(raw)
        spool.stage_locked(written, row_of(written))
        assert (spool.on_disk, led.outstanding, led.outstanding_bytes) == (4, 0, 0)
        led.spooled_locked()
    assert blocked.admitted()
    assert led.counters.refused == {}
    audit(led)


def test_a_blocked_track_is_refused_as_closed_as_soon_as_shutdown_begins() -> None:
    led = blocking_ledger(max_queue_size=2)
    accept(led, 2)
    blocked = BlockedTrack(led, SIZE)
    with led.lock:
        assert led.begin_stop_locked(time.monotonic() + 5.0)
    reason = blocked.answer()
    assert reason is not None
    assert reason.kind == "closed"
    assert led.counters.refused == {"closed": 1}
    audit(led)


def test_a_waiting_flush_returns_as_soon_as_the_rows_of_its_events_are_released(
    tmp_path: Path,
) -> None:
    led = spool_ledger(tmp_path)
    batch = staged_in_flight(led, 3)
    finish(led, batch, answer(3))  # delivered; their rows are still on disk
    with led.lock:
        assert not led.settled_locked(3)
        finished, _ = led.take_finished_locked()  # the spooler commits them now
        assert finished == batch
        led.begin_commit_locked()
    waiting = watch_waits(led, "settled")
    result: list[bool] = []
    flush = threading.Thread(
        target=lambda: result.append(led.wait_settled(3, time.monotonic() + BLOCK_TIMEOUT)),
        name="waiting-flush",
        daemon=True,
    )
    flush.start()
    assert waiting.wait(DEADLINE), "flush() did not wait"
    with led.lock:  # rows deleted
        led.end_commit_locked()
    flush.join(DEADLINE)
    assert not flush.is_alive(), "flush() still waiting: nothing woke it"
    assert result == [True]
    audit(led)


def test_a_waiting_flush_returns_when_shutdown_leaves_its_events_in_the_spool(
    tmp_path: Path,
) -> None:
    # Nothing is dropped (no report to hand over, whose end would wake it): the events
    # are on disk only and close leaves them there for the next tracker. The waiting
    # flush() must return then, not at its own timeout.
    led = spool_ledger(tmp_path, max_queue_bytes=4 * SIZE)
    spool = led.spool
    assert spool is not None
    accept(led, 4)
    with led.lock:
        led.flush_asked = True
        raw, _ = spool.plan_locked(100.0)
        written = encoded(raw)
        spool.stage_locked(written, row_of(written))  # memory tight: on disk only
        assert (spool.on_disk, led.outstanding) == (4, 0)
    waiting = watch_waits(led, "settled")
    result: list[bool] = []
    flush = threading.Thread(
        target=lambda: result.append(led.wait_settled(4, time.monotonic() + BLOCK_TIMEOUT)),
        name="waiting-flush",
        daemon=True,
    )
    flush.start()
    assert waiting.wait(DEADLINE), "flush() did not wait"
    reports: Reports = []
    with led.lock:
        assert led.close_locked(reports) == []
    assert reports == []
    flush.join(DEADLINE)
    assert not flush.is_alive(), "flush() still waiting: nothing woke it"
    assert led.snapshot(0, 0).left_in_spool == 4
    audit(led)


@pytest.mark.parametrize(
    ("policy", "may_block"),
    [("drop", True), ("block", False)],
    ids=["drop policy", "block policy on the sender thread"],
)
def test_a_full_queue_refuses_at_once_where_the_caller_may_not_block(
    policy: str, may_block: bool
) -> None:
    # Only "block", and never on the sender thread (which is what frees room), waits.
    led = blocking_ledger(max_queue_size=2, queue_full_policy=policy)
    accept(led, 2)
    result: list[DropReason | None] = []

    def admit() -> None:
        with led.lock:
            result.append(led.refuse_locked(SIZE, may_block=may_block))

    caller = threading.Thread(target=admit, name="full-queue-track", daemon=True)
    caller.start()
    caller.join(DEADLINE)
    assert not caller.is_alive(), "track() waited for room"
    [reason] = result
    assert reason is not None
    assert reason.kind == "queue_full"
    assert led.counters.refused == {"queue_full": 1}


def test_a_blocked_track_is_admitted_when_the_room_freed_fits_it_exactly() -> None:
    led = blocking_ledger(max_queue_bytes=4 * SIZE)  # 2,000 bytes
    accept(led, 4)
    blocked = BlockedTrack(led, SIZE)  # 2,000 + 500 > 2,000: waits
    batch = take(led)
    assert len(batch) == 4
    reports: Reports = []
    with led.lock:  # one event delivered, three back in line: 1,500 + 500 == 2,000
        led.finish_send_locked(
            batch,
            answer(
                4,
                *(FailedRecord(index=i, error="busy", code="t", statusCode=503) for i in (1, 2, 3)),
            ),
            100.0,
            reports,
            DeferredLog(ErrorCounter()),
        )
        assert led.outstanding_bytes == 3 * SIZE
    assert blocked.admitted()
    audit(led)


def test_a_waiting_flush_gives_up_at_its_deadline_with_false() -> None:
    led = blocking_ledger()
    accept(led, 1)  # never sent: nothing settles it
    waiting = watch_waits(led, "settled")
    result: list[bool] = []
    flush = threading.Thread(
        target=lambda: result.append(led.wait_settled(1, time.monotonic() + 0.05)),
        name="waiting-flush",
        daemon=True,
    )
    flush.start()
    flush.join(DEADLINE)
    assert not flush.is_alive(), "flush() went on waiting past its deadline"
    assert result == [False]
    assert waiting.is_set()  # it did wait (a timeout under a second is one too)
    assert led.outstanding == 1


def test_a_block_timeout_under_a_second_is_waited_out_then_refused() -> None:
    led = blocking_ledger(max_queue_size=2, block_timeout=0.05)
    accept(led, 2)
    blocked = BlockedTrack(led, SIZE)  # it waits (asserted), though not for long
    reason = blocked.answer()
    assert reason is not None
    assert reason.kind == "queue_full"
    assert led.counters.refused == {"queue_full": 1}
