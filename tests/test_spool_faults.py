"""The durable spool when things go wrong, against a real FakeEnso: damaged files (a
flipped byte, a truncated db, a truncated or deleted WAL, a zeroed header), a full spool
and a filesystem that refuses writes, a file of another format, bad directories, a fork,
and two trackers on one directory. Never a crash, never a loop; what is intact is
delivered exactly once and the rest is reported."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import ConfigurationError, Spool, Tracker
from enso_tracker import _spool_store as store
from enso_tracker._spool import DiskSpool
from enso_tracker.testing import FakeEnso

from .conftest import API_KEY, DropLog, TrackerFactory, accepted, wait_until

ROOT = Path(__file__).resolve().parent.parent
#: Nothing listens on port 1 of loopback: the connection is refused at once. (A hung
#: FakeEnso would store a batch whose client is gone once released: a delivery.)
UNREACHABLE = "http://127.0.0.1:1"


def spool_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("spool-"))


def leave_behind(spool: Path, n: int, *, batch: int = 100, metadata: bool = False) -> list[str]:
    """A tracker that cannot reach Enso shuts down, leaving ``n`` events in one spool
    file."""
    tracker = Tracker(
        API_KEY,
        base_url=UNREACHABLE,
        spool_dir=spool,
        handle_sigterm=False,
        timeout=0.3,
        max_batch_size=batch,
    )
    meta = {"note": "x" * 200} if metadata else None
    ids = [accepted(tracker.track("ent", "m", i, metadata=meta)) for i in range(n)]
    assert tracker.shutdown(1.0) is False
    assert tracker.stats().left_in_spool == n
    return ids


def only_db(spool: Path) -> Path:
    (name,) = [n for n in spool_files(spool) if n.endswith(".db")]
    return spool / name


def heir(spool: Path, fake: FakeEnso, **options: Any) -> Tracker:
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.2)
    return Tracker(API_KEY, base_url=fake.url, spool_dir=spool, handle_sigterm=False, **options)


# ---------------------------------------------------------------- corruption


def test_a_flipped_byte_quarantines_that_batch_and_delivers_the_rest(
    fake: FakeEnso, tmp_path: Path, drops: DropLog, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    ids = leave_behind(spool, 300, batch=100)
    db = only_db(spool)
    with sqlite3.connect(db) as conn:
        rowid, body = conn.execute("SELECT id, body FROM batches ORDER BY id LIMIT 1").fetchone()
        damaged = bytearray(body)
        damaged[len(damaged) // 2] ^= 0x01  # one bit: a CRC catches it, JSON might not
        conn.execute("UPDATE batches SET body = ? WHERE id = ?", (bytes(damaged), rowid))
    conn.close()
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with heir(spool, fake, on_drop=drops) as tracker:
        assert wait_until(lambda: tracker.stats().delivered == 200, 10.0)
        stats = tracker.stats()
        assert stats.adopted == 300
        assert stats.dropped == {"corrupt": 100}
        assert stats.balanced
        letters = list(tracker.dead_letters(kind="corrupt"))
    assert len(letters) == 1
    assert letters[0].event is None
    assert letters[0].reason.kind == "corrupt"
    assert letters[0].body == bytes(damaged)
    assert sorted(fake.event_ids()) == sorted(ids[100:])
    assert fake.duplicates == {}
    # Nothing in a corrupt record can be trusted, so no Event reaches on_drop: the loss
    # is logged at ERROR and kept as a dead letter.
    assert drops.calls == []
    assert any(
        r.levelno == logging.ERROR and "lost a spool record" in r.getMessage()
        for r in caplog.records
    )
    status = Spool(spool).status()
    assert status.dead_letters_by_kind == {"corrupt": 1}
    assert status.events == 0
    assert spool_files(spool) == []


def test_a_truncated_db_is_set_aside_what_is_readable_delivered(
    fake: FakeEnso, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    ids = leave_behind(spool, 20_000, batch=500, metadata=True)
    db = only_db(spool)
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2)
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with heir(spool, fake) as tracker:
        assert wait_until(lambda: tracker.stats().pending == 0, 20.0)
        recovered = tracker.stats().adopted
        fresh = accepted(tracker.track("ent", "m", 1))  # the tracker works on
        assert tracker.flush(10.0)
        assert tracker.stats().balanced
    on_server = fake.event_ids()
    assert set(on_server) <= {*ids, fresh}
    assert fresh in on_server
    assert len(on_server) == recovered + 1  # everything recovered was delivered, once
    assert fake.duplicates == {}
    aside = [n for n in os.listdir(spool) if ".corrupt-" in n and not n.endswith(("-wal", "-shm"))]
    assert aside, os.listdir(spool)
    assert any(
        r.levelno == logging.ERROR and "unreadable spool file renamed" in r.getMessage()
        for r in caplog.records
    )
    assert [n for n in spool_files(spool) if ".corrupt-" not in n] == []
    assert str(spool / aside[0]) in Spool(spool).status().corrupt_files
    # Half the file is intact (the first ~18 of its 40 rows, each with its overflow
    # pages, lie in the first half): those are recovered, not thrown away.
    assert 0 < recovered < len(ids)


def test_a_zeroed_header_is_set_aside_and_a_fresh_start_works(
    fake: FakeEnso, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    leave_behind(spool, 200)
    db = only_db(spool)
    with open(db, "r+b") as f:
        f.write(b"\0" * 100)
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with heir(spool, fake) as tracker:
        assert tracker.stats().adopted == 0
        fresh = [accepted(tracker.track("ent", "m", i)) for i in range(10)]
        assert tracker.flush(10.0)
        assert tracker.stats().balanced
    assert sorted(fake.event_ids()) == sorted(fresh)
    (aside,) = [
        n for n in os.listdir(spool) if ".corrupt-" in n and not n.endswith(("-wal", "-shm"))
    ]
    assert aside.startswith(db.name + ".corrupt-")
    assert any(
        r.levelno == logging.ERROR and "unreadable spool file" in r.getMessage()
        for r in caplog.records
    )
    assert Spool(spool).status().corrupt_files == [str(spool / aside)]
    assert [n for n in spool_files(spool) if ".corrupt-" not in n] == []  # drained its own


WRITER = """
import json, sys, time
from enso_tracker import Tracker
t = Tracker({key!r}, base_url={url!r}, spool_dir={spool!r}, handle_sigterm=False,
            flush_interval=3600.0, max_batch_size=500)
