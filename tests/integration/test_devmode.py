"""Development and test mode: ``disabled``/``ENSO_DISABLED``, the debug switch
(``ENSO_DEBUG``, per-request DEBUG lines), ``DropRecorder`` and ``fake_enso_env``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import enso_tracker
from enso_tracker import ConfigurationError, Tracker
from enso_tracker.testing import DropRecorder, FakeEnso, Fault
from tests.conftest import API_KEY, TrackerFactory, accepted, wait_until


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("enso-tracker")]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENSO_DISABLED", "ENSO_DEBUG", "ENSO_API_KEY", "ENSO_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------ disabled


def test_disabled_needs_no_credentials_sends_nothing_and_starts_no_thread(
    fake_enso: FakeEnso,
) -> None:
    before = _threads()
    tracker = Tracker(disabled=True, base_url=fake_enso.url)
    ids = [accepted(tracker.track("ent", "api_calls", i)) for i in range(1_000)]
    assert len(set(ids)) == 1_000
    assert tracker.flush(5.0) is True
    assert _threads() == before
    stats = tracker.stats()
    assert (stats.accepted, stats.disabled, stats.delivered, stats.pending) == (1000, 1000, 0, 0)
    assert stats.balanced
    assert "disabled" in repr(tracker)
    assert tracker.shutdown(5.0) is True
    assert fake_enso.requests == []  # not a login, not a batch
    assert _threads() == before


def test_disabled_validates_exactly_as_production(fake_enso: FakeEnso) -> None:
    live = Tracker(api_key=API_KEY, base_url=fake_enso.url, flush_interval=60.0)
    off = Tracker(disabled=True)
    bad: list[dict[str, Any]] = [
        {"entity": ""},
        {"entity": 7},
        {"metric": " "},
        {"value": float("nan")},
        {"value": "12"},
        {"value": 2**60},
        {"timestamp": "yesterday"},
        {"metadata": {"k": object()}},
        {"event_id": "has space"},
        {"job_id": ""},
    ]
    try:
        for change in bad:
            args: dict[str, Any] = {"entity": "ent", "metric": "m", "value": 1, **change}
            errors = []
            for tracker in (live, off):
                with pytest.raises((TypeError, ValueError)) as caught:
                    tracker.track(**args)
                errors.append((type(caught.value), str(caught.value)))
            assert errors[0] == errors[1], change
        good: dict[str, Any] = {"timestamp": "2026-04-01T00:00:00Z", "metadata": {"plan": "pro"}}
        assert accepted(off.track("ent", "m", Decimal("1.5"), job_id="j", **good))
        assert off.track("ent", "m", 1, event_id="mine") == "mine"
    finally:
        live.shutdown(2.0)
        off.shutdown(2.0)
    assert fake_enso.requests == []  # the live tracker was given nothing valid


def test_disabled_checks_credentials_it_is_given_and_ignores_the_spool(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="client_secret"):
        Tracker(client_key="ck", disabled=True)
    spool = tmp_path / "spool"
    tracker = Tracker(api_key="key", disabled=True, spool_dir=str(spool))
    accepted(tracker.track("ent", "m", 1))
    assert tracker.shutdown(2.0)
    assert not spool.exists()
    assert tracker.config.spool_dir is None


def test_refusals_of_a_disabled_tracker_are_counted_and_spoil_shutdown() -> None:
    drops = DropRecorder()
    tracker = Tracker(disabled=True, on_drop=drops)
    accepted(tracker.track("ent", "m", 1))
    assert tracker.shutdown(2.0) is True
    assert tracker.track("ent", "m", 2) is None
    stats = tracker.stats()
    assert (stats.accepted, stats.disabled, stats.refused) == (1, 1, {"closed": 1})
    assert stats.balanced
    assert drops.kinds() == {"closed": 1}


def test_without_credentials_the_error_names_the_development_switch() -> None:
    with pytest.raises(ConfigurationError, match="ENSO_DISABLED=1"):
        Tracker()


def test_enso_disabled_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ENSO_DISABLED", "1")
    with caplog.at_level(logging.INFO, logger="enso_tracker"):
        tracker = Tracker.from_env()
    assert tracker.config.disabled
    assert any(
        r.levelno == logging.WARNING and "disabled by ENSO_DISABLED" in r.getMessage()
        for r in caplog.records
    )
    accepted(tracker.track("ent", "m", 1))
    assert tracker.shutdown(2.0)
    # Explicit beats the environment: this one is live, so it wants credentials.
    with pytest.raises(ConfigurationError, match="no credentials"):
        Tracker(disabled=False)
    # The module-level default tracker too.
    try:
        enso_tracker.init()
        accepted(enso_tracker.track("ent", "m", 1))
        assert enso_tracker.stats().disabled == 1
    finally:
        enso_tracker.shutdown(2.0)


@pytest.mark.parametrize("value", ["0", "false", "off", ""])
def test_enso_disabled_off_values_leave_the_tracker_live(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ENSO_DISABLED", value)
    with pytest.raises(ConfigurationError, match="no credentials"):
        Tracker()


def test_a_garbled_switch_is_an_error_not_a_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSO_DISABLED", "maybe")
    with pytest.raises(ConfigurationError, match="ENSO_DISABLED='maybe'"):
        Tracker(api_key="key")
    with pytest.raises(ConfigurationError, match="disabled"):
        Tracker(api_key="key", disabled="yes")


# ------------------------------------------------------------------ debug


def test_debug_logs_each_request_without_secrets_and_outside_the_lock(
    tracker: TrackerFactory, fake_enso: FakeEnso, caplog: pytest.LogCaptureFixture
) -> None:
    holder: list[Tracker] = []
    seen: list[str] = []

    class CallsBack(logging.Handler):
        """A handler that takes the tracker's lock: under it, this would deadlock."""

        def emit(self, record: logging.LogRecord) -> None:
            if holder and record.levelno == logging.DEBUG:
                seen.append(f"{record.getMessage()} accepted={holder[0].stats().accepted}")

    def request_lines() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.DEBUG and r.getMessage().startswith("POST /events/batch:")
        ]

    handler = CallsBack()
    logger = logging.getLogger("enso_tracker")
    logger.addHandler(handler)
    fake_enso.script(Fault(status=503), Fault(status=429, retry_after="0.05"))
    try:
        with caplog.at_level(logging.DEBUG, logger="enso_tracker"):
            t = tracker(max_batch_size=500)
            holder.append(t)
            for i in range(3):
                accepted(t.track("ent", "api_calls", i))
            assert t.flush(30.0)
            # The line of the last request is emitted just after flush() saw it settle.
            # (caplog's handler is on the root logger: it gets each record after ours.)
            assert wait_until(lambda: len(request_lines()) >= len(fake_enso.batch_requests()), 30.0)
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    requests = request_lines()
    assert len(requests) == len(fake_enso.batch_requests()) >= 3
    assert "attempt 1: HTTP 503, will retry" in requests[0]
    assert any("HTTP 429, will retry, Retry-After 0.05 s" in line for line in requests)
    assert "2xx, 0 failed record(s)" in requests[-1]
    assert all(" bytes, " in line and line.endswith(" s") for line in requests)
    assert sum(int(line.split(": ")[1].split()[0]) for line in requests) >= 3
    assert len(seen) == len(lines)  # every DEBUG line reached the handler, which called back
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert API_KEY not in everything


