"""``enso-tracker receipts``: what trackers settled, from a receipts store.

``receipts`` prints totals (table, ``--json`` lines or ``--csv``); ``receipts lookup
EVENT_ID`` what became of one event. A thin layer over the public
:class:`enso_tracker.Receipts`; nothing here sends or changes anything.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Mapping

from ..._errors import ConfigurationError
from ..._receipts_query import Receipts, ReceiptTotal
from ..._receipts_store import text_of
from .._output import EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, print_json, stderr_line

__all__ = ["add_store_options", "open_store"]

NAME = "receipts"
COMMON = False
HELP = "totals of what trackers settled (delivered, rejected, dropped), or one event's fate"


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        metavar="PATH",
        help="receipts store file, or the directory holding it "
        "(default: $ENSO_RECEIPTS_DIR, else $ENSO_SPOOL_DIR)",
    )
    parser.add_argument("--since", help="first UTC hour/day/month, inclusive (e.g. 2026-11-01)")
    parser.add_argument("--until", help="UTC hour/day/month to stop at, exclusive")
    parser.add_argument("--entity", help="one customer entity only")
    parser.add_argument("--metric", help="one metric only")
    parser.add_argument(
        "--by", choices=("hour", "day", "month"), default="day", help="period (default: day)"
    )


def open_store(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Receipts:
    env = os.environ if environ is None else environ
    path = args.dir or env.get("ENSO_RECEIPTS_DIR") or env.get("ENSO_SPOOL_DIR")
    if not path:
        raise ConfigurationError("no receipts store: pass --dir, or set ENSO_RECEIPTS_DIR")
    return Receipts(path)


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
    enso-tracker receipts --dir /var/spool/enso --since 2026-11-01 --until 2026-12-01
    enso-tracker receipts --by month --entity ent_6CsgzAdRgTlzT_9O --csv > november.csv
    enso-tracker receipts lookup evt_4f2a…_0x1f
    """
    parser.add_argument("action", nargs="?", choices=("lookup",), help="lookup: one event")
    parser.add_argument("event_id", nargs="?", metavar="EVENT_ID", help="with lookup")
    add_store_options(parser)
    parser.add_argument("--outcome", help="delivered, rejected:2002, dropped:shutdown, rejected:")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per line")
    out.add_argument("--csv", action="store_true", help="CSV with a header row")


def run(args: argparse.Namespace) -> int:
    if args.action == "lookup" and not args.event_id:
        stderr_line("enso-tracker receipts lookup: give the EVENT_ID")
        return EXIT_USAGE
    if args.action is None and args.event_id:
        stderr_line(f"enso-tracker receipts: unexpected {args.event_id!r} (did you mean lookup?)")
        return EXIT_USAGE
    try:
        store = open_store(args)
        with store:
            if args.action == "lookup":
                return _lookup(store, args)
            rows = store.totals(
                entity=args.entity,
                metric=args.metric,
                since=args.since,
                until=args.until,
                by=args.by,
                outcome=args.outcome,
            )
    except ConfigurationError as exc:
        stderr_line(f"enso-tracker receipts: {exc}")
        return EXIT_USAGE
    _print_totals(rows, as_json=args.json, as_csv=args.csv)
    return EXIT_OK


def _lookup(store: Receipts, args: argparse.Namespace) -> int:
    found = store.lookup(args.event_id)
    if found is None:
        stderr_line(
            f"no receipt for {args.event_id!r} (per-event receipts need receipts='events' "
            "and are kept 35 days by default)"
        )
        return EXIT_INCOMPLETE
    if args.json:
        print_json(found)
        return EXIT_OK
    for field in found.__struct_fields__:
        value = getattr(found, field)
        print(f"{field:<11} {value if value is not None else '-'}")
    return EXIT_OK


def _print_totals(rows: list[ReceiptTotal], *, as_json: bool, as_csv: bool) -> None:
    if as_json:
        for row in rows:
            print_json(row)
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["entity", "metric", "period", "outcome", "count", "sum"])
        for r in rows:
            writer.writerow([r.entity, r.metric, r.period, r.outcome, r.count, text_of(r.sum)])
        return
    table = [("PERIOD", "ENTITY", "METRIC", "OUTCOME", "COUNT", "SUM")]
    table += [(r.period, r.entity, r.metric, r.outcome, str(r.count), text_of(r.sum)) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(6)]
    for line in table:
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in pairs]
        print("  ".join(cells).rstrip())
    if len(table) == 1:
        print("(no receipts match)")
