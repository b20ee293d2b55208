"""Receipts: what this tracker settled, kept on disk to prove what was billed.

Every settled event (delivered, rejected by Enso, dropped for good) is folded into totals
per (entity, metric, UTC hour, outcome): a count and the exact sum of the values as they
went on the wire (docs/receipts.md). Optionally (``receipts="events"``) one row per
event too (eventId → outcome, Enso's code, when), kept ``receipts_retention`` seconds.
The store itself, its schema and the exact sums are ``_receipts_store.py``.

Where the totals are written decides what a crash can do to them:

* **With a spool** the totals of a spool row are written *into that spool file*, in the
  very transaction that deletes the row (``SpoolReceipts.release``, called by
  ``SpoolFile``): a kill -9 either keeps the row (it is resent, and settled, by whoever
  adopts the file: its receipt is written then) or deletes it with its receipt. No loss,
  no double count. Every ``MOVE_INTERVAL``, at ``flush()`` and before a file is removed,
  the pending totals move to the receipts store (``ReceiptStore``) under a watermark
  (the file's ``receipts_key`` and the last row moved, committed with the totals), so a
  crash between the two commits moves nothing twice.
* **Events that never reach a spool row** (no spool; a failed disk write; an event too
  large or unencodable before the write; a shutdown drop) are folded into the store
  straight after settlement: best effort, a crash in between loses their receipt.

Per-event rows are idempotent (keyed by eventId) and go straight to the store before
the spool row is deleted: a crash in between writes them again, never loses them.

The fold runs on the sender/spooler threads, never in ``track()``; values are those
encoded on the wire (from the event's tuple, or its body when read back from a spool
file), so ints and Decimals sum exactly and a float sums as the shortest decimal text it
was sent as.
"""

from __future__ import annotations

import decimal
import logging
import secrets
import sqlite3
import threading
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._model import DropReason
from ._receipts_store import (
    EXACT,
    EventRow,
    Fold,
    ReceiptStore,
    add,
    number,
    receipts_path,
    text_of,
)
from ._record import Pending, fold_facts

if TYPE_CHECKING:
    from ._spool.files import SpoolFile, StoredBatch

__all__ = [
    "DELIVERED",
    "FOLDED",
    "MOVE_INTERVAL",
    "SpoolReceipts",
    "make_receipts",
]

_log = logging.getLogger("enso_tracker")
_HOUR_NS: Final = 3_600_000_000_000

DELIVERED: Final = "delivered"
#: ``Pending.receipt`` of an event already folded: a second sighting adds nothing.
FOLDED: Final = "<folded>"
#: How often pending totals move from spool files to the receipts store.
MOVE_INTERVAL: Final = 1.0

#: In a spool file, totals written with the deletes of the rows they account for: one
#: entry of its ``meta`` table per transaction, ``receipts_pending:<seq, 16 digits>`` →
#: a msgpack list of [entity, metric, hour, outcome, count, sum], however many (entity,
#: metric, hour) the deleted rows touched. ``meta``, not a table of their own: a table
#: costs a 64 KiB page of the spool's ``max_spool_bytes`` before it holds anything.
#: ``receipts_seq`` (never decreasing) numbers them; ``receipts_key`` names the file to
#: the store's watermarks.
_PENDING: Final = "receipts_pending:"
_PENDING_END: Final = "receipts_pending;"  # the next character after ":"
_encode_pending = msgspec.msgpack.Encoder().encode
_decode_pending = msgspec.msgpack.Decoder(list[tuple[str, str, str, str, int, str]]).decode


def make_receipts(config: Any, identity: str) -> SpoolReceipts | None:
    """A tracker's receipts as its ``Config`` asks (None: off)."""
    level = config.receipts
    if level is None:  # on where there is a place for them: a spool, or a receipts_dir
        level = config.spool_dir is not None or config.receipts_dir is not None
    if not level:
        return None
    directory = config.receipts_dir or config.spool_dir
    store = ReceiptStore(
        receipts_path(directory, identity),
        level="events" if level == "events" else "totals",
        retention=config.receipts_retention,
        identity=identity,
    )
    return SpoolReceipts(store)


# ------------------------------------------------------------------ what an event was


class _Facts(msgspec.Struct):
    CustomerEntityId: str
    metric: str
    value: msgspec.Raw
    timestamp: str
    eventId: str = ""


