"""One spool file held open: ``SpoolFile`` (own or adopted) and ``StoredBatch`` (a row's place).

* One file per process: no two writers ever share one, so nothing waits on SQLite's
  locks. The owner holds ``flock`` on the db itself for the file's life: no auxiliary
  lock file that could be deleted or replaced, so a live owner's file can never be
  taken. Never ``fcntl`` record locks, which any stray ``close()`` of the file in the
  process silently drops.
* A commit costs one append to the WAL (``sqlite``). Deletes of settled rows are
  deferred and carried by the next insert (one transaction instead of two), or done
  when the spooler idles; until then a crash resends them, and Enso dedups.
* Bounded by ``PRAGMA max_page_count`` (``budget``): an insert past it fails with
  SQLITE_FULL while deletes keep working, so a full spool always drains.
* A file with no rows left is removed on close, its flock released last.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any

from .directory import quarantine, remove_files
from .errors import SpoolClosed, SpoolCorrupt, SpoolFull
from .errors import unreadable as _unreadable
from .sqlite import PAGE_SIZE, abandon, disk_size, is_corrupt, transaction
from .sqlite import is_full as _is_full
from .trust import hold, release

if TYPE_CHECKING:
    from .._receipts import SpoolReceipts

__all__ = ["SpoolFile", "StoredBatch"]


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
        self.receipts: SpoolReceipts | None = None
        if lock_fd is not None:
            hold(lock_fd)
        if max_bytes is not None:
            # No pages beyond the bound: Config makes sure it holds a whole row
            # (SPOOL_ROW_OVERHEAD), and ``budget`` lowers it for the other bounds.
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
        with transaction(db):
            if deferred:
                db.executemany("DELETE FROM batches WHERE id = ?", [(r.rowid,) for r in deferred])
                if self.receipts is not None:
                    self.receipts.release(self, db, deferred)
            cursor = db.execute(
                "INSERT INTO batches (created, n, crc, body) VALUES (?, ?, ?, ?)", row
            )
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
        with transaction(db):
            db.executemany("DELETE FROM batches WHERE id = ?", [(r.rowid,) for r in rows])
            if self.receipts is not None:
                self.receipts.release(self, db, rows)
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
        abandon(self._conn)
        self._conn = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
