"""The spool file format, and the four ways a spool file comes to be opened.

A spool file is one SQLite database (``sqlite``) stamped ``application_id`` "Enso" and
``user_version`` ``FORMAT_VERSION``, with two tables::

    batches (id INTEGER PRIMARY KEY, created REAL, n INTEGER, crc INTEGER, body BLOB)
    meta    (key TEXT PRIMARY KEY, value TEXT)       -- 'identity': whom it was written for

* One row per HTTP batch: its exact encoded body, a CRC32 of it, its event count and the
  time it was written.
* A file is stamped in the transaction that creates its table: a file caught
  mid-creation has no table at all (removed as empty), never a table without stamps.
* A file of another format version or identity is never written to, only left as it is.

The ways in: :func:`create_own` (this process's file, created 0600 and flocked before
anything is in it), :func:`open_orphan` (a file whose owner is gone, checked before
anything is written), :func:`salvage` (the intact rows of a damaged file of ours) and
:func:`write_unowned` (a redrive file, renamed into place complete).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
import zlib
from collections.abc import Iterator
from typing import Final

from .directory import remove_files
from .errors import SpoolCorrupt, SpoolEmpty, SpoolForeign, SpoolUnavailable, SpoolUnsupported
from .errors import unreadable as _unreadable
from .files import SpoolFile
from .identity import short
from .sqlite import (
    PAGE_SIZE,
    Durability,
    configure,
    open_db,
    read_format,
    stamp_format,
    transaction,
)
from .trust import UntrustedFile, create_private, same_file, try_flock

__all__ = [
    "APPLICATION_ID",
    "FORMAT_VERSION",
    "create_own",
    "open_orphan",
    "read_identity",
    "salvage",
    "supported",
    "write_unowned",
]

#: ``PRAGMA application_id``: "Enso" in ASCII, so a stray SQLite file is never taken for ours.
APPLICATION_ID: Final = 0x456E736F
#: ``PRAGMA user_version`` of the layout below; a file with another one is refused.
#: 2: the ``meta`` table holds the identity the file was written for (format 1 had none:
#: such a file is left to the version that wrote it, see docs/spool.md).
FORMAT_VERSION: Final = 2

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    n INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    body BLOB NOT NULL
)
"""
_META: Final = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def supported(conn: sqlite3.Connection) -> bool:
    """Whether a database is a spool file of this format (its stamps say so)."""
    return read_format(conn) == (APPLICATION_ID, FORMAT_VERSION)


def check_format(conn: sqlite3.Connection, path: str) -> None:
    """``SpoolUnsupported`` unless the database is a spool file of this format."""
    app, version = read_format(conn)
    if (app, version) != (APPLICATION_ID, FORMAT_VERSION):
        raise SpoolUnsupported(
            f"{path}: not an enso-tracker spool of format {FORMAT_VERSION} "
            f"(application_id={app:#x}, user_version={version}); left as it is"
        )


def read_identity(conn: sqlite3.Connection) -> str | None:
    """The identity a spool file was written for (None: none recorded)."""
    found = conn.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
    return found[0] if found and isinstance(found[0], str) else None


def _stamp(conn: sqlite3.Connection, identity: str) -> None:
    """Table, format stamps and identity of a new file (inside the caller's transaction)."""
    conn.execute(_SCHEMA)
    conn.execute(_META)
    conn.execute("INSERT INTO meta (key, value) VALUES ('identity', ?)", (identity,))
    stamp_format(conn, APPLICATION_ID, FORMAT_VERSION)


def create_own(
    directory: str, *, durability: Durability, max_bytes: int, identity: str
) -> SpoolFile:
    """This process's spool file, written for ``identity``: created 0600 (``O_EXCL``,
    never through a symlink) and flocked at once, before anything is in it."""
    for _ in range(8):
        db = os.path.join(directory, f"spool-{os.getpid()}-{secrets.token_hex(6)}.db")
        fd = create_private(db)
        if not try_flock(fd):
            # A scanner took the empty file for an orphan in the instant between
            # create and flock (it removes it as empty): another name.
            os.close(fd)
            continue
        if not same_file(db, os.fstat(fd)):
            os.close(fd)
            continue
        break
    else:
        raise SpoolUnavailable(f"{directory}: cannot create a spool file (contended)")
    try:
        conn = open_db(db, "rw", ours=False, durability=durability)
        try:
            # One transaction: a file caught mid-creation (a kill, a lost WAL) has no
            # table at all (removed as empty), never a table without its stamps.
            with transaction(conn):
                _stamp(conn, identity)
        except BaseException:
            conn.close()
            raise
    except BaseException:
        remove_files(db)
        os.close(fd)
        raise
    return SpoolFile(db, conn, fd, adopted=False, max_bytes=max_bytes)


