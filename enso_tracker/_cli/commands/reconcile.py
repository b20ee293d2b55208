"""``enso-tracker reconcile FILE``: receipts against a usage export from Enso's dashboard.

The CSV has one row per (entity, metric, period) with what Enso counted: columns
``entity,metric,period,count,sum`` by default, other names through ``--map``. The
period's form sets the granularity (``YYYY-MM``: month, ``YYYY-MM-DD``: day,
``YYYY-MM-DDTHH`` or a full timestamp: hour; UTC). Only *delivered* receipts are
compared (what Enso accepted); the periods compared are those the file covers. Every
(entity, metric, period) whose figures differ is listed with both; exit 1 if any.
"""

from __future__ import annotations

import argparse
import csv
from decimal import Decimal, InvalidOperation
from typing import Final

from ..._errors import ConfigurationError
from ..._receipts import DELIVERED
from ..._receipts_query import Period, hour_bound
from ..._receipts_store import text_of
from .._output import EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, print_json, stderr_line
from .receipts import open_store

__all__ = ["Difference", "compare", "read_export"]

NAME = "reconcile"
COMMON = False
HELP = "compare receipts with a usage CSV exported from Enso; exit 1 if anything differs"

FIELDS: Final = ("entity", "metric", "period", "count", "sum")

Key = tuple[str, str, str]
#: (count or None when the file has no count column, sum)
Figures = tuple[int | None, Decimal]
Difference = tuple[Key, Figures | None, Figures | None]


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
    enso-tracker reconcile usage-2026-11.csv --dir /var/spool/enso
    enso-tracker reconcile export.csv --map entity=Customer,metric=Meter,period=Day,sum=Usage
    """
    parser.add_argument("file", metavar="FILE", help="usage CSV exported from Enso")
    parser.add_argument(
        "--dir",
        metavar="PATH",
        help="receipts store file, or the directory holding it "
        "(default: $ENSO_RECEIPTS_DIR, else $ENSO_SPOOL_DIR)",
    )
    parser.add_argument(
        "--map",
        metavar="FIELD=COLUMN,...",
        default="",
        help="column names of the file: entity, metric, period, count (optional), sum",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per difference")


def _mapping(text: str) -> dict[str, str]:
    names = {f: f for f in FIELDS}
    for part in filter(None, (p.strip() for p in text.split(","))):
        field, sep, column = part.partition("=")
        if not sep or field.strip() not in FIELDS or not column.strip():
            raise ConfigurationError(
                f"--map {part!r}: expected FIELD=COLUMN with FIELD one of {', '.join(FIELDS)}"
            )
        names[field.strip()] = column.strip()
    return names


def _period(text: str) -> tuple[str, Period]:
    value = text.strip()
    if len(value) == 7:
        hour_bound(value, "period")
        return value, "month"
    if len(value) == 10:
        hour_bound(value, "period")
        return value, "day"
    bound = hour_bound(value, "period")
    assert bound is not None
    return bound, "hour"


def read_export(path: str, mapping: str = "") -> tuple[dict[Key, Figures], Period]:
    """The export's figures per (entity, metric, period), and its granularity."""
    names = _mapping(mapping)
    found: dict[Key, Figures] = {}
    by: Period | None = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [names[f] for f in FIELDS if f != "count" and names[f] not in columns]
            if missing:
                raise ConfigurationError(
                    f"{path}: no column {', '.join(missing)} (columns: {', '.join(columns)}); "
                    "name them with --map"
                )
            has_count = names["count"] in columns
            for line, row in enumerate(reader, start=2):
                try:
                    period, kind = _period(row[names["period"]] or "")
                    total = Decimal((row[names["sum"]] or "").strip())
                    count = int((row[names["count"]] or "").strip()) if has_count else None
                except (ConfigurationError, InvalidOperation, ValueError) as exc:
                    raise ConfigurationError(f"{path}:{line}: {exc}") from None
                if by is None:
                    by = kind
                elif kind != by:
                    raise ConfigurationError(f"{path}:{line}: periods of mixed lengths")
                key = (row[names["entity"]], row[names["metric"]], period)
                if key in found:
                    old_count, old_total = found[key]
                    if count is not None and old_count is not None:
                        count += old_count
                    total += old_total
                found[key] = (count, total)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read it ({exc.strerror})") from None
    return found, by or "day"


def compare(ours: dict[Key, Figures], theirs: dict[Key, Figures]) -> list[Difference]:
    """Every key whose figures differ (a count is compared only where the export has one)."""
    out: list[Difference] = []
    for key in sorted(ours.keys() | theirs.keys(), key=lambda k: (k[2], k[0], k[1])):
        mine, other = ours.get(key), theirs.get(key)
        if mine is None or other is None:
            out.append((key, mine, other))
            continue
        same_count = other[0] is None or mine[0] == other[0]
        if not same_count or mine[1] != other[1]:
            out.append((key, mine, other))
    return out


def run(args: argparse.Namespace) -> int:
    try:
        theirs, by = read_export(args.file, args.map)
        periods = sorted(k[2] for k in theirs)
        with open_store(args) as store:
            ours: dict[Key, Figures] = {}
            if periods:
                since = hour_bound(periods[0], "since")
                last = periods[-1]
                for t in store.totals(since=since, by=by, outcome=DELIVERED):
                    if t.period <= last:
                        ours[(t.entity, t.metric, t.period)] = (t.count, Decimal(t.sum))
    except ConfigurationError as exc:
        stderr_line(f"enso-tracker reconcile: {exc}")
        return EXIT_USAGE
    differences = compare(ours, theirs)
    for (entity, metric, period), mine, other in differences:
        if args.json:
            print_json(
                {
                    "entity": entity,
                    "metric": metric,
                    "period": period,
                    "receipts": None if mine is None else {"count": mine[0], "sum": mine[1]},
                    "enso": None if other is None else {"count": other[0], "sum": other[1]},
                }
            )
        else:
            print(f"{period}  {entity}  {metric}  receipts: {_shown(mine)}  enso: {_shown(other)}")
    if not args.json:
        print(
            f"{len(differences)} of {len(ours.keys() | theirs.keys())} "
            f"(entity, metric, {by}) differ"
        )
    return EXIT_INCOMPLETE if differences else EXIT_OK


def _shown(figures: Figures | None) -> str:
    if figures is None:
        return "nothing"
    count, total = figures
    return f"sum {text_of(total)}" + ("" if count is None else f", count {count}")
