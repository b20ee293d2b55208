"""The main job (`make demo`) runs against its embedded fake Enso and balances its books."""

from __future__ import annotations

import io

import pytest

from enso_tracker._demo import run_demo
from enso_tracker._demo_crash import run_crash_demo

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`


def test_demo_balances_its_books() -> None:
    out = io.StringIO()
    assert run_demo(seconds=1.0, threads=3, live=True, out=out) == 0
    text = out.getvalue()
    assert "Books balance" in text
    assert "x rejected: Customer entity not found (status=404, code=2002)" in text
    assert "tracked=" in text  # the live progress line
    assert "log: WARNING Enso request failed, will retry" in text  # the 503 it injects


def test_crash_demo_delivers_everything_committed_before_kill_9() -> None:
    out = io.StringIO()
    assert run_crash_demo(seconds=1.0, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "app killed with SIGKILL" in text
    assert "Every event committed before the kill was delivered exactly once." in text