def test_enso_debug_in_the_environment_prints_the_requests_on_stderr(fake_enso: FakeEnso) -> None:
    script = textwrap.dedent(
        f"""
        from enso_tracker import Tracker
        tracker = Tracker(api_key={API_KEY!r}, base_url={fake_enso.url!r})
        tracker.track("ent", "api_calls", 1)
        assert tracker.shutdown(10.0)
        """
    )
    env = {**os.environ, "ENSO_DEBUG": "1"}
    env.pop("ENSO_DISABLED", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "enso_tracker DEBUG POST /events/batch: 1 event(s)" in result.stderr
    assert "attempt 1: 2xx, 0 failed record(s)" in result.stderr
    assert API_KEY not in result.stderr


# ------------------------------------------------------------------ test helpers


def test_drop_recorder_records_and_waits(fake_enso: FakeEnso) -> None:
    fake_enso.known_entities = {"ent_ok"}
    drops = DropRecorder()
    tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url, on_drop=drops, flush_interval=0.05)
    try:
        accepted(tracker.track("ent_ok", "m", 1))
        bad = accepted(tracker.track("ent_unknown", "m", 1))
        assert drops.wait_for(1, timeout=30.0)
        assert not drops.wait_for(2, timeout=0.05)
        assert len(drops) == 1
        assert [e.event_id for e in drops.events("rejected")] == [bad]
        assert drops.events("shutdown") == []
        assert drops.reasons()[bad].code == 2002
        assert drops.kinds() == {"rejected": 1} == tracker.stats().dropped
        drops.clear()
        assert len(drops) == 0
    finally:
        tracker.shutdown(5.0)


