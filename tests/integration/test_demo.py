"""The main job (`make demo`) runs against its embedded fake Enso and balances its books."""

from __future__ import annotations

import io
import re

import pytest

from enso_tracker._cli.demo.crash import run_crash_demo
from enso_tracker._cli.demo.live import run_demo

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_demo_balances_its_books_in_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    assert run_demo(seconds=1.0, threads=3, live=True, out=out) == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].startswith("Simulating a web app: 3 threads")
    assert lines[1].startswith("On purpose, about 1% name a customer Enso does not know")
    assert "Books balance" in text
    assert "x rejected: Customer entity not found (status=404, code=2002)" in text
    assert any(re.match(r" *\d+\.\ds tracked= *\d+ ", line) for line in lines)  # progress
    assert "log: WARNING Enso request failed, will retry" in text  # the 503 it injects
    # A healthy run with rejections on purpose: False, and said why.
    assert "shutdown() returned           False (the rejected events never reached Enso)" in (text)
    assert "\r" not in text
    assert "\033" not in text


def test_demo_on_a_terminal_rewrites_one_live_line() -> None:
    out = Terminal()
    assert run_demo(seconds=0.5, threads=2, live=True, out=out) == 0
    text = out.getvalue()
    assert "s tracked=" in text
    assert text.count("\r") > 1  # the line was rewritten in place
    assert "\r\033[K  log: " in text  # log lines clear the live line first


def test_crash_demo_delivers_everything_committed_before_kill_9() -> None:
    out = io.StringIO()
    assert run_crash_demo(seconds=1.0, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert text.startswith("Simulating a crash: an app tracking with a durable spool")
    assert "app killed with SIGKILL 1.0 s after its first commit" in text
    assert "Every event committed before the kill was delivered exactly once." in text
