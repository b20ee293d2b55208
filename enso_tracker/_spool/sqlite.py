"""SQLite for the spool: how its connections are opened and configured, and what its
errors mean. Every SQLite database of a spool directory (spool files, the dead-letter
store) is opened through :func:`open_db`, and every multi-statement write runs in
:func:`transaction` (after litequeue's ``transaction()``).

* Autocommit (``isolation_level=None``): nothing is in a transaction unless a caller
  began one; a connection never holds a read transaction open between calls.
* WAL with 64 KiB pages; ``synchronous=NORMAL`` (durable against process death) or
  ``FULL`` (against power loss); the WAL checkpointed every 4 MiB and cut back to 8 MiB.
* Format stamps (``application_id``, ``user_version``) are read and written here only
  (:func:`read_format`, :func:`stamp_format`); what they must be is each store's own.
* Only SQLite's corrupt and not-a-database codes mean a damaged file
  (:func:`is_corrupt`); anything else is a file that cannot be used *now*.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from typing import Final, Literal

from .trust import create_private, open_sqlite

__all__ = [
    "JOURNAL",
    "PAGE_SIZE",
    "SHM",
    "SIDE_SUFFIXES",
    "WAL",
    "WAL_LIMIT",
    "WAL_PAGES",
    "Durability",
    "abandon",
    "configure",
    "disk_size",
    "is_corrupt",
    "is_full",
    "is_io_error",
    "open_db",
    "read_format",
    "side_files",
    "stamp_format",
    "transaction",
]

#: What a commit survives: process death (``synchronous=NORMAL``) or power loss
#: (``FULL``). Defined here, the lower layer; ``Config.durability`` is typed with it.
Durability = Literal["process", "power"]

PAGE_SIZE: Final = 65536
WAL_PAGES: Final = 64
WAL_LIMIT: Final = 8 * 1024 * 1024
#: SQLite's side files of a database ``db``: ``db + suffix``.
WAL: Final = "-wal"
SHM: Final = "-shm"
JOURNAL: Final = "-journal"
SIDE_SUFFIXES: Final = (WAL, SHM, JOURNAL)


def side_files(db: str) -> list[str]:
    """The paths SQLite may keep beside ``db``: its WAL, shared memory and journal."""
    return [db + suffix for suffix in SIDE_SUFFIXES]


def is_full(exc: BaseException) -> bool:
    """SQLITE_FULL (our page limit, or the disk), or the OS saying the disk is full."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL:
            return True
        text = str(exc).lower()
        return "full" in text or "too large" in text
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def is_corrupt(exc: BaseException) -> bool:
    """SQLite's corrupt or not-a-database: the only errors that mean a damaged file."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True  # (the low byte: the primary code of an extended one)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def is_io_error(exc: BaseException) -> bool:
    """SQLite's I/O error (any extended code), as EFBIG comes back."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF == sqlite3.SQLITE_IOERR
    )


def disk_size(db: str) -> int:
    """Bytes a SQLite file uses on disk: the db and its WAL."""
    total = 0
    for suffix in ("", WAL):
        with contextlib.suppress(OSError):
            total += os.stat(db + suffix).st_size
    return total


def open_db(
    path: str,
    mode: Literal["ro", "rw"],
    *,
    ours: bool,
    create: bool = False,
    durability: Durability | None = None,
    first: str | None = None,
) -> sqlite3.Connection:
    """The one way a spool directory's database is opened: autocommit (nothing in a
    transaction unless :func:`transaction`), never through a symlink (``UntrustedFile``).

    ``ours``: refuse a file owned by another user too (a writer's rule; a reader, the
    CLI of an on-call user, may open one if the permissions let it). ``create``: make a
    missing file first, 0600 (and with it SQLite's side files). ``durability``: set up
    for writing (64 KiB pages if new, WAL, :func:`configure`); None leaves the file
    untouched, for a caller that checks it before writing anything. ``first``: a
    statement to run before anything reads the schema."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(create_private(path))
    conn = open_sqlite(path, mode, ours=ours, first=first)
    if durability is None:
        return conn
    try:
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # new: before WAL and tables
        configure(conn, durability)
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "") -> Iterator[sqlite3.Connection]:
    """``BEGIN [mode]``, then ``COMMIT``; on any exception (``KeyboardInterrupt``
    included) ``ROLLBACK`` and re-raise. Every multi-statement write goes through it."""
    conn.execute(f"BEGIN {mode}".rstrip())
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def read_format(conn: sqlite3.Connection) -> tuple[int, int]:
    """A database's format stamps: ``(application_id, user_version)``."""
    app = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    return int(app), int(version)


def stamp_format(conn: sqlite3.Connection, application_id: int, version: int) -> None:
    """Stamp a database as ``application_id`` of ``version`` (inside the caller's
    transaction, with the tables it describes)."""
    conn.execute(f"PRAGMA application_id={int(application_id)}")
    conn.execute(f"PRAGMA user_version={int(version)}")


def configure(conn: sqlite3.Connection, durability: Durability) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'power' else 'NORMAL'}")
    # SQLite checkpoints every 1000 pages by default: 64 MB of WAL with 64 KiB pages.
    # Every 64 pages (4 MiB) instead, and the file cut back to 8 MiB.
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")


#: Connections inherited over fork: referenced forever, so no finalizer closes them.
_ABANDONED: list[sqlite3.Connection | None] = []


def abandon(conn: sqlite3.Connection | None) -> None:
    """In a forked child: let go of a connection of the parent without closing it
    (closing it could checkpoint and delete the WAL the parent is writing)."""
    _ABANDONED.append(conn)
