"""Lifecycle: garbage collection, a dying sender thread, hooks that raise, odd forks."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from typing import Any

import msgspec
import pytest

import enso_tracker
from enso_tracker import NotInitializedError, Tracker
from enso_tracker._lifecycle import live
from enso_tracker._log import DeferredLog, ErrorCounter
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, TrackerFactory, accepted, wait_until


def test_unused_tracker_is_garbage_collected(fake_enso: FakeEnso) -> None:
    tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url)
    ref = weakref.ref(tracker)
    assert tracker in live()
    del tracker
    gc.collect()
    assert ref() is None  # the atexit and fork registries hold it weakly


def test_shut_down_tracker_is_garbage_collected(fake_enso: FakeEnso) -> None:
    tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url)
    accepted(tracker.track("e", "m", 1))
    assert tracker.shutdown(5.0)
    thread = tracker._worker.thread
    assert thread is not None
    thread.join(5.0)
    assert not thread.is_alive()
    ref = weakref.ref(tracker)
    del tracker
    gc.collect()
    assert ref() is None
    assert list(fake_enso.events)  # and its event was delivered on the way out


def test_shutdown_is_idempotent_and_context_manager_shuts_down(fake_enso: FakeEnso) -> None:
    with Tracker(api_key=API_KEY, base_url=fake_enso.url) as tracker:
        event_id = accepted(tracker.track("e", "m", 1))
    assert list(fake_enso.events) == [event_id]
    assert tracker.shutdown(1.0) is True
    assert tracker.shutdown(1.0) is True
    assert tracker.track("e", "m", 1) is None
    assert tracker.flush(1.0) is True


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_sender_thread_is_restarted_by_the_next_track(
    tracker: TrackerFactory, fake_enso: FakeEnso, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = tracker()
    worker = t._worker
    real_step = worker.step
    calls = {"n": 0}

    def dying_step() -> float | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise SystemExit("simulated thread death")
        return real_step()

    monkeypatch.setattr(worker, "step", dying_step)
    first = accepted(t.track("e", "m", 1))
    thread = worker.thread
    assert thread is not None
    thread.join(5.0)
    assert not thread.is_alive()
    second = accepted(t.track("e", "m", 2))  # finds the thread dead, restarts it
    assert worker.thread is not thread
    assert t.flush(5.0)
    assert set(fake_enso.events) == {first, second}
    assert t.stats().worker_errors == 1


def test_an_error_in_the_loop_is_counted_and_survived(
    tracker: TrackerFactory, fake_enso: FakeEnso, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = tracker()
    schedule = t._ledger.schedule
    real_plan = schedule.plan
    calls = {"n": 0}

    def flaky_plan(now: float, queue: Any, **options: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("bug in the planner")
        return real_plan(now, queue, **options)

    monkeypatch.setattr(schedule, "plan", flaky_plan)
    ids = [accepted(t.track("e", "m", i)) for i in range(10)]
    assert t.flush(10.0)
    assert set(fake_enso.events) == set(ids)
    stats = t.stats()
    assert stats.worker_errors == 1
    assert stats.last_error is not None
    assert "bug in the planner" in stats.last_error


def test_an_event_that_cannot_be_encoded_is_reported_not_lost(
    tracker: TrackerFactory,
    fake_enso: FakeEnso,
    drop_recorder: DropRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = tracker(flush_interval=10.0)
    real_encode = t._worker.encode

    def encode(item: Any) -> bytes:
        if item[3] == "poison":
            raise OverflowError("cannot encode")
        return real_encode(item)

    encoder_class = type(t._worker._encoder)
    real_batch = encoder_class.encode_batch

    def encode_batch(self: Any, items: Any, prefix: str) -> bytes:  # fails as a whole
        if any(item[3] == "poison" for item in items):
            raise OverflowError("cannot encode")
        return real_batch(self, items, prefix)

    monkeypatch.setattr(t._worker, "encode", encode)
    monkeypatch.setattr(encoder_class, "encode_batch", encode_batch)
    good = [accepted(t.track("e", "m", i)) for i in range(3)]
    bad = accepted(t.track("e", "poison", 1))
    assert t.flush(5.0)
    assert set(fake_enso.events) == set(good)
    assert [e.event_id for e in drop_recorder.events("unencodable")] == [bad]
    assert t.stats().balanced


def test_on_drop_that_raises_does_not_stop_delivery(fake_enso: FakeEnso) -> None:
    def angry_hook(events: Any, reason: Any) -> None:
        raise ValueError("user bug")

    with FakeEnso(known_entities={"known"}) as strict:
        tracker = Tracker(
            api_key=API_KEY, base_url=strict.url, on_drop=angry_hook, flush_interval=0.01
        )
        try:
            bad = accepted(tracker.track("unknown", "m", 1))
            assert tracker.flush(5.0)
            good = accepted(tracker.track("known", "m", 1))
            assert tracker.flush(5.0)
            stats = tracker.stats()
        finally:
            tracker.shutdown(2.0)
    assert list(strict.events) == [good]
    assert bad not in strict.events
    assert stats.hook_errors == 1
    assert stats.dropped == {"rejected": 1}


def test_fork_that_skipped_the_hooks_is_caught_by_the_pid_check(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker(flush_interval=30.0)
    parents = [accepted(t.track("parent", "m", i)) for i in range(5)]
    parent = t._worker  # in a real fork, the parent process's pipeline
    t._pid = -1  # as if this process were a child forked behind Python's back
    mine = accepted(t.track("child", "m", 1))
    stats = t.stats()
    assert stats.accepted == 1  # fresh books: the parent's five are the parent's
    assert stats.queued == 1
    assert t.flush(5.0)
    assert list(fake_enso.events) == [mine]
    # The "parent" (here, the same process) still holds its five and delivers them when
    # it stops: left running, its thread would send them into a later test's server.
    deadline = time.monotonic() + 5.0
    parent.begin_shutdown(deadline)
    assert parent.finish_shutdown(deadline)
    assert sorted(fake_enso.events) == sorted([*parents, mine])


def test_module_level_api(fake_enso: FakeEnso) -> None:
    enso_tracker.shutdown()
    with pytest.raises(NotInitializedError):
        enso_tracker.track("e", "m", 1)
    first = enso_tracker.init(api_key=API_KEY, base_url=fake_enso.url)
    second = enso_tracker.init(api_key=API_KEY, base_url=fake_enso.url)
    try:
        assert enso_tracker.get_tracker() is second
        assert first.track("e", "m", 1) is None  # the replaced tracker was shut down
        event_id = accepted(enso_tracker.track("e", "m", 1))
        assert enso_tracker.flush(5.0)
        assert enso_tracker.stats().delivered == 1
        assert list(fake_enso.events) == [event_id]
    finally:
        assert enso_tracker.shutdown(2.0)
    assert enso_tracker.flush(1.0) is True  # nothing to flush: no default tracker


def test_init_reads_the_environment(fake_enso: FakeEnso, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSO_API_KEY", API_KEY)
    monkeypatch.setenv("ENSO_BASE_URL", fake_enso.url)
    tracker = enso_tracker.init()
    try:
        assert tracker.config.base_url == fake_enso.url
        event_id = accepted(enso_tracker.track("e", "m", 1))
        assert enso_tracker.flush(5.0)
        assert list(fake_enso.events) == [event_id]
    finally:
        enso_tracker.shutdown(2.0)


def test_track_from_many_threads_while_shutting_down(fake_enso: FakeEnso) -> None:
    drops = DropRecorder()
    tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url, flush_interval=0.01, on_drop=drops)
    results: list[str | None] = []
    lock = threading.Lock()
    go = threading.Event()

    def spam() -> None:
        go.wait()
        for i in range(2_000):
            r = tracker.track("e", "m", i)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    go.set()
    assert wait_until(lambda: tracker.stats().accepted > 100)
    tracker.shutdown(5.0)
    for t in threads:
        t.join()
    ids = {r for r in results if r is not None}
    stats = tracker.stats()
    assert stats.accepted == len(ids)
    assert stats.refused.get("closed", 0) == results.count(None)
    assert stats.balanced
    after_acceptance = {e.event_id for e in drops.events() if e.event_id}
    assert set(fake_enso.events) | after_acceptance == ids
    refused = [e for e in drops.events("closed")]
    assert len(refused) == results.count(None)
    assert all(e.event_id == "" for e in refused)  # never accepted, so never given an id


def test_on_drop_may_call_back_into_the_tracker_on_queue_full(fake_enso: FakeEnso) -> None:
    fake_enso.hang(None)
    seen: list[int] = []
    tracker: Tracker | None = None

    def hook(events: Any, reason: Any) -> None:
        assert tracker is not None
        seen.append(tracker.stats().refused.get("queue_full", 0))  # needs the lock
        raise RuntimeError("and then it fails")

    tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url, max_queue_size=1, on_drop=hook)
    try:
        accepted(tracker.track("e", "m", 1))
        assert tracker.track("e", "m", 2) is None  # no deadlock, no exception
        assert seen == [1]
        assert tracker.stats().hook_errors == 1
    finally:
        fake_enso.release()
        tracker.shutdown(2.0)


def test_flush_returns_only_after_on_drop_has_seen_the_drops() -> None:
    finished: list[str] = []
    release = threading.Event()

    def slow_hook(events: Any, reason: Any) -> None:
        release.wait(0.3)  # a hook that takes its time (writes a dead-letter file, say)
        finished.extend(e.event_id for e in events)

    with FakeEnso(known_entities={"known"}) as strict:
        tracker = Tracker(api_key=API_KEY, base_url=strict.url, on_drop=slow_hook)
        try:
            bad = accepted(tracker.track("unknown", "m", 1))
            assert tracker.flush(5.0)
            assert finished == [bad]
        finally:
            tracker.shutdown(2.0)


def test_event_ids_do_not_depend_on_the_global_random_seed(fake_enso: FakeEnso) -> None:
    import random

    ids = []
    for _ in range(2):
        random.seed(1234)  # an application seeding random for reproducibility
        tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url, flush_interval=30.0)
        ids.append(accepted(tracker.track("e", "m", 1)))
        tracker.shutdown(2.0)
    assert ids[0] != ids[1]
    assert set(fake_enso.events) == set(ids)


def test_a_fork_that_skips_the_hooks_never_reports_the_parents_events(fake_enso: FakeEnso) -> None:
    """uWSGI forks workers from C, skipping ``os.register_at_fork``: libc's fork() here.
    The child's shutdown must neither wait for nor report the parent's queued events."""
    script = textwrap.dedent(
        """
        import ctypes, json, os, sys
        from enso_tracker import Tracker
        drops = []
        tracker = Tracker(api_key="test-api-key", base_url=sys.argv[1], flush_interval=60.0,
                          on_drop=lambda events, reason: drops.extend(events))
        ids = [tracker.track("ent", "m", i) for i in range(10)]
        # No Python at-fork hooks run. PyDLL, not CDLL: CDLL releases the GIL around the
        # call, so another thread may hold it at the fork and the child, in which that
        # thread does not exist, would wait for it for ever.
        pid = ctypes.PyDLL(None).fork()
        if pid == 0:
            ok = tracker.shutdown(5.0)
            stats = tracker.stats()
            print(json.dumps({"ok": ok, "drops": len(drops), "accepted": stats.accepted}))
            sys.stdout.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        assert tracker.shutdown(5.0)
        print(json.dumps({"parent_ids": ids}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, fake_enso.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    child_line, parent_line = result.stdout.strip().splitlines()
    child = msgspec.json.decode(child_line)
    assert child == {"ok": True, "drops": 0, "accepted": 0}
    parent_ids = msgspec.json.decode(parent_line)["parent_ids"]
    assert set(fake_enso.events) == set(parent_ids)
    assert not fake_enso.duplicates


def test_refusals_in_a_tight_loop_are_counted_in_the_exit_line_and_the_result(
    fake_enso: FakeEnso, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url, max_queue_size=5, flush_interval=60)
    results = [tracker.track("ent", "m", i) for i in range(2_000)]
    refused = results.count(None)
    assert refused > 1_000
    with caplog.at_level(logging.INFO, logger="enso_tracker"):
        assert tracker.shutdown(5.0) is False  # events were refused
    assert tracker.stats().refused == {"queue_full": refused}
    summary = [r.getMessage() for r in caplog.records if "shut down" in r.getMessage()]
    assert summary == [
        f"enso-tracker shut down: {2_000 - refused} delivered, 0 dropped, "
        f"{refused} refused {{'queue_full': {refused}}}"
    ]


def test_rate_limited_drop_lines_say_how_many_events_were_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = DeferredLog(ErrorCounter(), interval=60.0)
    for _ in range(1_000):
        log(logging.WARNING, "drop:queue_full", "dropped %d event(s)", 1, events=1)
    log._last["drop:queue_full"] -= 61.0  # a minute has passed
    log(logging.WARNING, "drop:queue_full", "dropped %d event(s)", 1, events=1)
    with caplog.at_level(logging.WARNING, logger="enso_tracker"):
        log.emit()
    assert [r.getMessage() for r in caplog.records] == [
        "dropped 1 event(s)",
        "dropped 1 event(s) (and 999 more event(s) like it in the last 60 s)",
    ]
