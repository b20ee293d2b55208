"""SQLite for the spool: how its connections are opened and configured, and what its
errors mean. Every SQLite database of a spool directory (spool files, the dead-letter
store) is opened through :func:`connect`.

* Autocommit (``isolation_level=None``): nothing is in a transaction unless a caller
  began one; a connection never holds a read transaction open between calls.
* WAL with 64 KiB pages; ``synchronous=NORMAL`` (durable against process death) or
  ``FULL`` (against power loss); the WAL checkpointed every 4 MiB and cut back to 8 MiB.
* Only SQLite's corrupt and not-a-database codes mean a damaged file
  (:func:`is_corrupt`); anything else is a file that cannot be used *now*.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from typing import Final, Literal

from .trust import create_private, open_sqlite

__all__ = [
    "PAGE_SIZE",
    "WAL_LIMIT",
    "WAL_PAGES",
    "Durability",
    "abandon",
    "configure",
    "connect",
    "disk_size",
    "is_corrupt",
    "is_full",
    "is_io_error",
]

Durability = Literal["process", "power"]

PAGE_SIZE: Final = 65536
WAL_PAGES: Final = 64
WAL_LIMIT: Final = 8 * 1024 * 1024


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
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(db + suffix).st_size
    return total


def connect(
    path: str,
    *,
    create: bool,
    durability: Durability = "process",
    readonly: bool = False,
) -> sqlite3.Connection:
    """A connection in autocommit mode (each statement its own transaction unless
    ``BEGIN``), WAL, with the durability asked for. Never creates a file unless
    ``create`` (an orphan must be opened, not made anew); a created file is made 0600
    (and with it SQLite's -wal/-shm). Never follows a symlink (``UntrustedFile``); a
    writer (``create``) also refuses a file owned by another user, a reader (the CLI of
    an on-call user) may open one if the permissions let it."""
    if create and not readonly:
        with contextlib.suppress(FileExistsError):
            os.close(create_private(path))
    conn = open_sqlite(path, "ro" if readonly else "rw", ours=create and not readonly)
    try:
        if not readonly and conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # new: before WAL and tables
        if not readonly:
            configure(conn, durability)
    except BaseException:
        conn.close()
        raise
    return conn


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
