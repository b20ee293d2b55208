"""`enso-tracker spool ...` and doctor's spool line, run as a user would (a subprocess of the
console script), on spool directories written by real trackers talking to a FakeEnso on
127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import Tracker
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, TrackerFactory, accepted, wait_until

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

SCRIPT = Path(sys.executable).with_name("enso-tracker")
TS = "2026-04-01T12:00:00Z"
REJECTED = ["evt_nobody_0", "evt_nobody_1", "evt_nobody_2"]
POISONED = "evt_poison_1"


def run_cli(
    *args: str, env: dict[str, str] | None = None, spool_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), "the console script comes with `pip install -e .` (make check)"
    environ = cli_env() if env is None else env
    if spool_dir is not None:
        environ["ENSO_SPOOL_DIR"] = str(spool_dir)
    return subprocess.run(
        [str(SCRIPT), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,  # not a terminal: purge must not prompt
    )


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY") and not k.startswith("ENSO_")
    }
    env.update({"PYTHONIOENCODING": "utf-8", **extra})
    return env


def status_of(spool_dir: Path) -> dict[str, Any]:
    proc = run_cli("spool", "status", "--dir", str(spool_dir), "--json")
    assert proc.returncode in (0, 1), proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["exit_code"] == proc.returncode
    return result


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def fake_enso(fake_enso: FakeEnso) -> FakeEnso:
    """The plugin's ``fake_enso``, knowing only ``ent_known`` (reset after the test)."""
    fake_enso.known_entities = {"ent_known"}
    return fake_enso


@pytest.fixture
def dead(
    tmp_path: Path, fake_enso: FakeEnso, tracker: TrackerFactory, drop_recorder: DropRecorder
) -> Path:
    """A spool directory whose tracker dead-lettered three 2002s for an unknown entity and
    one event whose batches Enso kept failing, and delivered two others."""
    spool_dir = tmp_path / "spool"
    fake_enso.poison_event_ids([POISONED])
    t = tracker(spool_dir=str(spool_dir), max_batch_size=1, max_retries=1)
    for i, event_id in enumerate(REJECTED):
        t.track("ent_nobody", "api_calls", i + 1, timestamp=TS, event_id=event_id)
    for i in range(2):
        accepted(t.track("ent_known", "api_calls", 10 + i, timestamp=TS))
    t.track("ent_known", "gb_stored", 2.5, timestamp=TS, event_id=POISONED)
    assert t.flush(20.0)
    t.shutdown(5.0)
    stats = t.stats()
    assert stats.delivered == 2
    assert {k: v for k, v in stats.dropped.items() if v} == {"rejected": 3, "retries_exhausted": 1}
    assert len(drop_recorder.events()) == 4
    fake_enso.poison_event_ids([])
    assert fake_enso.received == 2
    return spool_dir


# ------------------------------------------------------------------- status


def test_status_counts_dead_letters_by_kind_and_code(dead: Path) -> None:
    status = status_of(dead)
    assert status["exit_code"] == 1  # dead letters need a person
    assert status["dead_letters"] == 4
    assert status["dead_letters_by_kind"] == {"rejected": 3, "retries_exhausted": 1}
    assert status["dead_letters_by_code"] == {"2002": 3, "": 1}
    assert (status["files"], status["events"], status["oldest"]) == (0, 0, None)
    assert status["corrupt_files"] == []
    assert status["unsupported_files"] == []
    assert status["bytes"] > 0
    # The same through $ENSO_SPOOL_DIR, for a person.
    human = run_cli("spool", "status", spool_dir=dead)
    assert human.returncode == 1, human.stderr
    assert "dead letters:    4" in human.stdout
    assert "rejected: 3, retries_exhausted: 1" in human.stdout
    assert "2002: 3, (none): 1" in human.stdout
    assert "enso-tracker spool dead-letters" in human.stdout  # what to do next


