"""Opt-in gzip request bodies (issue #21): sent compressed, read by FakeEnso, and turned
off for the tracker when Enso refuses the encoding, the batch resent plain with the
same eventIds and the books exact."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from enso_tracker import Config, ConfigurationError, Tracker
from enso_tracker._http.auth import make_credentials
from enso_tracker._http.compress import gzip_body
from enso_tracker._http.probe import probe_compression
from enso_tracker.testing import DropRecorder, FakeEnso, Fault
from tests.conftest import TrackerFactory, accepted


def _ids(request_json: object) -> list[str]:
    assert isinstance(request_json, dict)
    return [e["eventId"] for e in request_json["events"]]


def _gzipped(headers: dict[str, str]) -> bool:
    return headers.get("content-encoding") == "gzip"


def _exact_books(tracker: Tracker, delivered: int) -> None:
    stats = tracker.stats()
    assert stats.balanced
    assert stats.delivered == delivered
    assert stats.queued == stats.in_flight == 0
    assert tracker._ledger.outstanding_bytes == 0


def test_gzip_body_is_standard_gzip() -> None:
    body = b'{"events":[' + b",".join([b'{"metric":"api_calls"}'] * 200) + b"]}"
    packed = gzip_body(body)
    assert packed[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed) == body
    assert len(packed) < len(body) // 5


def test_bodies_go_gzipped_when_asked(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    t = tracker(compression="gzip", flush_interval=10.0)
    ids = [accepted(t.track("ent", "api_calls", i, metadata={"i": i})) for i in range(40)]
    assert t.flush(10.0)
    (request,) = fake_enso.batch_requests()
    assert request.status == 200
    assert _gzipped(request.headers)
    assert int(request.headers["content-length"]) < len(request.body)  # the wire was smaller
    assert _ids(request.json()) == ids
    assert set(fake_enso.events) == set(ids)
    assert fake_enso.events[ids[3]]["metadata"] == {"i": 3}
    assert drop_recorder.calls == []
    _exact_books(t, 40)


def test_off_by_default(tracker: TrackerFactory, fake_enso: FakeEnso) -> None:
    t = tracker()
    accepted(t.track("ent", "api_calls", 1))
    assert t.flush(10.0)
    assert not any(_gzipped(r.headers) for r in fake_enso.batch_requests())
    assert Config().compression is None


def test_415_turns_gzip_off_and_resends_the_same_events_plain(
    tracker: TrackerFactory,
    fake_enso: FakeEnso,
    drop_recorder: DropRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_enso.accept_gzip = False
    t = tracker(compression="gzip", flush_interval=10.0)
    caplog.set_level(logging.WARNING, logger="enso_tracker")
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(10)]
    assert t.flush(10.0)
    refused, plain = fake_enso.batch_requests()
    assert (refused.status, _gzipped(refused.headers)) == (415, True)
    assert (plain.status, _gzipped(plain.headers)) == (200, False)
    assert _ids(refused.json()) == _ids(plain.json()) == ids
    assert set(fake_enso.events) == set(ids)
    assert fake_enso.duplicates == {}
    assert drop_recorder.calls == []
    _exact_books(t, 10)
    assert t.stats().failed_requests == 0  # one attempt, answered on its resend
    # Off for good, said once.
    more = [accepted(t.track("ent", "api_calls", i)) for i in range(5)]
    assert t.flush(10.0)
    later = fake_enso.batch_requests()[2:]
    assert later
    assert not any(_gzipped(r.headers) for r in later)
    assert {e for r in later for e in _ids(r.json())} == set(more)
    warnings = [r for r in caplog.records if "gzip" in r.getMessage()]
    assert len(warnings) == 1
    assert "415" in warnings[0].getMessage()
    _exact_books(t, 15)


def test_400_to_gzip_then_2xx_plain_turns_gzip_off(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    # A server that ignores Content-Encoding: it cannot parse the gzip bytes (400).
    fake_enso.script(Fault(status=400))
    t = tracker(compression="gzip", flush_interval=10.0)
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(4)]
    assert t.flush(10.0)
    first, second = fake_enso.batch_requests()
    assert (first.status, _gzipped(first.headers)) == (400, True)
    assert (second.status, _gzipped(second.headers)) == (200, False)
    assert _ids(first.json()) == _ids(second.json()) == ids
    assert drop_recorder.calls == []
    _exact_books(t, 4)
    accepted(t.track("ent", "api_calls", 9))
    assert t.flush(10.0)
    assert not _gzipped(fake_enso.batch_requests()[-1].headers)


def test_a_genuine_400_is_a_rejection_and_gzip_stays_on(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.script(Fault(status=400), Fault(status=400))
    t = tracker(compression="gzip", flush_interval=10.0)
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(3)]
    assert t.flush(10.0)
    assert [e.event_id for e in drop_recorder.events("rejected")] == ids
    assert [_gzipped(r.headers) for r in fake_enso.batch_requests()] == [True, False]
    accepted(t.track("ent", "api_calls", 9))
    assert t.flush(10.0)
    assert _gzipped(fake_enso.batch_requests()[-1].headers)
    assert t.stats().delivered == 1


def test_the_option_and_its_environment_variable() -> None:
    with pytest.raises(ConfigurationError, match="compression='zstd'"):
        Config(compression="zstd")  # type: ignore[arg-type]
    env = {"ENSO_API_KEY": "k", "ENSO_BASE_URL": "http://127.0.0.1:9"}
    for value, expected in (("gzip", "gzip"), ("GZIP ", "gzip"), ("none", None), ("", None)):
        tracker = Tracker.from_env({**env, "ENSO_COMPRESSION": value}, handle_sigterm=False)
        try:
            assert tracker.config.compression == expected
        finally:
            tracker.shutdown(0.1)
    with pytest.raises(ConfigurationError, match="compression='br'"):
        Tracker.from_env({**env, "ENSO_COMPRESSION": "br"})


def test_fake_enso_reads_gzip_and_refuses_what_it_cannot(fake_enso: FakeEnso) -> None:
    headers = {"Authorization": f"Bearer {fake_enso.api_key}", "Content-Type": "application/json"}
    body = (
        b'{"events":[{"CustomerEntityId":"e","metric":"m","value":1,'
        b'"timestamp":"2026-12-06T07:00:00.000Z","eventId":"x1"}]}'
    )
    url = fake_enso.url + "/events/batch"
    with httpx.Client() as client:
        ok = client.post(
            url, content=gzip.compress(body), headers={**headers, "Content-Encoding": "gzip"}
        )
        assert ok.status_code == 200
        assert "x1" in fake_enso.events
        broken = client.post(
            url, content=b"\x1f\x8bnot gzip", headers={**headers, "Content-Encoding": "gzip"}
        )
        assert broken.status_code == 400
        other = client.post(url, content=body, headers={**headers, "Content-Encoding": "br"})
        assert other.status_code == 415
        fake_enso.accept_gzip = False
        refused = client.post(
            url, content=gzip.compress(body), headers={**headers, "Content-Encoding": "gzip"}
        )
        assert refused.status_code == 415
    fake_enso.reset()
    assert fake_enso.accept_gzip


def test_probe_compression_says_whether_enso_reads_gzip() -> None:
    with FakeEnso() as fake:
        config = Config(base_url=fake.url)
        credentials = make_credentials(fake.api_key, None, None, fake.url)
        kind, message = probe_compression(config, credentials, 5.0)
        assert kind == "accepted", message
        fake.accept_gzip = False
        kind, message = probe_compression(config, credentials, 5.0)
        assert kind == "refused", message
        assert "415" in message
        # No usage ever sent, and the refused probe was not resent plain.
        assert fake.events == {}
        assert [_gzipped(r.headers) for r in fake.batch_requests()] == [True, True]


def test_with_a_spool_the_415_fallback_sends_the_exact_rows_plain(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder, tmp_path: Path
) -> None:
    fake_enso.accept_gzip = False
    t = tracker(compression="gzip", spool_dir=str(tmp_path / "spool"))
    ids = [accepted(t.track("ent", "api_calls", i, metadata={"i": i})) for i in range(30)]
    assert t.flush(10.0)
    requests = fake_enso.batch_requests()
    assert [(r.status, _gzipped(r.headers)) for r in requests][:2] == [(415, True), (200, False)]
    assert all(not _gzipped(r.headers) for r in requests[1:])
    assert _ids(requests[0].json()) == _ids(requests[1].json())
    assert sorted(fake_enso.events) == sorted(ids)
    assert fake_enso.duplicates == {}
    assert drop_recorder.calls == []
    stats = t.stats()
    assert stats.balanced
    assert stats.delivered == 30
    assert stats.spooled == 0


@pytest.mark.parametrize("accept", [True, False], ids=["reads-gzip", "refuses-gzip"])
def test_doctor_reports_whether_enso_reads_gzip(accept: bool) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY") and not k.startswith("ENSO_")
    }
    with FakeEnso(accept_gzip=accept) as fake:
        env.update({"ENSO_BASE_URL": fake.url, "ENSO_API_KEY": fake.api_key})
        proc = subprocess.run(
            [sys.executable, "-m", "enso_tracker", "doctor", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert fake.event_ids() == []  # no usage billed by either probe
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    compression = found["compression"]
    if accept:
        assert compression["ok"] is True
        assert "may be turned on" in compression["detail"]
    else:
        assert compression["ok"] is None  # opt-in: informational, never a failed check
        assert "415" in compression["detail"]
