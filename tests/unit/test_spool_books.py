"""The spool's books (``_spool.books.SpoolBooks``, ``Ledger.spool``), deterministic: no
thread, disk or sleep (but the last test, which starts trackers). After every move, an
audit counts what the lists really hold (events and bytes) and checks it against the
counters: every accepted or adopted event is in exactly one place."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import cast

from enso_tracker import Config
from enso_tracker._ledger import Ledger
from enso_tracker._record import EVENT_OVERHEAD, SEQ, Pending, QueuedEvent, held
from enso_tracker._reporting import Reports
from enso_tracker._retry import RetryPolicy
from enso_tracker._schedule import Schedule
from enso_tracker._spool.books import SpoolBooks
from enso_tracker._spool.files import SpoolFile, StoredBatch
from enso_tracker.testing import FakeEnso
from tests.conftest import TrackerFactory, accepted

SIZE = 500
FILE = cast(SpoolFile, object())  # the books never touch the file: a row's place only


def ledger(tmp_path: Path | None, *, max_queue_bytes: int = 100_000) -> Ledger:
    config = Config(
        max_queue_size=100,
        max_queue_bytes=max_queue_bytes,
        max_batch_size=4,
        spool_interval=1.0,
        spool_dir=None if tmp_path is None else str(tmp_path),
    )
    policy = RetryPolicy(max_retries=2, max_event_age=100.0, backoff_base=1.0, backoff_max=4.0)
    schedule = Schedule(
        policy, batch_size=4, byte_limit=10_000, flush_interval=1.0, rng=random.Random(3)
    )
    return Ledger(config, schedule, "evt_test_")


def books(led: Ledger) -> SpoolBooks:
    assert led.spool is not None
    return led.spool


def accept(led: Ledger, n: int) -> None:
    """What track() does under the lock."""
    for _ in range(n):
        led.seq += 1
        item = (led.seq, f"evt_{led.seq}", "ent", "m", 1, 0, None, None, SIZE - EVENT_OVERHEAD)
        led.queue.append(item)
        led.outstanding += 1
        led.outstanding_bytes += SIZE


def encoded(raw: list[QueuedEvent], row: StoredBatch | None = None) -> list[Pending]:
    """What the spooler's encoding makes of them (the body's bytes counted once staged)."""
    return [Pending(0.0, q[SEQ], q, b"{}", held(q), row=row) for q in raw]


def row_of(pendings: list[Pending], rowid: int = 1) -> StoredBatch:
    row = StoredBatch(FILE, rowid, len(pendings), 100, 0.0, pendings[0].seq)
    for p in pendings:
        p.row = row
    return row


def audit(led: Ledger) -> None:
    """What the lists hold, against the counters."""
    spool = books(led)
    memory: list[Pending] = [*spool.staged, *led.inflight, *led.schedule.ready]
    raw: list[QueuedEvent] = [*led.queue, *spool.spooling, *led.inflight_raw]
    assert led.outstanding == len(memory) + len(raw)
    assert led.outstanding_bytes == sum(p.size for p in memory) + sum(held(q) for q in raw)
    rows = [*spool.backlog_own, *spool.backlog_adopted]
    assert spool.on_disk == sum(r.n for r in rows) + spool.unread_adopted
    assert led.on_disk == spool.on_disk
    stats = led.snapshot(0, 0)
    assert stats.balanced, stats
    # On disk and not settled: the backlog, and what memory holds of written rows.
    assert stats.spooled == spool.on_disk + sum(1 for p in memory if p.row is not None)
    assert led.seq + spool.adopted == (
        led.outstanding
        + spool.on_disk
        + led.counters.delivered
        + sum(led.counters.dropped.values())
        + spool.left_in_spool
    )


def test_without_a_spool_there_are_no_spool_books() -> None:
    led = ledger(None)
    assert led.spool is None
    accept(led, 3)
    assert led.on_disk == 0
    assert led.durable_seq_locked() == 0  # nothing settled, nothing on disk
    finished, dead = led.take_finished_locked()
    assert (finished, dead) == ([], [])
    stats = led.snapshot(0, 0)
    assert (stats.spooled, stats.spool_bytes, stats.left_in_spool) == (0, 0, 0)
    assert stats.balanced


def test_plan_takes_a_due_batch_and_recover_puts_it_back_in_order(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    spool = books(led)
    accept(led, 3)
    taken, wait = spool.plan_locked(100.0)
    assert (taken, wait) == ([], 1.0)  # not due: spool_interval first
    assert spool.clock == 100.0
    accept(led, 3)
    taken, wait = spool.plan_locked(100.5)  # due: a full batch (max_batch_size)
    assert [q[SEQ] for q in taken] == [1, 2, 3, 4]
    assert wait == 0.0
    assert spool.clock == 100.0  # the oldest still queued was seen then
    assert spool.spooling == taken
    assert led.min_unsettled_locked() == 1  # being written: not settled
    assert led.durable_seq_locked() == 0  # nor on disk
    audit(led)
    spool.recover_locked()
    assert [q[SEQ] for q in led.queue] == [1, 2, 3, 4, 5, 6]
    assert spool.spooling == []
    audit(led)
    spool.gate = 200.0  # the disk refused a write: nothing before the gate
    assert spool.plan_locked(150.0) == ([], 50.0)


def test_a_written_batch_is_staged_or_left_on_disk_when_memory_is_tight(tmp_path: Path) -> None:
    led = ledger(tmp_path, max_queue_bytes=8 * SIZE)
    spool = books(led)
    led.flush_asked = True  # every plan is due
    accept(led, 2)
    raw, _ = spool.plan_locked(100.0)
    first = encoded(raw)
    spool.stage_locked(first, row_of(first, 1))
    assert list(spool.staged) == first  # room in memory: waits there to be sent
    assert led.durable_seq_locked() == 2  # every event on disk
    audit(led)
    # Memory past half of max_queue_bytes: the next row stays on disk only.
    accept(led, 3)
    assert not spool.window_locked()
    raw, _ = spool.plan_locked(101.0)
    second = encoded(raw)
    row = row_of(second, 2)
    spool.stage_locked(second, row)
    assert list(spool.backlog_own) == [row]
    assert spool.on_disk == 3
    assert led.outstanding == 2
    assert led.outstanding_bytes == 2 * SIZE
    assert led.min_unsettled_locked() == 1
    assert led.durable_seq_locked() == 5
    audit(led)
    # Sending frees memory: the row is loaded back, in order.
    spool.staged.clear()
    led.outstanding -= 2
    led.outstanding_bytes -= 2 * SIZE
    led.counters.delivered += 2
    assert led.min_unsettled_locked() == 3  # the backlog's first row
    spool.load_locked(encoded(raw, row), own=True)
    assert [p.seq for p in spool.staged] == [3, 4, 5]
    assert not spool.backlog_own
    assert spool.on_disk == 0
    audit(led)


def test_adopted_rows_are_counted_read_in_chunks_and_lost_if_unreadable(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    spool = books(led)
    spool.adopt_locked([], 10)  # a file of 10 events, rows read later
    assert (spool.adopted, spool.on_disk, spool.unread_adopted) == (10, 10, 10)
    audit(led)
    rows = [StoredBatch(FILE, i, 3, 100, 0.0, 0) for i in (1, 2)]
    spool.refill_locked(rows)
    assert spool.unread_adopted == 4
    assert list(spool.backlog_adopted) == rows
    audit(led)
    reports: Reports = []
    spool.lose_unread_locked(4, "the file became unreadable", reports)
    assert led.counters.dropped == {"corrupt": 4}
    assert spool.unread_adopted == 0
    assert led._reporting == 1
    assert reports[0][1].kind == "corrupt"
    # stats() names the loss (an operator's first clue), though no Pending was dropped.
    assert led.snapshot(0, 0).last_error == "corrupt: the file became unreadable"
    audit(led)
    spool.corrupt_locked(rows[0], False, b"\x00raw", "a record failed its CRC check", reports)
    assert led.counters.dropped == {"corrupt": 7}
    assert list(spool.backlog_adopted) == [rows[1]]
    finished, dead = led.take_finished_locked()
    assert finished == []
    assert [(body, r.kind) for body, r in dead] == [(b"\x00raw", "corrupt")]
    assert led.take_finished_locked() == ([], [])  # taken once
    audit(led)
    # Loaded: adopted events are sent first (ready, like retries).
    loaded = [
        Pending(0.0, 1000 + i, (1000 + i, "", "", "", 0, 0, None, None, 0), b"{}", SIZE)
        for i in range(3)
    ]
    row_of(loaded, 2)
    spool.load_locked(loaded, own=False)
    assert list(led.schedule.ready) == loaded
    assert spool.on_disk == 0
    audit(led)


def test_dropped_events_become_dead_letters_only_with_a_spool_and_a_kept_kind(
    tmp_path: Path,
) -> None:
    from enso_tracker import DropReason

    for spool_dir, kept in ((tmp_path, True), (None, False)):
        led = ledger(spool_dir)
        accept(led, 2)
        pendings = encoded(list(led.queue))
        led.queue.clear()
        reports: Reports = []
        led.drop_locked(pendings[:1], DropReason(kind="rejected", message="no"), reports)
        led.drop_locked(pendings[1:], DropReason(kind="shutdown", message="late"), reports)
        _, dead = led.take_finished_locked()
        assert [(body, r.kind) for body, r in dead] == ([(b"{}", "rejected")] if kept else [])


def test_close_leaves_what_is_on_disk_for_the_next_tracker(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    spool = books(led)
    accept(led, 5)
    led.flush_asked = True
    raw, _ = spool.plan_locked(100.0)
    written = encoded(raw[:2])
    spool.stage_locked(written, row_of(written))
    spool.spooling = raw[2:]  # the rest still being written
    spool.adopt_locked([StoredBatch(FILE, 9, 4, 100, 0.0, 0)])
    audit(led)
    reports: Reports = []
    with led.lock:
        left = led.close_locked(reports)
    # On disk (staged with a row, and the adopted backlog): left in the spool; the
    # rest (being written, and still queued) dropped as shutdown.
    assert sorted(p.seq for p in left) == [3, 4, 5]
    assert spool.left_in_spool == 2 + 4
    assert led.counters.dropped == {"shutdown": 3}
    assert not spool.staged
    assert not spool.spooling
    assert spool.on_disk == 0
    assert led.outstanding == 0
    assert led.outstanding_bytes == 0
    audit(led)


def test_the_spool_stage_exists_only_with_a_spool(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    """Without a spool no spool code runs, by structure: no books, no spooler, no
    spooler thread; with one, both, and the spooler thread runs beside the sender."""
    plain = tracker()
    accepted(plain.track("ent", "m", 1))
    assert plain.flush(10.0)
    assert plain._ledger.spool is None
    assert plain._worker.spooler is None
    assert "enso-tracker-spooler" not in {t.name for t in threading.enumerate()}
    spooled = tracker(spool_dir=tmp_path / "spool")
    accepted(spooled.track("ent", "m", 2))
    assert spooled.flush(10.0)
    spooler = spooled._worker.spooler
    assert spooler is not None
    assert spooled._ledger.spool is spooler.books
    assert spooler.thread is not None
    assert spooler.thread.is_alive()
    assert spooler.thread.name == "enso-tracker-spooler"
    assert len(fake_enso.event_ids()) == 2
