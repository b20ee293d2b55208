"""Scenario: does awaiting ``aflush()`` stall the event loop?

A heartbeat task asks for a 1 ms sleep over and over while the main task awaits
``tracker.aflush()``; the figure is the heartbeat's largest gap between two wake-ups
(median over runs), in two situations:

* **Enso hangs**: the request never gets an answer (FakeEnso ``hang()``), and ``aflush``
  waits out its whole timeout. Nothing else runs; the gap shows the loop is free.
* **sender busy**: ``aflush`` waits while the sender thread delivers a burst of events to
  the counting sink. The sender holds the GIL in turns with the loop, so gaps approach
  the interpreter's switch interval (``sys.getswitchinterval()``, 5 ms by default).

``python -m benchmarks.async_gap [--quick]`` prints the rows; :func:`run` returns them as a
``Section`` for ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from enso_tracker import Tracker
from enso_tracker.testing import FakeEnso

from ._common import (
    API_KEY,
    ENTITY,
    FULL,
    METRIC,
    QUICK,
    Row,
    Section,
    Sizes,
    Summary,
    render_details,
    render_table,
)
from ._servers import ServerProcess

__all__ = ["largest_gap", "run"]


TICK = 0.001


async def _heartbeat(gaps: list[float]) -> None:
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(TICK)
        now = loop.time()
        gaps.append(now - last)
        last = now


def largest_gap(tracker: Tracker, timeout: float) -> tuple[float, int, bool]:
    """Await ``aflush(timeout)`` beside a heartbeat: (largest gap s, beats, flush result)."""

    async def main() -> tuple[float, int, bool]:
        gaps: list[float] = []
        beat = asyncio.create_task(_heartbeat(gaps))
        await asyncio.sleep(TICK * 5)  # the heartbeat is running before the wait starts
        gaps.clear()
        try:
            settled = await tracker.aflush(timeout)
        finally:
            beat.cancel()
        return max(gaps, default=float("nan")), len(gaps), settled

    return asyncio.run(main())


def _hung(repeats: int, timeout: float) -> tuple[list[float], list[int]]:
    gaps: list[float] = []
    beats: list[int] = []
    with FakeEnso() as fake:
        for _ in range(repeats):
            fake.reset()
            fake.hang(None)
            tracker = Tracker(api_key=API_KEY, base_url=fake.url, flush_interval=0.01)
            try:
                tracker.track(ENTITY, METRIC, 1)
                if not fake.wait_for(lambda f: f.in_flight == 1, timeout=10.0):
                    raise RuntimeError("the request never reached the hung FakeEnso")
                gap, n, settled = largest_gap(tracker, timeout)
                if settled:
                    raise RuntimeError("aflush settled although Enso hung")
            finally:
                fake.release()
                tracker.shutdown(2.0)
            gaps.append(gap)
            beats.append(n)
    return gaps, beats


def _busy(repeats: int, events: int, sink: ServerProcess) -> tuple[list[float], list[int]]:
    gaps: list[float] = []
    beats: list[int] = []
    for _ in range(repeats):
        tracker = Tracker(
            api_key=API_KEY,
            base_url=sink.url,
            flush_interval=60.0,  # the burst goes out in the flush, not before
            max_queue_size=events + 1,
            max_batch_size=100,
        )
        try:
            for _ in range(events):
                tracker.track(ENTITY, METRIC, 1)
            gap, n, settled = largest_gap(tracker, 60.0)
            if not settled:
                raise RuntimeError("aflush did not settle the burst within 60 s")
        finally:
            tracker.shutdown(5.0)
        gaps.append(gap)
        beats.append(n)
    return gaps, beats


def run(sizes: Sizes, sink: ServerProcess) -> Section:
    section = Section("Async: event-loop gap during aflush()")
    repeats = 2 if sizes.quick else 7
    hang_timeout = 0.2 if sizes.quick else 1.0
    events = 2_000 if sizes.quick else 50_000
    hung_gaps, hung_beats = _hung(repeats, hang_timeout)
    busy_gaps, busy_beats = _busy(repeats, events, sink)
    section.rows += [
        Row.measured(
            f"largest heartbeat gap, Enso hangs ({hang_timeout:g} s aflush)",
            Summary.of(hung_gaps),
            "s",
        ),
        Row.measured(
            f"largest heartbeat gap, sender delivering {events:,} events",
            Summary.of(busy_gaps),
            "s",
        ),
    ]
    section.details += [
        f"Heartbeat: `await asyncio.sleep({TICK:g})` in a loop; a gap is the time between "
        "two wake-ups, so the floor is the sleep itself plus the loop's own overhead.",
        f"Beats per run, Enso hangs: {min(hung_beats)} - {max(hung_beats)}; "
        f"sender busy: {min(busy_beats)} - {max(busy_beats)}.",
        f"Interpreter switch interval: {sys.getswitchinterval() * 1000:g} ms "
        "(the longest the sender can hold the GIL before the loop's thread gets a turn).",
    ]
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.async_gap", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args: Any = parser.parse_args(argv)
    with ServerProcess("sink") as sink:
        section = run(QUICK if args.quick else FULL, sink)
    print(render_table([section]))
    print()
    print(render_details([section]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
