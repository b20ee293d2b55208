"""The spool directory as a trust boundary (issue #16), against real FakeEnso servers:
files of another destination or key are never sent, a directory others could write in
is refused, nothing is opened through a symlink or written with a loose mode, a live
owner's file cannot be taken, and only real damage quarantines a file.

Tests that need a second user run when the suite runs as root: the child starts as root
(the interpreter lives where only root may read), loads everything it needs, then drops
to uid 65534 before it touches the spool."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from enso_tracker import ConfigurationError, Spool, Tracker
from enso_tracker._model import DropReason
from enso_tracker._spool.dead_letters import DeadLetterStore
from enso_tracker._spool.format import write_unowned
from enso_tracker._spool.identity import fingerprint, normalize_url, short
from enso_tracker._wire import join_batch
from enso_tracker.testing import FakeEnso
from tests.conftest import API_KEY, accepted, wait_until

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: switching to a second user (uid 65534)"
)


def identity(url: str, key: str = API_KEY) -> str:
    return fingerprint(url, "api_key", key)


def event(event_id: str) -> bytes:
    return msgspec.json.encode(
        {
            "CustomerEntityId": "ent",
            "metric": "m",
            "value": 1,
            "timestamp": "2026-04-01T12:00:00.000Z",
            "eventId": event_id,
        }
    )


def plant_orphans(directory: Path, n: int, who: str, prefix: str = "o") -> list[str]:
    """``n`` ownerless spool files of one event each, written for identity ``who``."""
    directory.mkdir(mode=0o700, exist_ok=True)
    ids = [f"{prefix}-{i}" for i in range(n)]
    for event_id in ids:
        write_unowned(str(directory), [(join_batch([event(event_id)]), 1)], who)
    return ids


def spool_names(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("spool-"))


def run_child(script: str, timeout: float = 120.0) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


KILLED_WRITER = """
import json, os, sys, time
from enso_tracker import Tracker
t = Tracker({key!r}, base_url={url!r}, spool_dir={spool!r}, handle_sigterm=False,
            flush_interval=3600.0, backoff_base=60.0)
ids = [t.track("ent", "m", i) for i in range({n})]
deadline = time.monotonic() + 20
while t.stats().durable_seq < {n} and time.monotonic() < deadline:
    time.sleep(0.005)
print(json.dumps({{"durable": t.stats().durable_seq, "ids": ids}}), flush=True)
time.sleep(120)
"""


@pytest.fixture
def owner(
    private_fake: FakeEnso, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """A live process with key A whose 20 events are durable (``durable_seq``) in
    ``tmp_path/spool`` and undelivered: A's Enso (``private_fake``) is stopped meanwhile."""
    spool = tmp_path / "spool"
    private_fake.stop()
    script = KILLED_WRITER.format(key=API_KEY, url=private_fake.url, spool=str(spool), n=20)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        report = json.loads(child.stdout.readline())
        assert report["durable"] == 20
        yield child, report["ids"]
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()


# ---------------------------------------------------------------- identity


