"""A ``track()`` blocked for room (``queue_full_policy="block"``) is admitted as soon as
a move of the books frees room: a delivery on the sender thread, or events the spooler
leaves on disk only. Each move must wake it; one that does not leaves the caller blocked
for its whole ``block_timeout`` with the room already there.

Driven on the ledger as its threads drive it (no sender, spooler or socket): the blocked
caller runs in a thread of its own, and the room is freed only once it waits
(:func:`tests.unit.audit.watch_room`), so the check is the wake-up, not the timing of a
caller that looked late. ``block_timeout`` is far longer than the test's deadline: a
missing wake-up fails the test instead of being admitted at the timeout.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from enso_tracker import Config, DropReason
from enso_tracker._ledger import Ledger
from enso_tracker._log import DeferredLog, ErrorCounter
from enso_tracker._reporting import Reports
from enso_tracker._retry import RetryPolicy
from enso_tracker._schedule import Schedule
from tests.unit.audit import audit, watch_room
from tests.unit.test_ledger import accept, answer, take
from tests.unit.test_spool_books import encoded, row_of

pytestmark = pytest.mark.timeout(60)

#: How long the blocked caller would wait without a wake-up; and the test's deadline.
BLOCK_TIMEOUT = 120.0
DEADLINE = 10.0
SIZE = 500  # what tests.unit.test_ledger.accept and test_spool_books.accept hold


def blocking_ledger(**options: object) -> Ledger:
    config = Config(queue_full_policy="block", block_timeout=BLOCK_TIMEOUT, **options)  # type: ignore[arg-type]
    policy = RetryPolicy(max_retries=2, max_event_age=100.0, backoff_base=1.0, backoff_max=4.0)
    schedule = Schedule(
        policy, batch_size=4, byte_limit=10_000, flush_interval=1.0, rng=random.Random(3)
    )
    return Ledger(config, schedule, "evt_test_")


class BlockedTrack:
    """``track()``'s admission of one more event, blocked in a thread of its own."""

    def __init__(self, led: Ledger, size: int) -> None:
        self.waiting = watch_room(led)
        self.result: list[DropReason | None] = []

        def admit() -> None:
            with led.lock:
                self.result.append(led.refuse_locked(size, may_block=True))

        self.thread = threading.Thread(target=admit, name="blocked-track", daemon=True)
        self.thread.start()
        assert self.waiting.wait(DEADLINE), "track() did not block for room"

    def admitted(self) -> bool:
        """The caller returned, admitted (``refuse_locked`` gave no reason)."""
        self.thread.join(DEADLINE)
        return not self.thread.is_alive() and self.result == [None]


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
