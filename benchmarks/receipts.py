"""Scenario 11: the cost of receipts (issue #20).

* The fold on the sender thread, per settled event: decode its wire body, add it to
  its spool row's totals, and (``receipts="events"``) build its per-event row, with the
  store's writes per 500-event batch. Timed alone, in this process.
* End to end at 20,000 events/s against the sink: this process's CPU time (the sink runs
  in another) with receipts minus without, per event, for totals and per-event receipts.
* Disk: the receipts store after those runs, per million events (timestamps spread
  over 24 hours, 50 entities x 2 metrics: the totals grow with those, not with events).

``python -m benchmarks.receipts`` runs it alone (against a sink it starts).
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import cast

from enso_tracker import Tracker
from enso_tracker._receipts import SpoolReceipts
from enso_tracker._receipts_store import Level, ReceiptStore
from enso_tracker._record import Pending
from enso_tracker._spool.files import SpoolFile, StoredBatch
from enso_tracker._wire import EventEncoder

from ._common import API_KEY, Row, Section, Sizes, Summary, progress
from ._servers import ServerProcess

__all__ = ["run"]

RATE = 20_000.0
BATCH = 500


def fold_cost(level: Level, n: int) -> float:
    """CPU seconds per event of the fold (``note_all`` per batch of BATCH, as the sender
    calls it) and the store writes of its per-event rows."""
    enc = EventEncoder()
    base = time.time_ns()
    pendings = [
        Pending(
            0.0,
            i,
            (i, f"evt_{i}", f"ent_{i % 50}", "api_calls", i % 9, base, None, None, 0),
            bytes(enc.encode(f"evt_{i}", f"ent_{i % 50}", "api_calls", i % 9, base, None, None)),
            row=StoredBatch(cast("SpoolFile", None), i, 1, 0, 0.0, 0),  # its fold only
        )
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory(prefix="enso-bench-receipts-") as d:
        store = ReceiptStore(
            os.path.join(d, "receipts-x.db"), level=level, retention=1e9, identity="x"
        )
        receipts = SpoolReceipts(store)
        start = time.process_time()
        for i in range(0, n, BATCH):
            receipts.note_all(pendings[i : i + BATCH])
            receipts.commit()
        spent = time.process_time() - start
        store.close()
    return spent / n


def paced(url: str, receipts: bool | str, n: int, spread: int) -> tuple[float, int]:
    """(CPU seconds per event of this process, receipts store bytes) for ``n`` events
    tracked at RATE into a spool, flushed; timestamps over ``spread`` hours."""
    now = datetime.now(UTC)
    hours = [now - timedelta(hours=h) for h in range(spread)]
    with tempfile.TemporaryDirectory(prefix="enso-bench-receipts-") as d:
        t = Tracker(API_KEY, base_url=url, spool_dir=d, receipts=receipts, handle_sigterm=False)
        start_cpu, start = time.process_time(), time.monotonic()
        for i in range(n):
            when = hours[i % spread]
            t.track(f"ent_{i % 50}", "api_calls" if i % 2 else "tokens", i % 9, timestamp=when)
            if i % 200 == 0:
                ahead = i / RATE - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        if not t.flush(300):
            raise RuntimeError(f"not delivered: {t.stats()}")
        cpu = time.process_time() - start_cpu
        t.shutdown()
        size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(d, "receipts-*")))
    return cpu / n, size


#: (key, receipts=, hours the timestamps spread over, label)
PACED: tuple[tuple[str, bool | str, int, str], ...] = (
    ("off", False, 1, "no receipts"),
    ("totals", True, 1, "totals, 100 keys/hour"),
    ("spread", True, 24, "totals, 2,400 keys over 24 h"),
    ("events", "events", 1, "+ per-event"),
)


def run(sizes: Sizes, sink: ServerProcess) -> Section:
    section = Section("11. Receipts")
    n_fold = 5_000 if sizes.quick else 100_000
    n_paced = 2_000 if sizes.quick else 100_000
    repeats = 1 if sizes.quick else 3
    levels: tuple[tuple[Level, str], ...] = (("totals", "totals"), ("events", "+ per-event"))
    for level, label in levels:
        progress(f"receipts: fold cost ({label})")
        runs = [fold_cost(level, n_fold) * 1e9 for _ in range(repeats)]
        section.rows.append(
            Row.measured(f"receipts fold, sender thread, per event ({label})", Summary.of(runs))
        )
    found: dict[str, list[tuple[float, int]]] = {key: [] for key, *_ in PACED}
    for _ in range(repeats):
        for key, receipts, spread, label in PACED:
            progress(f"receipts: {n_paced:,} events at 20,000/s, {label}")
            found[key].append(paced(sink.url, receipts, n_paced, spread))
    for key, _, _, label in PACED[1:]:
        pairs = zip(found[key], found["off"], strict=True)
        extra = [(r[0] - o[0]) * RATE * 100 for r, o in pairs]
        section.rows.append(
            Row.measured(
                f"... whole process at 20,000 ev/s, core share ({label})", Summary.of(extra), "pct"
            )
        )
        per_million = [size / n_paced * 1e6 for _, size in found[key]]
        section.rows.append(
            Row.measured(
                f"... receipts store per million events ({label})", Summary.of(per_million), "bytes"
            )
        )
    section.details.append(
        f"Fold: {n_fold:,} synthetic settled events, note_all per batch of {BATCH}. Paced: "
        f"{n_paced:,} events into a spool at 20,000/s, 50 entities x 2 metrics, flushed; CPU "
        "of this process (the sink is another) with receipts minus without. A spool row's "
        "receipt costs per distinct (entity, metric, hour) in it: the 24-hour spread is the "
        "pessimistic case. Store: receipts-*.db with its WAL after shutdown."
    )
    return section


if __name__ == "__main__":
    from ._common import FULL, render_details, render_table

    with ServerProcess("sink") as server:
        result = run(FULL, server)
    print(render_table([result]))
    print(render_details([result]))
