"""gunicorn ``--preload`` with UvicornWorker (both packages: ``uvicorn.workers`` and
``uvicorn-worker``), the usual FastAPI production setup: the tracker is made in the
master, the workers fork from it and reset SIGTERM to its default action. Stopped with
SIGTERM, every worker delivers its tail; without the integration the workers are
killed with their queues."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from enso_tracker.testing import FakeEnso
from tests.apps.harness import free_port, listening, run, track_over_http
from tests.conftest import wait_until

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

REQUESTS = 16
WORKER_CLASSES = ["uvicorn.workers.UvicornWorker", "uvicorn_worker.UvicornWorker"]


def _serve_then_stop(
    fake: FakeEnso, tmp_path: Path, worker_class: str, integrations: bool
) -> tuple[list[str], set[int]]:
    port = free_port()
    argv = [
        sys.executable, "-W", "ignore::DeprecationWarning", "-m", "gunicorn",
        "tests.apps.asgi_app:app", "--preload", "--bind", f"127.0.0.1:{port}",
        "--workers", "2", "--worker-class", worker_class, "--log-level", "info",
        "--no-control-socket",
    ]  # fmt: skip
    env = {"ENSO_BASE_URL": fake.url, "ENSO_TEST_INTEGRATIONS": "1" if integrations else "0"}
    with run(argv, env, tmp_path / "gunicorn.log") as server:
        assert wait_until(lambda: listening(port), 20.0), server.output()
        assert wait_until(
            lambda: server.output().count("Application startup complete") == 2, 20.0
        ), server.output()
        ids, pids = track_over_http(port, REQUESTS, workers=2)
        assert not fake.events  # flush_interval is a minute: all of it is the unsent tail
        assert server.stop(signal.SIGTERM, 30.0) == 0, server.output()
        # the workers were killed by the re-raised SIGTERM, after the tracker's handler
        # (or without it, in the control)
        assert server.output().count("was sent SIGTERM!") == 2, server.output()
    return ids, pids


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_preloaded_uvicorn_workers_deliver_the_tail_on_sigterm(
    fake_enso: FakeEnso, tmp_path: Path, worker_class: str
) -> None:
    ids, pids = _serve_then_stop(fake_enso, tmp_path, worker_class, integrations=True)
    assert len(pids) == 2
    assert None not in ids
    assert len(set(ids)) == len(ids) >= REQUESTS
    assert fake_enso.wait_for(lambda f: len(f.events) >= len(ids), 10.0)
    assert set(fake_enso.events) == set(ids)
    assert not fake_enso.duplicates


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_preloaded_uvicorn_workers_lose_the_tail_without_the_integration(
    fake_enso: FakeEnso, tmp_path: Path, worker_class: str
) -> None:
    """The control: the worker class reset SIGTERM to the default action, uvicorn
    restores that and raises SIGTERM again, and the worker dies with its queue."""
    ids, pids = _serve_then_stop(fake_enso, tmp_path, worker_class, integrations=False)
    assert len(pids) == 2
    assert len(set(ids)) == len(ids) >= REQUESTS
    assert not fake_enso.events
