"""Signals during track(): asynchronous exceptions and re-entrant calls from handlers.

Each runs in a subprocess (its own signal state) against the FakeEnso of the test
process, with a timer firing every few hundred microseconds while the main thread calls
track() in a tight loop, so that the signal lands at every point of track() over the
run. Everything is bounded in time: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from enso_tracker.testing import FakeEnso

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]


def run(source: str, fake: FakeEnso) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), fake.url],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_keyboard_interrupt_anywhere_in_track_leaves_exact_books(fake_enso: FakeEnso) -> None:
    report = run(
        """
        import json, signal, sys, time
        from enso_tracker import Tracker

        tracker = Tracker(api_key="test-api-key", base_url=sys.argv[1], flush_interval=0.05)

        armed = False

        def interrupt(signum, frame):
            global armed
            if armed:  # only around track(): the loop itself must survive
                armed = False
                raise KeyboardInterrupt

        signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
        ids, interrupts = [], 0
        deadline = time.monotonic() + 20
        while interrupts < 400 and time.monotonic() < deadline:
            try:
                armed = True
                event_id = tracker.track("ent", "m", 1)
                armed = False
                ids.append(event_id)
            except KeyboardInterrupt:
                interrupts += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        settled = tracker.flush(20.0)  # the lock is free, or this would hang
        stats = tracker.stats()
        print(json.dumps({
            "interrupts": interrupts, "ids": ids, "settled": settled,
            "accepted": stats.accepted, "delivered": stats.delivered,
            "pending": stats.pending, "balanced": stats.balanced, "dropped": stats.dropped,
        }))
        """,
        fake_enso,
    )
    assert report["interrupts"] >= 100
    assert report["settled"] is True
    assert report["balanced"] is True
    assert report["pending"] == 0
    assert report["dropped"] == {}
    # No phantom: every accepted event is on the server, once; an interruption after
    # acceptance may have kept its id from the caller, never the event from Enso.
    assert fake_enso.wait_for(lambda f: len(f.events) == report["accepted"], 10.0)
    assert report["delivered"] == report["accepted"] == len(fake_enso.events)
    assert None not in report["ids"]
    assert set(report["ids"]) <= set(fake_enso.events)
    assert not fake_enso.duplicates


def test_flush_stats_and_shutdown_from_a_signal_handler_never_hang(fake_enso: FakeEnso) -> None:
    report = run(
        """
        import json, signal, sys, time
        from enso_tracker import Tracker

        tracker = Tracker(api_key="test-api-key", base_url=sys.argv[1], flush_interval=0.05)
        calls = {"n": 0, "slowest": 0.0, "shutdown": None, "busy": False}

        def handler(signum, frame):
            if calls["busy"]:  # the timer outpaces a waiting handler: no nesting
                return
            calls["busy"] = True
            calls["n"] += 1
            started = time.monotonic()
            tracker.stats()
            tracker.flush(0.02)
            if calls["n"] == 300:
                calls["shutdown"] = tracker.shutdown(5.0)
            calls["slowest"] = max(calls["slowest"], time.monotonic() - started)
            calls["busy"] = False

        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
        ids, refused = [], 0
        deadline = time.monotonic() + 30
        while calls["n"] < 400 and time.monotonic() < deadline:
            event_id = tracker.track("ent", "m", 1)
            if event_id is None:
                refused += 1
            else:
                ids.append(event_id)
        signal.setitimer(signal.ITIMER_REAL, 0)
        closed = tracker.shutdown(10.0)
        stats = tracker.stats()
        print(json.dumps({
            "calls": calls["n"], "slowest": calls["slowest"], "ids": ids,
            "refused": refused, "closed": closed, "balanced": stats.balanced,
            "accepted": stats.accepted, "delivered": stats.delivered,
            "dropped": stats.dropped, "pending": stats.pending,
        }))
        """,
        fake_enso,
    )
    assert report["calls"] >= 300  # the shutdown call came from the handler
    assert report["slowest"] < 6.0  # each call honoured its timeout (5 s at most)
    assert report["refused"] > 0  # track() after the handler's shutdown: closed
    assert report["balanced"] is True
    assert report["pending"] == 0
    assert report["dropped"] == {}
    assert report["delivered"] == report["accepted"] == len(report["ids"])
    assert fake_enso.wait_for(lambda f: len(f.events) == report["accepted"], 10.0)
    assert set(report["ids"]) == set(fake_enso.events)


def test_the_sender_gets_its_turn_while_another_thread_tracks_in_a_tight_loop(
    fake_enso: FakeEnso,
) -> None:
    report = run(
        """
        import json, sys, threading, time
        from enso_tracker import Tracker

        tracker = Tracker(api_key="test-api-key", base_url=sys.argv[1], flush_interval=0.2)
        stop = threading.Event()
        tracked = []

        def tight_loop():
            n = 0
            while not stop.is_set():
                tracker.track("ent", "m", 1)
                n += 1
            tracked.append(n)

        loop = threading.Thread(target=tight_loop)
        loop.start()
        # The loop stops only once the server has seen a request, or after 20 s.
        started = time.monotonic()
        while tracker.stats().requests == 0 and time.monotonic() - started < 20:
            stop.wait(0.01)
        requests_while_looping = tracker.stats().requests
        stop.set()
        loop.join()
        tracker.shutdown(10.0)
        s = tracker.stats()
        print(json.dumps({"requests": requests_while_looping, "tracked": tracked[0],
                          "delivered": s.delivered, "dropped": s.dropped,
                          "refused": s.refused}))
        """,
        fake_enso,
    )
    assert report["requests"] >= 1  # delivered while the loop was still running
    assert report["tracked"] > 0
    # Every call is accounted for: delivered, or (a loop outrunning a loaded machine's
    # sender) refused at the queue's documented bound; nothing lost after acceptance.
    assert report["dropped"] == {}
    assert set(report["refused"]) <= {"queue_full"}
    assert report["delivered"] + sum(report["refused"].values()) == report["tracked"]


def test_a_tracker_that_never_started_its_thread_causes_no_fork_warning() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::DeprecationWarning",
            "-c",
            textwrap.dedent(
                """
                import os
                from enso_tracker import Tracker
                tracker = Tracker(api_key="k", base_url="http://127.0.0.1:9")
                pid = os.fork()  # Python 3.12+ warns when forking a multi-threaded process
                if pid == 0:
                    os._exit(0)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
                import threading
                assert threading.active_count() == 1, threading.enumerate()
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "DeprecationWarning" not in result.stderr
