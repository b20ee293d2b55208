"""gunicorn sync and gthread workers, with and without ``--preload``, recycled by
``--max-requests`` and stopped with SIGTERM: every event is delivered exactly once, the
importing process's own included; and with Enso hanging past ``--graceful-timeout``, a
``shutdown_timeout`` shorter than it gets every undelivered event reported before
gunicorn's SIGKILL."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from enso_tracker.testing import FakeEnso
from tests.apps.harness import free_port, listening, read_jsonl, run, track_over_http
from tests.conftest import wait_until

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

REQUESTS = 16


def _argv(port: int, worker_class: str, *options: str) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "tests.apps.wsgi_app:app",
        "--bind", f"127.0.0.1:{port}", "--workers", "2", "--worker-class", worker_class,
        "--log-level", "info", "--no-control-socket", *options,
    ]  # fmt: skip


@pytest.mark.parametrize("preload", [False, True], ids=["per-worker", "preload"])
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_recycled_and_stopped_workers_deliver_every_event(
    fake_enso: FakeEnso, tmp_path: Path, worker_class: str, preload: bool
) -> None:
    port = free_port()
    argv = _argv(port, worker_class, "--max-requests", "4", *(["--preload"] if preload else []))
    env = {"ENSO_BASE_URL": fake_enso.url, "ENSO_TEST_DIR": str(tmp_path)}
    with run(argv, env, tmp_path / "gunicorn.log") as server:
        assert wait_until(lambda: listening(port), 20.0), server.output()
        ids, pids = track_over_http(port, REQUESTS, workers=2)
        assert server.stop(signal.SIGTERM, 30.0) == 0, server.output()
    imports = read_jsonl(tmp_path / "ids.jsonl")
    assert len(pids) >= 3  # workers were recycled by --max-requests
    if preload:  # imported once, in the master, which delivers its own event
        assert len(imports) == 1
        assert imports[0]["pid"] not in pids
    else:  # imported once by every worker, recycled ones included
        importers = [r["pid"] for r in imports]
        assert len(set(importers)) == len(importers)
        assert pids <= set(importers)
    expected = set(ids) | {r["id"] for r in imports}
    assert None not in expected
    assert len(expected) == len(ids) + len(imports)
    assert fake_enso.wait_for(lambda f: len(f.events) >= len(expected), 10.0)
    assert set(fake_enso.events) == expected
    assert not fake_enso.duplicates
    assert not read_jsonl(tmp_path / "drops.jsonl")


@pytest.mark.parametrize(
    ("shutdown_timeout", "reported"), [(1.0, True), (5.0, False)], ids=["shorter", "longer"]
)
def test_shutdown_timeout_must_be_shorter_than_the_graceful_timeout(
    fake_enso: FakeEnso, tmp_path: Path, shutdown_timeout: float, reported: bool
) -> None:
    """Enso hangs. With shutdown_timeout under --graceful-timeout, each worker reports
    what it could not deliver, then exits; with the default 5 s over it, gunicorn's
    SIGKILL comes first and nothing is reported (the documented misconfiguration)."""
    port = free_port()
    argv = _argv(port, "sync", "--graceful-timeout", "2")
    env = {
        "ENSO_BASE_URL": fake_enso.url,
        "ENSO_TEST_DIR": str(tmp_path),
        "ENSO_TEST_SHUTDOWN_TIMEOUT": str(shutdown_timeout),
    }
    fake_enso.hang(None)
    try:
        with run(argv, env, tmp_path / "gunicorn.log") as server:
            assert wait_until(lambda: listening(port), 20.0), server.output()
            ids, pids = track_over_http(port, 8, workers=2)
            assert server.stop(signal.SIGTERM, 30.0) == 0, server.output()
            log = server.output()
    finally:
        fake_enso.release()
    worker_ids = set(ids) | {r["id"] for r in read_jsonl(tmp_path / "ids.jsonl")}
    drops = read_jsonl(tmp_path / "drops.jsonl")
    if reported:
        assert {d["id"] for d in drops} == worker_ids
        assert {d["kind"] for d in drops} == {"shutdown"}
        assert {d["pid"] for d in drops} == pids
        assert log.count("enso-tracker shut down: 0 delivered") == 2
        assert "SIGKILL" not in log
    else:
        # SIGKILLed inside their shutdown: whatever the hung request did not carry is
        # lost, and nothing is reported anywhere
        assert not drops
        assert "enso-tracker shut down" not in log
    assert not fake_enso.duplicates


@pytest.mark.parametrize("preload", [False, True], ids=["per-worker", "preload"])
def test_gevent_workers_deliver_every_event_on_sigterm(
    fake_enso: FakeEnso, tmp_path: Path, preload: bool
) -> None:
    """gevent workers (not recycled here: their --max-requests stop is not prompt enough
    to count on). With --preload the worker patches threading after the fork: the
    gunicorn integration rebuilds the tracker's state there with gevent's locks."""
    port = free_port()
    argv = _argv(port, "gevent", *(["--preload"] if preload else []))
    env = {"ENSO_BASE_URL": fake_enso.url, "ENSO_TEST_DIR": str(tmp_path)}
    with run(argv, env, tmp_path / "gunicorn.log") as server:
        assert wait_until(lambda: listening(port), 20.0), server.output()
        ids, pids = track_over_http(port, REQUESTS, workers=2)
        assert server.stop(signal.SIGTERM, 30.0) == 0, server.output()
    imports = read_jsonl(tmp_path / "ids.jsonl")
    assert len(pids) == 2
    assert len(imports) == (1 if preload else 2)
    expected = set(ids) | {r["id"] for r in imports}
    assert None not in expected
    assert len(expected) == len(ids) + len(imports)
    assert fake_enso.wait_for(lambda f: len(f.events) >= len(expected), 10.0)
    assert set(fake_enso.events) == expected
    assert not fake_enso.duplicates
    assert not read_jsonl(tmp_path / "drops.jsonl")


def test_preloaded_gevent_workers_deliver_even_without_the_integration(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    """gevent with --preload and the integrations off: the worker patches threading after
    the fork and its sender (a greenlet waiting on the real locks the fork hook made)
    never runs. This once hung the exit until gunicorn's silent SIGKILL took every
    worker's events; shutdown() now delivers in the caller's thread when no sender thread
    is running (the fallback for a sender thread that cannot start), so nothing is lost
    even here. The integration still rebuilds the locks, so the sender works while
    the worker serves."""
    port = free_port()
    argv = _argv(port, "gevent", "--preload", "--graceful-timeout", "20")
    env = {
        "ENSO_BASE_URL": fake_enso.url,
        "ENSO_TEST_DIR": str(tmp_path),
        "ENSO_TEST_INTEGRATIONS": "0",
    }
    with run(argv, env, tmp_path / "gunicorn.log") as server:
        assert wait_until(lambda: listening(port), 20.0), server.output()
        ids, pids = track_over_http(port, REQUESTS, workers=2)
        assert server.stop(signal.SIGTERM, 30.0) == 0, server.output()
        log = server.output()
    assert len(pids) == 2
    assert log.count("Worker exiting") == 2
    assert "SIGKILL" not in log
    (master,) = read_jsonl(tmp_path / "ids.jsonl")
    expected = set(ids) | {master["id"]}
    assert fake_enso.wait_for(lambda f: len(f.events) >= len(expected), 10.0)
    assert set(fake_enso.events) == expected
    assert not fake_enso.duplicates
