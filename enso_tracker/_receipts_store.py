"""The receipts store: one SQLite file per identity with the totals per (entity, metric,
UTC hour, outcome), optional per-event rows, and the watermarks of totals moved from
spool files; and the exact arithmetic of those totals.

Owns: the store's schema, its format stamp and every write to it. Invariants: a sum is
exact (ints, or Decimals in an unbounded context; never a float); a spool file's totals
move once (its ``moved`` watermark is committed with them); per-event rows are keyed by
eventId, so writing one twice changes nothing. How settled events reach it, and what a
crash can do on the way, is ``_receipts.py``.
"""

from __future__ import annotations

import contextlib
import decimal
import logging
import os
import sqlite3
import threading
import time
from decimal import Decimal
from typing import Any, Final, Literal

from ._spool.identity import short
from ._spool.trust import create_private, open_sqlite

__all__ = [
    "EXACT",
    "RETENTION",
    "EventRow",
    "Fold",
    "Level",
    "ReceiptStore",
    "add",
    "number",
    "receipts_path",
    "text_of",
]

_log = logging.getLogger("enso_tracker")

#: Per-event receipts are kept this long (``receipts_retention``'s default: 35 days).
RETENTION: Final = 35 * 86400.0
#: Expired per-event receipts are pruned at most this often.
PRUNE_EVERY: Final = 3600.0
#: ``PRAGMA application_id`` of a receipts store ("EnsR").
APPLICATION_ID: Final = 0x456E7352
FORMAT_VERSION: Final = 1

Level = Literal["totals", "events"]
#: (entity, metric, hour "YYYY-MM-DDTHH", outcome) → [count, sum]
Fold = dict[tuple[str, str, str, str], list[Any]]
#: (eventId, entity, metric, hour, value text, outcome, code, status, message, at)
EventRow = tuple[str, str, str, str, str, str, str | None, int | None, str | None, float]

#: Sums are exact: enough digits for any sum of validated values (no rounding, ever).
EXACT: Final = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[]
)

