"""A producer for the kill -9 harness (``tests/test_spool_kill.py``).

``python -m tests.apps.spool_producer URL DIR REPORT``: tracks events with the ids
``<pid>-<n>`` (the n-th accepted event has sequence n) into a spool until it is killed,
and every ~20 ms appends its ``stats().durable_seq`` to REPORT, fsynced, so that a
line on disk is never ahead of what the spool holds. Exits 3 if ``track()`` ever
refuses an event (the oracle counts on sequence n being id ``<pid>-<n>``).
"""

from __future__ import annotations

import os
import sys
import threading
import time

from enso_tracker import Tracker


def main() -> int:
    url, directory, report = sys.argv[1:4]
    tracker = Tracker(
        "test-api-key",
        base_url=url,
        spool_dir=directory,
        handle_sigterm=False,
        flush_interval=0.2,
        spool_interval=0.05,
        backoff_base=0.05,
        backoff_max=0.5,
        queue_full_policy="block",
        block_timeout=3600.0,
    )
    pid = os.getpid()

    def write_reports() -> None:
        with open(report, "a", encoding="ascii") as out:
            while True:
                out.write(f"{tracker.stats().durable_seq}\n")
                out.flush()
                os.fsync(out.fileno())
                time.sleep(0.02)

    threading.Thread(target=write_reports, daemon=True).start()
    n = 0
    while True:
        n += 1
        if tracker.track(f"ent_{n % 5}", "api_calls", 1, event_id=f"{pid}-{n}") is None:
            return 3
        if n % 10 == 0:
            time.sleep(0.002)  # a web app's pace (two of these share two cores with Enso)


if __name__ == "__main__":
    sys.exit(main())
