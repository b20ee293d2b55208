"""RQ against a real Redis: every job runs in a work horse that ends with ``os._exit()``.
Each horse delivers the events its job tracked (jobs that succeed and jobs that fail
alike), whether the tracker was made by the job
in the horse (the usual layout) or in the worker before the fork, with the forking
worker and with ``SpawnWorker``; without the integration, every one of them is lost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from enso_tracker.testing import FakeEnso
from tests.apps.harness import BIN, ROOT, free_port, listening, read_jsonl, run
from tests.conftest import wait_until

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

JOBS = 8
QUEUE = "enso"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of our own on a free loopback port, stopped at the end."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (`make test` installs it)")
    port = free_port()
    argv = [
        server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(tmp_path),
    ]  # fmt: skip
    with run(argv, {}, tmp_path / "redis.log") as redis:
        assert wait_until(lambda: listening(port), 20.0), redis.output()
        yield f"redis://127.0.0.1:{port}/0"


def _enqueue(redis_url: str, n: int) -> None:
    """Queue the jobs by name: the test process never imports the jobs' module."""
    code = (
        "import sys; from redis import Redis; from rq import Queue; "
        f"q = Queue({QUEUE!r}, connection=Redis.from_url(sys.argv[1])); "
        f"[q.enqueue('tests.apps.rq_jobs.work', i) for i in range({n})]"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, redis_url],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _work(
    fake: FakeEnso, tmp_path: Path, redis_url: str, *options: str, integrations: bool = True
) -> tuple[list[dict[str, object]], str]:
    """Run a burst worker over the queued jobs until it has done them all and quit."""
    _enqueue(redis_url, JOBS)
    argv = [str(BIN / "rq"), "worker", "--burst", "--url", redis_url, *options, QUEUE]
    env = {
        "ENSO_BASE_URL": fake.url,
        "ENSO_TEST_DIR": str(tmp_path),
        "ENSO_TEST_INTEGRATIONS": "1" if integrations else "0",
    }
    with run(argv, env, tmp_path / "worker.log") as worker:
        assert worker.process.wait(90) == 0, worker.output()
        log = worker.output()
    records = read_jsonl(tmp_path / "ids.jsonl")
    assert len(records) == JOBS, log
    return records, log


@pytest.mark.parametrize(
    ("worker_class", "made"),
    [
        # RQ's classes, with a quicker exit (tests/apps/rq_workers.py)
        ("tests.apps.rq_workers.Worker", "in-the-horse"),
        ("tests.apps.rq_workers.Worker", "before-the-fork"),
        # a spawned horse is a new interpreter: it always makes its own tracker
        ("tests.apps.rq_workers.SpawnWorker", "in-the-horse"),
    ],
)
def test_every_horse_delivers_its_jobs_events(
    fake_enso: FakeEnso, tmp_path: Path, redis_url: str, worker_class: str, made: str
) -> None:
    options = ["-w", worker_class]
    if made == "before-the-fork":
        options += ["-c", "tests.apps.rq_settings"]
    records, log = _work(fake_enso, tmp_path, redis_url, *options)
    ids = {r["id"] for r in records}
    horses = {r["pid"] for r in records}
    imports = {r["pid"] for r in read_jsonl(tmp_path / "imports.jsonl")}
    assert len(horses) == JOBS  # a process of its own for every job
    if made == "in-the-horse":
        assert imports == horses
    else:
        (main,) = imports
        assert main not in horses
    assert ids == {f"job-{i}" for i in range(JOBS)}
    assert log.count("job 1 failed after tracking") >= 1  # the failure path ran
    assert fake_enso.wait_for(lambda f: len(f.events) >= JOBS, 10.0), log
    assert set(fake_enso.events) == ids
    assert not fake_enso.duplicates
    assert not read_jsonl(tmp_path / "drops.jsonl")


def test_without_the_integration_every_horses_events_are_lost(
    fake_enso: FakeEnso, tmp_path: Path, redis_url: str
) -> None:
    """The control: the horse's os._exit() skips atexit, so the test above can fail."""
    records, _ = _work(
        fake_enso, tmp_path, redis_url, "-w", "tests.apps.rq_workers.Worker", integrations=False
    )
    assert {r["id"] for r in records} == {f"job-{i}" for i in range(JOBS)}
    assert not fake_enso.events
