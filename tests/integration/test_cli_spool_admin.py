"""Admin on a live spool directory (issue #16, finding 8), through the console script:
purge removes only what the operator saw (``export --purge``, ``purge --through``); a
damaged dead-letter store gives one line and exit 3, never a traceback; a file this user
cannot open is "permission denied", never "corrupt", and nothing advises deleting it."""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from enso_tracker import Spool, Tracker
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, TrackerFactory

from .test_cli_spool import (
    POISONED,
    REJECTED,
    SCRIPT,
    TS,
    cli_env,
    jsonl,
    run_cli,
    status_of,
    stranded_tracker,
)

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`


@pytest.fixture
def fake_enso(fake_enso: FakeEnso) -> FakeEnso:
    """The plugin's ``fake_enso``, knowing only ``ent_known`` (reset after the test)."""
    fake_enso.known_entities = {"ent_known"}
    return fake_enso


@pytest.fixture
def dead(tmp_path: Path, fake_enso: FakeEnso, tracker: TrackerFactory) -> Path:
    """A spool directory holding four dead letters: three 2002s for an unknown entity
    (``REJECTED``) and one whose batches Enso kept failing (``POISONED``)."""
    spool_dir = tmp_path / "spool"
    fake_enso.poison_event_ids([POISONED])
    t = tracker(spool_dir=str(spool_dir), max_batch_size=1, max_retries=1)
    for i, event_id in enumerate(REJECTED):
        t.track("ent_nobody", "api_calls", i + 1, timestamp=TS, event_id=event_id)
    t.track("ent_known", "gb_stored", 2.5, timestamp=TS, event_id=POISONED)
    assert t.flush(20.0)
    t.shutdown(5.0)
    assert t.stats().dropped == {"rejected": 3, "retries_exhausted": 1}
    fake_enso.poison_event_ids([])
    return spool_dir


def reject_more(spool_dir: Path, fake: FakeEnso, ids: list[str]) -> None:
    """A tracker on the directory has more events refused (2002): stored as dead letters."""
    tracker = Tracker(
        API_KEY,
        base_url=fake.url,
        spool_dir=str(spool_dir),
        handle_sigterm=False,
        backoff_base=0.01,
        on_drop=DropRecorder(),
    )
    for i, event_id in enumerate(ids):
        tracker.track("ent_nobody", "api_calls", 100 + i, timestamp=TS, event_id=event_id)
    assert tracker.flush(20.0)
    tracker.shutdown(5.0)
    assert tracker.stats().dropped == {"rejected": len(ids)}


def stored_ids(spool_dir: Path) -> set[str]:
    return {d.event.event_id for d in Spool(spool_dir).dead_letters() if d.event is not None}


# ------------------------------------------------------------------ purge


def test_purge_through_the_exported_watermark_keeps_letters_stored_since(
    dead: Path, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    """The README's ``export -o kept.jsonl && purge --yes`` purged 418 dead letters stored
    between the two commands, never exported. ``export`` now prints the watermark that
    ``purge --through`` takes."""
    kept = tmp_path / "kept.jsonl"
    exported = run_cli("spool", "export", "-o", str(kept), "--dir", str(dead))
    assert exported.returncode == 0, exported.stderr
    found = re.search(r"purge --through (\d+) --yes", exported.stdout)
    assert found, exported.stdout
    through = found.group(1)
    assert {r["eventId"] for r in jsonl(kept.read_text())} == {*REJECTED, POISONED}

    later = [f"evt_later_{i}" for i in range(3)]
    reject_more(dead, fake_enso, later)  # a live tracker stores more meanwhile
    assert stored_ids(dead) == {*REJECTED, POISONED, *later}

    purged = run_cli("spool", "purge", "--through", through, "--yes", "--json", "--dir", str(dead))
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout) == {"purged": 4, "exit_code": 0}
    assert stored_ids(dead) == set(later)  # never exported: still there


def test_export_purge_deletes_exactly_what_it_wrote(
    dead: Path, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    kept = tmp_path / "kept.jsonl"
    proc = run_cli(
        "spool", "export", "--kind", "rejected", "--purge", "-o", str(kept), "--json",
        "--dir", str(dead),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["exported"], report["purged"], report["exit_code"]) == (3, 3, 0)
    assert {r["eventId"] for r in jsonl(kept.read_text())} == set(REJECTED)
    assert stored_ids(dead) == {POISONED}  # the filter held: another kind stays
    # Stored after the export: another export --purge takes it, not the one before.
    reject_more(dead, fake_enso, ["evt_after"])
    assert stored_ids(dead) == {POISONED, "evt_after"}
    again = run_cli("spool", "export", "--purge", "--kind", "rejected", "--dir", str(dead))
    assert again.returncode == 0, again.stderr
    assert [r["eventId"] for r in jsonl(again.stdout)] == ["evt_after"]
    assert "then purged 1 dead letter (exactly those exported)" in again.stderr
    assert run_cli("spool", "export", "--pending", "--purge", "--dir", str(dead)).returncode == 2


def test_purge_stored_before_leaves_a_letter_stored_again(dead: Path, fake_enso: FakeEnso) -> None:
    """``export --purge`` also bounds what it deletes by when the export began: a letter
    stored again since (same eventId: its batch resent and refused again) is new."""
    spool = Spool(dead)
    letters = list(spool.dead_letters())
    through = max(d.id for d in letters)
    started = time.time()
    reject_more(dead, fake_enso, [REJECTED[0]])  # stored again, after `started`
    assert spool.purge_dead_letters(through=through + 10, stored_before=started) == 3
    assert stored_ids(dead) == {REJECTED[0]}


# ------------------------------------------------------------------ damaged store


def test_a_damaged_dead_letter_store_is_one_line_and_exit_3(
    tmp_path: Path, fake_enso: FakeEnso
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    store = spool_dir / "dead-letters.db"
    damage = b"SQLite format 3\x00" + b"\xff" * 4000
    store.write_bytes(damage)
    for action in (
        ["dead-letters"],
        ["export"],
        ["export", "--purge", "-o", str(tmp_path / "out.jsonl")],
        ["redrive"],
        ["purge", "--yes"],
    ):
        proc = run_cli("spool", *action, "--dir", str(spool_dir))
        assert proc.returncode == 3, (action, proc.stderr)
        assert "Traceback" not in proc.stderr
        (line,) = proc.stderr.splitlines()
        assert f"cannot read the dead-letter store {store}" in line
        assert "damaged" in line
        assert "nothing was changed" in line
        assert proc.stdout == ""
    assert store.read_bytes() == damage  # untouched
    assert not (tmp_path / "out.jsonl").exists()
    assert [p.name for p in spool_dir.iterdir()] == ["dead-letters.db"]
    as_json = run_cli("spool", "dead-letters", "--json", "--dir", str(spool_dir))
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["exit_code"] == 3
    status = status_of(spool_dir)
    assert status["corrupt_files"] == [str(store)]
    doctor = run_cli(
        "doctor", "--json",
        env=cli_env(
            ENSO_API_KEY=API_KEY, ENSO_BASE_URL=fake_enso.url, ENSO_SPOOL_DIR=str(spool_dir)
        ),
    )  # fmt: skip
    spool = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["spool"]
    assert spool["ok"] is False
    assert "then delete" not in spool["fix"]
    assert "do not delete" in spool["fix"]


# ------------------------------------------------------------------ permission denied

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


def _without_dac_override() -> None:
    """In the child, before exec: root without the capabilities that let it read any
    file, so another user's 0600 file is "permission denied" to it as to anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_file_this_user_cannot_open_is_permission_denied_not_corrupt(
    tmp_path: Path, fake_enso: FakeEnso, dead: Path
) -> None:
    """An on-call user who cannot open a live 0600 file saw it listed as corrupt, and
    ``doctor`` advised deleting it: that would delete undelivered events."""
    spool_dir = dead
    tracker = stranded_tracker(spool_dir)
    tracker.track("ent_known", "api_calls", 1, timestamp=TS)
    tracker.shutdown(1.0)
    assert tracker.stats().left_in_spool == 1
    files = sorted(
        p
        for p in spool_dir.iterdir()
        if p.name.endswith(".db") and not p.name.startswith("receipts-")  # not the spool's
    )
    assert len(files) == 2  # the dead-letter store and an undelivered event's file
    preexec: Callable[[], None] | None = None
    if os.geteuid() == 0:
        for path in spool_dir.iterdir():
            os.chown(path, 65534, 65534)  # another user's files, 0600
        preexec = _without_dac_override
    else:
        for path in files:
            path.chmod(0o000)
    try:
        status = _run(["spool", "status", "--json", "--dir", str(spool_dir)], preexec)
        assert status.returncode == 1, status.stderr
        found = json.loads(status.stdout)
        assert found["corrupt_files"] == []
        assert sorted(found["unreadable_files"]) == sorted(str(p) for p in files)
        assert set(found["unreadable_files"].values()) == {"cannot open: permission denied"}
        human = _run(["spool", "status", "--dir", str(spool_dir)], preexec)
        assert "unreadable files: 2" in human.stdout
        assert "never delete them" in human.stdout
        assert "corrupt files: 0" in human.stdout
        listed = _run(["spool", "dead-letters", "--dir", str(spool_dir)], preexec)
        assert listed.returncode == 3
        assert "permission denied" in listed.stderr
        assert "damaged" not in listed.stderr
        env = cli_env(
            ENSO_API_KEY=API_KEY, ENSO_BASE_URL=fake_enso.url, ENSO_SPOOL_DIR=str(spool_dir)
        )
        doctor = _run(["doctor", "--json"], preexec, env)
        spool = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["spool"]
        assert spool["ok"] is False
        assert "permission denied" in spool["detail"]
        assert "corrupt" not in spool["detail"]
        assert "never delete" in spool["fix"]
    finally:
        for path in files:
            path.chmod(0o600)
    if os.geteuid() != 0:
        assert Spool(spool_dir).status().unreadable_files == {}  # readable again


def _run(
    args: list[str], preexec: Callable[[], None] | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``run_cli``, with something done in the child before exec."""
    return subprocess.run(
        [str(SCRIPT), *args],
        env=cli_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        preexec_fn=preexec,  # prctl only: safe between fork and exec
    )
