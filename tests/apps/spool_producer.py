"""A producer for the kill -9 harness (``tests/system/test_spool_kill.py``).

``python -m tests.apps.spool_producer --url URL --dir DIR --report FILE`` (cwd: the repo
root) tracks events with the ids ``<pid>-<n>`` into a spool until it is killed: the n-th
accepted event has sequence n, so the oracle needs no list of ids. Every ~20 ms it appends
``stats().durable_seq`` to FILE, written, flushed and fsynced, so that a line on disk is
never ahead of what the spool held when it was read. Exits 3 if ``track()`` ever refuses
an event (sequence n would no longer be id ``<pid>-<n>``), saying why on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from enso_tracker import Tracker

#: A line of the report every this long.
REPORT_EVERY = 0.02
#: A pause of 1 ms every this many events: under ~10,000 events/s, a busy web app's pace,
#: not a benchmark's (two producers and the fake Enso share two cores in CI; at 1 ms per
#: 100 events each producer tracks ~60,000/s and the final drain alone takes a minute).
PAUSE_EVERY = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()
    tracker = Tracker(
        "test-api-key",
        base_url=args.url,
        spool_dir=args.dir,
        handle_sigterm=False,
        flush_interval=0.2,
        backoff_base=0.05,
        backoff_max=0.5,
    )
    pid = os.getpid()

    def write_reports() -> None:
        with open(args.report, "a", encoding="ascii") as out:
            while True:
                out.write(f"{tracker.stats().durable_seq}\n")
                out.flush()
                os.fsync(out.fileno())
                time.sleep(REPORT_EVERY)

    threading.Thread(target=write_reports, name="report", daemon=True).start()
    n = 0
    while True:
        n += 1
        if tracker.track(f"ent_{n % 5}", "api_calls", 1, event_id=f"{pid}-{n}") is None:
            stats = tracker.stats()
            print(
                f"track() refused event {n}: refused={stats.refused} dropped={stats.dropped} "
                f"queued={stats.queued} last_error={stats.last_error}",
                file=sys.stderr,
                flush=True,
            )
            return 3
        if n % PAUSE_EVERY == 0:
            time.sleep(0.001)


if __name__ == "__main__":
    sys.exit(main())