_STORE_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS totals (
        entity TEXT NOT NULL, metric TEXT NOT NULL, hour TEXT NOT NULL, outcome TEXT NOT NULL,
        count INTEGER NOT NULL, sum TEXT NOT NULL,
        PRIMARY KEY (entity, metric, hour, outcome)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS moved (
        source TEXT PRIMARY KEY, upto INTEGER NOT NULL, at REAL NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS events (
        event_id TEXT PRIMARY KEY, entity TEXT NOT NULL, metric TEXT NOT NULL,
        hour TEXT NOT NULL, value TEXT NOT NULL, outcome TEXT NOT NULL, code TEXT,
        status INTEGER, message TEXT, at REAL NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS events_at ON events (at)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


def receipts_path(directory: str, identity: str) -> str:
    """The receipts store of an identity in ``directory`` (one per destination and
    credential: trackers of several identities may share a spool directory)."""
    return os.path.join(directory, f"receipts-{short(identity)}.db")


# ------------------------------------------------------------------ exact numbers


def number(text: str) -> int | Decimal:
    """A JSON number's text as an exact number (an int when it has no fraction part)."""
    if "." in text or "e" in text or "E" in text:
        return Decimal(text)
    return int(text)


def add(a: int | Decimal, b: int | Decimal) -> int | Decimal:
    if type(a) is int and type(b) is int:
        return a + b
    return EXACT.add(Decimal(a), Decimal(b))


def _exact_add(a: str, b: str) -> str:
    return text_of(add(number(a), number(b)))


def text_of(n: int | Decimal) -> str:
    """The canonical text of a sum: digits, never an exponent (``Decimal(text)`` gives
    it back exactly)."""
    if isinstance(n, int):
        return str(n)
    text = format(n, "f")
    return "0" if text in ("-0", "0") else text


# ------------------------------------------------------------------ the store


class ReceiptStore:
    """The receipts store: totals, per-event rows, the watermarks of moved spool totals.

    One SQLite file per identity (``receipts_path``), made 0600, never through a
    symlink; several processes may write it (WAL, ``BEGIN IMMEDIATE``, 5 s busy wait).
    Opened at first use on the writing thread; thread-safe (one lock)."""

    def __init__(self, path: str, *, level: Level, retention: float, identity: str) -> None:
        self.path = path
        self.level: Level = level
        self.retention = retention
        self.identity = identity
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._next_prune = 0.0
        self.closed = False
        self.errors = 0  # receipt writes that failed for good (logged): Stats.receipt_errors

    def _open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        with contextlib.suppress(FileExistsError):
            os.close(create_private(self.path))
        conn = open_sqlite(self.path, "rw", ours=True)
        try:
            conn.create_function("exact_add", 2, _exact_add, deterministic=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _STORE_SCHEMA:
                conn.execute(statement)
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            if app == 0:
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('identity', ?)",
                    (self.identity,),
                )
            elif app != APPLICATION_ID:
                raise sqlite3.DatabaseError(f"{self.path}: not an enso-tracker receipts store")
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        if self.closed:
            return conn  # the caller closes it (a late fold after shutdown)
        self._conn = conn
        return conn

    def _run(self, work: Any) -> None:
        with self._lock:
            conn = self._open()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            finally:
                if conn is not self._conn:
                    conn.close()

    def apply(self, rows: list[tuple[Any, ...]], source: str | None = None) -> None:
        """Add totals, ``rows`` of (entity, metric, hour, outcome, count, sum text), or
        with ``source``, of (seq, entity, ..., sum text): those past ``source``'s
        watermark only, and the watermark moved in the same transaction."""

        def work(conn: sqlite3.Connection) -> None:
            todo = rows
            if source is not None:
                found = conn.execute("SELECT upto FROM moved WHERE source = ?", (source,))
                done = found.fetchone()
                upto = done[0] if done else 0
                todo = [r[1:] for r in rows if r[0] > upto]
                conn.execute(
                    "INSERT OR REPLACE INTO moved (source, upto, at) VALUES (?, ?, ?)",
                    (source, max(upto, rows[-1][0]), time.time()),
                )
            merged: Fold = {}
            for entity, metric, hour, outcome, count, total in todo:
                key = (entity, metric, hour, outcome)
                slot = merged.get(key)
                if slot is None:
                    merged[key] = [count, number(total)]
                else:
                    slot[0] += count
                    slot[1] = add(slot[1], number(total))
            self._upsert(conn, merged)

        if rows:
            self._run(work)

    @staticmethod
    def _upsert(conn: sqlite3.Connection, merged: Fold) -> None:
        # One statement for every key: the exact addition of two sums' texts is a Python
        # function SQLite calls on conflicts only (registered at open: exact_add).
        conn.executemany(
            "INSERT INTO totals (entity, metric, hour, outcome, count, sum) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (entity, metric, hour, outcome) DO UPDATE "
            "SET count = count + excluded.count, sum = exact_add(sum, excluded.sum)",
            [(*key, count, text_of(total)) for key, (count, total) in merged.items()],
        )

    def add_fold(self, fold: Fold) -> None:
        """Totals of events settled outside any spool row (best effort)."""
        if fold:
            self._run(lambda conn: self._upsert(conn, fold))

    def record_events(self, events: list[EventRow]) -> None:
        """Per-event receipts (idempotent: the last outcome of an eventId wins)."""
        if not events:
            return
        now = time.time()
        prune = now >= self._next_prune
        if prune:
            self._next_prune = now + PRUNE_EVERY

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO events (event_id, entity, metric, hour, value, outcome, "
                "code, status, message, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                events,
            )
            if prune:
                conn.execute("DELETE FROM events WHERE at < ?", (now - self.retention,))

        self._run(work)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def abandon(self) -> None:
        """A forked child's copy: the parent's connection is never used nor closed here."""
        _ABANDONED.append(self._conn)
        self._conn = None
        self.closed = True


_ABANDONED: list[sqlite3.Connection | None] = []


# ------------------------------------------------------------------ the tracker's side
