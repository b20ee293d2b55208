"""``enso-tracker spool export``: dead letters (or undelivered events) as JSONL in the
API's shape, which ``enso-tracker import`` reads as is; ``--purge`` then deletes exactly
the dead letters written, never one stored meanwhile."""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from .... import DeadLetter, Event, Spool
from ..._output import EXIT_OK, json_line, print_json, stderr_line
from ...format import iso, plural, printable
from ...importer.mapping import api_shape
from .common import action_parser, add_filters, os_error, usage

__all__ = ["add_export", "event_row", "export_row"]


def add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = action_parser(
        sub,
        "export",
        "write dead letters (default) or undelivered events as JSONL in the API's shape",
        "examples:\n  enso-tracker spool export -o dead-letters.jsonl\n"
        "  enso-tracker spool export --pending | gzip > pending.jsonl.gz\n"
        "  enso-tracker import dead-letters.jsonl   # once fixed: same eventIds, billed once\n\n"
        "One JSON object per line in the API's shape (CustomerEntityId, metric, value,\n"
        "timestamp, eventId, metadata, JobId) that `enso-tracker import` reads as is; a dead\n"
        'letter adds "deadLetter": {kind, code, status, message, storedAt}. A corrupt record\n'
        'is {"deadLetter": {...}, "corruptBodyBase64": "..."}.',
        export,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--dead-letters",
        dest="pending",
        action="store_false",
        default=False,
        help="the dead letters, each with a deadLetter member (the default)",
    )
    which.add_argument(
        "--pending",
        dest="pending",
        action="store_true",
        help="the undelivered events in the spool files, oldest first (a snapshot)",
    )
    add_filters(parser)
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE (replaced only once complete) instead of stdout",
    )
    parser.add_argument(
        "--purge",
        action="store_true",
        help="then delete exactly the dead letters exported (one transaction, once the "
        "output is complete): never one stored meanwhile",
    )


class _Seen:
    """What an export wrote: its highest ``DeadLetter.id`` (the watermark ``purge
    --through`` takes)."""

    def __init__(self) -> None:
        self.through = 0

    def rows(self, letters: Iterable[DeadLetter]) -> Iterable[str]:
        for letter in letters:
            self.through = max(self.through, letter.id)
            yield json_line(export_row(letter))


def export(args: argparse.Namespace, spool: Spool, path: str) -> int:
    if args.pending and (args.kind or args.code is not None):
        return usage(args, "--kind and --code filter dead letters, not --pending")
    if args.pending and args.purge:
        return usage(args, "--purge deletes exported dead letters, not --pending events")
    lines: Iterable[str]
    seen = _Seen()
    # Letters stored (or stored again) from now on are never purged by this export.
    started = time.time()
    if args.pending:
        lines = (json_line(event_row(e)) for e in spool.pending())
        what = "undelivered event"
    else:
        lines = seen.rows(spool.dead_letters(kind=args.kind, code=args.code))
        what = "dead letter"
    to_stdout = args.output in (None, "-")
    if to_stdout:
        n = _write(lines, sys.stdout)
        sys.stdout.flush()
    else:
        target: str = args.output
        temp = f"{target}.tmp-{os.getpid()}"
        try:
            out = open(temp, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            return usage(args, f"cannot write {target}: {os_error(exc)}")
        try:
            with out:
                n = _write(lines, out)
                out.flush()
                os.fsync(out.fileno())  # on disk before anything is deleted
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temp)
            raise
    purged: int | None = None
    if args.purge:
        # Only what was written above: numbered up to the last one exported, and stored
        # before the export began (a letter stored again since then is new information).
        purged = (
            spool.purge_dead_letters(
                kind=args.kind, code=args.code, through=seen.through, stored_before=started
            )
            if n
            else 0
        )
    through = seen.through if not args.pending and n else None
    if args.json:
        report: dict[str, Any] = {"exported": n, "pending": args.pending, "through": through}
        if not to_stdout:
            report["path"] = os.path.abspath(args.output)
        if purged is not None:
            report["purged"] = purged
        report["exit_code"] = EXIT_OK
        if not to_stdout:  # (on stdout, the lines alone: a JSONL stream)
            print_json(report)
        return EXIT_OK
    where = "" if to_stdout else f" to {printable(args.output)}"
    message = f"exported {plural(n, what)}{where}"
    if purged is not None:
        message += f", then purged {plural(purged, 'dead letter')} (exactly those exported)"
    elif through is not None:
        filters = "".join(
            f" --{k} {printable(str(v))}"
            for k, v in (("kind", args.kind), ("code", args.code))
            if v is not None
        )
        message += (
            f" (through #{through}); to delete exactly these and none stored since: "
            f"enso-tracker spool purge{filters} --through {through} --yes"
        )
    if to_stdout:
        stderr_line(message)
    else:
        print(message)
    return EXIT_OK


def _write(lines: Iterable[str], out: IO[str]) -> int:
    n = 0
    for line in lines:
        out.write(line + "\n")
        n += 1
    return n


def event_row(e: Event) -> dict[str, Any]:
    """The API's own shape: what ``enso-tracker import`` reads with no mapping, eventId
    included, so a re-import bills nothing twice."""
    return api_shape(e.entity, e.metric, e.value, e.timestamp, e.event_id, e.metadata, e.job_id)


def export_row(letter: DeadLetter) -> dict[str, Any]:
    r = letter.reason
    info = {
        "kind": r.kind,
        "code": r.code,
        "status": r.status,
        "message": r.message,
        "storedAt": iso(letter.stored_at),
    }
    if letter.event is None:
        return {"deadLetter": info, "corruptBodyBase64": base64.b64encode(letter.body).decode()}
    return {**event_row(letter.event), "deadLetter": info}
