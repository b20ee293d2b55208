"""The spool at scale (issue #10): an outage of 1,000,000 events with a 16 MiB memory
bound, and a restart on a 1,000,000-event backlog, against a real FakeEnso.

How fast the restart starts sending is a timing figure: ``benchmarks/spool.py``
measures it. Here the test checks the structure that makes it fast: the first request
leaves while nearly all of the backlog is still on disk (never read first, whole)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from enso_tracker import Tracker
from enso_tracker.testing import FakeEnso
from tests.apps.spool_million import MEMORY, N

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
#: RSS the process may gain beyond the memory bound: SQLite's page cache, msgspec's and
#: httpx's buffers, allocator slack.
SLACK = 48 * 1024 * 1024


def producer(fake: FakeEnso, spool: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.apps.spool_million", fake.url, str(spool), mode],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def read(child: subprocess.Popen[str]) -> dict[str, object]:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"the producer died (exit {child.wait(30)})"
    found: dict[str, object] = json.loads(line)
    return found


def expected_ids() -> set[str]:
    return {"warmup", *(f"e{i}" for i in range(N))}


@pytest.mark.timeout(300)
def test_an_outage_of_a_million_events_stays_in_memory_bounds_then_delivers(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    with FakeEnso() as fake:
        fake.hang(None)  # Enso down: every request hangs until its timeout
        child = producer(fake, spool, "deliver")
        try:
            report = read(child)
            assert report["refused"] == {}
            assert report["durable_seq"] == N + 1
            queued = report["peak_queued_bytes"]
            assert isinstance(queued, int)
            assert queued <= MEMORY
            grown = int(str(report["peak"])) - int(str(report["baseline"]))
            assert grown <= MEMORY + SLACK, f"RSS grew {grown / 2**20:.1f} MiB: {report}"
            spooled = report["spooled"]
            assert isinstance(spooled, int)
            assert spooled > N * 9 // 10
            fake.release()  # Enso is back
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            done = read(child)
            assert done["flushed"] is True
            assert done["delivered"] == N + 1
            assert child.wait(60) == 0
        finally:
            child.kill()
            child.wait(30)
        assert set(fake.event_ids()) == expected_ids()
        assert fake.received >= N + 1
    assert not [n for n in os.listdir(spool) if n.startswith("spool-")]


@pytest.mark.timeout(300)
def test_restart_on_a_million_event_backlog_sends_before_reading_it(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with FakeEnso() as fake:
        fake.hang(None)
        child = producer(fake, spool, "leave")
        try:
            assert read(child)["durable_seq"] == N + 1
            assert read(child)["left_in_spool"] == N + 1
            assert child.wait(60) == 0
        finally:
            child.kill()
            child.wait(30)
        fake.reset()
        fake.hang(None)  # holds the first request where the test can look at it
        with Tracker(
            "test-api-key", base_url=fake.url, spool_dir=spool, handle_sigterm=False
        ) as heir:
            assert fake.wait_for(lambda f: f.in_flight >= 1, 30.0)
            at_first_request = heir.stats()
            assert at_first_request.spooled == N + 1
            assert at_first_request.adopted == N + 1
            assert at_first_request.queued_bytes <= heir.config.max_queue_bytes // 2 + 2**20
            fake.release()
            assert fake.wait_for(lambda f: f.received - sum(f.duplicates.values()) >= N + 1, 240.0)
        assert set(fake.event_ids()) == expected_ids()
        stats = heir.stats()
        assert stats.delivered == N + 1
        assert stats.balanced
    assert not [n for n in os.listdir(spool) if n.startswith("spool-")]