_decode_facts = msgspec.json.Decoder(_Facts).decode


#: The facts of a spooled event whose body does not decode: nothing is known of it.
_UNKNOWN: Final = ("", "", "", time.strftime("%Y-%m-%dT%H", time.gmtime(0)), "0")


def facts_of(p: Pending) -> tuple[str, str, str, str, str]:
    """(eventId, entity, metric, UTC hour, value text) of a settled event read back from
    a spool file (``p.item`` is None), from its wire body: what Enso received (the
    timestamp's first 13 characters are its hour). An event still holding its record is
    folded from it instead (``_record.fold_facts``)."""
    if p.body:
        try:
            f = _decode_facts(p.body)
            value = bytes(f.value).decode()
            return f.eventId, f.CustomerEntityId, f.metric, f.timestamp[:13], value
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass
    return _UNKNOWN


def outcome_of(receipt: object) -> tuple[str, str | None, int | None, str | None]:
    """(outcome, Enso's code, status, message) of a settled event's ``Pending.receipt``
    (None: delivered; a ``DropReason``: dropped or rejected)."""
    if not isinstance(receipt, DropReason):
        return DELIVERED, None, None, None
    code = None if receipt.code is None else str(receipt.code)
    if receipt.kind == "rejected":
        tag = code if code is not None else f"http-{receipt.status}"
        return f"rejected:{tag}", code, receipt.status, receipt.message[:300]
    return f"dropped:{receipt.kind}", code, receipt.status, receipt.message[:300]