def stranded_tracker(spool_dir: Path) -> Tracker:
    """A tracker whose events stay in its spool: nobody listens on its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return Tracker(
        api_key=API_KEY,
        base_url=f"http://127.0.0.1:{port}",
        spool_dir=str(spool_dir),
        handle_sigterm=False,
        backoff_base=0.01,
        backoff_max=0.05,
    )


def test_status_of_undelivered_events_shows_the_oldest_and_exports_them(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    before = time.time()
    tracker = stranded_tracker(spool_dir)
    ids = [
        accepted(tracker.track("ent_known", "api_calls", 7, timestamp=TS, metadata={"r": "eu"})),
        accepted(tracker.track("ent_known", "gb_stored", 1.25, timestamp=TS, job_id="job_1")),
    ]
    tracker.shutdown(1.0)
    assert tracker.stats().left_in_spool == 2
    after = time.time()

    status = status_of(spool_dir)
    assert status["exit_code"] == 0  # undelivered is not dead: the next tracker sends them
    assert (status["events"], status["dead_letters"], status["live_files"]) == (2, 0, 0)
    assert status["files"] >= 1
    assert before - 1.0 <= status["oldest"] <= after + 1.0
    human = run_cli("spool", "status", "--dir", str(spool_dir))
    assert "undelivered:     2 events, oldest written " in human.stdout
    assert " ago (20" in human.stdout
    assert "Z)" in human.stdout

    out = tmp_path / "pending.jsonl"
    proc = run_cli("spool", "export", "--pending", "-o", str(out), "--dir", str(spool_dir))
    assert proc.returncode == 0, proc.stderr
    assert "exported 2 undelivered events" in proc.stdout
    rows = jsonl(out.read_text())
    assert rows == [
        {
            "CustomerEntityId": "ent_known",
            "metric": "api_calls",
            "value": 7,
            "timestamp": "2026-04-01T12:00:00.000Z",
            "eventId": ids[0],
            "metadata": {"r": "eu"},
        },
        {
            "CustomerEntityId": "ent_known",
            "metric": "gb_stored",
            "value": 1.25,
            "timestamp": "2026-04-01T12:00:00.000Z",
            "eventId": ids[1],
            "JobId": "job_1",
        },
    ]
    assert not list(tmp_path.glob("pending.jsonl.tmp-*"))  # replaced once complete


# ------------------------------------------------------------- dead-letters


def test_dead_letters_lists_each_one_with_its_reason(dead: Path) -> None:
    proc = run_cli("spool", "dead-letters", "--dir", str(dead))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    for i, event_id in enumerate(REJECTED):
        (line,) = [x for x in lines if x.startswith(event_id + " ")]
        assert f"  ent_nobody  api_calls  {i + 1}  rejected  code=2002  status=404  stored " in line
        assert "Customer entity not found" in line
    (poisoned,) = [x for x in lines if x.startswith(POISONED + " ")]
    assert "retries_exhausted  code=-  status=-  stored " in poisoned
    assert "HTTP 500" in poisoned
    assert "4 dead letters" in proc.stderr

    as_json = run_cli("spool", "dead-letters", "--json", "--code", "2002", spool_dir=dead)
    records = jsonl(as_json.stdout)
    assert sorted(r["eventId"] for r in records) == REJECTED
    for r in records:
        letter = r["deadLetter"]
        assert (r["CustomerEntityId"], r["metric"], letter["kind"]) == (
            "ent_nobody",
            "api_calls",
            "rejected",
        )
        assert (letter["code"], letter["status"], r["timestamp"]) == (
            2002,
            404,
            "2026-04-01T12:00:00.000Z",
        )
        assert letter["storedAt"].endswith("Z")
    only = jsonl(run_cli("spool", "dead-letters", "--json", "--kind", "retries_exhausted",
                         spool_dir=dead).stdout)  # fmt: skip
    assert [(r["eventId"], r["value"]) for r in only] == [(POISONED, 2.5)]
    limited = run_cli("spool", "dead-letters", "--limit", "1", spool_dir=dead)
    assert len(limited.stdout.splitlines()) == 1
    assert "--limit reached" in limited.stderr


# ------------------------------------------------------------------- export


def test_export_writes_jsonl_that_import_delivers_with_the_same_event_ids(
    dead: Path, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    proc = run_cli("spool", "export", "--dir", str(dead))  # default: dead letters, stdout
    assert proc.returncode == 0, proc.stderr
    rows = {r["eventId"]: r for r in jsonl(proc.stdout)}
    assert set(rows) == {*REJECTED, POISONED}
    first = rows[REJECTED[0]]
    assert first["CustomerEntityId"] == "ent_nobody"
    assert (first["metric"], first["value"]) == ("api_calls", 1)
    assert first["deadLetter"]["kind"] == "rejected"
    assert (first["deadLetter"]["code"], first["deadLetter"]["status"]) == (2002, 404)
    assert rows[POISONED]["deadLetter"]["kind"] == "retries_exhausted"

    out = tmp_path / "rejected.jsonl"
    proc = run_cli("spool", "export", "--kind", "rejected", "-o", str(out), spool_dir=dead)
    assert proc.returncode == 0, proc.stderr
    assert len(jsonl(out.read_text())) == 3
    fake_enso.known_entities = {"ent_known", "ent_nobody"}  # the cause, fixed
    imported = run_cli(
        "import", str(out), "--json", env=cli_env(ENSO_API_KEY=API_KEY, ENSO_BASE_URL=fake_enso.url)
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    events = fake_enso.events
    assert [events[i]["value"] for i in REJECTED] == [1, 2, 3]  # their own eventIds
    assert fake_enso.received == 5
    assert fake_enso.duplicates == {}


def test_a_corrupt_record_is_listed_and_exported_as_its_bytes(
    tmp_path: Path, fake_enso: FakeEnso, tracker: TrackerFactory
) -> None:
    spool_dir = tmp_path / "spool"
    stranded = stranded_tracker(spool_dir)
    event_id = accepted(stranded.track("ent_known", "api_calls", 5, timestamp=TS))
    stranded.shutdown(1.0)
    assert stranded.stats().left_in_spool == 1
    # One flipped byte on disk, as a failing disk would: the record fails its check.
    needle = f'"eventId":"{event_id}"'.encode()
    flipped = needle[:-2] + b"X" + needle[-1:]
    hits = 0
    for path in spool_dir.glob("spool-*.db*"):
        data = path.read_bytes()
        hits += data.count(needle)
        path.write_bytes(data.replace(needle, flipped))
    assert hits >= 1
    # The same key and base_url (a tracker adopts only files of its own identity), its
    # requests carried to the fake by the fake's transport.
    adopter = tracker(
        spool_dir=str(spool_dir),
        base_url=stranded.config.base_url,
        transport=fake_enso.transport(),
    )
    # Adoption runs on the tracker's own thread; flush() covers only accepted events.
    assert wait_until(lambda: adopter.stats().dropped.get("corrupt") == 1, 15.0)
    adopter.shutdown(5.0)
    assert fake_enso.received == 0  # a record that fails its check is never sent

    listed = run_cli("spool", "dead-letters", "--kind", "corrupt", spool_dir=spool_dir)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert line.startswith("- (corrupt record, ")
    assert "  corrupt  code=-  status=-  stored " in line
    exported = run_cli("spool", "export", spool_dir=spool_dir)
    (row,) = jsonl(exported.stdout)
    assert set(row) == {"deadLetter", "corruptBodyBase64"}
    assert row["deadLetter"]["kind"] == "corrupt"
    assert flipped in base64.b64decode(row["corruptBodyBase64"])


# ---------------------------------------------------------- redrive, purge


def test_redrive_then_the_next_tracker_delivers_them_exactly_once(
    dead: Path, fake_enso: FakeEnso, tracker: TrackerFactory
) -> None:
    fake_enso.known_entities = {"ent_known", "ent_nobody"}
    proc = run_cli("spool", "redrive", "--kind", "rejected", "--code", "2002", spool_dir=dead)
    assert proc.returncode == 0, proc.stderr
    assert "redrove 3 dead letters (kind=rejected, code=2002)" in proc.stdout
    assert "next tracker" in proc.stdout
    status = status_of(dead)
    assert (status["events"], status["dead_letters"]) == (3, 1)
    assert status["dead_letters_by_kind"] == {"retries_exhausted": 1}
    assert fake_enso.received == 2  # the command itself sent nothing

    again = run_cli("spool", "redrive", "--kind", "rejected", "--json", spool_dir=dead)
    assert json.loads(again.stdout) == {"redriven": 0, "exit_code": 0}

    t = tracker(spool_dir=str(dead))
    # Adopted events are not track()'s, so flush() does not wait for them: the books do.
    assert wait_until(lambda: t.stats().delivered == 3, 15.0)
    t.shutdown(5.0)
    stats = t.stats()
    assert (stats.adopted, stats.delivered, stats.accepted) == (3, 3, 0)
    assert stats.balanced
    assert [fake_enso.events[i]["value"] for i in REJECTED] == [1, 2, 3]
    assert fake_enso.received == 5
    assert fake_enso.duplicates == {}
    after = status_of(dead)
    assert (after["files"], after["events"], after["dead_letters"]) == (0, 0, 1)


def test_purge_needs_yes_off_a_terminal_and_honours_the_filters(dead: Path) -> None:
    refused = run_cli("spool", "purge", spool_dir=dead)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert status_of(dead)["dead_letters"] == 4  # nothing changed

    proc = run_cli("spool", "purge", "--kind", "retries_exhausted", "--yes", "--json",
                   spool_dir=dead)  # fmt: skip
    assert json.loads(proc.stdout) == {"purged": 1, "exit_code": 0}
    assert status_of(dead)["dead_letters_by_kind"] == {"rejected": 3}

    rest = run_cli("spool", "purge", "--yes", "--dir", str(dead))
    assert rest.returncode == 0, rest.stderr
    assert "purged 3 dead letters" in rest.stdout
    status = status_of(dead)
    assert (status["dead_letters"], status["exit_code"]) == (0, 0)


# ----------------------------------------------------------- usage, doctor


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    nowhere = run_cli("spool", "status")  # neither --dir nor $ENSO_SPOOL_DIR
    assert nowhere.returncode == 2
    assert "--dir" in nowhere.stderr
    assert "ENSO_SPOOL_DIR" in nowhere.stderr
    missing = run_cli("spool", "dead-letters", "--dir", str(tmp_path / "absent"))
    assert missing.returncode == 2
    assert not (tmp_path / "absent").exists()  # never created by a read
    assert run_cli("spool", "redrive", "--kind", "lost", "--dir", str(tmp_path)).returncode == 2
    assert run_cli("spool", "dead-letters", "--limit", "0", "--dir", str(tmp_path)).returncode == 2
    both = run_cli("spool", "export", "--pending", "--dead-letters", "--dir", str(tmp_path))
    assert both.returncode == 2
    assert run_cli("spool").returncode == 2  # no action
    helped = run_cli("spool", "--help")
    assert helped.returncode == 0
    assert "enso-tracker spool redrive --kind rejected --code 2002" in helped.stdout
    for action in ("status", "dead-letters", "redrive", "purge", "export"):
        assert action in helped.stdout


def test_corrupt_files_are_reported_by_status_and_fail_doctor(
    tmp_path: Path, fake_enso: FakeEnso
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    (spool_dir / "spool-999-abcdef.db.corrupt-1700000000").write_bytes(b"\x00not sqlite\xff")
    status = status_of(spool_dir)
    assert status["exit_code"] == 1
    assert [Path(f).name for f in status["corrupt_files"]] == [
        "spool-999-abcdef.db.corrupt-1700000000"
    ]
    doctor = run_cli(
        "doctor", "--json",
        env=cli_env(
            ENSO_API_KEY=API_KEY, ENSO_BASE_URL=fake_enso.url, ENSO_SPOOL_DIR=str(spool_dir)
        ),
    )  # fmt: skip
    assert doctor.returncode == 1
    spool = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["spool"]
    assert spool["ok"] is False
    assert "corrupt" in spool["detail"]
    assert spool["fix"]


def test_doctor_reports_the_spool_in_enso_spool_dir(dead: Path, fake_enso: FakeEnso) -> None:
    env = cli_env(ENSO_API_KEY=API_KEY, ENSO_BASE_URL=fake_enso.url, ENSO_SPOOL_DIR=str(dead))
    proc = run_cli("doctor", env=env)
    assert proc.returncode == 0, proc.stdout
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("✔ spool: ")]
    assert str(dead) in line
    assert "0 undelivered events" in line
    assert "4 dead letters (rejected: 3" in line

    env["ENSO_SPOOL_DIR"] = str(dead.parent / "no-such-dir")
    missing = run_cli("doctor", "--json", env=env)
    assert missing.returncode == 1
    spool = {c["name"]: c for c in json.loads(missing.stdout)["checks"]}["spool"]
    assert spool["ok"] is False
    assert "no such directory" in spool["detail"]
    assert "mkdir -m 700" in spool["fix"]
