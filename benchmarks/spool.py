"""Scenario 8: the durable spool's costs (issue #10's targets).

* ``track()`` median and p99 with and without a spool: the spool adds no work to it.
* Caller slowdown at 20,000 events/s with and without a spool (scenario 4's CPU loop
  and pacing thread): the spooler thread's share of the GIL.
* Disk per spooled event, and the largest WAL seen while spooling at 20,000 events/s.
* A restart on a large backlog: from ``Tracker(spool_dir=...)`` to the first batch at
  the sink, and the drain rate until all of it is delivered.
* A restart on 1,000,000 one-event rows (``spool_rows``): the constructor's time and
  RSS, the time to the first delivered event, the drain rate.
"""

from __future__ import annotations

import glob
import os
import tempfile
import threading
import time
from typing import Any

import httpx

from enso_tracker import Tracker

from . import spool_rows
from ._common import CHUNK, ENTITY, METRIC, Row, Section, Sizes, Summary, percentile, progress
from ._servers import ServerProcess
from .hot_path import make_tracker, time_track
from .overhead import Pacer, _timed_work, work

__all__ = ["run"]

SLOWDOWN_POINTS = 3.0  # with a spool ≤ without + 3 points
DISK_TARGET = 300.0  # bytes per spooled event
WAL_TARGET = 8 * 1024 * 1024
FIRST_SEND_TARGET = 1.0  # seconds from construction to the first batch at the sink
ROWS_RSS_TARGET = 16 * 1024 * 1024  # the constructor on one-event rows (was +246 MiB)


def _disk(directory: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(directory, "spool-*.db*")))


def _wal(directory: str) -> int:
    return max(
        (os.path.getsize(p) for p in glob.glob(os.path.join(directory, "spool-*.db-wal"))),
        default=0,
    )


