"""Receipts across kill -9 (issue #20): exactly what Enso stored, neither lost nor doubled.

Two producers with per-event receipts share one spool directory while the fake Enso
answers some requests with 503, stores some batches but loses the answer, and rejects
one of the five entities (code 2002). One producer is SIGKILLed at a random moment every
50-800 ms and replaced (the replacement adopts the orphans); after a final drain with
the faults off, the receipts' delivered totals equal the totals of the events the fake
stored, per (entity, metric, UTC hour), count and sum digit for digit, and every
rejected receipt is counted once and looked up with Enso's code.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import Receipts, Spool, Tracker
from enso_tracker.testing import FakeEnso
from tests.conftest import API_KEY

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

ROOT = Path(__file__).resolve().parents[2]
KILLS = 24
SEED = int(os.environ.get("ENSO_KILL_SEED", "20261206"))
PRODUCER = (sys.executable, "-m", "tests.apps.receipts_producer")
KNOWN = ["ent_a", "ent_b", "ent_c", "ent_d"]


def start(fake: FakeEnso, spool: Path, logs: Path, k: int) -> subprocess.Popen[bytes]:
    with open(logs / f"stderr-{k}.txt", "wb") as err:
        return subprocess.Popen(
            [*PRODUCER, "--url", fake.url, "--dir", str(spool)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def kill(process: subprocess.Popen[bytes], logs: Path) -> None:
    if process.poll() is not None:
        tails = [p.read_text(errors="replace")[-2000:] for p in logs.iterdir()]
        pytest.fail(f"a producer died on its own (rc={process.returncode}): {tails}")
    process.send_signal(signal.SIGKILL)
    process.wait(30)


def exact(value: Any) -> int | Decimal:
    """A value as the fake stored it (its JSON decoder makes a fraction a float)."""
    return value if isinstance(value, int) else Decimal(repr(value))


def stored_totals(fake: FakeEnso) -> dict[tuple[str, str, str], tuple[int, int | Decimal]]:
    out: dict[tuple[str, str, str], tuple[int, int | Decimal]] = {}
    for event in fake.events.values():
        key = (event["CustomerEntityId"], event["metric"], event["timestamp"][:13])
        count, total = out.get(key, (0, 0))
        out[key] = (count + 1, total + exact(event["value"]))
    return out


@pytest.mark.timeout(120)
def test_receipts_equal_what_enso_stored_after_kill_9s(fake_enso: FakeEnso, tmp_path: Path) -> None:
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    spool, logs = tmp_path / "spool", tmp_path / "logs"
    logs.mkdir()
    fake_enso.known_entities = KNOWN
    fake_enso.chaos(p503=0.1, p_store_then_drop=0.05, seed=SEED)
    made = 0
    live = []
    for _ in range(2):
        live.append(start(fake_enso, spool, logs, made))
        made += 1
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.05, 0.8))  # the kill schedule itself, not a wait
        kill(live.pop(rng.randrange(len(live))), logs)
        live.append(start(fake_enso, spool, logs, made))
        made += 1
    time.sleep(rng.uniform(0.05, 0.8))
    for process in live:
        kill(process, logs)
    fake_enso.chaos()  # faults off: the final drain

    heir = Tracker(
        API_KEY, base_url=fake_enso.url, spool_dir=spool, receipts="events", handle_sigterm=False
    )
    heir.shutdown(60.0)  # False: some events were rejected, as they should be
    stats = heir.stats()
    assert (stats.left_in_spool, stats.queued) == (0, 0), stats
    assert set(stats.dropped) <= {"rejected"}, stats
    status = Spool(spool).status()
    assert (status.files, status.events) == (0, 0), status  # every pending receipt moved

    with Receipts(spool) as receipts:
        delivered = {
            (t.entity, t.metric, t.period): (t.count, t.sum)
            for t in receipts.totals(by="hour", outcome="delivered")
        }
        rejected = receipts.totals(by="hour", outcome="rejected:")
        others = [
            t for t in receipts.totals(by="hour") if t.outcome != "delivered" and t not in rejected
        ]
        expected = stored_totals(fake_enso)
        summary = (
            f"seed={SEED} stored={len(fake_enso.events)} "
            f"duplicates={sum(fake_enso.duplicates.values())} "
            f"receipted={sum(c for c, _ in delivered.values())}"
        )
        print(summary)
        assert len(fake_enso.events) > 1000, summary
        assert delivered == expected, summary
        assert others == [], others  # nothing dropped for another reason
        assert rejected, "no rejected receipts: the unknown entity was never refused"
        assert {(t.entity, t.outcome) for t in rejected} == {("ent_unknown", "rejected:2002")}
        # Per-event receipts agree with the totals: each rejected event counted once.
        events = receipts._conn.execute(
            "SELECT outcome, count(*) FROM events GROUP BY outcome"
        ).fetchall()
        assert dict(events) == {
            "delivered": len(fake_enso.events),
            "rejected:2002": sum(t.count for t in rejected),
        }
        some_rejected = receipts._conn.execute(
            "SELECT event_id FROM events WHERE outcome = 'rejected:2002' LIMIT 1"
        ).fetchone()[0]
        found = receipts.lookup(some_rejected)
        assert found is not None
        assert (found.entity, found.code, found.status) == ("ent_unknown", "2002", 404)
        some_delivered = next(iter(fake_enso.events))
        looked = receipts.lookup(some_delivered)
        assert looked is not None
        assert looked.outcome == "delivered"