@pytest.mark.parametrize("other_key", ["key-b", API_KEY], ids=["another key", "another Enso"])
def test_a_tracker_of_another_identity_never_sends_a_killed_process_events(
    private_fake: FakeEnso,
    tmp_path: Path,
    owner: tuple[subprocess.Popen[str], list[str]],
    other_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    child, ids = owner
    child.kill()  # kill -9: its 20 durable events stay behind for key A at fake.url
    child.wait(10)
    spool = tmp_path / "spool"
    caplog.set_level(logging.INFO, logger="enso_tracker")
    with FakeEnso(api_keys=(other_key,)) as other:
        b = Tracker(other_key, base_url=other.url, spool_dir=spool, handle_sigterm=False)
        try:
            mine = accepted(b.track("ent", "m", 1))
            assert b.flush(10.0)
            stats = b.stats()
            assert stats.adopted == 0
            assert stats.foreign_spool_files == 1
            status = Spool(spool).status()
            assert status.events_by_identity[short(identity(private_fake.url))] == 20
        finally:
            assert b.shutdown(5.0) is True
        assert other.event_ids() == [mine]  # none of A's
    exit_line = [r.getMessage() for r in caplog.records if "shut down" in r.getMessage()]
    assert "1 spool files of another destination or credential left untouched" in exit_line[-1]
    assert "key-b" not in " ".join(r.getMessage() for r in caplog.records)
    said = [r for r in caplog.records if "written for another destination" in r.getMessage()]
    assert len(said) == 1  # once, however often the directory is scanned
    assert said[0].levelno == logging.ERROR
    assert f"identity {short(identity(private_fake.url))}" in said[0].getMessage()
    private_fake.start()  # A's Enso is back, on its port: tracker A delivers all, once
    with Tracker(API_KEY, base_url=private_fake.url, spool_dir=spool, handle_sigterm=False) as a:
        assert private_fake.wait_for_events(20, 15.0)
        assert wait_until(lambda: a.stats().adopted == 20, 5.0)
        assert a.stats().foreign_spool_files == 0
    assert sorted(private_fake.event_ids()) == sorted(ids)
    assert private_fake.duplicates == {}
    assert spool_names(spool) == []


def test_the_fingerprint_is_stable_normalized_and_never_the_key() -> None:
    key = "sk_live_" + "9" * 32
    one = fingerprint("https://API.example.com:443/v1/", "api_key", key)
    assert one == fingerprint("https://api.example.com/v1", "api_key", key)
    assert normalize_url("HTTP://[::1]:80/") == "http://[::1]"
    assert one != fingerprint("https://api.example.com/v2", "api_key", key)
    assert one != fingerprint("https://api.example.com/v1", "api_key", key + "0")
    assert one != fingerprint("https://api.example.com/v1", "client_key", key)
    assert len(one) == 32
    assert int(one, 16) >= 0
    assert key not in one
    assert key.encode().hex() not in one


def test_redrive_writes_each_dead_letter_back_for_its_own_identity(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    a, b = identity(fake_enso.url), identity(fake_enso.url, "key-b")
    for who, prefix in ((a, "a"), (b, "b"), (None, "legacy")):
        store = DeadLetterStore(str(spool), origin=who)
        reason = DropReason(kind="rejected", message="entity unknown", code=2002, status=200)
        store.add([(event(f"{prefix}-{i}"), reason) for i in range(3)])
        store.close()
    # A tracker redrives only its own letters; the letters of B and those of no recorded
    # identity stay where they are.
    with Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False) as t:
        assert t.redrive() == 3
        assert fake_enso.wait_for_events(3, 10.0)
    assert sorted(fake_enso.event_ids()) == ["a-0", "a-1", "a-2"]
    assert Spool(spool).redrive() == 3  # B's, into a file for B (the legacy ones stay)
    (name,) = spool_names(spool)
    with sqlite3.connect(spool / name) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone() == (b,)
    conn.close()
    assert sorted(d.event.event_id for d in Spool(spool).dead_letters() if d.event) == [
        "legacy-0",
        "legacy-1",
        "legacy-2",
    ]


# ---------------------------------------------------------------- directory trust


def test_a_directory_others_can_write_in_is_refused(fake_enso: FakeEnso, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chmod(spool, 0o777)
    plant_orphans(spool, 1, identity(fake_enso.url))
    with pytest.raises(ConfigurationError, match=r"writable by group or others.*chmod 700"):
        Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False)
    os.chmod(spool, 0o770)
    with pytest.raises(ConfigurationError, match="writable by group"):
        Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False)
    assert fake_enso.event_ids() == []
    os.chmod(spool, 0o700)  # fixed as the message says: now it is used
    with Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False):
        assert fake_enso.wait_for_events(1, 10.0)


@as_root
def test_a_directory_owned_by_another_user_is_refused(fake_enso: FakeEnso, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    plant_orphans(spool, 1, identity(fake_enso.url))
    os.chown(spool, NOBODY, NOBODY)
    with pytest.raises(ConfigurationError, match=r"owned by uid 65534, not by this user"):
        Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False)
    assert fake_enso.event_ids() == []


