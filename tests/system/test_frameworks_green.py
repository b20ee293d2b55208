"""Plain gevent and eventlet programs (``monkey.patch_all()`` / ``eventlet.monkey_patch()``
first, no server framework around them), idle, busy or serving WSGI with the library's
own server, stopped with SIGTERM: every event is delivered or reported, none twice, and
the process still dies of SIGTERM. The signal lands in the library's hub, which may not
block: the tracker's handler runs the stop in a greenlet of its own. Under eventlet the
handler is installed at all (its main greenlet is not ``threading.main_thread()``)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from enso_tracker.testing import FakeEnso
from tests.apps.harness import (
    free_port,
    listening,
    read_jsonl,
    run,
    track_over_http,
    wait_for_lines,
)
from tests.conftest import wait_until

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

LIBRARIES = ["gevent", "eventlet"]
IDLE_EVENTS = 300


def _start(
    library: str, mode: str, fake: FakeEnso, tmp_path: Path, *, handler: bool = True
) -> tuple[list[str], dict[str, str], int]:
    port = free_port()
    argv = [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "tests.apps.green_app",
            library, mode]  # fmt: skip
    env = {
        "ENSO_BASE_URL": fake.url,
        "ENSO_TEST_DIR": str(tmp_path),
        "ENSO_TEST_PORT": str(port),
        "ENSO_TEST_EVENTS": str(IDLE_EVENTS),
        "ENSO_TEST_INTEGRATIONS": "1" if handler else "0",
    }
    return argv, env, port


@pytest.mark.parametrize("library", LIBRARIES)
def test_an_idle_program_delivers_everything_on_sigterm(
    fake_enso: FakeEnso, tmp_path: Path, library: str
) -> None:
    argv, env, _ = _start(library, "idle", fake_enso, tmp_path)
    with run(argv, env, tmp_path / "app.log") as app:
        assert wait_for_lines(tmp_path / "progress.jsonl", 1, 20.0), app.output()
        assert not fake_enso.events  # flush_interval is a minute: all of it is the unsent tail
        assert app.stop(signal.SIGTERM, 30.0) == -signal.SIGTERM, app.output()
        log = app.output()
    assert set(fake_enso.events) == {f"idle-{i}" for i in range(IDLE_EVENTS)}, log
    assert not fake_enso.duplicates
    assert not read_jsonl(tmp_path / "drops.jsonl")
    assert "Error" not in log  # no BlockingSwitchOutError, nothing logged as failed


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_busy_program_delivers_or_reports_every_event_on_sigterm(
    fake_enso: FakeEnso, tmp_path: Path, library: str
) -> None:
    """It keeps tracking while the stop runs: what it tracks after the shutdown began is
    refused and reported (``closed``); everything else is delivered."""
    argv, env, _ = _start(library, "busy", fake_enso, tmp_path)
    with run(argv, env, tmp_path / "app.log") as app:
        assert wait_for_lines(tmp_path / "progress.jsonl", 5, 20.0), app.output()
        assert app.stop(signal.SIGTERM, 30.0) == -signal.SIGTERM, app.output()
        log = app.output()
    tracked = read_jsonl(tmp_path / "progress.jsonl")[-1]["n"]
    drops = read_jsonl(tmp_path / "drops.jsonl")
    delivered, dropped = set(fake_enso.events), {d["id"] for d in drops}
    assert not delivered & dropped
    assert not fake_enso.duplicates
    assert {d["kind"] for d in drops} <= {"closed"}, drops[:3]
    # every event tracked, up to the last before the process died, is accounted for
    accounted = delivered | dropped
    assert accounted == {f"busy-{i}" for i in range(len(accounted))}, log
    assert len(accounted) >= tracked >= 500
    assert len(delivered) >= tracked - 100  # tracked before the signal: delivered


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_librarys_wsgi_server_delivers_the_tail_on_sigterm(
    fake_enso: FakeEnso, tmp_path: Path, library: str
) -> None:
    argv, env, port = _start(library, "wsgi", fake_enso, tmp_path)
    with run(argv, env, tmp_path / "app.log") as app:
        assert wait_until(lambda: listening(port), 20.0), app.output()
        ids, _ = track_over_http(port, 20, workers=1)
        assert not fake_enso.events
        assert app.stop(signal.SIGTERM, 30.0) == -signal.SIGTERM, app.output()
    assert None not in ids
    assert set(fake_enso.events) == set(ids)
    assert len(ids) == 20
    assert not fake_enso.duplicates
    assert not read_jsonl(tmp_path / "drops.jsonl")


@pytest.mark.parametrize("library", LIBRARIES)
def test_without_the_handler_an_idle_program_loses_its_tail(
    fake_enso: FakeEnso, tmp_path: Path, library: str
) -> None:
    """The control: SIGTERM's default action kills the process with its queue."""
    argv, env, _ = _start(library, "idle", fake_enso, tmp_path, handler=False)
    with run(argv, env, tmp_path / "app.log") as app:
        assert wait_for_lines(tmp_path / "progress.jsonl", 1, 20.0), app.output()
        assert app.stop(signal.SIGTERM, 30.0) == -signal.SIGTERM, app.output()
    assert not fake_enso.events
