"""uWSGI, which forks its workers from C and runs no Python exit hook in its master:
the app is loaded in the master, which tracks and flushes at import; one worker tracks,
the other does not. Stopped with SIGTERM (``--die-on-term``), every event is delivered
exactly once, by the process that tracked it, and a worker never counts, sends or
reports the master's events."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from enso_tracker.testing import FakeEnso
from tests.apps.harness import BIN, ROOT, free_port, listening, read_jsonl, run
from tests.conftest import wait_until

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`


def _get(port: int, path: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10.0).json()
    return answer


def _uwsgi(port: int, *options: str) -> list[str]:
    return [
        str(BIN / "uwsgi"), "--http-socket", f"127.0.0.1:{port}",
        "--module", "tests.apps.wsgi_app:app", "--master", "--processes", "2",
        "--enable-threads", "--die-on-term", "--need-app", "--disable-logging",
        "--home", str(BIN.parent), "--pythonpath", str(ROOT), *options,
    ]  # fmt: skip


def test_workers_forked_from_c_keep_to_their_own_events(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "ENSO_BASE_URL": fake_enso.url,
        "ENSO_TEST_DIR": str(tmp_path),
        "ENSO_TEST_FLUSH_AT_IMPORT": "1",
        "ENSO_TEST_TRACKING_WORKER": "1",
    }
    with run(_uwsgi(port), env, tmp_path / "uwsgi.log") as server:
        assert wait_until(lambda: "spawned uWSGI worker 2" in server.output(), 20.0)
        assert wait_until(lambda: listening(port), 20.0), server.output()
        (master,) = read_jsonl(tmp_path / "ids.jsonl")
        # flushed at import, before the fork
        assert fake_enso.wait_for(lambda f: set(f.events) == {master["id"]}, 10.0)
        ids: list[str] = []
        stats: dict[int, dict[str, Any]] = {}
        for _ in range(400):  # until both workers have answered /flush (uWSGI picks)
            answer = _get(port, "/")
            if "id" in answer:
                ids.append(answer["id"])
            flushed = _get(port, "/flush")
            stats[flushed["worker"]] = flushed
            if 2 in stats and ids and stats.get(1, {}).get("accepted") == len(ids):
                break
        assert set(stats) == {1, 2}, server.output()
        assert stats[2]["flushed"] is True
        assert stats[2]["accepted"] == 0  # the master's event is not the worker's
        assert stats[1]["accepted"] == len(ids) > 0  # its own, and only those
        assert server.stop(signal.SIGTERM, 30.0) == 0, server.output()
        log = server.output()
    assert master["pid"] not in {s["pid"] for s in stats.values()}
    assert fake_enso.wait_for(lambda f: len(f.events) >= len(ids) + 1, 10.0)
    assert set(fake_enso.events) == {master["id"], *ids}
    assert not fake_enso.duplicates
    assert not read_jsonl(tmp_path / "drops.jsonl")
    assert "enso-tracker" not in log  # no warning from any process: nothing dropped
