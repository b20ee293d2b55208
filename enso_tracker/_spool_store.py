"""Spool files on disk: one SQLite file per process, owned through ``flock``.

A spool directory holds::

    spool-<pid>-<random>.db       (+ -wal, -shm) batches not yet accounted for by Enso;
                                  flock(LOCK_EX) on the db itself, held by its owner for life
    dead-letters.db               events that will never be delivered (``_dead_letters``)
    <name>.corrupt-<unix time>    an unreadable file, renamed aside and reported

Design (after Vector's disk buffer, the OpenTelemetry Collector's persistent queue and
sentry-native's run files; see ``docs/spool.md``):

* One row per HTTP batch: its exact encoded body, a CRC32 of it, its event count and the
  time it was written. SQLite in WAL mode with 64 KiB pages: a commit costs one append
  to the WAL, no fsync with ``synchronous=NORMAL`` (durable against process death) and
  one with ``FULL`` (durable against power loss).
* One file per process: no two writers ever share one, so nothing waits on SQLite's
  locks. The owner creates the database (mode 0600, ``O_EXCL``) and takes ``flock`` on
  it at once, on that very file: no auxiliary lock file that could be deleted or
  replaced, so a live owner's file can never be taken. Never ``fcntl`` record locks,
  which any stray ``close()`` of the file in the process silently drops.
* A file whose flock can be taken has no owner: another tracker with the same identity
  (``_spool_identity``: destination and credential, stored in the file's ``meta``
  table) adopts it (opened without creating), sends its rows, and removes -wal, -shm and
  the db while still holding the flock. A file of another identity is left untouched.
* Only real damage quarantines a file (SQLite's corrupt/not-a-database codes, a failed
  ``quick_check``): a file that cannot be opened now (permissions, out of descriptors,
  busy) is left as it is and tried again at the next scan.
* Bounded by ``PRAGMA max_page_count``: an insert past it fails with SQLITE_FULL while
  deletes keep working, so a full spool always drains.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import sqlite3
import stat
import threading
import time
import zlib
from collections.abc import Generator, Iterator
from typing import Any, Final, Literal

from ._errors import ConfigurationError
from ._spool_identity import short
from ._spool_trust import (
    UntrustedFile,
    check_trusted_dir,
    create_private,
    hold,
    lock_db,
    open_nofollow,
    open_sqlite,
    release,
    same_file,
    untrusted,
)

__all__ = [
    "APPLICATION_ID",
    "FORMAT_VERSION",
    "Durability",
    "SpoolClosed",
    "SpoolCorrupt",
    "SpoolEmpty",
    "SpoolFile",
    "SpoolForeign",
    "SpoolFull",
    "SpoolUnavailable",
    "SpoolUnsupported",
    "StoredBatch",
    "check_directory",
    "connect",
    "create_own",
    "disk_size",
    "find_orphans",
    "is_corrupt",
    "quarantine",
    "remove_files",
    "spool_files",
]

Durability = Literal["process", "power"]

#: ``PRAGMA application_id``: "Enso" in ASCII, so a stray SQLite file is never taken for ours.
APPLICATION_ID: Final = 0x456E736F
#: ``PRAGMA user_version`` of the layout below; a file with another one is refused.
#: 2: the ``meta`` table holds the identity the file was written for (format 1 had none:
#: such a file is left to the version that wrote it, see docs/spool.md).
FORMAT_VERSION: Final = 2
PAGE_SIZE: Final = 65536
WAL_PAGES: Final = 64
WAL_LIMIT: Final = 8 * 1024 * 1024

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

#: Filesystems where flock and SQLite's locking are unreliable or local-only.
_NETWORK_FS: Final = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "9p",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.rclone",
        "fuse.glusterfs",
        "fuse.cephfs",
        "davfs",
        "fuse.davfs2",
    }
)


class SpoolFull(Exception):
    """The spool file reached ``max_spool_bytes``, or the disk refused to grow it."""


class SpoolClosed(Exception):
    """An operation on a spool file already closed (shutdown raced a last write)."""


class SpoolCorrupt(Exception):
    """A spool file SQLite cannot read: it is renamed aside, never retried."""


class SpoolEmpty(Exception):
    """A spool file with nothing in it to deliver (removed by its adopter)."""


class SpoolUnsupported(Exception):
    """A spool file of another format version: refused, left as it is."""


class SpoolForeign(Exception):
    """A spool file written for another identity (destination or credential): never
    adopted, left as it is for a tracker of that identity."""

    def __init__(self, message: str, identity: str | None) -> None:
        super().__init__(message)
        self.identity = identity


class SpoolUnavailable(Exception):
    """A spool file that cannot be opened now (permission denied, out of descriptors,
    busy, not ours to open): left as it is, tried again at the next scan."""


def _unreadable(path: str, exc: BaseException) -> Exception:
    """What an error opening or reading ``path`` means: real damage (``SpoolCorrupt``,
    quarantined) or a passing/permission problem (``SpoolUnavailable``, left alone)."""
    if isinstance(exc, sqlite3.Error) and is_corrupt(exc):
        return SpoolCorrupt(f"{path}: {exc}")
    if isinstance(exc, OSError):
        return SpoolUnavailable(f"{path}: cannot open ({exc.strerror or exc})")
    return SpoolUnavailable(f"{path}: cannot open ({exc})")


def _is_full(exc: BaseException) -> bool:
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


# ------------------------------------------------------------------ the directory


def _mount_type(path: str) -> str | None:
    """The filesystem type ``path`` lives on (Linux: from /proc/self/mounts), or None."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def check_directory(path: str, *, create: bool) -> str:
    """The spool directory, absolute; created 0700 if ``create``. ``ConfigurationError``
    for one that cannot hold a spool: missing, not a directory, unwritable, on a network
    filesystem (whose locks cannot keep two processes off one file), or not to be
    trusted (owned by another user, writable by group or others: ``_spool_trust``)."""
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise ConfigurationError(f"spool_dir={path!r}: must be a directory path")
    full = os.path.abspath(os.fspath(path))
    if create and not os.path.lexists(full):
        try:
            os.makedirs(full, mode=0o700)
            os.chmod(full, 0o700)  # whatever the umask: ours alone
        except FileExistsError:
            pass  # another process made it meanwhile: checked below like any other
        except OSError as exc:
            raise ConfigurationError(
                f"spool_dir={full!r}: cannot create it ({exc.strerror})"
            ) from None
    if not os.path.isdir(full):
        raise ConfigurationError(f"spool_dir={full!r}: no such directory")
    check_trusted_dir(full)
    kind = _mount_type(os.path.realpath(full))
    if kind in _NETWORK_FS:
        raise ConfigurationError(
            f"spool_dir={full!r} is on a network filesystem ({kind}): its locks cannot keep "
            "two processes off one spool file; use a local disk"
        )
    if create:
        probe = os.path.join(full, f".probe-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigurationError(
                f"spool_dir={full!r}: cannot write there ({exc.strerror})"
            ) from None
    return full


