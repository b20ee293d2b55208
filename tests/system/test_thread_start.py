"""Issue #18, finding 5: a sender thread that cannot start.

Resource limits (``RuntimeError: can't start new thread``), or CPython 3.12.0-3.12.2
after the main thread returned (gh-113964), make ``Thread.start()`` raise. Events must
stay queued and counted, the start is retried with backoff, ``flush()``/``shutdown()``
deliver in the caller's thread (or report every event), and ``shutdown()`` never raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from enso_tracker.testing import DropRecorder, FakeEnso, Fault
from tests.conftest import API_KEY, TrackerFactory, accepted, wait_until

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

ROOT = Path(__file__).resolve().parents[2]


class StartFailures:
    """``Thread.start`` raising for the tracker's threads (as under a thread limit)."""

    def __init__(self) -> None:
        self.failing = True
        self.attempts = 0
        self._lock = threading.Lock()


@pytest.fixture
def no_threads(monkeypatch: pytest.MonkeyPatch) -> StartFailures:
    state = StartFailures()
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name.startswith("enso-tracker-"):
            with state._lock:
                state.attempts += 1
            if state.failing:
                raise RuntimeError("can't start new thread")
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return state


def child_path() -> str:
    """PYTHONPATH for a child interpreter: this checkout first, then the caller's."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def tracker_threads(besides: frozenset[threading.Thread] = frozenset()) -> list[str]:
    """The names of the tracker threads running, but for ``besides`` (threads of other
    tests' trackers that have not ended yet: daemon threads may outlive their test)."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("enso-tracker-") and t not in besides
    ]


@pytest.mark.parametrize("spool", [False, True], ids=["memory", "spool"])
def test_flush_and_shutdown_deliver_in_the_callers_thread(
    tracker: TrackerFactory,
    fake_enso: FakeEnso,
    no_threads: StartFailures,
    drop_recorder: DropRecorder,
    tmp_path: Path,
    spool: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = {"spool_dir": str(tmp_path / "spool")} if spool else {}
    others = frozenset(threading.enumerate())
    t = tracker(max_batch_size=40, **options)
    with caplog.at_level(logging.ERROR, logger="enso_tracker"):
        ids = [accepted(t.track("ent", "api_calls", i)) for i in range(100)]
    assert tracker_threads(others) == []
    assert t.stats().queued + t.stats().spooled >= 100 - t.stats().delivered
    assert "cannot start the enso-tracker" in caplog.text
    assert "died" not in caplog.text  # it never ran: nothing died
    assert t.flush(10.0)
    assert set(fake_enso.events) == set(ids)
    more = [accepted(t.track("ent", "api_calls", i)) for i in range(30)]
    assert t.shutdown(10.0) is True  # no RuntimeError from joining an unstarted thread
    assert set(fake_enso.events) == set(ids + more)
    stats = t.stats()
    assert stats.delivered == 130
    assert stats.balanced
    assert drop_recorder.calls == []
    assert tracker_threads(others) == []


def test_shutdown_reports_every_event_it_cannot_deliver(
    tracker: TrackerFactory,
    private_fake: FakeEnso,
    no_threads: StartFailures,
    drop_recorder: DropRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = tracker(base_url=private_fake.url)
    private_fake.stop()  # nothing can be delivered
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(25)]
    with caplog.at_level(logging.INFO, logger="enso_tracker"):
        assert t.shutdown(0.5) is False
    assert sorted(e.event_id for e in drop_recorder.events("shutdown")) == sorted(ids)
    stats = t.stats()
    assert stats.dropped == {"shutdown": 25}
    assert stats.balanced
    assert "shut down: 0 delivered, 25 dropped" in caplog.text


def test_a_failed_start_is_retried_with_backoff_not_on_every_track(
    tracker: TrackerFactory, fake_enso: FakeEnso, no_threads: StartFailures
) -> None:
    t = tracker(backoff_base=1.0, backoff_max=2.0)
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(2000)]
    assert 1 <= no_threads.attempts <= 3  # not 2,000 tries: the backoff holds them back
    assert fake_enso.received == 0
    no_threads.failing = False

    def track_one_more() -> bool:
        ids.append(accepted(t.track("ent", "api_calls", 1)))
        return fake_enso.received > 0

    # Once starting works again, a later track() starts the thread, which delivers by
    # itself (no flush).
    assert wait_until(track_one_more)
    assert "enso-tracker-sender" in tracker_threads()
    assert t.flush(10.0)
    assert set(fake_enso.events) == set(ids)
    assert t.stats().delivered == len(ids)


def test_a_flush_without_a_thread_keeps_its_deadline(
    tracker: TrackerFactory, fake_enso: FakeEnso, no_threads: StartFailures
) -> None:
    t = tracker(timeout=5.0)
    fake_enso.hang(None)
    accepted(t.track("ent", "api_calls", 1))
    started = time.monotonic()
    try:
        assert t.flush(0.5) is False
    finally:
        fake_enso.release()
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"flush(0.5) took {elapsed:.1f} s with timeout=5.0"
    assert t.flush(10.0)
    assert len(fake_enso.events) == 1


# ------------------------------------------------ a real failure, in a subprocess

