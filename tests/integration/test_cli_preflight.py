"""`enso-tracker import` checks Enso before reading a row (#17 finding 7: slow to fail),
with the tracker's own credentials handling and sender; run as a user would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enso_tracker.testing import FakeEnso

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

SCRIPT = Path(sys.executable).with_name("enso-tracker")
KEY = "test-api-key"


def cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY") and not k.startswith("ENSO_")
    }
    env.update({"ENSO_API_KEY": KEY, "ENSO_BASE_URL": url, **extra})
    return env


def run_import(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), "the console script is installed by `pip install -e .[dev]`"
    return subprocess.run(
        [str(SCRIPT), "import", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "usage.jsonl"
    lines = [
        {
            "CustomerEntityId": "ent_1",
            "metric": "m",
            "value": i,
            "timestamp": "2026-04-01T00:00:00Z",
        }
        for i in range(500)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_import_against_a_closed_port_fails_fast_with_exit_3(rows: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        started = time.monotonic()
        proc = run_import(rows, cli_env(url))
        elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stdout + proc.stderr
    books = json.loads(proc.stdout)
    assert books["stopped"].startswith(f"Enso is unreachable at {url}: ConnectError")
    assert "Connection refused" in books["stopped"]
    assert (books["rows_read"], books["accepted"]) == (0, 0)  # not one row read
    assert books["exit_code"] == 3
    assert elapsed < 30.0  # generous on a loaded machine; was 2 minutes (--stall-timeout)
    assert not (rows.parent / "usage.jsonl.errors.jsonl").exists()


def test_import_with_refused_credentials_stops_before_reading(
    rows: Path, fake_enso: FakeEnso
) -> None:
    proc = run_import(rows, cli_env(fake_enso.url, ENSO_API_KEY="sk_not_the_key_000"))
    assert proc.returncode == 3
    books = json.loads(proc.stdout)
    assert books["stopped"].startswith("Enso refuses the credentials")
    assert books["rows_read"] == 0
    assert [len(r.json()["events"]) for r in fake_enso.batch_requests()] == [0]  # the probe only
    human = subprocess.run(
        [str(SCRIPT), "import", str(rows)],
        env=cli_env(fake_enso.url, ENSO_API_KEY="sk_not_the_key_000"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "stopped: Enso refuses the credentials" in human.stdout
    assert "sk_not_the_key_000" not in human.stdout + human.stderr


def test_a_healthy_enso_is_probed_once_without_usage(rows: Path, fake_enso: FakeEnso) -> None:
    proc = run_import(rows, cli_env(fake_enso.url, ENSO_API_KEY=KEY + "\n"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["delivered"] == 500
    sizes = [len(r.json()["events"]) for r in fake_enso.batch_requests()]
    assert sizes[0] == 0  # the probe: an empty batch, no usage
    assert sum(sizes) == 500
    assert len(fake_enso.event_ids()) == 500
