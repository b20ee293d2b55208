"""What the ``spool`` actions share: their exit codes, the parser every action starts from
(``--dir``, ``--json``, the exit-code epilog), the dead-letter filters, usage errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Final

from .... import Spool
from ...._spool.dead_letters import DEAD_KINDS
from ..._output import EXIT_USAGE, stderr_line
from ...format import printable

__all__ = [
    "EXIT_UNREADABLE",
    "Action",
    "action_parser",
    "add_filters",
    "described",
    "os_error",
    "usage",
]

#: What an action runs: (its parsed flags, the spool, the directory as given) -> exit code.
Action = Callable[[argparse.Namespace, Spool, str], int]

EXIT_UNREADABLE: Final = 3


SPOOL_EXIT_CODES: Final = """\
exit codes:
  0    done (status: no dead letters, corrupt, unreadable or unsupported files)
  1    status: the directory holds dead letters, corrupt, unreadable or unsupported files
  2    usage error: no --dir and no $ENSO_SPOOL_DIR, no such directory, bad flag, or
       purge without --yes when stdin is not a terminal; nothing was changed
  3    the dead-letter store cannot be read: damaged, or this user cannot open it
       (permission denied, locked); nothing was changed
  130  interrupted"""


def add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=DEAD_KINDS, help="only dead letters of this kind")
    parser.add_argument(
        "--code",
        metavar="CODE",
        help="only dead letters with Enso's error code CODE (compared as text: 2002)",
    )


def usage(args: argparse.Namespace, message: str) -> int:
    stderr_line(f"enso-tracker spool {args.spool_action}: {message}")
    return EXIT_USAGE


def described(args: argparse.Namespace) -> str:
    parts = []
    if getattr(args, "kind", None):
        parts.append(f"kind={args.kind}")
    if getattr(args, "code", None) is not None:
        parts.append(f"code={printable(args.code)}")
    return f" ({', '.join(parts)})" if parts else ""


def os_error(exc: OSError) -> str:
    what = exc.strerror or type(exc).__name__
    return f"{what}: {exc.filename}" if exc.filename else what


def action_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_: str,
    examples: str,
    action: Action,
) -> argparse.ArgumentParser:
    """The parser of one action, with the flags every action takes."""
    child = sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=examples + "\n\n" + SPOOL_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    child.add_argument(
        "--dir",
        metavar="DIR",
        help="the spool directory (default: $ENSO_SPOOL_DIR)",
    )
    child.add_argument("--json", action="store_true", help="machine-readable output")
    child.set_defaults(spool_run=action)
    return child
