"""Every settled event reaches the ledger's finished list (``take_finished_locked``)
when something waits for it: with a spool, its row is deleted from disk once all its
events are there; with receipts, the sender folds them. Whichever way the event
settled: a whole batch delivered, one record of a partly failed answer delivered or
rejected, a fresh batch delivered in one body. An event missing from the list leaves
its row on disk, and the next tracker on the directory sends it again (billed twice
once Enso's dedup window has passed); a receipt missing undercounts.

Driven on the ledger as the sender and the spooler drive it (no thread, disk or socket),
with the audit of the books after each step.
"""

from __future__ import annotations

from pathlib import Path

from enso_tracker import FailedRecord, Receipts, Tracker
from enso_tracker._ledger import Ledger
from enso_tracker._log import DeferredLog, ErrorCounter
from enso_tracker._record import SEQ, Pending, QueuedEvent, held
from enso_tracker._reporting import Reports
from enso_tracker.testing import FakeEnso
from tests.conftest import API_KEY, accepted
from tests.unit.audit import audit
from tests.unit.test_ledger import accept, answer, dropped_seqs, ledger
from tests.unit.test_spool_books import encoded, row_of
from tests.unit.test_spool_books import ledger as spool_ledger


def staged_in_flight(led: Ledger, n: int) -> list[Pending]:
    """``n`` events accepted, written to one spool row and staged, then taken by the
    sender's plan (in flight, as the sender sends them)."""
    spool = led.spool
    assert spool is not None
    accept(led, n)
    led.flush_asked = True  # due now, for the spooler and the sender
    with led.lock:
        raw, _ = spool.plan_locked(100.0)
        written = encoded(raw)
        spool.stage_locked(written, row_of(written))
        taken, _ = led.plan_locked(100.0)
    batch = [p for p in taken if isinstance(p, Pending)]
    assert batch == written  # staged events go as they were written
    for p in batch:
        p.attempts, p.first_sent = 1, 100.0
    return batch


def as_pendings(taken: list[Pending | QueuedEvent]) -> list[Pending]:
    """Fresh items encoded one by one, as the sender's per-event path does."""
    return [e if isinstance(e, Pending) else Pending(0.0, e[SEQ], e, b"{}", held(e)) for e in taken]


def finish(led: Ledger, batch: list[Pending], outcome: object) -> Reports:
    reports: Reports = []
    with led.lock:
        led.finish_send_locked(batch, outcome, 101.0, reports, DeferredLog(ErrorCounter()))  # type: ignore[arg-type]
    return reports


def test_a_delivered_batch_releases_its_spool_rows_without_receipts(tmp_path: Path) -> None:
    led = spool_ledger(tmp_path)  # a spool, receipts not kept
    batch = staged_in_flight(led, 4)
    assert finish(led, batch, answer(4)) == []
    finished, dead = led.take_finished_locked()
    assert (finished, dead) == (batch, [])
    assert led.counters.delivered == 4
    audit(led)


def test_a_partly_failed_answer_releases_the_delivered_and_the_rejected_not_the_retried(
    tmp_path: Path,
) -> None:
    led = spool_ledger(tmp_path)
    batch = staged_in_flight(led, 4)
    reports = finish(
        led,
        batch,
        answer(
            4,
            FailedRecord(index=1, error="Customer entity not found", code=2002, statusCode=404),
            FailedRecord(index=3, error="busy", code="transient", statusCode=503),
        ),
    )
    assert [(dropped_seqs(group), r.kind) for group, r in reports] == [([2], "rejected")]
    finished, dead = led.take_finished_locked()
    # Delivered (1, 3) and rejected (2, its dead letter stored) are settled; 4 waits
    # on its own backoff and keeps the row.
    assert sorted(p.seq for p in finished) == [1, 2, 3]
    assert [(body, r.kind) for body, r in dead] == [(b"{}", "rejected")]
    assert [p.seq for p in led.schedule.retry] == [4]
    assert led.counters.delivered == 2
    audit(led)


def test_receipts_without_a_spool_get_every_delivered_event() -> None:
    led = ledger()
    led.keep_receipts()
    accept(led, 3)
    led.flush_asked = True
    with led.lock:  # a fresh batch, sent as one body and vouched for whole
        taken, _ = led.plan_locked(100.0)
        items = list(led.inflight_raw)
        assert len(items) == 3
        assert taken == items
        led.begin_fresh_locked(300)
        held_total = led.outstanding_bytes - 300
        led.fresh_delivered_locked(items, 300, held_total)
    finished, _ = led.take_finished_locked()
    assert [p.seq for p in finished] == [1, 2, 3]
    assert [p.item for p in finished] == items  # what a receipt is folded from
    audit(led)
    # Then a batch sent on the per-event path (encoded event by event).
    accept(led, 2)
    led.flush_asked = True
    with led.lock:
        taken, _ = led.plan_locked(100.0)
    batch = as_pendings(taken)
    with led.lock:
        led.begin_send_locked(batch, 0)
    assert finish(led, batch, answer(2)) == []
    finished, _ = led.take_finished_locked()
    assert finished == batch
    assert led.counters.delivered == 5
    audit(led)


def test_without_a_spool_or_receipts_nothing_is_kept_for_release() -> None:
    led = ledger()
    accept(led, 2)
    led.flush_asked = True
    with led.lock:
        taken, _ = led.plan_locked(100.0)
    batch = as_pendings(taken)
    with led.lock:
        led.begin_send_locked(batch, 0)
    finish(led, batch, answer(2, FailedRecord(index=0, error="bad", code=2001)))
    assert led.take_finished_locked() == ([], [])  # no row, no receipt: nothing to hold
    assert led.counters.delivered == 1
    audit(led)


def test_receipts_record_a_dropped_event_as_dropped_not_delivered(tmp_path: Path) -> None:
    # A real tracker with per-event receipts and no spool: the sender folds what the
    # ledger hands it; a drop's receipt is its reason, a delivery's none.
    fake = FakeEnso(known_entities=["ent_1"])
    tracker = Tracker(
        api_key=API_KEY,
        base_url="https://enso.test",
        transport=fake.transport(),
        handle_sigterm=False,
        flush_interval=0.05,
        receipts="events",
        receipts_dir=str(tmp_path),
    )
    try:
        accepted(tracker.track("ent_1", "api_calls", 3, event_id="ok"))
        accepted(tracker.track("ent_gone", "api_calls", 4, event_id="gone"))
        assert tracker.flush(10.0)
        assert tracker.stats().dropped == {"rejected": 1}
    finally:
        tracker.shutdown(5.0)
    with Receipts(tmp_path) as receipts:
        ok, gone = receipts.lookup("ok"), receipts.lookup("gone")
    assert ok is not None
    assert gone is not None
    assert (ok.outcome, ok.value) == ("delivered", 3)
    assert (gone.outcome, gone.code, gone.status, gone.value) == ("rejected:2002", "2002", 404, 4)