def spool_files(directory: str) -> list[str]:
    """Paths of the spool databases in ``directory``, least recently written first."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith("spool-") and n.endswith(".db")]
    except OSError:
        return []
    paths = [os.path.join(directory, n) for n in names]

    def age(p: str) -> tuple[float, str]:
        try:
            return (os.stat(p).st_mtime, p)
        except OSError:
            return (0.0, p)

    return sorted(paths, key=age)


def disk_size(db: str) -> int:
    """Bytes a SQLite file uses on disk: the db and its WAL."""
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(db + suffix).st_size
    return total


def lock_path(db: str) -> str:
    """The lock file format 1 kept beside a db (now only cleaned up: the flock is on the db)."""
    return db[: -len(".db")] + ".lock"


def remove_files(db: str) -> None:
    """Remove a drained spool file: -wal, -shm, then the db (its flock is still held by
    the caller, so nobody adopts a half-removed file)."""
    for path in (db + "-wal", db + "-shm", db + "-journal", db, lock_path(db)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def quarantine(db: str) -> str:
    """Rename an unreadable file (and its -wal/-shm) aside as ``*.corrupt-<time>``."""
    stamp = f"corrupt-{int(time.time())}"
    target = f"{db}.{stamp}"
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):
            os.replace(db + suffix, target + suffix)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path(db))
    return target


# ------------------------------------------------------------------ connections


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
            _configure(conn, durability)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, durability: Durability) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'power' else 'NORMAL'}")
    # SQLite checkpoints every 1000 pages by default: 64 MB of WAL with 64 KiB pages.
    # Every 64 pages (4 MiB) instead, and the file cut back to 8 MiB.
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")


def _check_format(conn: sqlite3.Connection, path: str) -> None:
    app = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app != APPLICATION_ID or version != FORMAT_VERSION:
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
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")


class StoredBatch:
    """One row's place: where it is, how many events, and how many are not yet settled."""

    __slots__ = ("created", "file", "first_seq", "left", "n", "nbytes", "receipt", "rowid")

    def __init__(
        self, file: SpoolFile, rowid: int, n: int, nbytes: int, created: float, first_seq: int
    ) -> None:
        self.file = file
        self.rowid = rowid
        self.n = n
        self.nbytes = nbytes
        self.created = created
        self.left = n
        #: Own rows: the sequence of its first event (later events follow in order);
        #: adopted rows: 0 (they are not this tracker's to flush).
        self.first_seq = first_seq
        #: The totals of its settled events (``_receipts``), written when it is deleted.
        self.receipt: dict[tuple[str, str, str, str], list[Any]] | None = None


