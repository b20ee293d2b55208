"""Scenario 4: slowdown of CPU-bound caller code while events are tracked in the background.

The main thread runs a pure-Python loop. In the "tracking" runs a second thread tracks
events at a paced rate (default 20,000/s, in ticks of 5 ms) and the tracker's sender
delivers them to the counting sink (another process). Everything in this process shares
one GIL, so the loop loses whatever CPU the tracking thread and the sender use.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from enso_tracker import Config

from ._common import ENTITY, METRIC, Row, Section, Sizes, Summary
from .hot_path import make_tracker

__all__ = ["run"]

TARGET_PCT = 5.0
_TICK = 0.005  # seconds between bursts of the pacing thread


def work(n: int) -> int:
    """CPU-bound pure Python: the caller's own work."""
    total = 0
    for i in range(n):
        total = (total + i * i) % 1_000_003
    return total


class DequeControl:
    """The control: same pacing thread, same call shape, but only a deque append."""

    def __init__(self) -> None:
        self._queue: deque[tuple[str, str, int]] = deque()

    def track(self, entity: str, metric: str, value: int) -> None:
        self._queue.append((entity, metric, value))

    def flush(self, timeout: float) -> bool:
        self._queue.clear()
        return True


class Pacer:
    """A thread that calls ``track`` ``rate`` times per second until stopped."""

    def __init__(
        self, track: Callable[[str, str, int], object], rate: int, max_seconds: float
    ) -> None:
        self._track = track
        self._per_tick = max(1, round(rate * _TICK))
        self._stop = threading.Event()
        self._max_seconds = max_seconds
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="bench-pacer", daemon=True)

    def __enter__(self) -> Pacer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        track, per_tick, stop = self._track, self._per_tick, self._stop
        entity, metric = ENTITY, METRIC
        start = time.monotonic()
        limit = start + self._max_seconds
        ticks = 0
        while not stop.is_set():
            for _ in range(per_tick):
                track(entity, metric, 1)
            self.sent += per_tick
            ticks += 1
            now = time.monotonic()
            if now >= limit:
                break
            delay = start + ticks * _TICK - now
            if delay > 0:
                stop.wait(delay)


def _timed_work(n: int) -> float:
    t0 = time.perf_counter()
    work(n)
    return time.perf_counter() - t0


DEFAULT_BATCH = Config().max_batch_size


def run(sizes: Sizes, sink_url: str) -> Section:
    section = Section("4. Caller overhead")
    n = sizes.overhead_loop
    rate = sizes.overhead_rate
    control = DequeControl()
    # The default batch, and a large one (keys are labels, not sizes).
    trackers = {100: make_tracker(sink_url), 1000: make_tracker(sink_url, max_batch_size=1000)}
    variants: dict[str, tuple[Callable[[str, str, int], object], Callable[[float], bool]]] = {
        "control": (control.track, control.flush),
        "batch100": (trackers[100].track, trackers[100].flush),
        "batch1000": (trackers[1000].track, trackers[1000].flush),
    }
    slowdown: dict[str, list[float]] = {name: [] for name in variants}
    achieved: list[float] = []
    baseline: list[float] = []
    try:
        work(n // 10)  # warm-up
        for tracker in trackers.values():  # start sender threads and connections
            tracker.track(ENTITY, METRIC, 1)
            tracker.flush(10.0)
        for repeat in range(sizes.overhead_repeats):
            before = _timed_work(n)
            took: dict[str, float] = {}
            order = list(variants.items())
            if repeat % 2:
                order.reverse()
            for name, (track, flush) in order:
                with Pacer(track, rate, max_seconds=60.0) as pacer:
                    time.sleep(0.03)  # let the pacing settle
                    sent_before = pacer.sent
                    t0 = time.perf_counter()
                    work(n)
                    took[name] = time.perf_counter() - t0
                    sent = pacer.sent - sent_before
                if name == "batch100":
                    achieved.append(sent / took[name])
                flush(30.0)
            plain = (before + _timed_work(n)) / 2  # the loop alone, before and after
            baseline.append(plain)
            for name, seconds in took.items():
                slowdown[name].append((seconds / plain - 1) * 100)
        books = {batch: t.stats() for batch, t in trackers.items()}
    finally:
        for tracker in trackers.values():
            tracker.shutdown(10.0)

    main = Summary.quartiles(slowdown["batch100"])
    section.rows += [
        Row.measured("CPU loop alone", Summary.quartiles(baseline), "s"),
        Row.measured(
            f"slowdown while tracking {rate:,} ev/s (default max_batch_size={DEFAULT_BATCH})",
            main,
            "pct",
            target=f"≤ {TARGET_PCT:g} %",
            met=main.median <= TARGET_PCT,
        ),
        Row.measured(
            "… achieved tracking rate during the loop", Summary.quartiles(achieved), "rate"
        ),
        Row.measured(
            f"slowdown while tracking {rate:,} ev/s, max_batch_size=1,000",
            Summary.quartiles(slowdown["batch1000"]),
            "pct",
        ),
        Row.measured(
            "control: same pacing thread appending to a deque (no tracker)",
            Summary.quartiles(slowdown["control"]),
            "pct",
        ),
    ]
    section.details += [
        f"CPU loop: {n:,} iterations of `total = (total + i * i) % 1_000_003` on the main "
        "thread. Each repeat times the loop alone (before and after, averaged) and with each "
        "variant (order reversed every other repeat); the slowdown is the ratio within "
        f"the repeat, minus 1. {sizes.overhead_repeats} repeats; spread is the IQR.",
        f"Pacing thread: {round(rate * _TICK)} calls every {_TICK * 1000:g} ms "
        "(deadline-paced, so bursts catch up after GIL waits). Tracked variants deliver to "
        "the counting sink in another process; the queue is flushed between runs. The "
        "control shows what the pacing thread alone costs (thread wake-ups, GIL hand-offs).",
        "Books: "
        + "; ".join(
            f"batch {b}: delivered={s.delivered:,}, requests={s.requests:,}, dropped={s.dropped}"
            for b, s in books.items()
        ),
    ]
    return section
