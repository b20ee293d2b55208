"""Running a benchmark child process with a bound on its time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = ["ChildResult", "run_child"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    started: float  # time.monotonic() just before the spawn
    ended: float  # time.monotonic() once the child exited and its pipes closed


def run_child(args: list[str], timeout: float) -> ChildResult:
    """``python -m benchmarks._child ARGS``; raises TimeoutError (child killed) past ``timeout``."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._child", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=_ROOT,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TimeoutError(f"child {args[0]} did not finish in {timeout} s") from None
    return ChildResult(proc.returncode, out, err, started, time.monotonic())
