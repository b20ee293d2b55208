"""The kill -9 harness of the durable spool (issue #10), against a real FakeEnso.

Two producer processes share one spool directory and track events at a busy web app's
pace while Enso answers some requests with 503 and sometimes stores a batch but loses the
answer. One of them is SIGKILLed at a random moment every 50-1,500 ms (mid-commit,
mid-send, mid-adoption: each replacement adopts the orphans at construction) and replaced,
at least 100 times. Oracle: each producer fsyncs its ``durable_seq`` as it goes, and its
n-th event has the id ``<pid>-<n>``; after a final drain with the faults off, every event
at or below the last ``durable_seq`` a producer reported is on the server, and nothing is
left in the directory.
"""

from __future__ import annotations

import os
import random
import re
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
from tests.conftest import API_KEY

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
KILLS = 100
#: Fixed, printed; ENSO_KILL_SEED=<n> replays another schedule (kills and faults).
SEED = int(os.environ.get("ENSO_KILL_SEED", "20261128"))
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def batch(*ids: str) -> dict[str, object]:
    return {
        "events": [
            {
                "CustomerEntityId": "ent",
                "metric": "m",
                "value": 1,
                "timestamp": "2026-04-01T12:00:00.000Z",
                "eventId": event_id,
            }
            for event_id in ids
        ]
    }


def test_store_then_drop_stores_the_batch_and_loses_the_answer(fake_enso: FakeEnso) -> None:
    fake_enso.script(Fault(store_then_drop=True))
    with pytest.raises(httpx.TransportError):  # over the socket: reset, no status line
        httpx.post(
            f"{fake_enso.url}/events/batch", json=batch("kept"), headers=HEADERS, timeout=5.0
        )
    assert fake_enso.event_ids() == ["kept"]
    fake_enso.script(Fault(store_then_drop=True))
    with httpx.Client(transport=fake_enso.transport()) as client:
        with pytest.raises(httpx.ReadError):
            client.post("http://fake/events/batch", json=batch("kept-too"), headers=HEADERS)
        # The retry of a batch whose answer was lost: stored once, counted as a duplicate.
        answer = client.post("http://fake/events/batch", json=batch("kept-too"), headers=HEADERS)
    assert answer.status_code == 200
    assert fake_enso.event_ids() == ["kept", "kept-too"]
    assert fake_enso.duplicates == {"kept-too": 1}


def test_chaos_fails_a_share_of_requests_reproducibly(fake_enso: FakeEnso) -> None:
    runs = []
    for _ in range(2):
        fake_enso.reset()
        fake_enso.chaos(p503=0.5, seed=1)
        with httpx.Client(transport=fake_enso.transport()) as client:
            statuses = [
                client.post(
                    "http://fake/events/batch", json=batch(f"e{i}"), headers=HEADERS
                ).status_code
                for i in range(40)
            ]
        runs.append((statuses, fake_enso.event_ids()))
    statuses, stored = runs[0]
    assert runs[0] == runs[1]  # the same seed, the same faults
    assert 5 < statuses.count(503) < 35  # about half; the rest reach the API
    assert set(statuses) == {200, 503}
    assert len(stored) == statuses.count(200)  # a 503 stores nothing

    fake_enso.chaos(p_store_then_drop=1.0, seed=2)
    with httpx.Client(transport=fake_enso.transport()) as client:
        with pytest.raises(httpx.ReadError):
            client.post("http://fake/events/batch", json=batch("lost-answer"), headers=HEADERS)
        fake_enso.chaos()  # off: answered again
        answer = client.post("http://fake/events/batch", json=batch("after"), headers=HEADERS)
    assert answer.status_code == 200
    assert fake_enso.event_ids()[-2:] == ["lost-answer", "after"]
    with pytest.raises(ValueError, match="probabilities"):
        fake_enso.chaos(p503=0.8, p_store_then_drop=0.5)


