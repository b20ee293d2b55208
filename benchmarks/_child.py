"""Child-process entry points for the scenarios that need a fresh interpreter.

``python -m benchmarks._child memory URL N``
    Queue N events against an unreachable server, print RSS before and after (JSON).
``python -m benchmarks._child exit URL N SHUTDOWN_TIMEOUT``
    Track N events and return without calling anything: the atexit hook delivers.
    Prints ``TRACKED <monotonic>`` after the last track(), and from an atexit handler
    that runs after the tracker's, ``HOOKED <monotonic> <delivered> <dropped>``.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import time

from benchmarks._common import API_KEY, METRIC


def vm_rss() -> int:
    """Resident set size in bytes, from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory(url: str, n: int) -> int:
    from enso_tracker import Tracker

    # The caller's objects are built up front: only what the tracker keeps is measured.
    entities = [f"ent_{i:016x}" for i in range(1000)]
    values = list(range(1000))
    tracker = Tracker(
        api_key=API_KEY,
        base_url=url,
        flush_interval=3600.0,
        max_queue_size=max(n * 2, 1000),
        max_queue_bytes=16 * 1024**3,
        shutdown_timeout=0.0,
    )
    track = tracker.track
    track(entities[0], METRIC, 0)  # starts the sender thread before the first reading
    time.sleep(0.2)
    gc.collect()
    before = vm_rss()
    for i in range(n):
        track(entities[i % 1000], METRIC, values[i % 1000])
    gc.collect()
    after = vm_rss()
    stats = tracker.stats()
    print(
        json.dumps(
            {
                "rss_before": before,
                "rss_after": after,
                "events": n,
                "accepted": stats.accepted,
                "queued": stats.queued,
                "in_flight": stats.in_flight,
                "requests": stats.requests,
            }
        ),
        flush=True,
    )
    os._exit(0)  # skip the atexit hook: nothing is to be delivered here


def exit_after_tracking(url: str, n: int, shutdown_timeout: float) -> int:
    def report() -> None:
        stats = tracker.stats()
        print(
            f"HOOKED {time.monotonic():.6f} {stats.delivered} {sum(stats.dropped.values())}",
            flush=True,
        )

    # Registered before enso_tracker is imported, so it runs after the tracker's hook.
    atexit.register(report)
    from enso_tracker import Tracker

    tracker = Tracker(api_key=API_KEY, base_url=url, shutdown_timeout=shutdown_timeout)
    for i in range(n):
        tracker.track("ent_6CsgzAdRgTlzT_9O", METRIC, i)
    print(f"TRACKED {time.monotonic():.6f}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "memory":
        return memory(argv[1], int(argv[2]))
    if len(argv) == 4 and argv[0] == "exit":
        return exit_after_tracking(argv[1], int(argv[2]), float(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