meta = {{"note": "x" * 200}} if {metadata!r} else None
ids = [t.track("ent", "m", i, metadata=meta) for i in range({n})]
deadline = time.monotonic() + 30
while t.stats().durable_seq < {n} and time.monotonic() < deadline:
    time.sleep(0.005)
print(json.dumps({{"durable": t.stats().durable_seq, "ids": ids}}), flush=True)
time.sleep(120)
"""


def killed_writer(spool: Path, n: int, *, metadata: bool = False) -> list[str]:
    """A process that committed ``n`` events to its spool (the WAL's tail not
    checkpointed into the db, as a process dies), then was SIGKILLed."""
    script = WRITER.format(key=API_KEY, url=UNREACHABLE, spool=str(spool), n=n, metadata=metadata)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        report = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait(30)
    assert report["durable"] == n
    ids: list[str] = report["ids"]
    return ids


@pytest.mark.parametrize(
    ("damage", "big"),
    [
        ("deleted", False),  # ~0.2 MB: everything was in the WAL, the db holds no table
        ("deleted", True),  # ~7 MB: the WAL was checkpointed (every 4 MiB), its tail lost
        ("truncated", True),
    ],
)
def test_a_damaged_wal_never_crashes_and_nothing_is_sent_twice(
    fake: FakeEnso, tmp_path: Path, damage: str, big: bool, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    ids = killed_writer(spool, 20_000 if big else 2000, metadata=big)
    wal = Path(str(only_db(spool)) + "-wal")
    assert wal.exists()
    assert wal.stat().st_size > 0
    if damage == "deleted":
        wal.unlink()
    else:
        with open(wal, "r+b") as f:
            f.truncate(wal.stat().st_size // 2)
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with heir(spool, fake) as tracker:
        assert wait_until(lambda: tracker.stats().pending == 0, 20.0)
        survived = tracker.stats().adopted
        assert tracker.stats().balanced
    on_server = fake.event_ids()
    # What survived is the oldest part (the checkpointed db, then whole WAL commits),
    # delivered exactly once.
    assert sorted(on_server) == sorted(ids[:survived])
    assert fake.duplicates == {}
    if big:
        assert survived > 0
    else:
        assert survived == 0
        assert any("holds no table" in r.getMessage() for r in caplog.records)
    left = [n for n in os.listdir(spool) if ".corrupt-" not in n]
    assert [n for n in left if not n.startswith("dead-letters.db")] == []


# ---------------------------------------------------------------- full disk


def test_a_full_spool_drops_the_newest_then_drains_and_recovers(
    fake: FakeEnso, tmp_path: Path, drops: DropLog
) -> None:
    spool = tmp_path / "spool"
    fake.hang(None)
    tracker = heir(
        spool, fake, max_spool_bytes=1024 * 1024, timeout=0.3, on_drop=drops, max_batch_size=100
    )
    try:
        meta = {"pad": "y" * 1000}
        ids = [accepted(tracker.track("ent", "m", i, metadata=meta)) for i in range(3000)]
        assert wait_until(lambda: tracker.stats().durable_seq == 3000, 20.0)
        refused = {e.event_id for e in drops.events("spool_full")}
        assert refused, tracker.stats()
        assert tracker.stats().dropped == {"spool_full": len(refused)}
        kept = [i for i in ids if i not in refused]
        assert len(kept) >= 500  # about 1 MiB of them
        # The newest are dropped, not the oldest: with nothing deleted (Enso hung), once
        # a batch did not fit, none after it did.
        assert kept == ids[: len(kept)]
        assert {r.kind for _, r in drops.calls} == {"spool_full"}
        assert all("max_spool_bytes=1048576" in r.message for _, r in drops.calls)
        assert tracker.stats().balanced
        fake.release()
        assert tracker.flush(30.0)
        assert sorted(fake.event_ids()) == sorted(kept)
        more = [accepted(tracker.track("ent", "m", i, metadata=meta)) for i in range(200)]
        assert tracker.flush(30.0)  # room again: the drained spool takes new batches
        assert set(more) <= set(fake.event_ids())
        assert tracker.stats().dropped == {"spool_full": len(refused)}
        assert fake.duplicates == {}
        assert tracker.stats().balanced
    finally:
        tracker.shutdown(5.0)
    assert spool_files(spool) == []


FSIZE_CHILD = """
import json, resource, signal, sys, time
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))
from enso_tracker import Tracker
dropped = []
t = Tracker({key!r}, base_url={url!r}, spool_dir={spool!r}, handle_sigterm=False,
            timeout=0.3, max_batch_size=100,
            on_drop=lambda es, r: dropped.extend(e.event_id for e in es))
