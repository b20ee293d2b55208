"""Scenario 9: adopting many orphan spool files (issue #16).

``N`` ownerless spool files (what ``N`` killed processes or redrives leave), written for
the sink's destination and key, then a fresh process constructs a tracker on the
directory and delivers them all. Measured in that child: the descriptors it holds at
the peak (sampled every 2 ms, above its count just before ``Tracker(...)``), the time
the constructor takes and the time until the sink counted every event. Adoption holds
at most ``MAX_ADOPTED_FILES`` files open at a time, so the peak must not grow with N.

``python -m benchmarks.spool_adopt child URL DIR EVENTS`` is the child (prints JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from ._common import API_KEY, ENTITY, METRIC, Row, Section, Sizes, Summary, progress
from ._servers import ServerProcess

#: Events per orphan file (one batch each).
EVENTS_PER_FILE = 10
#: Descriptors the adopting process may hold above its baseline, whatever N.
FD_TARGET = 64
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plant(directory: str, files: int, url: str) -> int:
    """``files`` ownerless spool files of ``EVENTS_PER_FILE`` events, for ``url``'s identity."""
    import msgspec

    from enso_tracker._spool.format import write_unowned
    from enso_tracker._spool.identity import fingerprint
    from enso_tracker._wire import join_batch

    who = fingerprint(url, "api_key", API_KEY)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for f in range(files):
        bodies = [
            msgspec.json.encode(
                {
                    "CustomerEntityId": ENTITY,
                    "metric": METRIC,
                    "value": 1,
                    "timestamp": "2026-04-01T12:00:00.000Z",
                    "eventId": f"adopt-{f}-{i}",
                }
            )
            for i in range(EVENTS_PER_FILE)
        ]
        write_unowned(directory, [(join_batch(bodies), EVENTS_PER_FILE)], who)
    return files * EVENTS_PER_FILE


def _child(url: str, directory: str, events: int) -> None:
    from enso_tracker import Tracker

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    baseline = open_fds()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, open_fds())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    tracker = Tracker(API_KEY, base_url=url, spool_dir=directory, handle_sigterm=False)
    constructed = time.perf_counter() - t0
    deadline = time.monotonic() + 600
    while tracker.stats().delivered < events and time.monotonic() < deadline:
        time.sleep(0.005)
    drained = time.perf_counter() - t0
    done.set()
    sampler.join()
    stats = tracker.stats()
    tracker.shutdown(10.0)
    print(
        json.dumps(
            {
                "baseline": baseline,
                "peak": peak,
                "constructed": constructed,
                "drained": drained,
                "delivered": stats.delivered,
                "skipped": stats.skipped_spool_files,
            }
        )
    )


def run(sizes: Sizes, sink: ServerProcess) -> Section:
    section = Section("9. Spool adoption")
    files = 40 if sizes.quick else 1_000
    with tempfile.TemporaryDirectory(prefix="enso-bench-adopt-") as root:
        directory = os.path.join(root, "spool")
        progress(f"spool adoption: planting {files:,} orphan files")
        events = _plant(directory, files, sink.url)
        before = sink.count()
        progress("spool adoption: adopting them in a fresh process")
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.spool_adopt",
                "child",
                sink.url,
                directory,
                str(events),
            ],
            cwd=_ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if child.returncode != 0:
            raise RuntimeError(f"adoption child failed: {child.stderr[-2000:]}")
        found = json.loads(child.stdout.strip().splitlines()[-1])
        counted = sink.count() - before
    extra = found["peak"] - found["baseline"]
    section.rows = [
        Row(
            f"adopting {files:,} orphan files: peak descriptors above baseline",
            f"{extra:,}",
            "(one run)",
            target=f"≤ {FD_TARGET} (not growing with the files)",
            met=extra <= FD_TARGET and counted >= events,
        ),
        Row.measured(
            f"… Tracker(...) on {files:,} orphan files",
            Summary.of([found["constructed"]]),
            "s",
        ),
        Row.measured(
            f"… until the sink counted all {events:,} events",
            Summary.of([found["drained"]]),
            "s",
        ),
    ]
    section.details += [
        f"{files:,} ownerless spool files of {EVENTS_PER_FILE} events each (redrive files: "
        "one batch each), written for the sink's URL and key; a fresh process builds "
        "Tracker(spool_dir=...) on them and waits until every event is delivered. "
        f"Descriptors: /proc/self/fd sampled every 2 ms, baseline {found['baseline']} just "
        f"before Tracker(...), peak {found['peak']}; {found['delivered']:,} delivered, "
        f"{counted:,} counted by the sink, {found['skipped']} files skipped.",
    ]
    return section


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "child":
        sys.exit("usage: python -m benchmarks.spool_adopt child URL DIR EVENTS")
    _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
