"""The summary ``import`` prints at the end: the books as JSON (``--json``), or for a
human: counts, invalid rows by reason, drops by reason, receipts, the errors files, and a
verdict line naming the exit code."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._output import clean, print_json
from .engine import Importer
from .receipts import write_summary

__all__ = ["print_summary"]


def print_summary(
    args: argparse.Namespace, imp: Importer, written: list[dict[str, Any]], code: int
) -> None:
    books = imp.books()
    books["errors_files"] = written
    books["invalid_reasons"] = imp.invalid_reasons()
    books["exit_code"] = code
    receipts = books["receipts"] = (
        imp.receipts.result(imp.tracker) if imp.receipts and imp.tracker else None
    )
    if args.json:
        print_json(books)
        return
    out = sys.stdout
    title = "dry run (nothing sent)" if imp.dry_run else "the books"
    out.write(f"== enso-tracker import: {title} ==\n")
    rows = [("rows read", books["rows_read"])]
    if imp.shard:
        rows.append((f"  in other shards than {books['shard']}", books["other_shards"]))
    rows.append(("invalid", books["invalid"]))
    if not imp.dry_run:
        rows += [("accepted", books["accepted"]), ("delivered", books["delivered"])]
        rows.append(("dropped", sum(books["dropped"].values())))
        rows += [(f"  {kind}", n) for kind, n in sorted(books["dropped"].items())]
    else:
        rows.append(("valid", books["valid"]))
    for label, n in rows:
        out.write(f"{label:<32}{n:>10,}\n")
    if books["invalid_reasons"]:
        out.write("invalid rows by reason:\n")
    for r in books["invalid_reasons"]:
        first = f" (first: {clean(r['first'])})" if r.get("first") else ""
        label = f"{r['field']}: " if r["field"] else ""
        out.write(f"  {r['count']:>8,} x {clean(label + r['reason'])}{first}\n")
    if imp.drop_reasons:
        out.write("dropped because:\n")
    for reason, n in sorted(imp.drop_reasons.items(), key=lambda item: -item[1]):
        out.write(f"  {n:>8,} x {reason}\n")
    if receipts is not None:
        write_summary(out, receipts)
    for f in written:
        out.write(f"errors file: {f['path']} ({f['records']} records)\n")
    if imp.damaged:
        out.write(f"damaged input: {clean(imp.damaged)}\n")
    if imp.stopped:
        out.write(
            f"stopped: {imp.stopped}. {imp.rerun_advice} to finish: rows already "
            "delivered keep their eventIds and are not billed again.\n"
        )
    verdict = {
        0: "every valid row delivered" if not imp.dry_run else "every row valid",
        1: "some rows invalid or refused by Enso: see the errors file",
        3: "some rows not delivered: re-run the same command",
        4: "an input could not be read to its end: replace it, then re-run the command",
        130: "interrupted: re-run the same command",
    }.get(code, "")
    out.write(f"exit {code}: {verdict}\n")
    out.flush()
