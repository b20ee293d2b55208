"""``enso-tracker spool dead-letters``, ``redrive`` and ``purge``: the dead letters listed,
handed back to the next tracker on the directory, or deleted."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .... import DeadLetter, Spool
from ..._args import positive
from ..._output import EXIT_OK, json_line, print_json, stderr_line
from ...format import iso, plural, printable
from .common import action_parser, add_filters, described, usage
from .export import export_row

__all__ = ["add_dead_letters", "add_purge", "add_redrive"]


def add_dead_letters(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = action_parser(
        sub,
        "dead-letters",
        "list the dead letters: one line each (or JSONL with --json)",
        "examples:\n  enso-tracker spool dead-letters --kind rejected --code 2002\n"
        "  enso-tracker spool dead-letters --json --limit 100 | jq .eventId",
        dead_letters,
    )
    add_filters(parser)
    parser.add_argument("--limit", type=positive, metavar="N", help="at most N dead letters")


def add_redrive(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = action_parser(
        sub,
        "redrive",
        "move dead letters back to be delivered by the next tracker on the directory",
        "examples:\n  enso-tracker spool redrive --kind rejected --code 2002\n"
        "  enso-tracker spool redrive --kind retries_exhausted\n\n"
        "The events keep their eventIds, so Enso counts each once even if it had one. A\n"
        "tracker already running on the directory adopts them within a minute.",
        redrive,
    )
    add_filters(parser)


def add_purge(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = action_parser(
        sub,
        "purge",
        "delete dead letters for good",
        "examples:\n  enso-tracker spool purge --kind too_large --yes\n"
        "  enso-tracker spool export --purge -o kept.jsonl   # a copy, then exactly those\n"
        "  enso-tracker spool purge --through 418 --yes       # the ID `export` printed\n\n"
        "Trackers may store dead letters at any time: `purge` without --through deletes\n"
        "those stored after you looked too. Without --yes it asks on a terminal, and\n"
        "refuses (exit 2) when stdin is not one.",
        purge,
    )
    add_filters(parser)
    parser.add_argument(
        "--through",
        type=positive,
        metavar="ID",
        help="only dead letters up to this one (the ID `export` printed): never those "
        "stored after the export",
    )
    parser.add_argument(
        "--yes", action="store_true", help="do not ask (required when stdin is not a terminal)"
    )


def dead_letters(args: argparse.Namespace, spool: Spool, path: str) -> int:
    shown = 0
    for letter in spool.dead_letters(kind=args.kind, code=args.code):
        if args.limit is not None and shown >= args.limit:
            break
        shown += 1
        if args.json:
            print(json_line(_listing(letter)))
        else:
            print(_line(letter))
    if not args.json:
        more = " (--limit reached)" if args.limit is not None and shown >= args.limit else ""
        stderr_line(f"{plural(shown, 'dead letter')}{described(args)}{more}")
    sys.stdout.flush()
    return EXIT_OK


def _listing(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as ``export`` writes it (one vocabulary with ``import``'s errors
    file: the event in the API's shape and a ``deadLetter`` member), and its size."""
    return {**export_row(letter), "bytes": len(letter.body)}


def _line(letter: DeadLetter) -> str:
    e = letter.event
    r = letter.reason
    if e is None:
        head = f"- (corrupt record, {len(letter.body)} bytes)"
    else:
        head = f"{printable(e.event_id)}  {printable(e.entity)}  {printable(e.metric)}  {e.value}"
    code = "-" if r.code is None else printable(str(r.code))
    status = "-" if r.status is None else str(r.status)
    return (
        f"{head}  {r.kind}  code={code}  status={status}  stored {iso(letter.stored_at)}"
        f"  {printable(r.message)}"
    )


def redrive(args: argparse.Namespace, spool: Spool, path: str) -> int:
    n = spool.redrive(kind=args.kind, code=args.code)
    if args.json:
        print_json({"redriven": n, "exit_code": EXIT_OK})
    elif n:
        print(
            f"redrove {plural(n, 'dead letter')}{described(args)} into a new "
            f"spool file in {printable(path)}: the next tracker started on this directory "
            "(spool_dir or ENSO_SPOOL_DIR) delivers them with their eventIds, and a tracker "
            "already running on it adopts them within a minute"
        )
    else:
        print(f"no dead letters{described(args)}: nothing redriven")
    return EXIT_OK


def purge(args: argparse.Namespace, spool: Spool, path: str) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            return usage(
                args,
                "purge deletes dead letters for good: pass --yes to confirm "
                "(stdin is not a terminal, so there is no one to ask)",
            )
        count = sum(
            1
            for d in spool.dead_letters(kind=args.kind, code=args.code)
            if args.through is None or d.id <= args.through
        )
        if count == 0:
            return _purged(args, 0)
        sys.stderr.write(
            f"delete {plural(count, 'dead letter')}{described(args)} from "
            f"{printable(path)} for good? (`enso-tracker spool export` keeps a copy) [y/N] "
        )
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            stderr_line("nothing purged")
            return EXIT_OK
    return _purged(
        args, spool.purge_dead_letters(kind=args.kind, code=args.code, through=args.through)
    )


def _purged(args: argparse.Namespace, n: int) -> int:
    if args.json:
        print_json({"purged": n, "exit_code": EXIT_OK})
    else:
        print(f"purged {plural(n, 'dead letter')}{described(args)}")
    return EXIT_OK