def test_every_file_is_private_whatever_the_umask(private_fake: FakeEnso, tmp_path: Path) -> None:
    spool = tmp_path / "deep" / "spool"
    private_fake.known_entities = {"ent"}
    old = os.umask(0)
    try:
        with Tracker(
            API_KEY, base_url=private_fake.url, spool_dir=spool, handle_sigterm=False
        ) as t:
            accepted(t.track("nobody-knows-me", "m", 1))  # refused by Enso: a dead letter
            t.flush(10.0)
            private_fake.stop()
            accepted(t.track("ent", "m", 1))
            assert wait_until(lambda: t.stats().durable_seq == 2, 10.0)
            assert wait_until(lambda: t.stats().dead_letters == 1, 10.0)
            modes = {n: stat.S_IMODE(os.lstat(spool / n).st_mode) for n in os.listdir(spool)}
            private_fake.start()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(spool).st_mode) == 0o700
    assert any(n.endswith(".db-wal") for n in modes)
    assert "dead-letters.db" in modes
    assert {n: m for n, m in modes.items() if m != 0o600} == {}


def test_a_symlinked_dead_letter_store_is_never_written_through(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    app_db = tmp_path / "application.db"
    with sqlite3.connect(app_db) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    before = app_db.read_bytes()
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    (spool / "dead-letters.db").symlink_to(app_db)
    fake_enso.known_entities = {"ent"}
    with Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False) as t:
        accepted(t.track("nobody-knows-me", "m", 1))  # refused by Enso: a dead letter
        t.flush(10.0)
        assert t.stats().dropped == {"rejected": 1}
        assert wait_until(lambda: "symlink" in (t.stats().last_error or ""), 10.0)
        assert t.stats().dead_letters == 0
    assert app_db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["application.db", "spool"]


def test_a_symlinked_spool_file_and_lock_are_never_followed(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    # A real orphan of this very identity, outside the directory, linked in: adopting it
    # would bill what a planter put there.
    elsewhere = tmp_path / "elsewhere"
    plant_orphans(elsewhere, 1, identity(fake_enso.url), prefix="planted")
    (target,) = spool_names(elsewhere)
    before = (elsewhere / target).read_bytes()
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    (spool / "spool-1-planted.db").symlink_to(elsewhere / target)
    # Lock names of format 1 pointing where a file must never be created.
    (spool / "spool-2-gone.lock").symlink_to(tmp_path / "created-through-lock")
    (spool / ".tmp-spool-3-x.lock").symlink_to(tmp_path / "created-through-temp-lock")
    with Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False) as t:
        mine = accepted(t.track("ent", "m", 1))
        assert t.flush(10.0)
        stats = t.stats()
        assert stats.adopted == 0
        assert stats.skipped_spool_files == 1
        assert "symlink" in (stats.last_error or "")
    assert fake_enso.event_ids() == [mine]
    assert (elsewhere / target).read_bytes() == before
    assert not (tmp_path / "created-through-lock").exists()
    assert not (tmp_path / "created-through-temp-lock").exists()
    assert Spool(spool).status().refused_files == [str(spool / "spool-1-planted.db")]
    assert list(Spool(spool).pending()) == []  # an outside reader does not follow it either


@as_root
def test_a_spool_file_owned_by_another_user_is_skipped_and_reported(
    fake_enso: FakeEnso, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    ids = plant_orphans(spool, 1, identity(fake_enso.url))
    (name,) = spool_names(spool)
    os.chown(spool / name, NOBODY, NOBODY)
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False) as t:
        assert t.stats().skipped_spool_files == 1
        assert t.stats().adopted == 0
    assert fake_enso.event_ids() == []
    assert spool_names(spool) == [name]  # left as it is: not quarantined, not removed
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "owned by another user (uid 65534)" in said
    assert "corrupt" not in said
    os.chown(spool / name, 0, 0)  # given back: the next tracker delivers it
    with Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False):
        assert fake_enso.wait_for_events(1, 10.0)
    assert fake_enso.event_ids() == ids


# ---------------------------------------------------------------- locks


