"""The kill -9 harness of the durable spool (issue #10), against a real FakeEnso.

Two producer processes share one spool directory and track events as fast as a busy web
app, while Enso answers some requests with 503 and sometimes stores a batch but loses
the answer. One of them is SIGKILLed at a random moment every 50-1,500 ms (mid-commit,
mid-send, mid-adoption: a fresh producer adopts the orphans at construction) and
replaced, at least 100 times. Oracle: each producer fsyncs its ``durable_seq`` as it
goes; after a final drain with the faults off, every event at or below the last
``durable_seq`` a producer reported is on the server, and the directory is empty.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from enso_tracker import Spool, Tracker
from enso_tracker.testing import FakeEnso, Fault

from .conftest import API_KEY

ROOT = Path(__file__).resolve().parent.parent
KILLS = 100
SEED = 20261128


@dataclass
class Producer:
    process: subprocess.Popen[bytes]
    report: Path

    def last_durable(self) -> int:
        """The last complete line of the report (a torn last line is ignored)."""
        if not self.report.exists():
            return 0
        lines = self.report.read_text(encoding="ascii").split("\n")
        complete = [line for line in lines[:-1] if line.isdigit()]
        return int(complete[-1]) if complete else 0


def start(fake: FakeEnso, spool: Path, reports: Path, k: int) -> Producer:
    report = reports / f"report-{k}.txt"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.apps.spool_producer", fake.url, str(spool), str(report)],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,  # retry warnings under chaos: the oracle says the rest
    )
    return Producer(process, report)


def test_store_then_drop_stores_the_batch_and_loses_the_answer(fake: FakeEnso) -> None:
    fake.script(Fault(store_then_drop=True))
    body = {
        "events": [
            {
                "CustomerEntityId": "ent",
                "metric": "m",
                "value": 1,
                "timestamp": "2026-04-01T12:00:00.000Z",
                "eventId": "kept",
            }
        ]
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{fake.url}/events/batch", json=body, headers=headers, timeout=5.0)
    assert fake.event_ids() == ["kept"]
    with httpx.Client(transport=fake.transport()) as client:
        fake.script(Fault(store_then_drop=True))
        body["events"][0]["eventId"] = "kept-too"
        with pytest.raises(httpx.ReadError):
            client.post("http://fake/events/batch", json=body, headers=headers)
    assert fake.event_ids() == ["kept", "kept-too"]


def test_chaos_fails_a_share_of_requests_reproducibly(fake: FakeEnso) -> None:
    statuses = []
    for seed in (1, 1):
        fake.reset()
        fake.chaos(p503=0.5, seed=seed)
        with httpx.Client(transport=fake.transport()) as client:
            got = [
                client.post(
                    "http://fake/events/batch",
                    json={"events": []},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                ).status_code
                for _ in range(40)
            ]
        statuses.append(got)
    assert statuses[0] == statuses[1]  # the same seed, the same faults
    assert 5 < statuses[0].count(503) < 35  # about half; the rest reach the API (400: empty)
    fake.chaos()
    with pytest.raises(ValueError, match="probabilities"):
        fake.chaos(p503=0.8, p_store_then_drop=0.5)


@pytest.mark.timeout(300)
def test_kill_9_at_random_moments_loses_no_committed_event(fake: FakeEnso, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    spool = tmp_path / "spool"
    reports = tmp_path / "reports"
    reports.mkdir()
    fake.chaos(p503=0.1, p_store_then_drop=0.05, seed=SEED)
    made = 0
    live: list[Producer] = []
    for _ in range(2):
        live.append(start(fake, spool, reports, made))
        made += 1
    dead: list[Producer] = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.05, 1.5))  # the moment of the next kill (the harness's clock)
        victim = live.pop(rng.randrange(len(live)))
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(30)
        assert victim.process.returncode == -signal.SIGKILL, "the producer died on its own"
        dead.append(victim)
        live.append(start(fake, spool, reports, made))
        made += 1
    for producer in live:
        producer.process.send_signal(signal.SIGKILL)
        producer.process.wait(30)
        dead.append(producer)
    fake.chaos()  # faults off: the final drain

    with Tracker(API_KEY, base_url=fake.url, spool_dir=spool, handle_sigterm=False) as heir:
        assert heir.shutdown(120.0), heir.stats()
        stats = heir.stats()
    on_server = set(fake.event_ids())
    committed = 0
    lost: list[str] = []
    for producer in dead:
        durable = producer.last_durable()
        committed += durable
        pid = producer.process.pid
        lost.extend(f"{pid}-{n}" for n in range(1, durable + 1) if f"{pid}-{n}" not in on_server)
    duplicates = sum(fake.duplicates.values())
    summary = (
        f"seed={SEED} kills={KILLS + 2} committed={committed} on_server={len(on_server)} "
        f"duplicates={duplicates} adopted_at_the_end={stats.adopted}"
    )
    print(summary)
    assert committed > 0, summary
    assert lost == [], f"{len(lost)} committed events lost, e.g. {lost[:5]}; {summary}"
    assert stats.balanced, stats
    left = sorted(n for n in os.listdir(spool) if n.startswith("spool-") or ".corrupt-" in n)
    assert left == [], f"left in the directory: {left}; {summary}"
    assert Spool(spool).status().dead_letters == 0, summary