class SpoolReceipts:
    """One tracker's receipts: the fold of settled events, the writes into spool files,
    the moves to the store. Called on the sender and spooler threads (with a spool,
    under ``DiskSpool.lock``)."""

    def __init__(self, store: ReceiptStore) -> None:
        self.store = store
        self.events = store.level == "events"
        self.loose: Fold = {}
        self.event_rows: list[EventRow] = []
        self.next_move = 0.0
        #: The tracker's ledger (set by the tracker): a generated eventId is not stored
        #: with its event but rebuilt from the ledger's ``id_prefix`` (``_record.event_id_of``).
        self.ledger: Any = None
        self._hours: dict[int, str] = {}  # hour number → "YYYY-MM-DDTHH" (UTC)
        #: Without a spool, ``shutdown()`` may fold on the caller's thread while a sender
        #: thread that outlived its join still folds: one at a time.
        self._lock = threading.Lock()

    def note_all(self, settled: list[Pending]) -> None:
        """Settled events, each folded into its spool row's receipt (``p.row``) or the
        loose totals; the hot loop of receipts (one call per settled batch, inlined: the
        fields of an event tracked here come from its tuple, only those read back from a
        spool file are decoded from their body)."""
        loose = self.loose
        hours = self._hours
        events = self.event_rows if self.events else None
        prefix = self.ledger.id_prefix if self.ledger else ""
        for p in settled:
            receipt = p.receipt
            if receipt is FOLDED:
                continue  # a second sighting of an event already folded
            p.receipt = FOLDED
            item = p.item
            if item is None:  # read back from a spool file: from its body
                event_id, entity, metric, hour, text = facts_of(p)
                try:
                    amount = number(text)
                except (ValueError, decimal.InvalidOperation):
                    amount = 0
            else:
                event_id, entity, metric, value, ts = fold_facts(item, prefix)
                h = ts // _HOUR_NS
                cached = hours.get(h)
                if cached is None:
                    cached = hours[h] = time.strftime("%Y-%m-%dT%H", time.gmtime(h * 3600))
                hour = cached
                # A float as the shortest text it is sent as (msgspec writes the same).
                amount = Decimal(repr(value)) if isinstance(value, float) else value
            if receipt is None:
                outcome = DELIVERED
            else:
                outcome, code, status, message = outcome_of(receipt)
            row = p.row
            if row is None:
                target = loose
            elif (held := row.receipt) is not None:
                target = held
            else:
                target = row.receipt = {}
            key = (entity, metric, hour, outcome)
            slot = target.get(key)
            if slot is None:
                target[key] = [1, amount]
            else:
                slot[0] += 1
                total = slot[1]
                if type(total) is int and type(amount) is int:
                    slot[1] = total + amount
                else:
                    slot[1] = EXACT.add(Decimal(total), Decimal(amount))
            if events is not None:
                if receipt is None:
                    code = status = message = None
                events.append(
                    (event_id, entity, metric, hour, text_of(amount), outcome, code, status,
                     message, time.time())
                )  # fmt: skip

    def commit(self) -> list[tuple[str, str]]:
        """Write per-event rows and loose totals to the store (before any spool row of
        theirs is deleted); problems to report."""
        problems: list[tuple[str, str]] = []
        loose, rows = self.loose, self.event_rows
        self.loose, self.event_rows = {}, []
        try:
            self.store.record_events(rows)
            self.store.add_fold(loose)
        except Exception as exc:
            self.store.errors += 1
            problems.append(("error", f"cannot write receipts to {self.store.path}: {exc}"))
        return problems

    # -------------------------------------------------------------- in spool files

    def release(self, file: SpoolFile, db: sqlite3.Connection, rows: list[StoredBatch]) -> None:
        """Inside the transaction that deletes ``rows`` from ``file``: their totals, as
        pending rows of the same file. Never fails the transaction: should the insert
        fail (the statement alone is undone), the rows go without their receipt, logged."""
        merged: Fold = {}
        for row in rows:
            for key, (count, total) in (row.receipt or {}).items():
                slot = merged.get(key)
                if slot is None:
                    merged[key] = [count, total]
                else:
                    slot[0] += count
                    slot[1] = add(slot[1], total)
        if not merged:
            return
        body = _encode_pending([(*key, c, text_of(s)) for key, (c, s) in merged.items()])
        try:
            found = db.execute("SELECT value FROM meta WHERE key = 'receipts_seq'").fetchone()
            seq = int(found[0]) + 1 if found else 1
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('receipts_key', ?)",
                (secrets.token_hex(16),),
            )
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('receipts_seq', ?)", (str(seq),)
            )
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)", (f"{_PENDING}{seq:016d}", body)
            )
        except sqlite3.Error as exc:
            self.store.errors += 1
            _log.error("enso-tracker receipts: cannot write receipts in %s: %s", file.path, exc)

    def move(self, file: SpoolFile, db: sqlite3.Connection) -> bool:
        """Move ``file``'s pending totals to the store. True if some are left (the store
        could not take them now: the file must not be removed)."""
        try:
            blobs = db.execute(
                "SELECT key, value FROM meta WHERE key > ? AND key < ? ORDER BY key",
                (_PENDING, _PENDING_END),
            ).fetchall()
        except sqlite3.OperationalError:
            return False  # no meta table: nothing of ours in this file
        if not blobs:
            return False
        try:
            rows = [
                (int(key[len(_PENDING) :]), *t)
                for key, body in blobs
                for t in _decode_pending(body)
            ]
        except (msgspec.DecodeError, ValueError, TypeError) as exc:  # not ours: left as it is
            _log.error("enso-tracker receipts: unreadable receipts in %s: %s", file.path, exc)
            return True
        found = db.execute("SELECT value FROM meta WHERE key = 'receipts_key'").fetchone()
        source = found[0] if found else file.path
        try:
            self.store.apply(rows, source=source)
            db.execute("DELETE FROM meta WHERE key > ? AND key <= ?", (_PENDING, blobs[-1][0]))
        except Exception as exc:  # kept in the file, moved later: not lost, not counted
            _log.error(
                "enso-tracker receipts: cannot move receipts from %s (kept there, moved later): %s",
                file.path,
                exc,
            )
            return True
        return False

    def commit_settled(self, ledger: Any) -> list[tuple[str, str]]:
        """Without a spool: the events settled since the last call, folded and written
        (``flush()`` waits for this, like for a spool commit)."""
        with ledger.lock:
            finished, _ = ledger.take_finished_locked()
            if not finished:
                return []
            ledger.begin_commit_locked()
        try:
            with self._lock:
                self.note_all(finished)
                return self.commit()
        finally:
            with ledger.lock:
                ledger.end_commit_locked()

    def move_due(self, files: list[SpoolFile], *, now: float, force: bool = False) -> None:
        if not force and now < self.next_move:
            return
        self.next_move = now + MOVE_INTERVAL
        for file in files:
            file.move_receipts()