def test_a_live_owner_file_is_never_adopted_and_survives_its_kill(
    private_fake: FakeEnso, tmp_path: Path, owner: tuple[subprocess.Popen[str], list[str]]
) -> None:
    child, ids = owner
    spool = tmp_path / "spool"
    names = spool_names(spool)
    (db,) = [n for n in names if n.endswith(".db")]
    # The flock is on the database itself: no lock file exists that could be removed.
    assert names == [db, db + "-shm", db + "-wal"]
    os.unlink(spool / (db + "-shm"))  # what lies beside it, removed under the live owner
    private_fake.start()
    with Tracker(API_KEY, base_url=private_fake.url, spool_dir=spool, handle_sigterm=False) as heir:
        mine = accepted(heir.track("ent", "m", 1))
        assert heir.flush(10.0)
        assert heir.stats().adopted == 0  # the owner lives: its file is not ours
    assert (spool / db).exists()
    assert private_fake.event_ids() == [mine]
    child.kill()  # kill -9 of the owner
    child.wait(10)
    with Tracker(API_KEY, base_url=private_fake.url, spool_dir=spool, handle_sigterm=False) as late:
        assert private_fake.wait_for_events(21, 15.0)
        assert wait_until(lambda: late.stats().adopted == 20, 5.0)
    assert sorted(private_fake.event_ids()) == sorted([*ids, mine])
    assert private_fake.duplicates == {}
    assert spool_names(spool) == []


# ---------------------------------------------------------------- quarantine


