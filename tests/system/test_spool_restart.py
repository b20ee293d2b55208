"""A restart on many small rows (issue #16, finding 6): 1,000,000 one-event rows (a
low-rate service after a long outage) cost the constructor 3.3 s and +246 MiB outside
``max_queue_bytes``, one Python object per row; and every adopted event was then kept
(body and all) in the schedule's low-water heap until a ``flush()``, +600 MiB by the
end of the drain. Rows are now read in chunks through a cursor as they are sent, and
let go of once delivered. (Times: ``benchmarks/spool.py``.)

The restart runs in a fresh interpreter (``benchmarks.spool_rows``), so its RSS is the
tracker's alone; it delivers to a FakeEnso here, which checks every eventId arrived once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import spool_rows
from enso_tracker.testing import FakeEnso

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

ROWS = 200_000
MiB = 1024 * 1024


@pytest.mark.timeout(300)
def test_a_restart_on_many_one_event_rows_stays_in_memory_bounds(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with FakeEnso() as fake:
        total = spool_rows.build(fake.url, str(spool), ROWS)
        assert total == ROWS + 1
        report = spool_rows.restart(fake.url, str(spool), total, 240.0)
        assert report["delivered"] == total, report
        ids = fake.event_ids()
        assert set(ids) == {"seed", *(f"row{i}" for i in range(ROWS))}
        assert fake.duplicates == {}
    # An object per row was ~+50 MiB for 200,000 rows: now a chunk of rows at a time.
    grown = report["rss_after_constructor"] - report["rss_before"]
    assert grown < 16 * MiB, f"the constructor grew RSS by {grown / MiB:.1f} MiB"
    # Through the whole drain: within max_queue_bytes (was ~+170 MiB for these rows).
    peak = report["peak_rss"] - report["rss_before"]
    assert peak < report["max_queue_bytes"], f"RSS grew by {peak / MiB:.1f} MiB"
    assert [n for n in os.listdir(spool) if n.startswith("spool-")] == []
