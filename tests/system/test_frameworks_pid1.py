"""Python as PID 1 (a container without an init, here a PID namespace of its own):
the kernel shields PID 1 from the default action of SIGTERM, so re-raising it after
the shutdown would leave the process running with its trackers closed. Stopped with
SIGTERM, it delivers everything, then exits with status 128 + SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from enso_tracker.testing import FakeEnso
from tests.apps.harness import read_jsonl, run, wait_for_lines

EVENTS = 300


def _can_unshare() -> str | None:
    """Why a PID namespace cannot be made here, or None if it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if os.geteuid() != 0:
        return "a PID namespace needs root"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return None if probe.returncode == 0 else f"unshare failed: {probe.stderr!r}"


_REASON = _can_unshare()
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=_REASON or ""), pytest.mark.slow]


def _child_pid(unshare_pid: int) -> int:
    """The program's pid as seen from here (inside its namespace it is 1)."""
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    (child,) = children
    return int(child)


def _start(fake: FakeEnso, tmp_path: Path, *, handler: bool) -> tuple[list[str], dict[str, str]]:
    argv = ["unshare", "--pid", "--fork", "--mount-proc",
            sys.executable, "-m", "tests.apps.pid1_app"]  # fmt: skip
    env = {
        "ENSO_BASE_URL": fake.url,
        "ENSO_TEST_DIR": str(tmp_path),
        "ENSO_TEST_EVENTS": str(EVENTS),
        "ENSO_TEST_INTEGRATIONS": "1" if handler else "0",
    }
    return argv, env


def test_pid_1_delivers_everything_and_exits_on_sigterm(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    argv, env = _start(fake_enso, tmp_path, handler=True)
    with run(argv, env, tmp_path / "app.log") as app:
        assert wait_for_lines(tmp_path / "ready.jsonl", 1, 20.0), app.output()
        assert read_jsonl(tmp_path / "ready.jsonl") == [{"pid": 1}]
        assert not fake_enso.events
        os.kill(_child_pid(app.process.pid), signal.SIGTERM)
        # unshare exits with its child's status
        assert app.process.wait(30.0) == 128 + signal.SIGTERM, app.output()
    assert set(fake_enso.events) == {f"pid1-{i}" for i in range(EVENTS)}
    assert not fake_enso.duplicates
    assert not read_jsonl(tmp_path / "drops.jsonl")


def test_without_the_handler_pid_1_ignores_sigterm(fake_enso: FakeEnso, tmp_path: Path) -> None:
    """The control: SIGTERM's default action does nothing to PID 1 (so the test above
    runs as PID 1); a ``docker stop`` would SIGKILL it later, with its queue."""
    argv, env = _start(fake_enso, tmp_path, handler=False)
    with run(argv, env, tmp_path / "app.log") as app:
        assert wait_for_lines(tmp_path / "ready.jsonl", 1, 20.0), app.output()
        os.kill(_child_pid(app.process.pid), signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            app.process.wait(2.0)
        os.kill(_child_pid(app.process.pid), signal.SIGKILL)
        assert app.process.wait(10.0) != 0  # unshare reports a killed child as 1
    assert not fake_enso.events
