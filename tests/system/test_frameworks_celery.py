"""Celery prefork under real workers: children recycled by ``max_tasks_per_child`` and
stopped by a warm shutdown deliver every event their tasks tracked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from enso_tracker.testing import FakeEnso
from tests.apps.harness import ROOT, read_jsonl, run, wait_for_lines

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

TASKS = 8


def _run_worker(fake: FakeEnso, tmp_path: Path, integrations: bool) -> list[dict[str, object]]:
    """Queue the tasks, run a prefork worker until they are done, stop it with SIGTERM;
    the records of what was tracked (role, id, pid)."""
    env = {"ENSO_TEST_DIR": str(tmp_path), "ENSO_TEST_INTEGRATIONS": "1" if integrations else "0"}
    queued = subprocess.run(
        [sys.executable, "-m", "tests.apps.celery_app", str(TASKS)],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert queued.returncode == 0, queued.stderr
    argv = [
        sys.executable, "-m", "celery", "-A", "tests.apps.celery_app", "worker",
        "-P", "prefork", "-c", "2", "--max-tasks-per-child", "2", "-l", "info",
        "--without-heartbeat", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    record = tmp_path / "ids.jsonl"
    with run(argv, {**env, "ENSO_BASE_URL": fake.url}, tmp_path / "worker.log") as worker:
        assert wait_for_lines(record, TASKS + 1, 30.0), worker.output()
        assert worker.stop(signal.SIGTERM, 40.0) == 0, worker.output()
    return read_jsonl(record)


def test_recycled_and_stopped_prefork_children_deliver_every_event(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    records = _run_worker(fake_enso, tmp_path, integrations=True)
    tasks = [r for r in records if r["role"] == "task"]
    (master,) = [r for r in records if r["role"] == "master"]
    assert len(tasks) == TASKS
    assert len({r["pid"] for r in tasks}) >= 3  # children were recycled
    assert master["pid"] not in {r["pid"] for r in tasks}
    ids = {r["id"] for r in records}
    assert None not in ids
    assert len(ids) == TASKS + 1
    assert fake_enso.wait_for(lambda f: len(f.events) >= TASKS + 1, 10.0)
    assert set(fake_enso.events) == ids  # the master's event too, sent once, by the master
    assert not fake_enso.duplicates


def test_without_the_integration_the_childrens_events_are_lost(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    """The control: billiard's os._exit() skips atexit, so the test above can fail."""
    records = _run_worker(fake_enso, tmp_path, integrations=False)
    (master,) = [r for r in records if r["role"] == "master"]
    assert len([r for r in records if r["role"] == "task"]) == TASKS
    assert set(fake_enso.events) == {master["id"]}  # the worker has exited: nothing else comes