meta = {{"pad": "z" * 1000}}
ids = [t.track("ent", "m", i, metadata=meta) for i in range(3000)]
deadline = time.monotonic() + 30  # until every event was written, refused or kept in memory
while (t._ledger.queue or t._ledger.spooling) and time.monotonic() < deadline:
    time.sleep(0.01)
s = t.stats()
print(json.dumps({{"ids": ids, "durable": s.durable_seq, "dropped": dropped,
                  "errors": s.worker_errors, "last_error": s.last_error}}), flush=True)
time.sleep(120)
"""


def test_a_filesystem_refusing_writes_is_reported_and_what_was_committed_survives(
    fake: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    script = FSIZE_CHILD.format(key=API_KEY, url=UNREACHABLE, spool=str(spool))
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, child.stderr.read() if child.stderr else ""
        report = json.loads(line)
    finally:
        child.kill()
        child.wait(30)
    # Refused, and said so: as spool_full drops, or (SQLite reports EFBIG as an I/O
    # error) by sending from memory with an error on record.
    said = report["dropped"] or "cannot write to the spool" in (report["last_error"] or "")
    assert said, report
    with heir(spool, fake) as tracker:
        assert wait_until(lambda: tracker.stats().pending == 0, 20.0)
    committed = set(report["ids"][: report["durable"]]) - set(report["dropped"])
    on_server = set(fake.event_ids())
    assert committed <= on_server, len(committed - on_server)
    assert fake.duplicates == {}
    assert [n for n in spool_files(spool) if ".corrupt-" not in n] == []


# ---------------------------------------------------------------- format, directory


def test_a_file_of_another_format_is_left_alone_and_reported(
    fake: FakeEnso, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    ids = leave_behind(spool, 50)
    foreign = spool / "spool-1-old.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE queue (item BLOB)")
        conn.execute("PRAGMA user_version=0")
    conn.close()
    before = foreign.read_bytes()
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with heir(spool, fake) as tracker:
        assert wait_until(lambda: tracker.stats().delivered == 50, 10.0)
    assert sorted(fake.event_ids()) == sorted(ids)  # the valid orphan beside it: adopted
    assert foreign.read_bytes() == before  # refused, untouched
    assert any("not an enso-tracker spool" in r.getMessage() for r in caplog.records)
    assert Spool(spool).status().unsupported_files == [str(foreign)]


def test_bad_directories_are_refused_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    for path in (target, target / "below"):
        with pytest.raises(ConfigurationError, match=re.escape(repr(str(path)))):
            Tracker(API_KEY, base_url="http://127.0.0.1:9", handle_sigterm=False, spool_dir=path)
    # Read-only places (the suite runs as root, which chmod cannot stop): procfs.
    with pytest.raises(ConfigurationError, match="cannot write there"):
        Tracker(API_KEY, base_url="http://127.0.0.1:9", handle_sigterm=False, spool_dir="/proc")
    with pytest.raises(ConfigurationError, match="cannot create it"):
        Tracker(
            API_KEY,
            base_url="http://127.0.0.1:9",
            handle_sigterm=False,
            spool_dir="/proc/enso-spool",
        )
    for kind in ("nfs", "nfs4"):
        monkeypatch.setattr(store, "_mount_type", lambda path, kind=kind: kind)
        with pytest.raises(ConfigurationError, match=f"network filesystem \\({kind}\\)"):
            Tracker(
                API_KEY,
                base_url="http://127.0.0.1:9",
                handle_sigterm=False,
                spool_dir=tmp_path / "on-nfs",
            )


# ---------------------------------------------------------------- processes


def fork_child(tracker: Tracker, spool: Path, k: int) -> int:
    """Fork; the child tracks 20 events, flushes and exits with a code saying how it
    went (0: delivered from a spool file of its own). The parent gets the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 3  # the child: its own books, its own file
    try:
        for i in range(20):
            tracker.track("ent", "child", i, event_id=f"child-{k}-{i}")
        # (It may also adopt the file an earlier child left: that one's owner is gone.)
        stats = tracker.stats() if tracker.flush(5.0) else None
        delivered = stats is not None and stats.accepted == 20 and not stats.dropped
        mine = [
            n
            for n in os.listdir(spool)
            if n.startswith(f"spool-{os.getpid()}-") and n.endswith(".db")
        ]
        code = 0 if delivered and mine else 2 if delivered else 1
    finally:
        os._exit(code)