def test_fake_enso_env_points_init_and_from_env_at_the_fake(fake_enso_env: FakeEnso) -> None:
    enso_tracker.init()  # an application's start-up, unchanged
    first = accepted(enso_tracker.track("ent", "api_calls", 1))
    assert enso_tracker.flush(10.0)
    own = Tracker.from_env()
    try:
        second = accepted(own.track("ent", "api_calls", 2))
        assert own.flush(10.0)
    finally:
        own.shutdown(5.0)
    assert set(fake_enso_env.event_ids()) == {first, second}


def test_commands_that_send_refuse_to_run_disabled_and_the_demo_runs_anyway(
    monkeypatch: pytest.MonkeyPatch, fake_enso: FakeEnso, capsys: pytest.CaptureFixture[str]
) -> None:
    from enso_tracker.__main__ import main

    monkeypatch.setenv("ENSO_DISABLED", "1")
    monkeypatch.setenv("ENSO_API_KEY", API_KEY)
    monkeypatch.setenv("ENSO_BASE_URL", fake_enso.url)
    # A success exit for events a disabled tracker let go would be a false claim.
    assert main(["send", "ent", "api_calls", "1"]) == 2
    assert "ENSO_DISABLED is set, so nothing would be sent" in capsys.readouterr().err
    assert fake_enso.requests == []
    monkeypatch.setenv("ENSO_DISABLED", "0")
    assert main(["send", "ent", "api_calls", "1"]) == 0
    assert len(fake_enso.events) == 1
    monkeypatch.setenv("ENSO_DISABLED", "1")
    assert main(["demo", "--seconds", "0.3", "--threads", "1", "--quiet"]) == 0
    assert "Books balance" in capsys.readouterr().out


def test_a_signal_handler_on_top_of_a_disabled_tracker_never_waits_for_its_lock() -> None:
    """A trace function stands in for a signal handler: it runs on top of the frame that
    holds the lock (``let_go_locked``) and calls back into the tracker."""
    tracker = Tracker(disabled=True, handle_sigterm=False)
    seen: list[object] = []

    def handler(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_name == "let_go_locked" and event == "line" and not seen:
            seen.append(tracker.stats())  # would wait for ever on the held lock
            seen.append(tracker.flush(0.1))
        return handler

    def run() -> None:
        sys.settrace(handler)
        try:
            tracker.track("ent", "m", 1)
        finally:
            sys.settrace(None)

    worker = threading.Thread(target=run, daemon=True)  # a failure must not hang the run
    worker.start()
    worker.join(10.0)
    assert not worker.is_alive(), "the call back into the tracker waited on its own lock"
    assert len(seen) == 2
    assert seen[1] is False  # flush() could not take the lock: it says so, at once
    assert tracker.stats().disabled == 1
    tracker.shutdown(2.0)


def test_send_events_when_disabled_checks_and_sends_nothing(
    fake_enso: FakeEnso, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The synchronous call follows the same switch as a tracker: checked, never sent, and a
    # result that cannot be mistaken for a delivery.
    results = enso_tracker.send_events(
        [{"entity": "ent", "metric": "m", "value": 1, "event_id": "d-1"}],
        base_url=fake_enso.url,
        disabled=True,
    )
    assert [(r.event_id, r.state, r.delivered) for r in results] == [("d-1", "disabled", False)]
    monkeypatch.setenv("ENSO_DISABLED", "1")
    monkeypatch.delenv("ENSO_API_KEY", raising=False)
    one = enso_tracker.send("ent", "m", 2, base_url=fake_enso.url)
    assert one.state == "disabled"
    with pytest.raises(enso_tracker.InvalidEventError, match="value"):
        enso_tracker.send("ent", "m", float("nan"), base_url=fake_enso.url)
    assert fake_enso.event_ids() == []
    # Credentials given are still checked, as by a disabled Tracker.
    with pytest.raises(ConfigurationError):
        enso_tracker.send("ent", "m", 1, api_key="  ", base_url=fake_enso.url)
