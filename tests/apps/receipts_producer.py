"""A producer for the receipts kill -9 test (``tests/system/test_receipts_kill.py``).

``python -m tests.apps.receipts_producer --url URL --dir DIR`` (cwd: the repo root) tracks
events into a spool with per-event receipts until it is killed: five entities, one of
them unknown to the fake Enso (rejected with code 2002), two metrics, values that are
ints or Decimals with two decimal places (exact in the fake's float storage too).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from decimal import Decimal

from enso_tracker import Tracker

#: A pause of 1 ms every this many events: a busy web app's pace, not a benchmark's.
PAUSE_EVERY = 10
ENTITIES = ("ent_a", "ent_b", "ent_c", "ent_d", "ent_unknown")


def value(n: int) -> int | Decimal:
    return n % 7 if n % 3 else Decimal(f"{n % 5}.{n % 100:02d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    tracker = Tracker(
        "test-api-key",
        base_url=args.url,
        spool_dir=args.dir,
        receipts="events",
        handle_sigterm=False,
        flush_interval=0.2,
        backoff_base=0.05,
        backoff_max=0.5,
    )
    pid = os.getpid()
    n = 0
    while True:
        n += 1
        entity = ENTITIES[n % len(ENTITIES)]
        metric = "api_calls" if n % 2 else "tokens"
        if tracker.track(entity, metric, value(n), event_id=f"{pid}-{n}") is None:
            print(f"track() refused event {n}: {tracker.stats()}", file=sys.stderr, flush=True)
            return 3
        if n % PAUSE_EVERY == 0:
            time.sleep(0.001)


if __name__ == "__main__":
    sys.exit(main())