@dataclass
class Producer:
    process: subprocess.Popen[bytes]
    report: Path
    stderr: Path

    def last_durable(self) -> int:
        """The last complete line of the report (a torn last line is ignored)."""
        if not self.report.exists():
            return 0
        lines = self.report.read_bytes().split(b"\n")
        complete = [line for line in lines[:-1] if line.isdigit()]
        return int(complete[-1]) if complete else 0

    def why(self) -> str:
        tail = self.stderr.read_text(encoding="utf-8", errors="replace")[-3000:]
        return f"producer pid={self.process.pid} rc={self.process.returncode}: {tail}"


def start(fake: FakeEnso, spool: Path, reports: Path, k: int) -> Producer:
    report = reports / f"report-{k}.txt"
    stderr = reports / f"stderr-{k}.txt"
    with open(stderr, "wb") as err:  # retry warnings under chaos; read only if it dies
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.apps.spool_producer",
                "--url",
                fake.url,
                "--dir",
                str(spool),
                "--report",
                str(report),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return Producer(process, report, stderr)


def kill(producer: Producer) -> None:
    if producer.process.poll() is not None:
        pytest.fail(f"the producer died on its own: {producer.why()}")
    producer.process.send_signal(signal.SIGKILL)
    producer.process.wait(30)
    assert producer.process.returncode == -signal.SIGKILL, producer.why()


@pytest.mark.timeout(300)
def test_kill_9_at_random_moments_loses_no_committed_event(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    spool = tmp_path / "spool"
    reports = tmp_path / "reports"
    reports.mkdir()
    fake_enso.chaos(p503=0.1, p_store_then_drop=0.05, seed=SEED)
    made = 0
    live: list[Producer] = []
    dead: list[Producer] = []
    for _ in range(2):
        live.append(start(fake_enso, spool, reports, made))
        made += 1
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.05, 1.5))  # the kill schedule itself, not a wait for a thread
        victim = live.pop(rng.randrange(len(live)))
        kill(victim)
        dead.append(victim)
        live.append(start(fake_enso, spool, reports, made))
        made += 1
    time.sleep(rng.uniform(0.05, 1.5))
    for producer in live:
        kill(producer)
        dead.append(producer)
    fake_enso.chaos()  # faults off: the final drain

    heir = Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False)
    drained = heir.shutdown(60.0)
    stats = heir.stats()

    pids = [producer.process.pid for producer in dead]
    on_server = set(fake_enso.event_ids())
    duplicates = sum(fake_enso.duplicates.values())
    committed = 0
    lost: list[str] = []
    durable: dict[int, int] = {}
    for producer in dead:
        pid, last = producer.process.pid, producer.last_durable()
        durable[pid] = last
        committed += last
        lost.extend(f"{pid}-{n}" for n in range(1, last + 1) if f"{pid}-{n}" not in on_server)
    foreign = [
        i for i in on_server if not (m := re.fullmatch(r"(\d+)-\d+", i)) or int(m[1]) not in durable
    ]
    left = sorted(
        name
        for name in os.listdir(spool)
        if name.startswith(("spool-", ".tmp-")) or ".corrupt-" in name
    )
    status = Spool(spool).status()
    summary = (
        f"seed={SEED} kills={len(dead)} committed={committed} on_server={len(on_server)} "
        f"duplicates={duplicates} adopted_by_heir={stats.adopted} "
        f"delivered_by_heir={stats.delivered} dropped_by_heir={stats.dropped} "
        f"left_in_spool={stats.left_in_spool}"
    )
    print(summary)
    assert len(set(pids)) == len(pids), f"a pid was reused: ids would collide; {summary}"
    assert committed > 0, summary
    losers = sorted({i.rsplit("-", 1)[0] for i in lost})
    assert lost == [], (
        f"{len(lost)} committed events lost, e.g. {lost[:10]}; per producer (pid: last "
        f"durable_seq): {[(p, durable[int(p)]) for p in losers]}; {summary}"
    )
    assert foreign == [], f"events no producer made: {foreign[:10]}; {summary}"
    assert drained, f"the final drain did not finish: {stats}; {summary}"
    assert stats.balanced, stats
    assert left == [], f"left in the directory: {left}; {summary}"
    assert (status.files, status.events, status.dead_letters) == (0, 0, 0), (status, summary)
