"""``Receipts(path)``: a receipts store read from outside any tracker (API and CLI).

Opens the store read-only (a tracker may be writing it meanwhile) and never changes it.
Totals are summed exactly here too: counts as ints, sums as ints or ``Decimal``s.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import msgspec

from ._errors import ConfigurationError
from ._receipts_store import Fold, add, number
from ._spool.trust import UntrustedFile, open_sqlite

__all__ = ["EventReceipt", "ReceiptTotal", "Receipts", "hour_bound"]

Period = Literal["hour", "day", "month"]
_CUT: dict[str, int] = {"hour": 13, "day": 10, "month": 7}


class ReceiptTotal(msgspec.Struct, frozen=True, kw_only=True):
    """Events settled with one outcome for one (entity, metric) in one UTC period."""

    entity: str
    metric: str
    #: ``YYYY-MM-DDTHH`` (by hour), ``YYYY-MM-DD`` (day) or ``YYYY-MM`` (month), UTC.
    period: str
    #: ``delivered``, ``rejected:<Enso's code>`` or ``dropped:<kind>``.
    outcome: str
    count: int
    #: Exact sum of the values as sent (an int, or a Decimal if any value had a fraction).
    sum: int | Decimal


class EventReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one event (``receipts="events"``)."""

    event_id: str
    entity: str
    metric: str
    #: UTC hour of the event's timestamp, ``YYYY-MM-DDTHH``.
    hour: str
    value: int | Decimal
    outcome: str
    #: Enso's error code (``"2002"``…) for a rejected event, else None.
    code: str | None
    status: int | None
    message: str | None
    #: When it was settled (Unix time, seconds).
    settled_at: float


def hour_bound(value: datetime | str | None, name: str) -> str | None:
    """A ``since``/``until`` as the hour text receipts are keyed by (UTC): a datetime
    (naive means UTC), or ``YYYY-MM``, ``YYYY-MM-DD``, ``YYYY-MM-DDTHH[...]``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        stamp = value if value.tzinfo is None else value.astimezone(UTC)
        return stamp.strftime("%Y-%m-%dT%H")
    if isinstance(value, str):
        text = value.strip().replace(" ", "T")
        try:
            if len(text) == 7:
                datetime.strptime(text, "%Y-%m")
                return text + "-01T00"
            if len(text) == 10:
                datetime.strptime(text, "%Y-%m-%d")
                return text + "T00"
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return hour_bound(parsed, name)
    raise ConfigurationError(
        f"{name}={value!r}: expected a datetime or YYYY-MM, YYYY-MM-DD, YYYY-MM-DDTHH[:MM]"
    )


class Receipts:
    """A receipts store (docs/receipts.md): ``Receipts(path)``, where ``path`` is the
    store's file (``receipts-<identity>.db``) or the directory holding exactly one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        full = os.path.abspath(os.fspath(path))
        if os.path.isdir(full):
            found = sorted(
                n for n in os.listdir(full) if n.startswith("receipts-") and n.endswith(".db")
            )
            if not found:
                raise ConfigurationError(f"{full}: no receipts store (receipts-*.db) in it")
            if len(found) > 1:
                raise ConfigurationError(
                    f"{full}: holds the receipts of {len(found)} identities ({', '.join(found)}); "
                    "pass the file of the one you want"
                )
            full = os.path.join(full, found[0])
        if not os.path.isfile(full):
            raise ConfigurationError(f"{full}: no such receipts store")
        self.path = full
        try:
            self._conn = open_sqlite(full, "ro", ours=False)
            self._conn.execute("SELECT 1 FROM totals LIMIT 1").fetchall()
        except (sqlite3.Error, UntrustedFile) as exc:
            raise ConfigurationError(f"{full}: not a readable receipts store ({exc})") from None

    def __repr__(self) -> str:
        return f"<Receipts {self.path}>"

    def __enter__(self) -> Receipts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def totals(
        self,
        *,
        entity: str | None = None,
        metric: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        by: Period = "hour",
        outcome: str | None = None,
    ) -> list[ReceiptTotal]:
        """Totals per (entity, metric, period, outcome), ordered by period, entity,
        metric, outcome. ``since`` is inclusive and ``until`` exclusive, to the hour
        (UTC); ``outcome`` filters exactly (``"delivered"``) or by prefix ending in a
        colon (``"rejected:"``)."""
        if by not in _CUT:
            raise ConfigurationError(f"by={by!r}: must be 'hour', 'day' or 'month'")
        where: list[str] = []
        params: list[str | int] = []
        for column, value in (("entity", entity), ("metric", metric)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        low, high = hour_bound(since, "since"), hour_bound(until, "until")
        if low is not None:
            where.append("hour >= ?")
            params.append(low)
        if high is not None:
            where.append("hour < ?")
            params.append(high)
        if outcome is not None:
            if outcome.endswith(":"):
                where.append("substr(outcome, 1, ?) = ?")
                params.extend([len(outcome), outcome])
            else:
                where.append("outcome = ?")
                params.append(outcome)
        sql = "SELECT entity, metric, hour, outcome, count, sum FROM totals"
        if where:
            sql += " WHERE " + " AND ".join(where)
        cut = _CUT[by]
        merged: Fold = {}
        for ent, met, hour, out, count, total in self._conn.execute(sql, params):
            key = (ent, met, hour[:cut], out)
            slot = merged.get(key)
            if slot is None:
                merged[key] = [count, number(total)]
            else:
                slot[0] += count
                slot[1] = add(slot[1], number(total))
        return [
            ReceiptTotal(entity=k[0], metric=k[1], period=k[2], outcome=k[3], count=c, sum=s)
            for k, (c, s) in sorted(merged.items(), key=lambda kv: (kv[0][2], *kv[0]))
        ]

    def lookup(self, event_id: str) -> EventReceipt | None:
        """What became of ``event_id`` (None: no per-event receipt, or older than the
        retention window; per-event receipts need ``receipts="events"``)."""
        found = self._conn.execute(
            "SELECT event_id, entity, metric, hour, value, outcome, code, status, message, at "
            "FROM events WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        if found is None:
            return None
        eid, ent, met, hour, value, out, code, status, message, at = found
        return EventReceipt(
            event_id=eid,
            entity=ent,
            metric=met,
            hour=hour,
            value=number(value),
            outcome=out,
            code=code,
            status=status,
            message=message,
            settled_at=at,
        )
