"""Scenario 1: cost of ``track()`` in the caller's thread, against bare-deque baselines.

Every loop below is written out by hand (no shared helper taking a callable) so that
each variant pays exactly the same loop and timer overhead and nothing else: a chunk of
``CHUNK`` calls is timed with ``perf_counter_ns`` and the per-call sample is the chunk's
time divided by ``CHUNK``. The tracker's sender runs at the same time, delivering to
the counting sink in another process, as it would in production.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from enso_tracker import Tracker

from ._common import API_KEY, CHUNK, ENTITY, METRIC, Row, Section, Sizes, Summary, percentile

__all__ = ["TrackFn", "make_tracker", "run", "time_empty", "time_track"]

TrackFn = Callable[..., object]


def make_tracker(url: str, **options: Any) -> Tracker:
    """A tracker sized so that the benchmark never meets the queue bounds."""
    settings: dict[str, Any] = {
        "max_queue_size": 10_000_000,
        "max_queue_bytes": 16 * 1024**3,
    }
    settings.update(options)
    return Tracker(api_key=API_KEY, base_url=url, **settings)


def time_empty(chunks: int) -> list[float]:
    """The loop and timer alone (what every other figure includes)."""
    pc = time.perf_counter_ns
    out: list[float] = []
    for _ in range(chunks):
        t0 = pc()
        for _ in range(CHUNK):
            pass
        out.append((pc() - t0) / CHUNK)
    return out


def time_deque(chunks: int, queue: deque[tuple[str, str, int]]) -> list[float]:
    pc = time.perf_counter_ns
    append = queue.append
    entity, metric, value = ENTITY, METRIC, 1
    out: list[float] = []
    for _ in range(chunks):
        t0 = pc()
        for _ in range(CHUNK):
            append((entity, metric, value))
        out.append((pc() - t0) / CHUNK)
    return out


def time_deque_clock(chunks: int, queue: deque[tuple[str, str, int, int]]) -> list[float]:
    pc = time.perf_counter_ns
    append = queue.append
    time_ns = time.time_ns
    entity, metric, value = ENTITY, METRIC, 1
    out: list[float] = []
    for _ in range(chunks):
        t0 = pc()
        for _ in range(CHUNK):
            append((entity, metric, value, time_ns()))
        out.append((pc() - t0) / CHUNK)
    return out


def time_track(chunks: int, track: TrackFn) -> list[float]:
    pc = time.perf_counter_ns
    entity, metric, value = ENTITY, METRIC, 1
    out: list[float] = []
    for _ in range(chunks):
        t0 = pc()
        for _ in range(CHUNK):
            track(entity, metric, value)
        out.append((pc() - t0) / CHUNK)
    return out


def threaded(count: int, body: Callable[[], list[float]], timeout: float) -> list[float]:
    """Run ``body`` on ``count`` threads released together; all their samples, pooled."""
    barrier = threading.Barrier(count + 1)
    results: list[list[float]] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait(timeout)
        samples = body()
        with lock:
            results.append(samples)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    barrier.wait(timeout)
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if len(results) != count:
        raise RuntimeError("a benchmark thread did not finish in time")
    return [sample for samples in results for sample in samples]


def run(sizes: Sizes, sink_url: str) -> Section:
    section = Section("1. Hot path")
    chunks = max(1, sizes.hot_calls // CHUNK)
    thread_chunks = max(1, sizes.thread_calls // CHUNK)
    tracker = make_tracker(sink_url)
    track = tracker.track
    names = ("empty", "deque", "deque_clock", "track", "deque_4t", "track_4t")
    med: dict[str, list[float]] = {name: [] for name in names}
    p99: dict[str, list[float]] = {name: [] for name in names}
    ratio_deque: list[float] = []
    ratio_clock: list[float] = []
    ratio_4t: list[float] = []
    try:
        # Warm-up: start the sender thread and the connection, fill caches.
        time_track(max(1, chunks // 10), track)
        tracker.flush(30.0)
        for _ in range(sizes.repeats):
            q3: deque[tuple[str, str, int]] = deque()
            q4: deque[tuple[str, str, int, int]] = deque()
            runs = {
                "empty": time_empty(chunks),
                "deque": time_deque(chunks, q3),
                "deque_clock": time_deque_clock(chunks, q4),
                "track": time_track(chunks, track),
            }
            q3.clear()
            q4.clear()
            tracker.flush(60.0)  # the next measurement starts with an empty queue
            runs["deque_4t"] = threaded(4, partial(time_deque, thread_chunks, q3), 60.0)
            q3.clear()
            runs["track_4t"] = threaded(4, partial(time_track, thread_chunks, track), 60.0)
            tracker.flush(60.0)
            for name, samples in runs.items():
                med[name].append(percentile(samples, 0.5))
                p99[name].append(percentile(samples, 0.99))
            ratio_deque.append(med["track"][-1] / med["deque"][-1])
            ratio_clock.append(med["track"][-1] / med["deque_clock"][-1])
            ratio_4t.append(med["track_4t"][-1] / med["deque_4t"][-1])
        stats = tracker.stats()
    finally:
        tracker.shutdown(10.0)

    track_med = Summary.of(med["track"])
    deque_ratio = Summary.of(ratio_deque)
    section.rows += [
        Row.measured(
            "track() per call, median",
            track_med,
            target="≤ 1 µs",
            met=track_med.median <= 1000,
        ),
        Row.measured("track() per call, p99", Summary.of(p99["track"])),
        Row.measured("baseline deque.append(tuple), median", Summary.of(med["deque"])),
        Row.measured(
            "baseline deque.append + time.time_ns(), median", Summary.of(med["deque_clock"])
        ),
        Row.measured("empty loop + timer (in all of the above)", Summary.of(med["empty"])),
        Row.measured(
            "ratio track / deque.append",
            deque_ratio,
            "ratio",
            target="≤ 4x",
            met=deque_ratio.median <= 4.0,
        ),
        Row.measured("ratio track / deque.append + time_ns", Summary.of(ratio_clock), "ratio"),
        Row.measured("4 threads: track() per call per thread, median", Summary.of(med["track_4t"])),
        Row.measured("4 threads: track() per call per thread, p99", Summary.of(p99["track_4t"])),
        Row.measured(
            "4 threads: deque.append per call per thread, median", Summary.of(med["deque_4t"])
        ),
        Row.measured("4 threads: ratio track / deque.append", Summary.of(ratio_4t), "ratio"),
    ]
    section.details += [
        f"{sizes.repeats} repeats; each times {chunks * CHUNK:,} calls per variant in chunks of "
        f"{CHUNK} (per-call sample = chunk time / {CHUNK}); median and p99 are over the "
        "chunks of one repeat, the table shows the median over repeats and the min - max.",
        "Variants alternate within each repeat, and ratios are taken per repeat.",
        "Call: `track('ent_6CsgzAdRgTlzT_9O', 'api_calls', 1)` (no timestamp, no metadata); "
        "baselines append `(entity, metric, value)` and `(entity, metric, value, time_ns())`.",
        "The sender thread runs meanwhile (default max_batch_size and flush_interval), "
        "posting to the counting sink in a separate process; the queue is flushed between "
        "variants. p99 includes chunks interrupted by the sender (GIL switch interval "
        f"{_switch_interval_ms():.0f} ms) and by the garbage collector.",
        f"4 threads: {thread_chunks * CHUNK:,} calls per thread per repeat, all released by "
        "a barrier; per-thread samples pooled.",
        f"Tracker books after the runs: accepted={stats.accepted:,}, "
        f"delivered={stats.delivered:,}, dropped={stats.dropped}, requests={stats.requests:,}.",
    ]
    return section


def _switch_interval_ms() -> float:
    return sys.getswitchinterval() * 1000