class SpoolFile:
    """One spool database, our own or adopted. Thread-safe (one lock per file)."""

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        lock_fd: int | None,
        *,
        adopted: bool,
        max_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.adopted = adopted
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        self.rows = 0  # rows it holds
        self.events = 0  # events in them
        self._deferred: list[StoredBatch] = []  # settled rows, deleted with the next insert
        #: ``_receipts.SpoolReceipts``: writes the receipts of deleted rows in the same
        #: transaction as their delete, and moves them out before the file is removed.
        self.receipts: Any = None
        if lock_fd is not None:
            hold(lock_fd)
        if max_bytes is not None:
            # No pages beyond the bound: Config makes sure it holds a whole row
            # (SPOOL_ROW_OVERHEAD), and _spool_budget lowers it for the other bounds.
            conn.execute(f"PRAGMA max_page_count={max(max_bytes // PAGE_SIZE, 1)}")

    def __repr__(self) -> str:
        return f"<SpoolFile {self.path} rows={self.rows} events={self.events}>"

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolClosed(f"{self.path}: closed")
        return self._conn

    def append(self, body: bytes, n: int, first_seq: int) -> StoredBatch:
        """Commit one batch, with the deletes deferred so far in the same transaction;
        ``SpoolFull`` past the cap or when the disk refuses."""
        row = (time.time(), n, zlib.crc32(body), body)
        with self._lock:
            db = self._db()
            try:
                try:
                    rowid = self._insert_locked(db, row)
                except sqlite3.Error as exc:
                    if not (_is_full(exc) and self._deferred):
                        raise
                    self._delete_locked(db, self._deferred)  # deletes work when full
                    self._deferred = []  # done: not deleted (nor receipted) twice
                    rowid = self._insert_locked(db, row)
            except (sqlite3.Error, OSError) as exc:
                if _is_full(exc):
                    raise SpoolFull(str(exc)) from None
                if is_corrupt(exc):
                    raise SpoolCorrupt(f"{self.path}: {exc}") from None
                raise
            self.rows += 1
            self.events += n
        return StoredBatch(self, rowid, n, len(body), row[0], first_seq)

    def _insert_locked(self, db: sqlite3.Connection, row: tuple[float, int, int, bytes]) -> int:
        deferred = self._deferred
        db.execute("BEGIN")
        try:
            if deferred:
                db.executemany("DELETE FROM batches WHERE id = ?", [(r.rowid,) for r in deferred])
                if self.receipts is not None:
                    self.receipts.release(self, db, deferred)
            cursor = db.execute(
                "INSERT INTO batches (created, n, crc, body) VALUES (?, ?, ?, ?)", row
            )
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._forget(deferred)
        self._deferred = []
        rowid = cursor.lastrowid
        assert rowid is not None
        return rowid

    def _forget(self, rows: list[StoredBatch]) -> None:
        self.rows -= len(rows)
        self.events -= sum(r.n for r in rows)

    def defer_delete(self, rows: list[StoredBatch]) -> None:
        """Delete these rows with the next insert (one transaction instead of two), or at
        the next ``flush_deletes()``. Until then a crash resends them: Enso dedups."""
        with self._lock:
            self._deferred.extend(rows)

    def has_deferred(self) -> bool:
        return bool(self._deferred)

    def flush_deletes(self) -> bool:
        """Carry out the deferred deletes now. True if there were any."""
        with self._lock:
            if not self._deferred or self._conn is None:
                return False
            self._delete_locked(self._db(), self._deferred)
            self._deferred = []
            return True

    def tally(self) -> tuple[int, int]:
        """How many rows and events the file holds (one aggregate query: no object per
        row, whatever their number)."""
        with self._lock:
            try:
                rows, events = (
                    self._db()
                    .execute("SELECT count(*), coalesce(sum(n), 0) FROM batches")
                    .fetchone()
                )
            except sqlite3.DatabaseError as exc:
                raise _unreadable(self.path, exc) from None
            self.rows, self.events = int(rows), int(events)
        return self.rows, self.events

    def oldest(self) -> float | None:
        """``created`` (Unix time) of the first row not yet settled, None if none: rows
        whose delete is deferred are settled and skipped. They come first, so this reads
        at most their number of rows (the primary key, no bodies)."""
        with self._lock:
            settled = {r.rowid for r in self._deferred}
            cursor = self._db().execute("SELECT id, created FROM batches ORDER BY id")
            try:
                for rowid, created in cursor:
                    if rowid not in settled:
                        return float(created)
            finally:
                cursor.close()  # no read transaction left open
        return None

    def rows_after(self, rowid: int, limit: int) -> list[StoredBatch]:
        """Up to ``limit`` rows after ``rowid``, in order, without their bodies (keyset
        pagination: each call costs what it returns, not what precedes it)."""
        with self._lock:
            try:
                found = (
                    self._db()
                    .execute(
                        "SELECT id, n, length(body), created FROM batches "
                        "WHERE id > ? ORDER BY id LIMIT ?",
                        (rowid, limit),
                    )
                    .fetchall()
                )
            except sqlite3.DatabaseError as exc:
                raise _unreadable(self.path, exc) from None
        return [StoredBatch(self, rowid, n, size, created, 0) for rowid, n, size, created in found]

    def read(self, row: StoredBatch) -> tuple[bytes, bool]:
        """The row's body and whether its CRC matches. ``SpoolCorrupt`` if the file
        cannot be read at all, ``SpoolUnavailable`` if not now (busy, descriptors)."""
        with self._lock:
            try:
                found = (
                    self._db()
                    .execute("SELECT crc, body FROM batches WHERE id = ?", (row.rowid,))
                    .fetchone()
                )
            except sqlite3.DatabaseError as exc:
                raise _unreadable(self.path, exc) from None
        if found is None:  # deleted under us: nothing to send
            return b"", False
        crc, body = found
        body = bytes(body)
        return body, zlib.crc32(body) == crc

    def delete(self, rows: list[StoredBatch]) -> None:
        """Forget rows Enso accounted for (one transaction). Works on a full spool."""
        if not rows:
            return
        with self._lock:
            self._delete_locked(self._db(), rows)

    def _delete_locked(self, db: sqlite3.Connection, rows: list[StoredBatch]) -> None:
        db.execute("BEGIN")
        try:
            db.executemany("DELETE FROM batches WHERE id = ?", [(r.rowid,) for r in rows])
            if self.receipts is not None:
                self.receipts.release(self, db, rows)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._forget(rows)

    def size(self) -> int:
        return disk_size(self.path)

    def move_receipts(self) -> None:
        """Move the receipts pending in this file to the receipts store (``_receipts``)."""
        with self._lock:
            if self._conn is not None and self.receipts is not None:
                self.receipts.move(self, self._conn)

    def page_count(self) -> int:
        """Pages the database holds (those still in the WAL included)."""
        with self._lock:
            return int(self._db().execute("PRAGMA page_count").fetchone()[0])

    def limit_pages(self, pages: int) -> None:
        """No insert may grow the database past ``pages`` (SQLITE_FULL). SQLite keeps
        the limit at the current size if ``pages`` is below it: deletes still work."""
        with self._lock:
            self._db().execute(f"PRAGMA max_page_count={max(int(pages), 1)}")

    def checkpoint(self) -> None:
        """Move the WAL into the database and cut it to nothing (a WAL that may not grow,
        at the file size limit, is emptied so that writes and deletes go on)."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def compact(self) -> None:
        """A drained file that grew large is rebuilt small (VACUUM) and its WAL reset."""
        with self._lock:
            db = self._db()
            with contextlib.suppress(sqlite3.Error):
                db.execute("VACUUM")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self, *, remove_if_empty: bool = True) -> bool:
        """Close; a file with no rows left is removed (lock last). True if removed."""
        with self._lock:
            if self._deferred and self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._delete_locked(self._conn, self._deferred)
                self._deferred = []
            conn, self._conn = self._conn, None
            if conn is None:
                return False
            empty = False
            with contextlib.suppress(sqlite3.Error):
                empty = conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 0
            if self.receipts is not None and self.receipts.move(self, conn):
                empty = False  # receipts the store could not take yet: kept for an heir
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            removed = remove_if_empty and empty
            if removed:
                remove_files(self.path)
            self._unlock()  # after removing: nobody adopts it meanwhile
            return removed

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            release(self._lock_fd)
            os.close(self._lock_fd)
            self._lock_fd = None

    def quarantine(self) -> str:
        """Rename this unreadable file aside, drop our hold on it."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            target = quarantine(self.path)
            self._unlock()
            return target

    def abandon(self) -> None:
        """In a forked child: let go of the parent's file without touching it.

        The connection is never closed (closing it could checkpoint and delete the WAL
        the parent is writing): it is kept referenced for the child's life. The lock fd
        is closed: the parent's own descriptor keeps the flock."""
        _ABANDONED.append(self._conn)
        self._conn = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None


