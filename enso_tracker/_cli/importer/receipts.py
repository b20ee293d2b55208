"""An import run's own receipts: what the receipts store gained during the run, per
(entity, metric, outcome), for the summary (docs/receipts.md, "Backfills").

The store may already hold the totals of earlier runs (that is the point: one store per
backfill, reconciled as a whole), so the run's figures are the store's totals after the
run minus those before it. They are this run's only if nothing else wrote the store
meanwhile (another shard, an application with the same ``receipts_dir``): the delivered
count is checked against the tracker's own ``stats().delivered``, and the summary says
when they differ instead of claiming the figures.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TextIO

from ..._errors import ConfigurationError
from ..._receipts import DELIVERED
from ..._receipts_query import Receipts
from ..._receipts_store import add, text_of
from .._output import clean

if TYPE_CHECKING:
    from ..._tracker import Tracker

__all__ = ["RunReceipts", "write_summary"]

Key = tuple[str, str, str]  # (entity, metric, outcome)
Folded = dict[Key, tuple[int, int | Decimal]]


def _fold(path: str) -> Folded:
    """The store's totals per (entity, metric, outcome), all periods; none without a
    store yet. ``ConfigurationError`` if it cannot be read."""
    if not os.path.exists(path):
        return {}
    out: Folded = {}
    with Receipts(path) as store:
        for t in store.totals(by="month"):
            key = (t.entity, t.metric, t.outcome)
            count, total = out.get(key, (0, 0))
            out[key] = (count + t.count, add(total, t.sum))
    return out


class RunReceipts:
    """The store's totals when the run starts; ``result()`` at the end of the run."""

    def __init__(self, tracker: Tracker) -> None:
        self.path: str = tracker._worker.receipts.store.path
        self._delivered = tracker.stats().delivered  # adopted events may go before we look
        self.problem: str | None = None
        try:
            self._before = _fold(self.path)
        except ConfigurationError as exc:
            self.problem = str(exc)
            self._before = {}

    def result(self, tracker: Tracker) -> dict[str, Any]:
        """The run's receipts (after ``shutdown()``: every settled event written):
        ``delivered`` per (entity, metric), ``other`` outcomes (rejected, dropped), and
        ``matches_stats``: whether the store's delivered count grew by exactly the events
        this run delivered (False: another writer, or receipt writes that failed)."""
        delivered = tracker.stats().delivered - self._delivered
        out: dict[str, Any] = {"store": self.path, "delivered": [], "other": []}
        if self.problem is None:
            try:
                after = _fold(self.path)
            except ConfigurationError as exc:
                self.problem = str(exc)
                after = {}
        if self.problem is not None:
            out.update(matches_stats=False, problem=self.problem)
            return out
        counted = 0
        for key in sorted(after):
            count, total = after[key]
            was_count, was_total = self._before.get(key, (0, 0))
            if count == was_count:
                continue
            entity, metric, outcome = key
            n = count - was_count
            row: dict[str, Any] = {"entity": entity, "metric": metric, "count": n}
            # copy_negate: exact (a unary minus would round to the default context)
            row["sum"] = add(
                total, -was_total if isinstance(was_total, int) else was_total.copy_negate()
            )
            if outcome == DELIVERED:
                out["delivered"].append(row)
                counted += n
            else:
                out["other"].append({**row, "outcome": outcome})
        out["matches_stats"] = counted == delivered
        return out


#: Lines of per-(entity, metric) receipts in the text summary; --json has them all.
RECEIPT_LINES = 20


def write_summary(out: TextIO, receipts: dict[str, Any]) -> None:
    out.write(f"receipts of this run (in {clean(receipts['store'])}):\n")
    if receipts.get("problem"):
        out.write(f"  cannot read the store: {clean(receipts['problem'])}\n")
        return
    rows = [
        (r["entity"], r["metric"], "delivered", r["count"], r["sum"]) for r in receipts["delivered"]
    ]
    rows += [
        (r["entity"], r["metric"], r["outcome"], r["count"], r["sum"]) for r in receipts["other"]
    ]
    for entity, metric, outcome, count, total in rows[:RECEIPT_LINES]:
        label = clean(f"{entity} {metric} {outcome}")
        out.write(f"  {label:<46}{count:>10,}  sum {text_of(total)}\n")
    if len(rows) > RECEIPT_LINES:
        out.write(f"  ... {len(rows) - RECEIPT_LINES:,} more: --json lists them all\n")
    if not receipts["matches_stats"]:
        out.write(
            "  the store's delivered count did not grow by this run's deliveries: another "
            "process wrote it meanwhile, or a receipt write failed (see the log)\n"
        )