def test_a_forked_child_uses_its_own_file_and_never_touches_the_parents(
    make_tracker: TrackerFactory, fake: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    tracker = make_tracker(spool_dir=spool, spool_interval=0.01)
    before = [accepted(tracker.track("ent", "parent", i)) for i in range(100)]
    assert tracker.flush(10.0)
    (parent_file,) = [n for n in spool_files(spool) if n.endswith(".db")]
    # The parent keeps tracking while it forks, so its spooler and sender are busy
    # writing and deleting rows at the moment of each fork (a pre-forking server whose
    # master tracks).
    during: list[str] = []
    stop = threading.Event()

    def pump() -> None:
        for i in range(200_000):
            if stop.is_set():
                return
            during.append(accepted(tracker.track("ent", "parent", i, metadata={"p": "q" * 100})))
            if i % 1000 == 999:
                tracker.flush(10.0)  # keeps memory bounded and requests going

    pumping = threading.Thread(target=pump)
    pumping.start()
    codes = []
    try:
        assert wait_until(lambda: len(during) >= 2000, 10.0)
        for k in range(5):
            # Right after a flush() returned, its batches' rows are being deleted.
            assert tracker.flush(10.0)
            _, status = os.waitpid(fork_child(tracker, spool, k), 0)
            codes.append(os.waitstatus_to_exitcode(status))
    finally:
        stop.set()
        pumping.join(30.0)
    # 1: the child's flush timed out (e.g. its spooler hung opening its own file).
    assert codes == [0] * 5
    assert tracker.flush(10.0)
    assert parent_file in os.listdir(spool)  # the parent's file is still its own
    # The children are gone: the parent's next scan takes their files over and removes
    # them (rows a child had not deleted yet are resent: Enso dedups them).
    tracker._worker.disk.next_scan = 0.0  # type: ignore[union-attr]  # the 60 s scan, now
    tracker._worker.kick()
    assert wait_until(
        lambda: [n for n in spool_files(spool) if n.endswith(".db")] == [parent_file], 10.0
    ), os.listdir(spool)
    assert tracker.flush(10.0)
    on_server = set(fake.event_ids())
    parent = before + during
    assert set(parent) <= on_server
    assert set(parent).isdisjoint(fake.duplicates)  # the parent's events exactly once
    assert {f"child-{k}-{i}" for k in range(5) for i in range(20)} <= on_server
    assert tracker.shutdown(5.0)
    assert spool_files(spool) == []


def test_rows_flush_reported_delivered_are_off_the_disk_when_it_returns(
    make_tracker: TrackerFactory, fake: FakeEnso, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process may end right after flush() (a forked worker's os._exit, a serverless
    freeze): a batch flush() reported delivered must not still be on disk then, or the
    next tracker on the directory sends it again. The sender thread is made to delete
    its rows a moment late, to see whether flush() waits for that."""
    gate = threading.Event()
    settle = DiskSpool.settle

    def late_settle(self: DiskSpool, settled: list[Any]) -> Any:
        gate.wait(0.5)
        return settle(self, settled)

    monkeypatch.setattr(DiskSpool, "settle", late_settle)
    spool = tmp_path / "spool"
    tracker = make_tracker(spool_dir=spool)
    ids = [accepted(tracker.track("ent", "m", i)) for i in range(20)]
    assert tracker.flush(10.0)
    on_disk = Spool(spool).status().events
    gate.set()
    assert sorted(fake.event_ids()) == sorted(ids)
    assert on_disk == 0


def test_two_trackers_on_one_directory_then_one_adopts_what_the_other_left(
    make_tracker: TrackerFactory, fake: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    first = make_tracker(spool_dir=spool)
    second = make_tracker(spool_dir=spool, timeout=0.3)
    a = [accepted(first.track("ent", "a", i)) for i in range(200)]
    b = [accepted(second.track("ent", "b", i)) for i in range(200)]
    assert first.flush(10.0)
    assert second.flush(10.0)
    files = sorted(n for n in spool_files(spool) if n.endswith(".db"))
    assert len(files) == 2  # one each
    # Both scan for orphans while both live: neither takes the other's file.
    for t in (first, second):
        t._worker.disk.next_scan = 0.0  # type: ignore[union-attr]  # the 60 s scan, now
        t._worker.kick()
    assert wait_until(
        lambda: all(t._worker.disk.next_scan > 0.0 for t in (first, second)),  # type: ignore[union-attr]
        10.0,
    )
    assert first.stats().adopted == 0
    assert second.stats().adopted == 0
    assert sorted(n for n in spool_files(spool) if n.endswith(".db")) == files
    assert Spool(spool).status().live_files == 2
    fake.hang(None)
    left = [accepted(second.track("ent", "left", i)) for i in range(150)]
    assert second.shutdown(1.0) is False
    assert second.stats().left_in_spool == 150
    assert second.stats().balanced
    assert sorted(n for n in spool_files(spool) if n.endswith(".db")) == files  # kept
    # (The requests that hung are stored by the fake once released, though their client
    # gave up: those copies of ``left`` are not the tracker's doing.)
    fake.release()
    first._worker.disk.next_scan = 0.0  # type: ignore[union-attr]
    first._worker.kick()
    assert wait_until(lambda: first.stats().adopted == 150, 10.0)
    assert wait_until(lambda: first.stats().pending == 0, 10.0)
    on_server = fake.event_ids()
    assert set(a + b + left) == set(on_server)
    assert set(a + b).isdisjoint(fake.duplicates)  # exactly once
    assert first.stats().delivered == 350  # its 200 and the 150 it adopted
    assert first.stats().balanced
    assert first.shutdown(5.0)
    assert spool_files(spool) == []


def test_leftovers_of_killed_processes_are_cleaned_up(fake: FakeEnso, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    # Killed between removing its db and its -wal/-shm (no lock left either):
    (spool / "spool-7-dead.db-wal").write_bytes(b"x" * 100)
    (spool / "spool-7-dead.db-shm").write_bytes(b"x" * 100)
    # Killed while creating its file (temp lock), or writing a redrive file an hour ago:
    (spool / ".tmp-spool-8-dead.lock").write_bytes(b"")
    stale = spool / ".tmp-spool-redrive-dead.db"
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    fresh = spool / ".tmp-spool-redrive-busy.db"  # maybe being written right now: kept
    fresh.write_bytes(b"x")
    with heir(spool, fake):
        pass
    assert sorted(os.listdir(spool)) == [".tmp-spool-redrive-busy.db"]
