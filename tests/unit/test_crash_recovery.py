"""An unexpected error in a round of the sender or the spooler (a bug, a failed
allocation) must lose no event: the thread's loop counts a worker error and the ledger
puts what the round had taken back in line (``Ledger.recover_locked``,
``SpoolBooks.recover_locked``), to be sent again (same eventIds: Enso dedups).

First on the ledger as the sender drives it (deterministic), then on real trackers over
FakeEnso's socketless transport, each with one injected crash.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import Tracker
from enso_tracker._outcomes import apply_outcome
from enso_tracker._record import SEQ, Pending, held
from enso_tracker._worker import Worker
from enso_tracker.testing import FakeEnso
from tests.conftest import Socketless, accepted, wait_until
from tests.unit.audit import audit
from tests.unit.test_ledger import accept, answer, ledger, settle, take

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------ on the ledger


def test_a_crash_while_an_unsure_fresh_batch_is_settled_puts_it_back_in_line() -> None:
    # A fresh batch went as one body; the answer did not vouch for all of it, so its
    # events were encoded one by one and are in flight as Pendings when the round fails.
    led = ledger()
    accept(led, 3)
    led.flush_asked = True
    with led.lock:
        led.plan_locked(100.0)
        items = list(led.inflight_raw)
        led.begin_fresh_locked(300)
    pendings = [Pending(0.0, q[SEQ], q, b"{}", held(q)) for q in items]
    for p in pendings:
        p.attempts, p.first_sent = 1, 100.0
    with led.lock:
        assert led.fresh_unsure_locked(300, pendings, 0) is True
    assert led.inflight == pendings  # in flight, each once (audit), not lost meanwhile
    assert audit(led).events == 3
    with led.lock:  # the round fails before the outcome is applied
        led.recover_locked()
    assert [p.seq for p in led.schedule.ready] == [1, 2, 3]
    assert (led.inflight, led.inflight_body) == ([], 0)
    audit(led)
    batch = take(led)
    assert batch == pendings  # sent again as they were encoded
    settle(led, batch, answer(3))
    assert (led.counters.delivered, led.outstanding, led.outstanding_bytes) == (3, 0, 0)
    assert led.settled_locked(3)


def test_a_crash_while_a_fresh_body_is_in_flight_requeues_its_events_in_order() -> None:
    led = ledger()
    accept(led, 5)
    led.flush_asked = True
    with led.lock:
        led.plan_locked(100.0)  # 1-4 as one fresh batch, 5 still queued
        led.begin_fresh_locked(1234)
    assert led.outstanding_bytes == 5 * 500 + 1234
    with led.lock:
        led.recover_locked()
    assert [q[SEQ] for q in led.queue] == [1, 2, 3, 4, 5]
    assert (led.inflight_raw, led.inflight_body) == ([], 0)
    assert (led.outstanding, led.outstanding_bytes) == (5, 5 * 500)  # the body's are gone
    audit(led)


# ----------------------------------------------------------- on real trackers


def tracker(fake: FakeEnso, socketless: Socketless, **options: Any) -> Tracker:
    return socketless(fake, flush_interval=0.05, backoff_base=0.001, backoff_max=0.01, **options)


def test_a_sender_crash_while_settling_loses_nothing_and_bills_once(
    monkeypatch: pytest.MonkeyPatch, socketless: Socketless
) -> None:
    fake = FakeEnso()
    fake.fail_event_ids(["e1"], status=503, times=1)  # an answer that does not vouch for all
    crashes: list[int] = []

    def crash_once(*args: Any, **kwargs: Any) -> None:
        if not crashes:
            crashes.append(1)
            raise RuntimeError("injected crash while settling")
        apply_outcome(*args, **kwargs)

    # Where the ledger applies an outcome (Ledger.finish_send_locked) looks it up.
    monkeypatch.setattr("enso_tracker._ledger_send.apply_outcome", crash_once)
    t = tracker(fake, socketless)
    ids = [accepted(t.track("ent_1", "api_calls", i, event_id=f"e{i}")) for i in range(3)]
    assert t.flush(10.0)
    assert crashes == [1]
    stats = t.stats()
    assert (stats.delivered, stats.dropped, stats.worker_errors) == (3, {}, 1)
    assert stats.last_error is not None
    assert "injected crash while settling" in stats.last_error  # the worker error's text
    assert sorted(fake.event_ids()) == sorted(ids)  # each once, after Enso's dedup
    assert audit(t).events == 0


def test_a_spooler_crash_before_writing_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, socketless: Socketless, tmp_path: Path
) -> None:
    fake = FakeEnso()
    real = Worker.encode_all
    crashes: list[str] = []

    def crash_once_on_the_spooler(self: Worker, items: Any) -> Any:
        if not crashes and threading.current_thread().name == "enso-tracker-spooler":
            crashes.append("spooler")
            raise RuntimeError("injected crash while encoding for the spool")
        return real(self, items)

    monkeypatch.setattr(Worker, "encode_all", crash_once_on_the_spooler)
    t = tracker(fake, socketless, spool_dir=str(tmp_path), spool_interval=0.05)
    ids = [accepted(t.track("ent_1", "api_calls", i, event_id=f"e{i}")) for i in range(3)]
    assert t.flush(10.0)
    assert crashes == ["spooler"]
    stats = t.stats()
    assert (stats.delivered, stats.dropped, stats.worker_errors) == (3, {}, 1)
    assert stats.last_error is not None
    assert "injected crash while encoding" in stats.last_error
    assert sorted(fake.event_ids()) == sorted(ids)
    assert fake.duplicates == {}  # taken back before anything was written or sent
    assert audit(t).events == 0


def test_a_sender_thread_that_could_not_start_is_started_by_the_next_track(
    monkeypatch: pytest.MonkeyPatch, socketless: Socketless
) -> None:
    fake = FakeEnso()
    real_start = threading.Thread.start
    refused: list[str] = []

    def start_fails_once(self: threading.Thread) -> None:
        if not refused and self.name == "enso-tracker-sender":
            refused.append(self.name)
            raise RuntimeError("can't start new thread")  # as under a thread limit
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start_fails_once)
    # A batch boundary (which kicks the sender anyway) is far beyond what this tracks.
    t = tracker(fake, socketless, max_batch_size=100_000)
    ids = [accepted(t.track("ent_1", "api_calls", 1))]  # its kick cannot start the sender
    assert refused == ["enso-tracker-sender"]

    def sent_after_another_track() -> bool:
        # A failed start is retried after a backoff (backoff_base=0.001 s) by a later
        # track(), any track(): not only the one that makes the queue non-empty.
        ids.append(accepted(t.track("ent_1", "api_calls", 1)))
        return bool(fake.event_ids())

    assert wait_until(sent_after_another_track, 5.0), t.stats()
    assert t.flush(10.0)
    assert sorted(fake.event_ids()) == sorted(ids)
    assert audit(t).events == 0


def test_flush_without_a_sender_thread_delivers_in_its_own_and_returns_once_settled(
    monkeypatch: pytest.MonkeyPatch, socketless: Socketless
) -> None:
    fake = FakeEnso()
    real_start = threading.Thread.start

    def sender_never_starts(self: threading.Thread) -> None:
        if self.name == "enso-tracker-sender":
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", sender_never_starts)
    t = tracker(fake, socketless)
    ids = [accepted(t.track("ent_1", "api_calls", i)) for i in range(3)]
    result: list[bool] = []
    # flush(60) runs the rounds in the caller's thread: it must stop once its events
    # are settled, not run them until its timeout.
    caller = threading.Thread(target=lambda: result.append(t.flush(60.0)), name="flushing")
    caller.start()
    caller.join(10.0)
    assert not caller.is_alive(), "flush() went on after its events were delivered"
    assert result == [True]
    assert sorted(fake.event_ids()) == sorted(ids)
    assert audit(t).events == 0