def open_orphan(db: str, lock_fd: int, *, durability: Durability, identity: str) -> SpoolFile:
    """Open an orphan we hold the flock of. ``SpoolCorrupt`` if it is damaged (the
    caller quarantines it), ``SpoolUnsupported``/``SpoolForeign`` if it is of another
    format or identity and ``SpoolUnavailable`` if it cannot be opened now (all three
    left as they are), ``SpoolEmpty`` if it never held a table (its WAL, where a young
    file keeps everything, was lost). Nothing is written before the checks pass."""
    try:
        conn = open_db(db, "rw", ours=True)
    except UntrustedFile as exc:
        raise SpoolUnavailable(str(exc)) from None
    except (sqlite3.Error, OSError) as exc:
        raise _unreadable(db, exc) from None
    try:
        try:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                raise SpoolEmpty(f"{db}: holds no table (its WAL was lost?); nothing to send")
            check_format(conn, db)
            found = read_identity(conn)
            if found != identity:
                raise SpoolForeign(
                    f"{db}: written for another destination or credential (identity "
                    f"{short(found)}, this tracker's {short(identity)}); left as it is",
                    found,
                )
            configure(conn, durability)
            check = conn.execute("PRAGMA quick_check").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise _unreadable(db, exc) from None
        if check is None or check[0] != "ok":
            raise SpoolCorrupt(f"{db}: quick_check: {check[0] if check else 'no answer'}")
    except BaseException:
        conn.close()
        raise
    return SpoolFile(db, conn, lock_fd, adopted=True)


def salvage(db: str, identity: str) -> Iterator[tuple[bytes, int, float]]:
    """From a damaged file written for ``identity``: every row still readable with a
    matching CRC (body, n, created), in order, until the damage stops the reading.
    Nothing when the file's identity is another or cannot be read: nothing is sent
    that cannot be attributed to this tracker's destination and credential."""
    try:
        # A file shorter than its header says is "malformed" to SQLite at once; this
        # lets it read the pages that are there (the connection is read-only).
        conn = open_db(db, "ro", ours=True, first="PRAGMA writable_schema=ON")
    except (sqlite3.Error, UntrustedFile):
        return
    try:
        try:
            found = read_identity(conn)
        except sqlite3.Error:
            found = None
        if found is None or found != identity:
            raise SpoolForeign(f"{db}: damaged, identity {short(found)}", found)
        cursor = conn.execute("SELECT crc, body, n, created FROM batches ORDER BY id")
        while True:
            try:
                found = cursor.fetchone()
            except sqlite3.Error:
                return
            if found is None:
                return
            crc, body, n, created = found
            if isinstance(body, bytes) and zlib.crc32(body) == crc:
                yield body, n, created
    except sqlite3.Error:
        return
    finally:
        conn.close()


def write_unowned(directory: str, bodies: list[tuple[bytes, int]], identity: str) -> str | None:
    """A spool file with no owner holding ``bodies`` (redriven dead letters), written for
    ``identity`` (the dead letters' own): built under a temp name (0600, never through a
    symlink) and renamed into place complete, so it is adopted whole or not at all."""
    if not bodies:
        return None
    base = f"spool-redrive-{secrets.token_hex(6)}"
    tmp = os.path.join(directory, f".tmp-{base}.db")
    os.close(create_private(tmp))
    try:
        conn = open_db(tmp, "rw", ours=True)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        now = time.time()
        with transaction(conn):
            _stamp(conn, identity)
            conn.executemany(
                "INSERT INTO batches (created, n, crc, body) VALUES (?, ?, ?, ?)",
                [(now, n, zlib.crc32(body), body) for body, n in bodies],
            )
    except BaseException:
        conn.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    conn.close()
    target = os.path.join(directory, base + ".db")
    os.rename(tmp, target)
    return target
