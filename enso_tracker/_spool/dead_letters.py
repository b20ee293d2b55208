"""The dead-letter store: events Enso will never take, kept with why (one per spool dir).

``dead-letters.db`` is shared by every process on the directory (SQLite's own locking
and a busy timeout: writes are rare, one transaction per group of drops). Each row is
one event's exact wire JSON (or, for a ``corrupt`` record, the bytes that failed their
CRC), its :class:`~enso_tracker._model.DropReason`, when it was stored and the identity of the
tracker that stored it (``origin``: ``identity``; a redrive sends it back to that
identity only; None for letters stored before identities existed). Bounded by
``max_dead_letter_bytes``: past it, the oldest are evicted and counted. An event stored
twice (its batch resent after a crash, refused again) keeps one row: its eventId is
unique.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any, Final

import msgspec

from .._model import DeadLetter, DropReason, Event
from .._wire import body_event_id, event_of
from .directory import quarantine
from .errors import SpoolCorrupt
from .sqlite import abandon, disk_size, is_corrupt, open_db, transaction

__all__ = ["DEAD_KINDS", "FILE_NAME", "DeadLetterStore"]

FILE_NAME: Final = "dead-letters.db"
#: Drop kinds worth keeping: Enso's refusals and what could never be sent. ``shutdown``
#: never happens with a spool (undelivered events stay spooled), and queue/spool-full
#: refusals are the caller's to retry. In this order, the ``spool dead-letters --kind``
#: choices.
DEAD_KINDS: Final = ("rejected", "too_large", "retries_exhausted", "corrupt")
#: Bytes a row costs beyond its body and message (columns, b-tree cell, index entry).
_ROW_OVERHEAD: Final = 96

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY,
        event_id TEXT,
        kind TEXT NOT NULL,
        code,
        status INTEGER,
        message TEXT NOT NULL,
        stored_at REAL NOT NULL,
        body BLOB NOT NULL,
        origin TEXT
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_event ON dead_letters (event_id)",
    "CREATE INDEX IF NOT EXISTS dead_letters_kind ON dead_letters (kind)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def _where(kind: str | None, code: int | str | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if kind is not None:
        clauses.append("kind = ?")
        params.append(kind)
    if code is not None:
        clauses.append("CAST(code AS TEXT) = ?")
        params.append(str(code))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class DeadLetterStore:
    """``dead-letters.db`` of one spool directory; opened per use, or held by a tracker."""

    def __init__(
        self,
        directory: str,
        *,
        max_bytes: int | None = None,
        create: bool = True,
        origin: str | None = None,
    ) -> None:
        self.path = os.path.join(directory, FILE_NAME)
        self.origin = origin  # the identity stored with what this store's owner adds
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None
        self._create = create
        self._bytes: int | None = None  # running estimate, recounted when past the cap
        self.quarantined: str | None = None  # an unreadable store renamed aside

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = self._open()
            except sqlite3.DatabaseError as exc:
                if not is_corrupt(exc):
                    raise
                if not self._create:  # a reader (Spool): report, never touch
                    raise SpoolCorrupt(f"{self.path}: {exc}") from None
                # A writer sets the unreadable store aside and starts a fresh one, so
                # that new dead letters are kept (the caller reports the rename).
                self.quarantined = quarantine(self.path)
                conn = self._open()
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)
            self._conn = conn
        return self._conn

    def _open(self) -> sqlite3.Connection:
        conn = open_db(
            self.path, "rw", ours=self._create, create=self._create, durability="process"
        )
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(dead_letters)")}
            if "origin" not in columns:  # a store of a version without identities
                conn.execute("ALTER TABLE dead_letters ADD COLUMN origin TEXT")
        except BaseException:
            conn.close()
            raise
        return conn

    def take_quarantined(self) -> str | None:
        """Where an unreadable store was renamed to, once (for the caller to report)."""
        target, self.quarantined = self.quarantined, None
        return target

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def abandon(self) -> None:
        """A forked child never closes the parent's connection (see SpoolFile.abandon)."""
        abandon(self._conn)
        self._conn = None

    # ------------------------------------------------------------------ writing

    def add(self, letters: Iterable[tuple[bytes, DropReason]]) -> int:
        """Store events with their reason; returns how many older ones were evicted."""
        now = time.time()
        rows = [
            (body_event_id(body), r.kind, r.code, r.status, r.message, now, body, self.origin)
            for body, r in letters
        ]
        if not rows:
            return 0
        db = self._db()
        try:
            with transaction(db, "IMMEDIATE"):
                db.executemany(
                    "INSERT OR REPLACE INTO dead_letters "
                    "(event_id, kind, code, status, message, stored_at, body, origin) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                evicted = self._evict_locked(
                    db, sum(len(row[6]) + len(row[4]) + _ROW_OVERHEAD for row in rows)
                )
        except BaseException:
            self._bytes = None  # recounted: what was rolled back is not in the store
            raise
        return evicted

    def _total(self, db: sqlite3.Connection) -> int:
        found = db.execute(
            "SELECT coalesce(sum(length(body) + length(message) + ?), 0) FROM dead_letters",
            (_ROW_OVERHEAD,),
        ).fetchone()
        return int(found[0])

    def _evict_locked(self, db: sqlite3.Connection, added: int) -> int:
        if self.max_bytes is None:
            return 0
        if self._bytes is None:
            self._bytes = self._total(db)
        else:
            self._bytes += added
        if self._bytes <= self.max_bytes:
            return 0
        self._bytes = self._total(db)  # other processes write here too: count for real
        evicted = 0
        while self._bytes > self.max_bytes:
            oldest = db.execute(
                "SELECT id, length(body) + length(message) + ? "
                "FROM dead_letters ORDER BY id LIMIT 256",
                (_ROW_OVERHEAD,),
            ).fetchall()
            if not oldest:
                break
            goner = []
            for rowid, size in oldest:
                goner.append((rowid,))
                self._bytes -= size
                if self._bytes <= self.max_bytes:
                    break
            db.executemany("DELETE FROM dead_letters WHERE id = ?", goner)
            evicted += len(goner)
        if evicted:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('evicted', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                (evicted,),
            )
        return evicted

    # ------------------------------------------------------------------ reading

    def iterate(
        self, kind: str | None = None, code: int | str | None = None
    ) -> Iterator[tuple[int, DeadLetter]]:
        """(row id, letter), oldest first; read in pages, never the whole store at once."""
        for rowid, letter, _ in self.iterate_origins(kind, code):
            yield rowid, letter

    def iterate_origins(
        self, kind: str | None = None, code: int | str | None = None
    ) -> Iterator[tuple[int, DeadLetter, str | None]]:
        """(row id, letter, origin identity), oldest first, in pages."""
        if not self.exists():
            return
        where, params = _where(kind, code)
        last = 0
        while True:
            page = (
                self._db()
                .execute(
                    # `where` is built from fixed fragments; values go in as parameters.
                    "SELECT id, kind, code, status, message, stored_at, body, origin "
                    "FROM dead_letters"
                    + (where + " AND" if where else " WHERE")
                    + " id > ? ORDER BY id LIMIT 500",
                    [*params, last],
                )
                .fetchall()
            )
            if not page:
                return
            for rowid, k, c, status, message, stored_at, body, origin in page:
                last = rowid
                body = bytes(body)
                try:
                    event: Event | None = event_of(body) if k != "corrupt" else None
                except (msgspec.DecodeError, ValueError, UnicodeDecodeError):
                    event = None
                reason = DropReason(kind=k, message=message, code=c, status=status)
                letter = DeadLetter(
                    event=event, reason=reason, stored_at=stored_at, body=body, id=rowid
                )
                yield rowid, letter, origin

    def delete(self, rowids: list[int]) -> None:
        db = self._db()
        with transaction(db, "IMMEDIATE"):
            db.executemany("DELETE FROM dead_letters WHERE id = ?", [(r,) for r in rowids])
        self._bytes = None

    def purge(
        self,
        kind: str | None = None,
        code: int | str | None = None,
        *,
        through: int | None = None,
        stored_before: float | None = None,
    ) -> int:
        """Delete the matching letters in one statement (one transaction); ``through``:
        only those numbered up to it; ``stored_before``: only those stored by then."""
        if not self.exists():
            return 0
        where, params = _where(kind, code)
        for clause, value in (("id <= ?", through), ("stored_at <= ?", stored_before)):
            if value is not None:
                where += (" AND " if where else " WHERE ") + clause
                params.append(value)
        cursor = self._db().execute("DELETE FROM dead_letters" + where, params)  # noqa: S608
        self._bytes = None
        return max(cursor.rowcount, 0)

    def counts(self) -> tuple[dict[str, int], dict[str, int], int]:
        """Dead letters by kind, by code (as text, "" for none), and evicted so far."""
        if not self.exists():
            return {}, {}, 0
        db = self._db()
        kinds = dict(db.execute("SELECT kind, count(*) FROM dead_letters GROUP BY kind"))
        codes = {
            ("" if c is None else str(c)): n
            for c, n in db.execute(
                "SELECT CAST(code AS TEXT), count(*) FROM dead_letters GROUP BY 1"
            )
        }
        found = db.execute("SELECT value FROM meta WHERE key = 'evicted'").fetchone()
        return kinds, codes, int(found[0]) if found else 0

    def size(self) -> int:
        return disk_size(self.path)
