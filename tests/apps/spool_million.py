"""A producer for the spool's scale tests: 1,000,000 events while Enso is down.

``python -m tests.apps.spool_million URL DIR MODE``: tracks events ``e0``…``e999999``
with a 16 MiB memory bound (``queue_full_policy="block"``: nothing is refused while the
disk absorbs the backlog), waits until all are on disk, then prints one JSON line with
its memory figures. MODE ``deliver``: then waits for a line on stdin (Enso is back) and
flushes everything; ``leave``: shuts down at once, leaving the backlog on disk.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from enso_tracker import Tracker

N = 1_000_000
MEMORY = 16 * 1024 * 1024


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> int:
    url, directory, mode = sys.argv[1:4]
    tracker = Tracker(
        "test-api-key",
        base_url=url,
        spool_dir=directory,
        handle_sigterm=False,
        max_queue_bytes=MEMORY,
        queue_full_policy="block",
        block_timeout=60.0,
        timeout=1.0,
        backoff_max=1.0,
        shutdown_timeout=2.0,
    )
    tracker.track("ent", "m", 0, event_id="warmup")  # imports and threads in the baseline
    baseline = rss_peak()
    peak_queued = 0
    for i in range(N):
        tracker.track("ent", "m", i, event_id=f"e{i}")
        if i % 10_000 == 0:
            peak_queued = max(peak_queued, tracker.stats().queued_bytes)
    deadline = time.monotonic() + 120
    while tracker.stats().durable_seq < N + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = tracker.stats()
    report = {
        "baseline": baseline,
        "peak": rss_peak(),
        "peak_queued_bytes": peak_queued,
        "durable_seq": stats.durable_seq,
        "spooled": stats.spooled,
        "refused": stats.refused,
    }
    print(json.dumps(report), flush=True)
    if mode == "leave":
        tracker.shutdown(0.5)
        print(json.dumps({"left_in_spool": tracker.stats().left_in_spool}), flush=True)
        return 0
    sys.stdin.readline()
    ok = tracker.flush(300.0)
    stats = tracker.stats()
    print(json.dumps({"flushed": ok, "delivered": stats.delivered, "peak": rss_peak()}), flush=True)
    return 0 if tracker.shutdown(10.0) else 1


if __name__ == "__main__":
    sys.exit(main())