CHILD = textwrap.dedent(
    """
    import json, logging, resource, sys, threading
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from enso_tracker import Tracker

    tracker = Tracker(api_key=sys.argv[2], base_url=sys.argv[1], flush_interval=0.05)
    # A real limit, no patching: every new thread asks for a 1 GiB stack, and the
    # address space may grow by 256 MiB only.
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = vm * 1024 + 256 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    threading.stack_size(1024 * 1024 * 1024)
    try:
        threading.Thread(target=print).start()
        started = True
    except RuntimeError:
        started = False
    ids = [tracker.track("ent", "api_calls", i) for i in range(50)]
    flushed = tracker.flush(10.0)
    ids += [tracker.track("ent", "api_calls", i) for i in range(20)]
    if sys.argv[3] == "dropped":  # no reference kept, never shut down: the exit hook's
        ids += [Tracker(api_key=sys.argv[2], base_url=sys.argv[1]).track("ent", "m", 1)]
        import gc; gc.collect()  # nothing but the tracker's own hold keeps it
    print(json.dumps({"started": started, "flushed": flushed, "ids": ids,
                      "threads": [t.name for t in threading.enumerate()]}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("mode", ["kept", "dropped"])
def test_a_process_that_cannot_start_threads_delivers_everything(
    fake_enso: FakeEnso, mode: str
) -> None:
    env = {**os.environ, "PYTHONPATH": child_path()}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, fake_enso.url, API_KEY, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["started"] is False  # the limit is real: no thread can start
    assert report["threads"] == ["MainThread"]
    assert report["flushed"] is True
    assert set(fake_enso.events) == set(report["ids"])  # the 20 after the flush: at exit
    assert "cannot start the enso-tracker sender thread" in result.stderr
    assert "shut down: 70 delivered, 0 dropped, 0 refused" in result.stderr
    if mode == "dropped":  # the tracker dropped at once still delivered at exit
        assert len(report["ids"]) == 71
        assert "shut down: 1 delivered, 0 dropped, 0 refused" in result.stderr


def test_aflush_and_ashutdown_deliver_when_no_thread_can_start(
    tracker: TrackerFactory, fake_enso: FakeEnso, no_threads: StartFailures
) -> None:
    t = tracker()
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(10)]

    async def main() -> tuple[bool, bool]:
        flushed = await t.aflush(10.0)
        ids.append(accepted(t.track("ent", "api_calls", 10)))
        return flushed, await t.ashutdown(10.0)

    # (The awaiting helper, "enso-tracker-await", cannot start either.)
    assert asyncio.run(main()) == (True, True)
    assert set(fake_enso.events) == set(ids)
    assert no_threads.attempts >= 2


def test_a_shutdown_during_another_threads_flush_waits_and_delivers_the_rest(
    tracker: TrackerFactory,
    fake_enso: FakeEnso,
    no_threads: StartFailures,
    drop_recorder: DropRecorder,
) -> None:
    t = tracker()
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(10)]
    fake_enso.script(Fault(delay=0.5))  # the flush's request is in flight for a while
    flushed: list[bool] = []
    flusher = threading.Thread(target=lambda: flushed.append(t.flush(10.0)))
    flusher.start()
    assert wait_until(lambda: fake_enso.in_flight == 1)
    ids += [accepted(t.track("ent", "api_calls", i)) for i in range(5)]
    assert t.shutdown(10.0) is True  # not "dropped at once": it waited its turn
    flusher.join(10.0)
    assert flushed == [True]
    assert set(fake_enso.events) == set(ids)
    assert drop_recorder.calls == []


GH_113964 = textwrap.dedent(
    """
    import logging, sys, threading
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from enso_tracker import Tracker

    tracker = Tracker(api_key=sys.argv[2], base_url=sys.argv[1], flush_interval=0.05)
    go = threading.Event()

    def work():
        go.wait()  # set only once the main thread has returned
        for i in range(300):
            tracker.track("ent", "api_calls", i)

    threading.Thread(target=work).start()
    threading.Timer(0.3, go.set).start()
    """
)


@pytest.mark.skipif(
    not (sys.implementation.name == "cpython" and (3, 12, 0) <= sys.version_info[:3] <= (3, 12, 2)),
    reason="CPython gh-113964 exists on 3.12.0-3.12.2 only (make test-all runs one)",
)
def test_events_tracked_after_the_main_thread_returned_on_cpython_3_12_early(
    fake_enso: FakeEnso,
) -> None:
    # On these versions no thread can start once the main thread returned: the sender
    # never runs, and the exit hook delivers in its own thread.
    env = {**os.environ, "PYTHONPATH": child_path()}
    result = subprocess.run(
        [sys.executable, "-c", GH_113964, fake_enso.url, API_KEY],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "can't create new thread at interpreter shutdown" in result.stderr
    assert "shut down: 300 delivered, 0 dropped, 0 refused" in result.stderr
    assert len(fake_enso.events) == 300


def test_shutdown_from_on_drop_during_caller_run_delivery_does_not_stall(
    tracker: TrackerFactory, fake_enso: FakeEnso, no_threads: StartFailures
) -> None:
    outcomes: list[bool] = []

    def on_drop(events: object, reason: object) -> None:
        outcomes.append(t.shutdown(5.0))  # runs in flush()'s own thread here

    t = tracker(on_drop=on_drop)
    fake_enso.script(Fault(status=400))  # the batch is refused: on_drop runs
    accepted(t.track("ent", "api_calls", 1))
    started = time.monotonic()
    t.flush(5.0)
    elapsed = time.monotonic() - started
    assert outcomes == [False]  # from on_drop: it cannot wait for the rounds it is in
    assert t.stats().dropped == {"rejected": 1}
    assert repr(t).startswith("<Tracker closed")
    assert elapsed < 3.0, f"flush(5.0) took {elapsed:.1f} s: the shutdown waited on itself"
