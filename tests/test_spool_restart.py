"""A restart on many small rows (issue #16, finding 6): 1,000,000 one-event rows (a
low-rate service after a long outage) cost the constructor 3.3 s and +246 MiB outside
``max_queue_bytes``, one Python object per row. Rows are now read in chunks through a
cursor as they are sent: the constructor's memory does not grow with the rows, and each
event is delivered once. (Times: ``benchmarks/spool.py``.)"""

from __future__ import annotations

import os
import sqlite3
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from enso_tracker import Tracker
from enso_tracker._wire import EventEncoder, join_batch
from enso_tracker.testing import FakeEnso

from .conftest import API_KEY, wait_until

ROWS = 200_000


def one_event_rows(spool: Path, fake: FakeEnso, n: int) -> set[str]:
    """A spool file left by a process that could not deliver, holding ``n`` more rows of
    one event each (written straight into it with SQLite, in the file's own format: a
    tracker made it). Returns the eventIds it holds."""
    fake.chaos(p503=1.0)  # every request refused: the first event stays on disk
    tracker = Tracker(
        API_KEY, base_url=fake.url, spool_dir=spool, handle_sigterm=False, backoff_base=0.01
    )
    seed = tracker.track("ent", "m", 1, event_id="seed")
    assert seed == "seed"
    tracker.shutdown(0.3)
    assert tracker.stats().left_in_spool == 1
    fake.reset()
    (db,) = [spool / n for n in os.listdir(spool) if n.startswith("spool-") and n.endswith(".db")]
    encoder = EventEncoder()
    now = time.time()

    def rows() -> list[tuple[float, int, int, bytes]]:
        out = []
        for i in range(n):
            body = join_batch([encoder.encode(f"r{i}", "ent", "m", i, 1 << 60, None, None)])
            out.append((now, 1, zlib.crc32(body), body))
        return out

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO batches (created, n, crc, body) VALUES (?, ?, ?, ?)", rows())
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {"seed", *(f"r{i}" for i in range(n))}


@pytest.mark.timeout(300)
def test_a_restart_on_many_one_event_rows_reads_them_in_chunks(
    fake: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    expected = one_event_rows(spool, fake, ROWS)
    fake.hang(None)  # the first request waits: the backlog is all on disk meanwhile
    tracemalloc.start()
    try:
        heir = Tracker(API_KEY, base_url=fake.url, spool_dir=spool, handle_sigterm=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        # One object per row was ~45 MiB for 200,000 rows; chunks of rows cost the same
        # whatever their number.
        assert peak < 4 * 1024 * 1024, f"the constructor allocated {peak / 2**20:.1f} MiB"
        stats = heir.stats()
        assert stats.adopted == ROWS + 1
        assert stats.spooled == ROWS + 1
        assert fake.wait_for(lambda f: f.in_flight >= 1, 30.0)
        assert heir.stats().queued_bytes <= heir.config.max_queue_bytes // 2 + 2**20
        fake.release()
        assert wait_until(lambda: heir.stats().delivered == ROWS + 1, 240.0), heir.stats()
        assert set(fake.event_ids()) == expected
        assert fake.duplicates == {}
        assert heir.stats().balanced
    finally:
        fake.release()
        heir.shutdown(10.0)
    assert [n for n in os.listdir(spool) if n.startswith("spool-")] == []
