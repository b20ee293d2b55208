"""The durable spool when things go wrong, against a real FakeEnso: damaged files (a
flipped byte, a truncated db, a truncated, deleted or commit-cut WAL, a zeroed header, an
unreadable dead-letter store), a full spool and a filesystem that refuses writes (and
what stats() says meanwhile), a file of another format, bad directories, a fork, and two
trackers on one directory. Never a crash, never a loop; what is intact is delivered
exactly once and the rest is reported."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import ConfigurationError, DropReason, Spool, Tracker
from enso_tracker._spool import directory
from enso_tracker._spool import format as spool_format
from enso_tracker._spool.dead_letters import DeadLetterStore
from enso_tracker._spool.disk import DiskSpool
from enso_tracker._spool.sqlite import disk_size
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, TrackerFactory, accepted, wait_until

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
#: A loopback port bound for the session but never listening: every connection is
#: refused at once (a fixed port such as 1 may be served by anything on a shared host).
#: (A hung FakeEnso would store a batch whose client is gone once released: a delivery.)
_REFUSING = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
_REFUSING.bind(("127.0.0.1", 0))
UNREACHABLE = f"http://127.0.0.1:{_REFUSING.getsockname()[1]}"


def spool_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("spool-"))


def not_receipts(directory: Path) -> list[str]:
    """The directory's files but the receipts store (docs/receipts.md), on by default."""
    return [n for n in os.listdir(directory) if not n.startswith("receipts-")]


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
    """The next tracker on the directory: the same key and ``base_url`` as the writers (a
    tracker adopts only files of its own identity), its requests carried to ``fake`` by
    the fake's own transport (the writers' URL is unreachable on purpose)."""
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.2)
    return Tracker(
        API_KEY,
        base_url=UNREACHABLE,
        transport=fake.transport(),
        spool_dir=spool,
        handle_sigterm=False,
        **options,
    )


# ---------------------------------------------------------------- corruption


def flip_one_bit(db: Path, how: str, inside: str) -> tuple[bytes, bytes]:
    """Flip one bit of the body of the row holding ``inside`` (an eventId): with SQL,
    or in the file's bytes as a disk would (SQLite's own checks never read a row's
    payload). Returns the body before and after."""
    with sqlite3.connect(db) as conn:
        rowid, body = conn.execute(
            "SELECT id, body FROM batches WHERE instr(body, ?) > 0", (inside.encode(),)
        ).fetchone()
        body = bytes(body)
        at = body.index(inside.encode())
        damaged = bytearray(body)
        damaged[at] ^= 0x01  # one bit: a CRC catches it, JSON might not
        if how == "sql":
            conn.execute("UPDATE batches SET body = ? WHERE id = ?", (bytes(damaged), rowid))
    conn.close()
    if how == "in place":
        assert not Path(str(db) + "-wal").exists()  # all of it is in the db file
        raw = bytearray(db.read_bytes())
        assert raw.count(body) == 1
        raw[raw.index(body) + at] ^= 0x01
        db.write_bytes(bytes(raw))
    return body, bytes(damaged)


