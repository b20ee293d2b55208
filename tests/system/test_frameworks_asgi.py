"""uvicorn serving an ASGI app that has no lifespan shutdown: stopped with SIGTERM, the
tail the tracker still held is delivered, standalone and with ``--workers``."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from enso_tracker.testing import FakeEnso
from tests.apps.harness import free_port, listening, run, track_over_http
from tests.conftest import wait_until

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

REQUESTS = 12


def _serve_then_stop(
    fake: FakeEnso, tmp_path: Path, workers: int, integrations: bool
) -> tuple[list[str], set[int], int]:
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "tests.apps.asgi_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    env = {"ENSO_BASE_URL": fake.url, "ENSO_TEST_INTEGRATIONS": "1" if integrations else "0"}
    with run(argv, env, tmp_path / "uvicorn.log") as server:
        assert wait_until(lambda: listening(port), 20.0), server.output()
        assert wait_until(
            lambda: server.output().count("Application startup complete") == workers, 20.0
        ), server.output()
        ids, pids = track_over_http(port, REQUESTS, workers)
        assert not fake.events  # flush_interval is a minute: all of it is the unsent tail
        status = server.stop(signal.SIGTERM, 30.0)
    return ids, pids, status


def test_standalone_uvicorn_delivers_the_tail_on_sigterm(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    ids, _, status = _serve_then_stop(fake_enso, tmp_path, workers=1, integrations=True)
    # uvicorn restored the tracker's SIGTERM handler and raised SIGTERM again: the
    # handler shut the tracker down, then let the signal kill the process.
    assert status == -signal.SIGTERM
    assert None not in ids
    assert len(set(ids)) == len(ids) >= REQUESTS
    assert set(fake_enso.events) == set(ids)
    assert not fake_enso.duplicates


def test_uvicorn_workers_deliver_the_tail_on_sigterm(fake_enso: FakeEnso, tmp_path: Path) -> None:
    ids, pids, status = _serve_then_stop(fake_enso, tmp_path, workers=2, integrations=True)
    assert status == 0
    assert len(pids) == 2
    assert len(set(ids)) == len(ids) >= REQUESTS
    assert set(fake_enso.events) == set(ids)
    assert not fake_enso.duplicates


def test_uvicorn_workers_lose_the_tail_without_the_integration(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    """The control: a worker imports the app inside uvicorn's signal capture, so the
    tracker's own handler is never installed, and the re-raised SIGTERM kills it."""
    ids, _, status = _serve_then_stop(fake_enso, tmp_path, workers=2, integrations=False)
    assert status == 0
    assert len(set(ids)) == len(ids) >= REQUESTS
    assert not fake_enso.events
