"""Regression tests for the tracker-side defects of the hardening review (issue #8).

Each test is named after its defect and failed on the code before the fix.
"""

from __future__ import annotations

import enum
import gc
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import DropReason, Event, Outcome, Retry, Tracker
from enso_tracker.testing import DropRecorder, FakeEnso, Fault
from tests.conftest import API_KEY, TrackerFactory, accepted, wait_until


class _Down:
    """A sender for which Enso is always down (no socket, nothing recorded)."""

    logins = 0

    def send(self, body: bytes, timeout: float) -> Outcome:
        return Retry("Enso is down (test)", 503)

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


@pytest.fixture
def tracker_log() -> Iterator[logging.Logger]:
    logger = logging.getLogger("enso_tracker")
    handlers = list(logger.handlers)
    yield logger
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)


def _run_script(source: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


# -- 2. str subclasses go out as their own characters ------------------------------------


class Metric(str, enum.Enum):  # noqa: UP042  # the (str, Enum) form is the defect
    API_CALLS = "api_calls"


class Plan(enum.StrEnum):
    PRO = "plan_pro"


def test_defect2_str_enum_names_and_ids_go_out_as_their_values(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker()
    event_id = accepted(t.track(Plan.PRO, Metric.API_CALLS, 1, event_id=Plan.PRO, job_id=Plan.PRO))
    assert event_id == "plan_pro"
    assert type(event_id) is str
    assert t.flush(10.0)
    sent = fake_enso.events["plan_pro"]
    assert sent["CustomerEntityId"] == "plan_pro"
    assert sent["metric"] == "api_calls"
    assert sent["JobId"] == "plan_pro"


# -- 3. no logging under the tracker lock ------------------------------------------------


def test_defect3_a_blocking_log_handler_does_not_hold_the_tracker_lock(
    tracker: TrackerFactory, fake_enso: FakeEnso, tracker_log: logging.Logger
) -> None:
    inside = threading.Event()
    release = threading.Event()

    class Blocking(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "will retry" in record.getMessage():
                inside.set()
                release.wait(30.0)

    tracker_log.addHandler(Blocking(logging.WARNING))
    fake_enso.script(Fault(status=503))
    t = tracker()
    first = accepted(t.track("ent", "m", 1))
    assert inside.wait(10.0)  # the sender thread is stuck in the handler now
    done = threading.Event()
    second: list[str | None] = []

    def call_the_tracker() -> None:
        second.append(t.track("ent", "m", 2))
        t.stats()
        done.set()

    threading.Thread(target=call_the_tracker, daemon=True).start()
    try:
        assert done.wait(10.0), "track()/stats() waited on a logging handler"
    finally:
        release.set()
    assert t.flush(10.0)
    assert set(fake_enso.events) == {first, accepted(second[0])}


def test_defect3_a_log_handler_calling_back_into_the_tracker_does_not_deadlock(
    tracker: TrackerFactory, fake_enso: FakeEnso, tracker_log: logging.Logger
) -> None:
    seen: list[int] = []
    holder: list[Tracker] = []

    class Reentrant(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if holder and threading.current_thread().name == "enso-tracker-sender":
                seen.append(holder[0].stats().requests)
                holder[0].flush(0.01)

    tracker_log.addHandler(Reentrant(logging.WARNING))
    fake_enso.script(Fault(status=503), Fault(status=503))
    t = tracker()
    holder.append(t)
    ids = [accepted(t.track("ent", "m", i)) for i in range(5)]
    assert t.flush(10.0)
    assert seen  # the handler ran on the sender thread and called back in
    assert set(fake_enso.events) == set(ids)
    assert t.stats().balanced


# -- 4. a raising handler or hook loses nothing and escapes nothing ------------------------


class _Raising(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("this handler is broken")


def test_defect4_a_raising_log_handler_loses_no_batch(
    fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    logger = logging.getLogger("enso_tracker")
    handler = _Raising(logging.DEBUG)
    logger.addHandler(handler)
    tracker = Tracker(
        api_key="wrong-key",  # 401: the branch whose log line used to make the batch vanish
        base_url=fake_enso.url,
        on_drop=drop_recorder,
        max_retries=2,
        backoff_base=0.01,
        backoff_max=0.05,
        flush_interval=0.05,
    )
    try:
        ids = [accepted(tracker.track("ent", "m", i)) for i in range(10)]
        assert tracker.flush(10.0)
        stats = tracker.stats()
        assert stats.balanced
        assert stats.pending == 0
        assert stats.dropped == {"retries_exhausted": 10}
        assert {e.event_id for e in drop_recorder.events("retries_exhausted")} == set(ids)
        assert stats.hook_errors >= 1
        assert stats.auth_state == "unauthorized"
    finally:
        logger.removeHandler(handler)
        tracker.shutdown(2.0)


def test_defect4_a_raising_handler_and_on_drop_never_escape_track(
    fake_enso: FakeEnso, tracker_log: logging.Logger
) -> None:
    tracker_log.addHandler(_Raising(logging.DEBUG))
    calls: list[DropReason] = []

    def on_drop(events: Sequence[Event], reason: DropReason) -> None:
        calls.append(reason)
        raise ValueError("hook is broken too")

    tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url, max_queue_size=1, on_drop=on_drop)
    try:
        accepted(tracker.track("ent", "m", 1))
        assert tracker.track("ent", "m", 2) is None  # queue_full: reported, never raised
        assert tracker.shutdown(5.0) is False  # something was refused
        assert tracker.track("ent", "m", 3) is None  # closed
        assert [r.kind for r in calls] == ["queue_full", "closed"]
        assert tracker.stats().hook_errors >= 2
    finally:
        tracker.shutdown(1.0)


# -- 5. an application's exit handler may still track --------------------------------------


def test_defect5_an_atexit_handler_registered_after_import_can_track(fake_enso: FakeEnso) -> None:
    result = _run_script(
        """
        import atexit, sys
        import enso_tracker

        def at_exit():
            assert tracker.track("ent", "m", 2, event_id="evt_from_atexit") is not None

        atexit.register(at_exit)  # after the import, before the first Tracker()
        tracker = enso_tracker.Tracker(api_key="test-api-key", base_url=sys.argv[1])
        tracker.track("ent", "m", 1, event_id="evt_from_main")
        """,
        fake_enso.url,
    )
    assert result.returncode == 0, result.stderr
    assert fake_enso.wait_for(lambda f: len(f.events) == 2, 10.0)
    assert set(fake_enso.events) == {"evt_from_main", "evt_from_atexit"}


# -- 6. infinite and huge timeouts ---------------------------------------------------------


@pytest.mark.parametrize("timeout", [math.inf, 1e10, 1e300])
def test_defect6_infinite_and_huge_timeouts_mean_no_limit(
    tracker: TrackerFactory, fake_enso: FakeEnso, timeout: float
) -> None:
    t = tracker()
    ids = [accepted(t.track("ent", "m", i)) for i in range(3)]
    assert t.flush(timeout) is True
    assert t.shutdown(timeout) is True
    assert set(fake_enso.events) == set(ids)
    assert repr(t).startswith("<Tracker closed")


def test_defect6_nan_and_negative_timeouts_do_not_wait(tracker: TrackerFactory) -> None:
    t = tracker(sender=_Down(), api_key=None, base_url="https://enso.test")
    accepted(t.track("ent", "m", 1))
    assert t.flush(math.nan) is False
    assert t.flush(-1.0) is False
    assert t.shutdown(math.nan) is False
    assert t.stats().dropped == {"shutdown": 1}


# -- 7. `with Pool() as p:` delivers the workers' events -----------------------------------

_POOL_SCRIPT = """
import json, os, sys
import multiprocessing
from enso_tracker import Tracker

_tracker = None

def work(i):
    global _tracker
    if _tracker is None:  # one tracker per worker, made in the worker's main thread
        _tracker = Tracker(api_key="test-api-key", base_url=os.environ["ENSO_BASE_URL"],
                           flush_interval=60.0)  # nothing leaves before the pool ends
    return _tracker.track("ent", "m", i)

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(2) as pool:  # __exit__ is terminate(): SIGTERM to the workers
        ids = pool.map(work, range(int(sys.argv[2])))
    print(json.dumps(ids))
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_defect7_pool_terminate_delivers_the_workers_events(
    fake_enso: FakeEnso, tmp_path: Path, method: str
) -> None:
    script = tmp_path / "pool_app.py"
    script.write_text(_POOL_SCRIPT)
    env = {
        **os.environ,
        "ENSO_BASE_URL": fake_enso.url,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    result = subprocess.run(
        [sys.executable, str(script), method, "200"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout)
    assert len(ids) == 200
    assert None not in ids
    assert fake_enso.wait_for(lambda f: len(f.events) >= 200, 10.0)
    assert set(fake_enso.events) == set(ids)
    assert not fake_enso.duplicates


def test_defect7_sigterm_is_a_graceful_stop_and_still_kills(fake_enso: FakeEnso) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time
                from enso_tracker import Tracker
                tracker = Tracker(api_key="test-api-key", base_url=sys.argv[1],
                                  flush_interval=60.0)
                for i in range(50):
                    tracker.track("ent", "m", i, event_id=f"evt_sigterm_{i}")
                print("ready", flush=True)
                time.sleep(60)
                """
            ),
            fake_enso.url,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        assert not fake_enso.events  # nothing sent yet: flush_interval is a minute
        process.terminate()
        assert process.wait(30) == -15  # still "killed by SIGTERM" for the platform
    finally:
        process.kill()
    assert set(fake_enso.events) == {f"evt_sigterm_{i}" for i in range(50)}


def test_defect7_an_application_sigterm_handler_is_left_alone() -> None:
    result = _run_script(
        """
        import signal
        from enso_tracker import Tracker
        def mine(signum, frame):
            pass
        signal.signal(signal.SIGTERM, mine)
        Tracker(api_key="k", base_url="http://127.0.0.1:9")
        assert signal.getsignal(signal.SIGTERM) is mine
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        Tracker(api_key="k", base_url="http://127.0.0.1:9", handle_sigterm=False)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        """
    )
    assert result.returncode == 0, result.stderr


# -- 10. flush()/shutdown() from on_drop ---------------------------------------------------


def test_defect10_shutdown_and_flush_from_on_drop_do_not_wait_for_themselves(
    fake_enso: FakeEnso,
) -> None:
    answers: list[tuple[str, bool]] = []
    holder: list[Tracker] = []

    def on_drop(events: Sequence[Event], reason: DropReason) -> None:
        if reason.kind == "rejected" and not answers:
            answers.append(("flush", holder[0].flush(3.0)))
            answers.append(("shutdown", holder[0].shutdown(3.0)))

    fake_known = FakeEnso(known_entities={"ent_ok"}).start()
    try:
        tracker = Tracker(
            api_key=API_KEY,
            base_url=fake_known.url,
            on_drop=on_drop,
            max_batch_size=10,
            flush_interval=60.0,
        )
        holder.append(tracker)
        bad = accepted(tracker.track("ent_unknown", "m", 0))
        good = [accepted(tracker.track("ent_ok", "m", i)) for i in range(500)]
        tracker.flush(0.0)  # start sending now
        assert wait_until(lambda: repr(tracker).startswith("<Tracker closed"), 20.0)
        stats = tracker.stats()
        assert answers == [("flush", False), ("shutdown", False)]
        assert "shutdown" not in stats.dropped
        assert stats.dropped == {"rejected": 1}
        assert stats.delivered == 500
        assert stats.balanced
        assert set(fake_known.events) == set(good)
        assert bad not in fake_known.events
        assert tracker.track("ent_ok", "m", 1) is None  # closed
    finally:
        holder[0].shutdown(2.0)
        fake_known.stop()


# -- 11. memory stays within what max_queue_bytes promises ---------------------------------


@pytest.mark.parametrize(
    ("entity", "metadata"),
    [
        ("ent_plain", {"blob": "x" * 6_000}),
        ("日本語の顧客" * 84, None),  # 504 non-ASCII characters
        ("é" * 500, None),
    ],
    ids=["6KB-metadata", "wide-names", "latin1-names"],
)
def test_defect11_memory_stays_within_max_queue_bytes_while_enso_is_down(
    entity: str, metadata: dict[str, Any] | None
) -> None:
    bound = 4 * 1024 * 1024
    tracker = Tracker(
        sender=_Down(),
        max_queue_bytes=bound,
        max_queue_size=1_000_000,
        max_batch_size=500,
        flush_interval=0.01,
        backoff_base=0.01,
        backoff_max=0.02,
    )
    try:
        gc.collect()
        tracemalloc.start()
        before = _ours(tracemalloc.take_snapshot())
        accepted_count = 0
        i = 0
        # Fresh strings each call, as an application building them per request would.
        while tracker.track(entity + str(i), "metric_" + str(i), i, metadata=metadata):
            accepted_count += 1
            i += 1
        # Every accepted event has been encoded and put back for a retry at least once:
        # the state that used to hold both the metadata JSON and the wire body.
        assert wait_until(lambda: tracker.stats().retried >= accepted_count, 30.0)
        gc.collect()
        after = _ours(tracemalloc.take_snapshot())
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        assert accepted_count > 100
        assert grown <= 1.5 * bound, f"{grown} bytes held for a {bound}-byte bound"
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        tracker.shutdown(0.5)


def _ours(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """What this test and the tracker's pipeline allocated: not the other threads of the
    test process (servers and trackers other tests left running) that share its heap."""
    return snapshot.filter_traces(
        [
            tracemalloc.Filter(True, "*/enso_tracker/_*.py"),
            tracemalloc.Filter(True, __file__),
        ]
    )


# -- 15. flush() does not scan the pending events under the lock ---------------------------


class _CountingDeque(deque[Any]):
    iterations = 0

    def __iter__(self) -> Iterator[Any]:
        _CountingDeque.iterations += 1
        return super().__iter__()


class _CountingList(list[Any]):
    iterations = 0

    def __iter__(self) -> Iterator[Any]:
        _CountingList.iterations += 1
        return super().__iter__()


def test_defect15_flush_reads_the_low_water_mark_without_scanning() -> None:
    tracker = Tracker(
        sender=_Down(),
        max_batch_size=1_000,
        max_backlog_batch_size=1_000,  # one batch of exactly 1,000 fails
        flush_interval=0.01,
        backoff_base=30.0,  # after the first failure, the request gate stays shut
        backoff_max=60.0,
    )
    try:
        schedule = tracker._ledger.schedule
        schedule.ready = _CountingDeque(schedule.ready)
        schedule.retry = _CountingList(schedule.retry)
        for i in range(20_000):
            accepted(tracker.track("ent", "m", i))
        # One batch failed and waits to be retried; the rest is queued behind the gate.
        assert wait_until(lambda: tracker.stats().retried >= 1_000, 30.0)
        assert len(schedule.ready) == 1_000
        _CountingDeque.iterations = _CountingList.iterations = 0
        assert tracker.flush(0.0) is False
        assert tracker.flush(0.001) is False
        assert _CountingDeque.iterations == 0
        assert _CountingList.iterations == 0
    finally:
        tracker.shutdown(0.2)


def test_defect15_flush_still_waits_for_out_of_order_retries(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker(max_batch_size=10)
    ids = [accepted(t.track("ent", "m", i)) for i in range(30)]
    fake_enso.fail_event_ids([ids[3], ids[17]], status=503, times=3)  # retried out of order
    assert t.flush(10.0)
    assert set(fake_enso.events) == set(ids)
    stats = t.stats()
    assert stats.pending == 0
    assert stats.retried >= 2


# -- 16. a tracker dropped without shutdown() --------------------------------------------


def _sender_threads() -> int:
    return sum(t.name == "enso-tracker-sender" for t in threading.enumerate())


@pytest.mark.slow
def test_defect16_a_dropped_tracker_delivers_then_is_collected(fake_enso: FakeEnso) -> None:
    gc.collect()
    threads_before = _sender_threads()
    fds_before = len(os.listdir("/proc/self/fd"))
    refs = []
    ids = []
    for i in range(20):
        tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url, flush_interval=0.01)
        ids.append(accepted(tracker.track("ent", "m", i)))
        refs.append(weakref.ref(tracker))
        del tracker
    assert fake_enso.wait_for(lambda f: len(f.events) == 20, 15.0)  # delivered first
    assert set(fake_enso.events) == set(ids)

    def all_gone() -> bool:
        gc.collect()
        return all(ref() is None for ref in refs) and _sender_threads() <= threads_before

    assert wait_until(all_gone, 15.0)
    assert wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before + 2, 10.0)
