"""Receipts' costs (issue #20): ``python -m benchmarks.receipts [--events N]``.

* CPU per settled event on the sender thread, totals only and with per-event receipts:
  the spool path end to end against a local sink that accepts everything (FakeEnso), as
  process CPU time of a run with receipts minus one without, per event.
* Disk per million events: the receipts store after the run, scaled.

A tracker paced at 20,000 events/s for the CPU figures (the issue's load); the same
events, timestamps spread over 24 hours and 50 entities x 2 metrics, for the disk.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta

from enso_tracker import Tracker
from enso_tracker.testing import FakeEnso

RATE = 20_000.0


def _run(fake: FakeEnso, receipts: object, n: int) -> tuple[float, int]:
    """(process CPU seconds, receipts store bytes) for ``n`` events at RATE."""
    with tempfile.TemporaryDirectory() as d:
        t = Tracker(
            fake.api_key, base_url=fake.url, spool_dir=d, receipts=receipts, handle_sigterm=False
        )
        now = datetime.now(UTC)
        hours = [now - timedelta(hours=h) for h in range(24)]
        start_cpu, start = time.process_time(), time.monotonic()
        for i in range(n):
            ts = hours[i % 24]
            t.track(f"ent_{i % 50}", "api_calls" if i % 2 else "tokens", i % 9, timestamp=ts)
            if i % 200 == 0:
                ahead = i / RATE - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        assert t.flush(120)
        cpu = time.process_time() - start_cpu
        t.shutdown()
        size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(d, "receipts-*")))
        return cpu, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    n = parser.parse_args().events
    with FakeEnso() as fake:
        figures = {}
        for label, receipts in (("off", False), ("totals", True), ("events", "events")):
            fake.reset()
            figures[label] = _run(fake, receipts, n)
    off = figures["off"][0]
    for label in ("totals", "events"):
        cpu, size = figures[label]
        extra = (cpu - off) / n * 1e6
        print(
            f"receipts={label}: +{extra:.2f} µs CPU per event "
            f"(+{extra * RATE / 1e4:.1f} % of a core at 20,000 ev/s), "
            f"store {size / n * 1e6 / 2**20:.1f} MiB per million events"
        )
    print(f"(no receipts: {off / n * 1e6:.1f} µs CPU per event, whole process incl. fake)")


if __name__ == "__main__":
    main()