#: Connections inherited over fork: referenced forever, so no finalizer closes them.
_ABANDONED: list[sqlite3.Connection | None] = []


def create_own(
    directory: str, *, durability: Durability, max_bytes: int, identity: str
) -> SpoolFile:
    """This process's spool file, written for ``identity``: created 0600 (``O_EXCL``,
    never through a symlink) and flocked at once, before anything is in it."""
    for _ in range(8):
        db = os.path.join(directory, f"spool-{os.getpid()}-{secrets.token_hex(6)}.db")
        fd = create_private(db)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
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
        conn = connect(db, create=False, durability=durability)
        try:
            # One transaction: a file caught mid-creation (a kill, a lost WAL) has no
            # table at all (removed as empty), never a table without its stamps.
            conn.execute("BEGIN")
            _stamp(conn, identity)
            conn.execute("COMMIT")
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
        conn = open_sqlite(db, "rw", ours=True)
    except UntrustedFile as exc:
        raise SpoolUnavailable(str(exc)) from None
    except (sqlite3.Error, OSError) as exc:
        raise _unreadable(db, exc) from None
    try:
        try:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                raise SpoolEmpty(f"{db}: holds no table (its WAL was lost?); nothing to send")
            _check_format(conn, db)
            found = read_identity(conn)
            if found != identity:
                raise SpoolForeign(
                    f"{db}: written for another destination or credential (identity "
                    f"{short(found)}, this tracker's {short(identity)}); left as it is",
                    found,
                )
            _configure(conn, durability)
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
        conn = open_sqlite(db, "ro", ours=True, first="PRAGMA writable_schema=ON")
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