@pytest.mark.parametrize("how", ["sql", "in place"])
def test_a_flipped_byte_quarantines_that_batch_and_delivers_the_rest(
    fake_enso: FakeEnso,
    tmp_path: Path,
    drop_recorder: DropRecorder,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    spool = tmp_path / "spool"
    ids = leave_behind(spool, 300, batch=100)
    db = only_db(spool)
    body, damaged = flip_one_bit(db, how, ids[150])  # the middle one of three batches
    assert body != damaged
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with heir(spool, fake_enso, on_drop=drop_recorder) as tracker:
        assert wait_until(lambda: tracker.stats().delivered == 200, 10.0)
        stats = tracker.stats()
        assert stats.adopted == 300
        assert stats.dropped == {"corrupt": 100}
        assert stats.dead_letters == 1
        assert stats.balanced
        letters = list(tracker.dead_letters(kind="corrupt"))
    assert len(letters) == 1
    assert letters[0].event is None
    assert letters[0].reason.kind == "corrupt"
    assert letters[0].body == damaged
    # The batches on either side of it, in the order they were tracked, once each.
    assert fake_enso.event_ids() == ids[:100] + ids[200:]
    assert fake_enso.duplicates == {}
    # Nothing in a corrupt record can be trusted, so no Event reaches on_drop: the loss
    # is logged at ERROR and kept as a dead letter.
    assert drop_recorder.calls == []
    assert any(
        r.levelno == logging.ERROR and "lost a spool record" in r.getMessage()
        for r in caplog.records
    )
    status = Spool(spool).status()
    assert status.dead_letters_by_kind == {"corrupt": 1}
    assert status.events == 0
    assert spool_files(spool) == []
    assert sorted(not_receipts(spool)) == ["dead-letters.db"]


def test_a_truncated_db_is_set_aside_what_is_readable_delivered(
    fake_enso: FakeEnso, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    ids = leave_behind(spool, 20_000, batch=500, metadata=True)
    db = only_db(spool)
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2)
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with heir(spool, fake_enso) as tracker:
        assert wait_until(lambda: tracker.stats().pending == 0, 20.0)
        recovered = tracker.stats().adopted
        fresh = accepted(tracker.track("ent", "m", 1))  # the tracker works on
        assert tracker.flush(10.0)
        assert tracker.stats().balanced
    on_server = fake_enso.event_ids()
    assert set(on_server) <= {*ids, fresh}
    assert fresh in on_server
    assert len(on_server) == recovered + 1  # everything recovered was delivered, once
    assert fake_enso.duplicates == {}
    aside = [n for n in os.listdir(spool) if ".corrupt-" in n and not n.endswith(("-wal", "-shm"))]
    assert len(aside) == 1, os.listdir(spool)
    assert re.fullmatch(re.escape(db.name) + r"\.corrupt-\d+", aside[0])
    assert any(
        r.levelno == logging.ERROR and "unreadable spool file renamed" in r.getMessage()
        for r in caplog.records
    )
    assert [n for n in spool_files(spool) if ".corrupt-" not in n] == []
    assert str(spool / aside[0]) in Spool(spool).status().corrupt_files
    # Half the file is intact (the first ~18 of its 40 rows, each with its overflow
    # pages, lie in the first half): those are recovered, not thrown away.
    assert 0 < recovered < len(ids)


def test_a_damaged_file_of_another_identity_is_neither_sent_nor_renamed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Salvage sends what it recovers with this tracker's key: only from a file whose
    # identity (read from the damaged file itself) is this tracker's.
    spool = tmp_path / "spool"
    leave_behind(spool, 20_000, batch=500, metadata=True)
    db = only_db(spool)
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)
    before = db.read_bytes()
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with (
        FakeEnso(api_keys=["another-key"]) as fake,
        Tracker(
            "another-key",
            base_url=UNREACHABLE,
            transport=fake.transport(),
            spool_dir=spool,
            handle_sigterm=False,
        ) as tracker,
    ):
        fresh = accepted(tracker.track("ent", "m", 1))
        assert tracker.flush(10.0)
        assert tracker.stats().adopted == 0
    assert fake.event_ids() == [fresh]  # after shutdown(), which waits for adopted events
    # Left as it was, for its own tracker (SQLite's -wal/-shm beside it aside).
    left = [n for n in os.listdir(spool) if not n.endswith(("-wal", "-shm"))]
    assert [n for n in left if not n.startswith("receipts-")] == [db.name]  # its own receipts
    assert db.read_bytes() == before
    assert any("left as it is and not sent" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_a_zeroed_header_is_set_aside_and_a_fresh_start_works(
    fake_enso: FakeEnso, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    leave_behind(spool, 200)
    db = only_db(spool)
    with open(db, "r+b") as f:
        f.write(b"\0" * 100)
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with heir(spool, fake_enso) as tracker:
        assert wait_until(lambda: not db.exists(), 10.0)
        fresh = [accepted(tracker.track("ent", "m", i)) for i in range(10)]
        assert tracker.flush(10.0)
        assert tracker.stats().adopted == 0
        assert tracker.stats().balanced
    assert sorted(fake_enso.event_ids()) == sorted(fresh)
    (aside,) = [
        n for n in os.listdir(spool) if ".corrupt-" in n and not n.endswith(("-wal", "-shm"))
    ]
    assert re.fullmatch(re.escape(db.name) + r"\.corrupt-\d+", aside)
    assert any(
        r.levelno == logging.ERROR
        and f"unreadable spool file renamed to {spool / aside}" in r.getMessage()
        for r in caplog.records
    )
    assert Spool(spool).status().corrupt_files == [str(spool / aside)]
    left = [n for n in not_receipts(spool) if ".corrupt-" not in n]
    assert [n for n in left if not n.startswith("dead-letters.db")] == []  # drained its own


def test_a_zeroed_db_header_under_a_wal_that_holds_page_one_loses_nothing(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    """A young file of a killed process keeps its newest page 1 in the WAL, and SQLite
    reads it from there: the zeroed copy in the db file is never looked at. Everything
    is delivered once and nothing is set aside."""
    spool = tmp_path / "spool"
    ids = killed_writer(spool, 200)
    db = only_db(spool)
    with open(db, "r+b") as f:
        f.write(b"\0" * 100)
    with heir(spool, fake_enso) as tracker:
        assert wait_until(lambda: tracker.stats().delivered == 200, 10.0)
        assert tracker.stats().adopted == 200
        assert tracker.stats().balanced
    assert sorted(fake_enso.event_ids()) == sorted(ids)
    assert fake_enso.duplicates == {}
    assert not_receipts(spool) == []


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
    fake_enso: FakeEnso, tmp_path: Path, damage: str, big: bool, caplog: pytest.LogCaptureFixture
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
    with heir(spool, fake_enso) as tracker:
        assert wait_until(lambda: tracker.stats().pending == 0, 20.0)
        survived = tracker.stats().adopted
        assert tracker.stats().balanced
    on_server = fake_enso.event_ids()
    # What survived is the oldest part (the checkpointed db, then whole WAL commits),
    # delivered exactly once.
    assert sorted(on_server) == sorted(ids[:survived])
    assert fake_enso.duplicates == {}
    if big:
        assert survived > 0
    else:
        assert survived == 0
        assert any("holds no table" in r.getMessage() for r in caplog.records)
    left = [n for n in not_receipts(spool) if ".corrupt-" not in n]
    assert [n for n in left if not n.startswith("dead-letters.db")] == []


def wal_commit_ends(wal: Path) -> list[int]:
    """Offsets just past each commit frame of a WAL whose frames are all of one
    generation (nothing checkpointed yet): where a crash may have cut it cleanly.
    (A frame: a 24-byte header — page number, db size in pages if it ends a commit
    else 0, salts, checksums — then the page; the file starts with a 32-byte header.)"""
    data = wal.read_bytes()
    page_size = int.from_bytes(data[8:12], "big")
    salts = data[16:24]
    ends: list[int] = []
    at = 32
    while at + 24 + page_size <= len(data) and data[at + 8 : at + 16] == salts:
        commit = int.from_bytes(data[at + 4 : at + 8], "big")
        at += 24 + page_size
        if commit:
            ends.append(at)
    return ends


def test_a_wal_cut_after_any_commit_delivers_that_prefix_and_leaves_nothing(
    fake_enso: FakeEnso, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process killed while its file is young (everything still in the WAL) or a WAL
    cut on a commit boundary: the file holds exactly the first k commits, among them
    the ones that create the table and stamp the format. Each such state must be
    delivered (its rows, once) and cleaned up, never left for ever."""
    original = tmp_path / "original"
    ids = killed_writer(original, 2000)
    wal_name = only_db(original).name + "-wal"
    ends = wal_commit_ends(original / wal_name)
    assert len(ends) >= 5  # the table, its two stamps, then the rows (each a commit)
    survived: list[int] = []
    leftovers: dict[str, list[str]] = {}  # the cut -> what stayed in the directory
    for k, end in enumerate(ends):
        spool = tmp_path / f"cut-{k}"
        shutil.copytree(original, spool)
        with open(spool / wal_name, "r+b") as f:
            f.truncate(end)
        fake_enso.reset()
        caplog.clear()
        with (
            caplog.at_level(logging.ERROR, logger="enso_tracker"),
            heir(spool, fake_enso) as tracker,
        ):
            assert wait_until(lambda: tracker.stats().pending == 0, 20.0)
            stats = tracker.stats()
            assert stats.balanced
            assert stats.delivered == stats.adopted
        survived.append(stats.adopted)
        assert sorted(fake_enso.event_ids()) == sorted(ids[: stats.adopted]), k
        assert fake_enso.duplicates == {}
        left = [n for n in not_receipts(spool) if not n.startswith("dead-letters.db")]
        if left:
            leftovers[f"after commit {k + 1} of {len(ends)}"] = [
                *left,
                *(r.getMessage() for r in caplog.records),
            ]
    assert survived == sorted(survived)  # more of the WAL, never fewer events
    assert survived[-1] == len(ids)  # the whole WAL: everything
    assert survived[0] == 0
    assert leftovers == {}


def broken_dead_letters(spool: Path) -> Path:
    """A ``dead-letters.db`` that held a letter, its header then zeroed."""
    spool.mkdir(mode=0o700, exist_ok=True)
    letters = DeadLetterStore(str(spool))
    letters.add([(b'{"eventId": "earlier"}', DropReason(kind="rejected", message="no"))])
    letters.close()
    path = spool / "dead-letters.db"
    assert not Path(f"{path}-wal").exists()
    with open(path, "r+b") as f:
        f.write(b"\0" * 100)
    return path


def test_an_unreadable_dead_letter_store_is_reported_by_spool_status(tmp_path: Path) -> None:
    """The directory-level view (the CLI's) never crashes on a damaged file: it lists it."""
    spool = tmp_path / "spool"
    path = broken_dead_letters(spool)
    status = Spool(spool).status()
    assert str(path) in status.corrupt_files
    assert status.dead_letters == 0


def test_an_unreadable_dead_letter_store_is_set_aside_and_a_new_one_used(
    fake_enso: FakeEnso, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Like an unreadable spool file: renamed ``*.corrupt-<time>``, reported, and the
    tracker starts a fresh store, so new dead letters are kept rather than lost."""
    spool = tmp_path / "spool"
    ids = leave_behind(spool, 300, batch=100)
    _, damaged = flip_one_bit(only_db(spool), "sql", ids[150])
    path = broken_dead_letters(spool)
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with heir(spool, fake_enso) as tracker:
        assert wait_until(lambda: tracker.stats().delivered == 200, 10.0)
        assert tracker.flush(5.0)
        assert tracker.stats().dropped == {"corrupt": 100}
        assert tracker.stats().dead_letters == 1, tracker.stats().last_error
        letters = list(tracker.dead_letters())
    assert [(d.reason.kind, d.body) for d in letters] == [("corrupt", damaged)]
    aside = [n for n in os.listdir(spool) if n.startswith("dead-letters.db.corrupt-")]
    assert [n for n in aside if not n.endswith(("-wal", "-shm"))] != [], os.listdir(spool)
    assert any(r.levelno == logging.ERROR and str(path) in r.getMessage() for r in caplog.records)
    assert Spool(spool).status().dead_letters_by_kind == {"corrupt": 1}


# ---------------------------------------------------------------- full disk


def test_a_full_spool_drops_the_newest_then_drains_and_recovers(
    fake_enso: FakeEnso, tmp_path: Path, drop_recorder: DropRecorder
) -> None:
    spool = tmp_path / "spool"
    fake_enso.hang(None)
    tracker = heir(
        spool,
        fake_enso,
        max_spool_bytes=1024 * 1024,  # the least allowed
        max_batch_bytes=256 * 1024,  # a spool must hold a row of it and 256 KiB
        queue_full_policy="drop",
        timeout=0.3,
        on_drop=drop_recorder,
        max_batch_size=100,
    )
    try:
        meta = {"pad": "y" * 1000}
        ids = [accepted(tracker.track("ent", "m", i, metadata=meta)) for i in range(3000)]
        assert wait_until(lambda: tracker.stats().durable_seq == 3000, 20.0)
        # Drops are counted under the lock and handed to on_drop just after: wait for the
        # hook to have seen every one the books count.
        assert wait_until(
            lambda: len(drop_recorder.events()) == sum(tracker.stats().dropped.values()), 20.0
        )
        refused = {e.event_id for e in drop_recorder.events("spool_full")}
        assert refused, tracker.stats()
        assert tracker.stats().dropped == {"spool_full": len(refused)}
        kept = [i for i in ids if i not in refused]
        assert len(kept) >= 500  # about 1 MiB of them
        # The newest are dropped, not the oldest: with nothing deleted (Enso hung), once
        # a batch did not fit, none after it did.
        assert kept == ids[: len(kept)]
        assert {r.kind for _, r in drop_recorder.calls} == {"spool_full"}
        assert all("max_spool_bytes=1048576" in r.message for _, r in drop_recorder.calls)
        assert tracker.stats().balanced
        assert Spool(spool).status().events == len(kept)  # on disk, every one kept
        fake_enso.release()
        assert tracker.flush(30.0)
        assert sorted(fake_enso.event_ids()) == sorted(kept)
        # Deleted from the file at its cap: drained while the tracker lives.
        assert Spool(spool).status().events == 0
        assert tracker.stats().spooled == 0
        more = [accepted(tracker.track("ent", "m", i, metadata=meta)) for i in range(200)]
        assert tracker.flush(30.0)  # room again: the drained spool takes new batches
        assert set(more) <= set(fake_enso.event_ids())
        assert tracker.stats().dropped == {"spool_full": len(refused)}
        assert fake_enso.duplicates == {}
        assert tracker.stats().balanced
    finally:
        tracker.shutdown(5.0)
    assert spool_files(spool) == []


def test_spool_bytes_follows_the_file_while_enso_is_down(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    """``stats().spool_bytes`` is how a user watches a spool fill during an outage (how
    near ``max_spool_bytes`` it is): it must grow with the file, not only when something
    is delivered."""
    spool = tmp_path / "spool"
    fake_enso.hang(None)
    tracker = heir(spool, fake_enso, timeout=0.3, max_batch_size=100)
    try:
        for i in range(1000):
            accepted(tracker.track("ent", "m", i, metadata={"pad": "y" * 200}))
        assert wait_until(lambda: tracker.stats().durable_seq == 1000, 20.0)
        assert tracker.stats().delivered == 0
        db = str(only_db(spool))
        on_disk = disk_size(db)
        assert on_disk > 1000 * 200
        assert wait_until(lambda: tracker.stats().spool_bytes == disk_size(db), 3.0), (
            tracker.stats().spool_bytes,
            disk_size(db),
        )
    finally:
        fake_enso.release()
        tracker.shutdown(5.0)


FSIZE_CHILD = """
import json, resource, signal, sys, time
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, resource.RLIM_INFINITY))
from enso_tracker import Tracker
dropped, kinds = [], set()
t = Tracker({key!r}, base_url={url!r}, spool_dir={spool!r}, handle_sigterm=False,
            timeout=0.3, max_batch_size=100,
            on_drop=lambda es, r: (dropped.extend(e.event_id for e in es), kinds.add(r.kind)))
meta = {{"pad": "z" * 1000}}

def written():
    # Until every event was written, refused or kept in memory.
    deadline = time.monotonic() + 30
    while (t._ledger.queue or t._ledger.spool.spooling) and time.monotonic() < deadline:
        time.sleep(0.01)
    s = t.stats()
    alive = t._worker.thread.is_alive() and t._worker.spooler.thread.is_alive()
    return {{"durable": s.durable_seq, "spooled": s.spooled, "dropped": list(dropped),
             "kinds": sorted(kinds),
             "errors": s.worker_errors, "last_error": s.last_error, "alive": alive}}

ids = [t.track("ent", "m", i, metadata=meta) for i in range(3000)]
full = written()
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
later = [t.track("ent", "later", i, metadata=meta) for i in range(500)]  # space again
print(json.dumps({{"ids": ids, "full": full, "later": later, "after": written()}}), flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def refused_writes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], int]:
    """A process whose spool file may not grow past 1.5 MB (``RLIMIT_FSIZE``) tracks
    3,000 events (~3 MB) with Enso unreachable, then the limit is lifted and it tracks
    500 more; then it is SIGKILLed. Its report, and the events its spool holds."""
    spool = tmp_path_factory.mktemp("fsize") / "spool"
    script = FSIZE_CHILD.format(key=API_KEY, url=UNREACHABLE, spool=str(spool))
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
    finally:
        child.kill()
        _, stderr = child.communicate(timeout=30)
    assert line, stderr
    report: dict[str, Any] = json.loads(line)
    return spool, report, Spool(spool).status().events


def test_a_filesystem_refusing_writes_is_reported_and_what_was_committed_survives(
    fake_enso: FakeEnso, refused_writes: tuple[Path, dict[str, Any], int]
) -> None:
    spool, report, _ = refused_writes
    full, after = report["full"], report["after"]
    assert full["alive"], full  # no crash: both threads still at work
    # EFBIG (SQLite says "disk I/O error") is a full spool: the newest batches are
    # dropped as spool_full (queue_full_policy="drop"), counted, never sent from memory.
    assert full["kinds"] == ["spool_full"], full
    assert 0 < len(full["dropped"]) < len(report["ids"])  # some written before the limit
    assert "cannot write to the spool" not in (full["last_error"] or ""), full
    assert full["errors"] == 0, full
    assert full["durable"] == len(report["ids"])  # each one on disk or dropped
    assert after["alive"], after
    with heir(spool, fake_enso) as tracker:
        assert wait_until(lambda: tracker.stats().pending == 0, 20.0)
        assert tracker.stats().balanced
    committed = set(report["ids"][: full["durable"]]) - set(full["dropped"])
    on_server = set(fake_enso.event_ids())
    assert committed <= on_server, len(committed - on_server)
    # Once the disk takes writes again, new events are spooled again (durably: they
    # survived the SIGKILL).
    assert set(report["later"]) <= on_server, len(set(report["later"]) - on_server)
    assert on_server <= {*report["ids"], *report["later"]}
    assert fake_enso.duplicates == {}
    assert [n for n in spool_files(spool) if ".corrupt-" not in n] == []


def test_spooled_counts_only_events_that_are_on_disk(
    refused_writes: tuple[Path, dict[str, Any], int],
) -> None:
    """``stats().spooled`` is "events on disk not yet settled": the events the spool
    could not take (sent from memory, not durable) are not among them."""
    _, report, on_disk = refused_writes
    assert on_disk > 0
    assert report["after"]["spooled"] == on_disk, (report["after"]["spooled"], on_disk)


# ---------------------------------------------------------------- format, directory


def foreign_spool(path: Path, version: int) -> None:
    """A spool file of another format: an older one (``user_version`` 0, another
    layout; or 1, our layout before files recorded whom they were written for) or a
    newer one (our stamp and table, ``user_version`` 99) holding an event that must not
    be sent by a tracker that does not know that format (or whose it is)."""
    with sqlite3.connect(path) as conn:
        if version == 0:
            conn.execute("CREATE TABLE queue (item BLOB)")
            conn.execute("INSERT INTO queue VALUES (?)", (b'{"eventId": "old-format"}',))
        else:
            body = json.dumps(
                {
                    "events": [
                        {
                            "CustomerEntityId": "ent",
                            "metric": "m",
                            "value": 1,
                            "timestamp": "2026-01-01T00:00:00Z",
                            "eventId": "new-format",
                        }
                    ]
                }
            ).encode()
            conn.execute(
                "CREATE TABLE batches (id INTEGER PRIMARY KEY, created REAL NOT NULL, "
                "n INTEGER NOT NULL, crc INTEGER NOT NULL, body BLOB NOT NULL)"
            )
            conn.execute(
                "INSERT INTO batches (created, n, crc, body) VALUES (0, 1, ?, ?)",
                (zlib.crc32(body), body),
            )
            conn.execute(f"PRAGMA application_id={spool_format.APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={version}")
    conn.close()


@pytest.mark.parametrize("version", [0, 1, 99])
def test_a_file_of_another_format_is_left_alone_and_reported(
    fake_enso: FakeEnso, tmp_path: Path, caplog: pytest.LogCaptureFixture, version: int
) -> None:
    spool = tmp_path / "spool"
    ids = leave_behind(spool, 50)
    foreign = spool / "spool-1-abc.db"
    foreign_spool(foreign, version)
    before = foreign.read_bytes()
    caplog.set_level(logging.ERROR, logger="enso_tracker")
    with heir(spool, fake_enso) as tracker:
        assert wait_until(lambda: tracker.stats().delivered == 50, 10.0)
        # The periodic scan passes it over without a word: reported once, never a loop.
        tracker._worker.disk.next_scan = 0.0  # type: ignore[union-attr]  # the 60 s scan, now
        tracker._worker.kick()
        assert wait_until(lambda: tracker._worker.disk.next_scan > 0.0, 10.0)  # type: ignore[union-attr]
        stats = tracker.stats()
        assert stats.adopted == 50
        assert stats.balanced
    assert sorted(fake_enso.event_ids()) == sorted(ids)  # the valid orphan beside it: adopted
    assert foreign.read_bytes() == before  # refused, untouched
    assert not Path(f"{foreign}-wal").exists()
    said = [r for r in caplog.records if "not an enso-tracker spool" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].levelno == logging.ERROR
    assert str(foreign) in said[0].getMessage()
    assert f"user_version={version}" in said[0].getMessage()
    status = Spool(spool).status()
    assert status.unsupported_files == [str(foreign)]
    assert status.corrupt_files == []
    assert status.events == 0  # its contents are not ours to count
    assert list(Spool(spool).pending()) == []
    # The next tracker on the directory leaves it alone as well.
    with heir(spool, fake_enso) as tracker:
        assert tracker.flush(5.0)
        assert tracker.stats().adopted == 0
    assert foreign.read_bytes() == before
    assert "new-format" not in fake_enso.event_ids()


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
        monkeypatch.setattr(directory, "_mount_type", lambda path, kind=kind: kind)
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
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    t = tracker(spool_dir=spool, spool_interval=0.01)
    before = [accepted(t.track("ent", "parent", i)) for i in range(100)]
    assert t.flush(10.0)
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
            during.append(accepted(t.track("ent", "parent", i, metadata={"p": "q" * 100})))
            if i % 1000 == 999:
                t.flush(10.0)  # keeps memory bounded and requests going

    pumping = threading.Thread(target=pump)
    pumping.start()
    codes = []
    try:
        assert wait_until(lambda: len(during) >= 2000, 10.0)
        for k in range(5):
            # Right after a flush() returned, its batches' rows are being deleted.
            assert t.flush(10.0)
            _, status = os.waitpid(fork_child(t, spool, k), 0)
            codes.append(os.waitstatus_to_exitcode(status))
    finally:
        stop.set()
        pumping.join(30.0)
    # 1: the child's flush timed out (e.g. its spooler hung opening its own file).
    assert codes == [0] * 5
    assert t.flush(10.0)
    assert parent_file in os.listdir(spool)  # the parent's file is still its own
    # ... and still sound (db and WAL), read by another connection meanwhile.
    check = sqlite3.connect(f"file:{spool / parent_file}?mode=ro", uri=True)
    try:
        assert check.execute("PRAGMA quick_check").fetchone() == ("ok",)
        assert check.execute("PRAGMA user_version").fetchone() == (spool_format.FORMAT_VERSION,)
    finally:
        check.close()
    # The children are gone: the parent's next scan takes their files over and removes
    # them (rows a child had not deleted yet are resent: Enso dedups them).
    t._worker.disk.next_scan = 0.0  # type: ignore[union-attr]  # the 60 s scan, now
    t._worker.kick()
    assert wait_until(
        lambda: [n for n in spool_files(spool) if n.endswith(".db")] == [parent_file], 10.0
    ), os.listdir(spool)
    assert t.flush(10.0)
    on_server = set(fake_enso.event_ids())
    parent = before + during
    assert set(parent) <= on_server
    assert set(parent).isdisjoint(fake_enso.duplicates)  # the parent's events exactly once
    assert {f"child-{k}-{i}" for k in range(5) for i in range(20)} <= on_server
    # A child's flush() returned with its delivered rows off its disk: adopting the
    # file it left resent none of them.
    assert fake_enso.duplicates == {}
    assert on_server == set(parent) | {f"child-{k}-{i}" for k in range(5) for i in range(20)}
    assert t.shutdown(5.0)
    assert spool_files(spool) == []


def test_rows_flush_reported_delivered_are_off_the_disk_when_it_returns(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process may end right after flush() (a forked worker's os._exit, a serverless
    freeze): a batch flush() reported delivered must not still be on disk then, or the
    next tracker on the directory sends it again. The sender thread is made to delete
    its rows a moment late, to see whether flush() waits for that."""
    gate = threading.Event()
    release_rows = DiskSpool.release_rows

    def late_release(self: DiskSpool, settled: list[Any]) -> Any:
        gate.wait(0.5)
        return release_rows(self, settled)

    monkeypatch.setattr(DiskSpool, "release_rows", late_release)
    spool = tmp_path / "spool"
    t = tracker(spool_dir=spool)
    ids = [accepted(t.track("ent", "m", i)) for i in range(20)]
    assert t.flush(10.0)
    on_disk = Spool(spool).status().events
    gate.set()
    assert sorted(fake_enso.event_ids()) == sorted(ids)
    assert on_disk == 0


def test_two_trackers_on_one_directory_then_one_adopts_what_the_other_left(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    first = tracker(spool_dir=spool)
    second = tracker(spool_dir=spool, timeout=0.3)
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
    fake_enso.hang(None)
    left = [accepted(second.track("ent", "left", i)) for i in range(150)]
    assert second.shutdown(1.0) is False
    assert second.stats().left_in_spool == 150
    assert second.stats().balanced
    assert sorted(n for n in spool_files(spool) if n.endswith(".db")) == files  # kept
    # (The requests that hung are stored by the fake once released, though their client
    # gave up: those copies of ``left`` are not the tracker's doing.)
    fake_enso.release()
    first._worker.disk.next_scan = 0.0  # type: ignore[union-attr]
    first._worker.kick()
    assert wait_until(lambda: first.stats().adopted == 150, 10.0)
    assert wait_until(lambda: first.stats().pending == 0, 10.0)
    on_server = fake_enso.event_ids()
    assert set(a + b + left) == set(on_server)
    assert set(a + b).isdisjoint(fake_enso.duplicates)  # exactly once
    assert first.stats().delivered == 350  # its 200 and the 150 it adopted
    assert first.stats().balanced
    assert first.shutdown(5.0)
    assert spool_files(spool) == []


def test_leftovers_of_killed_processes_are_cleaned_up(fake_enso: FakeEnso, tmp_path: Path) -> None:
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
    with heir(spool, fake_enso):
        pass
    assert sorted(not_receipts(spool)) == [".tmp-spool-redrive-busy.db"]
