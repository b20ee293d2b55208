"""The spool's SQLite chokepoint (``_spool.sqlite``) and its one lock probe
(``_spool.trust.try_flock``): what every store of a spool directory relies on."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from enso_tracker._spool import format as spool_format
from enso_tracker._spool.sqlite import (
    open_db,
    read_format,
    side_files,
    stamp_format,
    transaction,
)
from enso_tracker._spool.trust import UntrustedFile, try_flock


def _table(path: Path) -> sqlite3.Connection:
    conn = open_db(str(path), "rw", ours=True, create=True, durability="process")
    conn.execute("CREATE TABLE t (x INTEGER)")
    return conn


def _rows(conn: sqlite3.Connection) -> list[int]:
    return [x for (x,) in conn.execute("SELECT x FROM t ORDER BY x")]


def _write(conn: sqlite3.Connection, *statements: str, then: BaseException | None = None) -> None:
    """Run ``statements`` in one transaction, then raise ``then`` inside it."""
    with transaction(conn, "IMMEDIATE"):
        for statement in statements:
            conn.execute(statement)
        if then is not None:
            raise then


def test_transaction_commits_every_statement_or_none(tmp_path: Path) -> None:
    conn = _table(tmp_path / "a.db")
    _write(conn, "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)")
    assert _rows(conn) == [1, 2]
    assert not conn.in_transaction

    with pytest.raises(ValueError, match=r"^boom$"):
        _write(conn, "INSERT INTO t VALUES (3)", then=ValueError("boom"))
    assert _rows(conn) == [1, 2]
    assert not conn.in_transaction  # rolled back, the connection usable again

    # Not only Exception: an interrupt in the middle rolls back too.
    with pytest.raises(KeyboardInterrupt):
        _write(conn, "INSERT INTO t VALUES (4)", then=KeyboardInterrupt())
    assert _rows(conn) == [1, 2]
    conn.close()


def test_a_failing_statement_rolls_back_what_came_before(tmp_path: Path) -> None:
    conn = _table(tmp_path / "a.db")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        _write(conn, "INSERT INTO t VALUES (1)", "INSERT INTO missing VALUES (1)")
    assert _rows(conn) == []
    conn.close()


def test_format_stamps_round_trip_and_decide_supported(tmp_path: Path) -> None:
    conn = _table(tmp_path / "a.db")
    assert read_format(conn) == (0, 0)
    assert not spool_format.supported(conn)
    with transaction(conn):
        stamp_format(conn, spool_format.APPLICATION_ID, spool_format.FORMAT_VERSION)
    assert read_format(conn) == (spool_format.APPLICATION_ID, spool_format.FORMAT_VERSION)
    assert spool_format.supported(conn)
    stamp_format(conn, spool_format.APPLICATION_ID, spool_format.FORMAT_VERSION + 1)
    assert not spool_format.supported(conn)
    conn.close()


def test_open_db_creates_private_files_and_never_follows_a_symlink(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    conn = open_db(str(db), "rw", ours=True, create=True, durability="power")
    assert os.stat(db).st_mode & 0o777 == 0o600
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA page_size").fetchone() == (65536,)
    conn.close()
    link = tmp_path / "link.db"
    link.symlink_to(db)
    with pytest.raises(UntrustedFile, match="symlink"):
        open_db(str(link), "ro", ours=False)


def test_side_files_are_the_wal_the_shared_memory_and_the_journal() -> None:
    assert side_files("/x/spool-1.db") == [
        "/x/spool-1.db-wal",
        "/x/spool-1.db-shm",
        "/x/spool-1.db-journal",
    ]


def test_try_flock_tells_a_held_lock(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    owner = os.open(path, os.O_RDONLY)
    other = os.open(path, os.O_RDONLY)
    try:
        assert try_flock(owner)  # exclusive, taken
        assert not try_flock(other, shared=True)  # an owner holds it
        assert not try_flock(other)
        os.close(owner)
        owner = -1
        assert try_flock(other, shared=True)  # the owner is gone
    finally:
        for fd in (owner, other):
            if fd >= 0:
                os.close(fd)