def find_orphans(
    directory: str, skip: set[str], refused: dict[str, str]
) -> Generator[tuple[str, int], None, None]:
    """Spool files whose owner is gone, each with the flock fd we now hold on it. Paths
    in ``skip`` (known unusable, or held by this process) are passed over; files we may
    not open (symlinks, another owner, permission denied, out of descriptors) are put in
    ``refused`` with why, and left as they are; leftovers of killed processes are
    removed once every file was looked at."""
    for db in spool_files(directory):
        if db in skip:
            continue
        why = untrusted(db)  # before any open: another user's file is not even locked
        if why is not None:
            refused[db] = f"{db}: {why}"
            continue
        try:
            fd = lock_db(db)
        except UntrustedFile as exc:
            refused[db] = str(exc)
            continue
        except OSError as exc:
            refused[db] = f"{db}: cannot open ({exc.strerror or exc}); tried again later"
            continue
        if fd is None:
            continue  # a live owner (or an adopter) holds it
        refused.pop(db, None)
        yield db, fd
    _remove_stale(directory)


#: A temp redrive file older than this was left by a process killed while writing it.
_STALE_TEMP = 3600.0


def _remove_stale(directory: str) -> None:
    """What killed processes left half made or half removed: a -wal/-shm whose db is
    gone, lock files of format 1 with no db, temp locks, an abandoned temp redrive file.
    (Unlinking never follows a symlink: it removes the name.)"""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith("spool-") and name.endswith((".db-wal", ".db-shm")):
            # An owner removes -wal and -shm before its db: without the db, they are
            # what a process killed while removing them left.
            if not os.path.lexists(path[: -len("-wal")]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            continue
        if name.startswith(".tmp-spool-redrive-") and name.endswith((".db", ".db-journal")):
            with contextlib.suppress(OSError):
                if time.time() - os.lstat(path).st_mtime > _STALE_TEMP:
                    os.unlink(path)
            continue
        stale = (name.startswith("spool-") and name.endswith(".lock")) and not os.path.lexists(
            path[: -len(".lock")] + ".db"
        )
        if not (stale or (name.startswith(".tmp-spool-") and name.endswith(".lock"))):
            continue
        try:
            fd = open_nofollow(path, os.O_RDONLY)
        except (OSError, UntrustedFile):
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.lstat(path).st_mode):
                    os.unlink(path)  # a planted symlink: the name goes, never its target
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not stale or not os.path.lexists(path[: -len(".lock")] + ".db"):
                os.unlink(path)
        except OSError:
            pass  # held by a live process of format 1, or gone meanwhile
        finally:
            os.close(fd)


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
        conn = open_sqlite(tmp, "rw", ours=True)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        now = time.time()
        conn.execute("BEGIN")
        _stamp(conn, identity)
        conn.executemany(
            "INSERT INTO batches (created, n, crc, body) VALUES (?, ?, ?, ?)",
            [(now, n, zlib.crc32(body), body) for body, n in bodies],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    conn.close()
    target = os.path.join(directory, base + ".db")
    os.rename(tmp, target)
    return target