class WalWatch:
    """Samples the largest WAL in a directory every 10 ms."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WalWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.largest = max(self.largest, _wal(self.directory))
            except OSError:  # a file removed between the glob and the stat
                continue


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("Enso is down (benchmark)", request=request)


def _backlog(directory: str, n: int, url: str) -> int:
    """``n`` events left on disk by a tracker that could not reach Enso at ``url`` (the
    heir's: a tracker adopts only files written for its own destination and key)."""
    tracker = make_tracker(
        url,
        transport=httpx.MockTransport(_refuse),
        spool_dir=directory,
        max_queue_bytes=64 * 1024 * 1024,
        queue_full_policy="block",
        block_timeout=600.0,
        handle_sigterm=False,
    )
    for i in range(n):
        tracker.track(ENTITY, METRIC, i)
    deadline = time.monotonic() + 600
    while tracker.stats().durable_seq < n and time.monotonic() < deadline:
        time.sleep(0.01)
    tracker.shutdown(0.5)
    return tracker.stats().left_in_spool


def run(sizes: Sizes, sink: ServerProcess) -> Section:
    section = Section("8. Durable spool")
    quick = sizes.quick
    repeats = sizes.repeats
    rate = sizes.overhead_rate
    options: dict[str, Any] = {"handle_sigterm": False}
    with tempfile.TemporaryDirectory(prefix="enso-bench-spool-") as root:
        # ---- track(): median and p99, with and without
        progress("spool: track() with and without a spool")
        hot_dir = os.path.join(root, "hot")
        trackers = {
            "memory": make_tracker(sink.url, **options),
            "spool": make_tracker(sink.url, spool_dir=hot_dir, **options),
        }
        medians: dict[str, list[float]] = {k: [] for k in trackers}
        p99s: dict[str, list[float]] = {k: [] for k in trackers}
        try:
            for tracker in trackers.values():
                tracker.track(ENTITY, METRIC, 1)
                tracker.flush(10.0)
            for repeat in range(repeats):
                order = list(trackers.items())
                if repeat % 2:
                    order.reverse()
                for name, tracker in order:
                    samples = time_track(sizes.hot_calls // CHUNK, tracker.track)
                    medians[name].append(percentile(samples, 0.5))
                    p99s[name].append(percentile(samples, 0.99))
                    tracker.flush(60.0)
        finally:
            for tracker in trackers.values():
                tracker.shutdown(10.0)

        # ---- slowdown of a CPU loop at 20k ev/s, and the WAL meanwhile
        progress("spool: caller slowdown at 20k ev/s")
        n = sizes.overhead_loop
        load_dir = os.path.join(root, "load")
        pair = {
            "memory": make_tracker(sink.url, **options),
            "spool": make_tracker(sink.url, spool_dir=load_dir, **options),
        }
        slowdown: dict[str, list[float]] = {k: [] for k in pair}
        wal_largest = 0
        try:
            work(n // 10)
            for tracker in pair.values():
                tracker.track(ENTITY, METRIC, 1)
                tracker.flush(10.0)
            with WalWatch(load_dir) as watch:
                for repeat in range(max(2, min(sizes.overhead_repeats, 12))):
                    before = _timed_work(n)
                    took: dict[str, float] = {}
                    order = list(pair.items())
                    if repeat % 2:
                        order.reverse()
                    for name, tracker in order:
                        with Pacer(tracker.track, rate, max_seconds=60.0):
                            time.sleep(0.03)  # let the pacing settle
                            t0 = time.perf_counter()
                            work(n)
                            took[name] = time.perf_counter() - t0
                        tracker.flush(30.0)
                    plain = (before + _timed_work(n)) / 2
                    for name, seconds in took.items():
                        slowdown[name].append((seconds / plain - 1) * 100)
                wal_largest = watch.largest
        finally:
            for tracker in pair.values():
                tracker.shutdown(10.0)

        # ---- disk per spooled event
        progress("spool: disk per event")
        disk_dir = os.path.join(root, "disk")
        disk_events = 5_000 if quick else 200_000
        left = _backlog(disk_dir, disk_events, sink.url)
        per_event = _disk(disk_dir) / max(left, 1)

        # ---- restart on a backlog
        restart_events = 20_000 if quick else 1_000_000
        progress(f"spool: building a {restart_events:,}-event backlog")
        restart_dir = os.path.join(root, "restart")
        backlog = _backlog(restart_dir, restart_events, sink.url)
        progress("spool: restart and drain")
        before = sink.count()
        t0 = time.perf_counter()
        heir = Tracker(api_key="test-api-key", base_url=sink.url, spool_dir=restart_dir, **options)
        try:
            sink.wait(before + 1, 60.0)
            first = time.perf_counter() - t0
            got = sink.wait(before + backlog, 600.0)
            drained = time.perf_counter() - t0
        finally:
            heir.shutdown(30.0)
        delivered = got - before

        # ---- restart on one-event rows (issue #16): memory and time do not grow with rows
        row_events = 5_000 if quick else 1_000_000
        progress(f"spool: building {row_events:,} one-event rows")
        rows_dir = os.path.join(root, "rows")
        row_total = spool_rows.build(sink.url, rows_dir, row_events)
        progress("spool: restart on one-event rows")
        rows = spool_rows.restart(sink.url, rows_dir, row_total, 900.0)

    spool_p50 = Summary.quartiles(medians["spool"])
    memory_p50 = Summary.quartiles(medians["memory"])
    spool_p99 = Summary.quartiles(p99s["spool"])
    memory_p99 = Summary.quartiles(p99s["memory"])
    slow_spool = Summary.quartiles(slowdown["spool"])
    slow_memory = Summary.quartiles(slowdown["memory"])
    section.rows += [
        Row.measured("track() median, no spool", memory_p50),
        Row.measured(
            "track() median, with a spool",
            spool_p50,
            target="≈ no spool (+10 %)",
            met=spool_p50.median <= memory_p50.median * 1.10 + 20,
        ),
        Row.measured("track() p99 (per 100-call chunk), no spool", memory_p99),
        Row.measured(
            "track() p99 (per 100-call chunk), with a spool",
            spool_p99,
            target="≈ no spool (+10 %)",
            met=spool_p99.median <= memory_p99.median * 1.10 + 50,
        ),
        Row.measured(f"caller slowdown at {rate:,} ev/s, no spool", slow_memory, "pct"),
        Row.measured(
            f"caller slowdown at {rate:,} ev/s, with a spool",
            slow_spool,
            "pct",
            target=f"≤ no spool + {SLOWDOWN_POINTS:g} points",
            met=slow_spool.median <= slow_memory.median + SLOWDOWN_POINTS,
        ),
        Row.measured(
            f"disk per spooled event ({left:,} events on disk)",
            Summary.of([per_event]),
            "bytes",
            target=f"≤ {DISK_TARGET:g} B",
            met=per_event <= DISK_TARGET,
        ),
        Row.measured(
            f"largest WAL while spooling {rate:,} ev/s",
            Summary.of([float(wal_largest)]),
            "bytes",
            target="< 8 MiB",
            met=wal_largest < WAL_TARGET,
        ),
        Row.measured(
            f"restart on a {backlog:,}-event backlog: construction to first batch at the sink",
            Summary.of([first]),
            "s",
            target=f"≤ {FIRST_SEND_TARGET:g} s",
            met=first <= FIRST_SEND_TARGET,
        ),
        Row.measured(
            "… then the backlog's drain rate",
            Summary.of([delivered / drained if drained else 0.0]),
            "rate",
        ),
        Row.measured(
            f"restart on {row_total:,} one-event rows: constructor",
            Summary.of([rows["constructor_s"]]),
            "s",
        ),
        Row.measured(
            "… RSS gained by the constructor",
            Summary.of([float(rows["rss_after_constructor"] - rows["rss_before"])]),
            "bytes",
            target="≤ 16 MiB",
            met=rows["rss_after_constructor"] - rows["rss_before"] <= ROWS_RSS_TARGET,
        ),
        Row.measured(
            "… construction to the first event delivered",
            Summary.of([rows["first_delivered_s"]]),
            "s",
            target=f"≤ {FIRST_SEND_TARGET:g} s",
            met=rows["first_delivered_s"] <= FIRST_SEND_TARGET,
        ),
        Row.measured(
            "… peak RSS while draining (whole process)",
            Summary.of([float(rows["peak_rss"])]),
            "bytes",
        ),
        Row.measured(
            "… drain rate",
            Summary.of([rows["delivered"] / rows["drained_s"] if rows["drained_s"] else 0.0]),
            "rate",
        ),
    ]
    section.details += [
        f"One-event rows: {row_total:,} rows (one event each) added with SQLite to the "
        "file of a process SIGKILLed after writing one event; a fresh interpreter "
        "constructs the tracker (RSS from /proc/self/status before and after), then "
        f"waits for the first delivered event; {rows['delivered']:,} delivered in "
        f"{rows['drained_s']:.1f} s (max_queue_bytes {rows['max_queue_bytes']:,}).",
        "track() timing: hot_path.time_track (100-call chunks, the p99 is over chunks), "
        f"{sizes.hot_calls:,} calls per repeat, {repeats} repeats, order alternated; both "
        "trackers deliver to the counting sink.",
        f"Slowdown: scenario 4's CPU loop ({n:,} iterations) while a pacing thread tracks "
        f"{rate:,} ev/s into each tracker in turn; the spooler writes one SQLite row per "
        "batch (WAL, 64 KiB pages, synchronous=NORMAL). The WAL is sampled every 10 ms.",
        f"Disk: {disk_events:,} events tracked with Enso unreachable, then shutdown(0.5): "
        "spool-*.db plus its WAL, divided by the events left on disk.",
        f"Restart: a backlog of {backlog:,} events left the same way; the clock runs from "
        f"Tracker(...) (which adopts the file) to the sink counting the first event; "
        f"{delivered:,} delivered in {drained:.1f} s.",
    ]
    return section
