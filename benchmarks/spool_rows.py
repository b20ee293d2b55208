"""Scenario 8, continued: a restart on 1,000,000 one-event rows (issue #16, finding 6).

A low-rate service after a long outage leaves one row per event. The backlog is built
fast: a process tracks one event and is SIGKILLed once it is on disk (so the file is in
the tracker's own format, for the sink's URL and key), then the rows are added to that
file with one SQLite ``executemany``. The restart runs in a fresh interpreter
(``python -m benchmarks.spool_rows restart URL DIR N``), which prints one JSON line:
constructor time, RSS before and after it, time to the first delivered event, peak RSS
(VmHWM) and the drain time.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from typing import Any

from enso_tracker import Tracker
from enso_tracker._wire import EventEncoder, join_batch

from ._common import API_KEY, ENTITY, METRIC

__all__ = ["build", "restart"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.spool_rows", *args],
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def build(url: str, directory: str, n: int) -> int:
    """A spool file in ``directory`` holding ``n`` one-event rows (and the seed event)."""
    seed = _child("seed", url, directory)
    try:
        assert seed.stdout is not None
        assert seed.stdout.readline().strip() == "durable"
    finally:
        seed.send_signal(signal.SIGKILL)
        seed.wait(30)
    (db,) = glob.glob(os.path.join(directory, "spool-*.db"))
    encoder = EventEncoder()
    now = time.time()
    ts = time.time_ns()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO batches (created, n, crc, body) VALUES (?, ?, ?, ?)",
            (
                (now, 1, zlib.crc32(body), body)
                for body in (
                    join_batch([encoder.encode(f"row{i}", ENTITY, METRIC, 1, ts, None, None)])
                    for i in range(n)
                )
            ),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return n + 1


def restart(url: str, directory: str, n: int, timeout: float) -> dict[str, Any]:
    """Run the restart child; its report."""
    child = _child("restart", url, directory, str(n), str(timeout))
    try:
        out, _ = child.communicate(timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise TimeoutError("the restart child did not finish") from None
    found: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return found


def _seed(url: str, directory: str) -> int:
    # Never sent: flush_interval is an hour and the batch is far from full.
    tracker = Tracker(
        API_KEY,
        base_url=url,
        spool_dir=directory,
        handle_sigterm=False,
        flush_interval=3600.0,
        spool_interval=0.01,
    )
    tracker.track(ENTITY, METRIC, 1, event_id="seed")
    while tracker.stats().durable_seq < 1:
        time.sleep(0.005)
    print("durable", flush=True)
    time.sleep(600)  # until SIGKILLed
    return 1


def _restart(url: str, directory: str, n: int, timeout: float) -> int:
    before = _status("VmRSS")
    t0 = time.perf_counter()
    heir = Tracker(API_KEY, base_url=url, spool_dir=directory, handle_sigterm=False)
    constructed = time.perf_counter() - t0
    after = _status("VmRSS")
    deadline = time.monotonic() + timeout
    while heir.stats().delivered < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    first = time.perf_counter() - t0
    first_peak = _status("VmHWM")
    while heir.stats().delivered < n and time.monotonic() < deadline:
        time.sleep(0.05)
    drained = time.perf_counter() - t0
    stats = heir.stats()
    heir.shutdown(10.0)
    report = {
        "constructor_s": constructed,
        "rss_before": before,
        "rss_after_constructor": after,
        "first_delivered_s": first,
        "peak_rss_to_first": first_peak,
        "peak_rss": _status("VmHWM"),
        "drained_s": drained,
        "delivered": stats.delivered,
        "max_queue_bytes": heir.config.max_queue_bytes,
    }
    print(json.dumps(report), flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode, url, directory = argv[:3]
    if mode == "seed":
        return _seed(url, directory)
    return _restart(url, directory, int(argv[3]), float(argv[4]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