def test_four_hundred_orphans_under_256_descriptors_are_all_delivered(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    ids = plant_orphans(spool, 400, identity(fake_enso.url))
    report = run_child(
        f"""
        import json, os, resource, time
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        from enso_tracker import Tracker
        t = Tracker({API_KEY!r}, base_url={fake_enso.url!r}, spool_dir={str(spool)!r},
                    handle_sigterm=False)
        peak = 0
        deadline = time.monotonic() + 90
        while t.stats().delivered < 400 and time.monotonic() < deadline:
            peak = max(peak, len(os.listdir("/proc/self/fd")))
            time.sleep(0.01)
        spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(64)]  # the app still can
        for fd in spare:
            os.close(fd)
        stats = t.stats()
        t.shutdown(10.0)
        print(json.dumps({{"delivered": stats.delivered, "adopted": stats.adopted,
                           "peak": peak, "skipped": stats.skipped_spool_files}}))
        """
    )
    assert report["delivered"] == 400
    assert report["adopted"] == 400
    assert report["skipped"] == 0
    assert report["peak"] < 128  # bounded by the files held at a time, not by 400
    assert sorted(fake_enso.event_ids()) == sorted(ids)
    assert fake_enso.duplicates == {}
    assert not [n for n in os.listdir(spool) if ".corrupt-" in n]
    assert spool_names(spool) == []


def test_out_of_descriptors_leaves_the_file_and_the_next_scan_delivers_it(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    report = run_child(
        f"""
        import json, os, resource, time
        from enso_tracker import Tracker
        from enso_tracker._spool.format import write_unowned
        from enso_tracker._spool.identity import fingerprint
        from enso_tracker._wire import join_batch
        t = Tracker({API_KEY!r}, base_url={fake_enso.url!r}, spool_dir={str(spool)!r},
                    handle_sigterm=False)
        body = join_batch([{event("late-1")!r}])
        write_unowned({str(spool)!r}, [(body, 1)], fingerprint({fake_enso.url!r}, "api_key",
                      {API_KEY!r}))
        disk = t._worker.disk
        # Every descriptor but the ones in use taken: the scan cannot open the file.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used, hard))
        events, salvaged, problems = disk.adopt(time.monotonic())  # events it holds
        refused = dict(disk.refused)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        names = sorted(os.listdir({str(spool)!r}))
        disk.next_scan = 0.0
        t._worker.kick()
        deadline = time.monotonic() + 20
        while t.stats().delivered < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = t.stats()
        t.shutdown(10.0)
        print(json.dumps({{"rows": events, "refused": list(refused.values()),
                           "names": names, "delivered": stats.delivered}}))
        """
    )
    assert report["rows"] == 0
    (why,) = report["refused"]
    # SQLite says only "unable to open database file" (SQLITE_CANTOPEN): not damage.
    assert "cannot open" in why
    assert "tried again later" in why
    assert not [n for n in report["names"] if ".corrupt-" in n]
    assert report["delivered"] == 1
    assert fake_enso.event_ids() == ["late-1"]


@as_root
def test_a_root_owned_redrive_file_is_reported_never_quarantined_by_another_user(
    fake_enso: FakeEnso,
) -> None:
    # Outside pytest's root-only tmp_path: the second user must reach the directory.
    base = Path(tempfile.mkdtemp(prefix="enso-trust-"))
    try:
        os.chmod(base, 0o755)
        spool = base / "spool"
        spool.mkdir(mode=0o700)
        os.chown(spool, NOBODY, NOBODY)
        ids = plant_orphans(spool, 5, identity(fake_enso.url), prefix="root")
        names = spool_names(spool)
        assert all(os.stat(spool / n).st_uid == 0 for n in names)
        report = run_child(
            f"""
            import json, logging, os
            from enso_tracker import Tracker
            # Everything loaded as root (the interpreter's files are root's), then: nobody.
            with Tracker({API_KEY!r}, base_url={fake_enso.url!r}, handle_sigterm=False) as w:
                w.track("ent", "m", 1, event_id="warmup")
                w.flush(10.0)
            said = []
            class Keep(logging.Handler):
                def emit(self, record):
                    said.append(record.getMessage())
            logging.getLogger("enso_tracker").addHandler(Keep())
            os.setgid({NOBODY}); os.setuid({NOBODY})
            t = Tracker({API_KEY!r}, base_url={fake_enso.url!r}, spool_dir={str(spool)!r},
                        handle_sigterm=False)
            stats = t.stats()
            t.shutdown(5.0)
            print(json.dumps({{"skipped": stats.skipped_spool_files, "adopted": stats.adopted,
                               "said": said}}))
            """
        )
        assert report["skipped"] == 5
        assert report["adopted"] == 0
        said = " ".join(report["said"])
        assert "owned by another user (uid 0)" in said
        assert "corrupt" not in said
        assert "renamed" not in said
        assert spool_names(spool) == names  # all five left as they were
        assert sorted(fake_enso.event_ids()) == ["warmup"]
        # Their owner's tracker delivers them.
        os.chown(spool, 0, 0)
        with Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False):
            assert fake_enso.wait_for_events(6, 10.0)
        assert sorted(fake_enso.event_ids()) == sorted([*ids, "warmup"])
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


# ---------------------------------------------------------------- the CLI

SCRIPT = Path(sys.executable).parent / "enso-tracker"


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY") and not k.startswith("ENSO_")
    }
    environ.update({"PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(ROOT), **env})
    return subprocess.run(
        [str(SCRIPT), *args], env=environ, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_cli_sends_none_of_another_identity_and_doctor_says_whose_they_are(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    mine = plant_orphans(spool, 2, identity(fake_enso.url), prefix="mine")
    plant_orphans(spool, 3, identity(fake_enso.url, "key-b"), prefix="theirs")
    names = spool_names(spool)
    env = {"ENSO_API_KEY": API_KEY, "ENSO_BASE_URL": fake_enso.url, "ENSO_SPOOL_DIR": str(spool)}
    # `send` never borrows the application's spool (ENSO_SPOOL_DIR): it sends its own event only.
    sent = run_cli("send", "ent", "m", "1", "--event-id", "cli-1", **env)
    assert sent.returncode == 0, sent.stderr
    assert sorted(fake_enso.event_ids()) == ["cli-1"]
    assert spool_names(spool) == names
    status = json.loads(run_cli("spool", "status", "--dir", str(spool), "--json").stdout)
    theirs = short(identity(fake_enso.url, "key-b"))
    assert status["events_by_identity"] == {short(identity(fake_enso.url)): 2, theirs: 3}
    human = run_cli("spool", "status", "--dir", str(spool)).stdout
    assert f"{theirs}: 3" in human
    doctor = run_cli("doctor", "--json", **env)
    assert doctor.returncode == 1
    check = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["spool"]
    assert check["ok"] is False
    assert "3 undelivered events written for another destination or credential" in check["detail"]
    assert "never delete them" in check["fix"]
    assert API_KEY not in doctor.stdout
    assert "key-b" not in doctor.stdout
    # A tracker of this identity on the directory adopts its own files, none of theirs.
    with Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False):
        assert fake_enso.wait_for_events(3, 10.0)
    assert sorted(fake_enso.event_ids()) == sorted([*mine, "cli-1"])
    assert len(spool_names(spool)) == 3
