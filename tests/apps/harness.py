"""Running a real server or worker in a subprocess group, for tests/system/test_frameworks_*.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` to the main process and wait for it; its return code."""
        self.process.send_signal(sig)
        return self.process.wait(timeout)


@contextmanager
def run(
    argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path = ROOT
) -> Iterator[Server]:
    """Start ``argv`` in a session of its own; whatever is left of it is killed at the end
    (its workers included), so a failing test never leaves processes behind."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Server(process, log)
    finally:
        with suppress(ProcessLookupError):  # the group is gone already
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_lines(path: Path, n: int, timeout: float) -> bool:
    return wait_until(lambda: len(read_jsonl(path)) >= n, timeout)


def track_over_http(port: int, n: int, workers: int) -> tuple[list[str], set[int]]:
    """At least ``n`` requests, and more (up to 500) until ``workers`` processes have
    served one; the eventIds the app answered, and the pids that served."""
    ids: list[str] = []
    pids: set[int] = set()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
        while len(ids) < n or (len(pids) < workers and len(ids) < 500):
            # A connection per request, so that every worker gets some.
            answer = client.get("/", headers={"connection": "close"}).json()
            ids.append(answer["id"])
            pids.add(answer["pid"])
    return ids, pids
