"""``enso-tracker spool``: a durable spool directory, with or without a tracker running on it.

``status``, ``dead-letters``, ``redrive``, ``purge`` and ``export`` are thin layers over the
public :class:`enso_tracker.Spool`: nothing here reads the files itself, and nothing here
sends anything. A redrive moves dead letters into a spool file that the next tracker on
the directory adopts and delivers, with their eventIds, so Enso counts each once.

Each action is a module that owns its parser (``add_<action>(sub)``, as twine's commands
do) and its work: ``status`` (and doctor's ``spool_check``), ``letters`` (dead-letters,
redrive, purge), ``export``; ``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import os
import sqlite3

from .... import Spool
from ...._errors import ConfigurationError
from ...._spool.admin import cannot_open
from ...._spool.dead_letters import FILE_NAME as DEAD_LETTERS
from ...._spool.errors import SpoolCorrupt
from ...._spool.sqlite import is_corrupt
from ..._output import print_json, setup_logging, stderr_line
from ...format import printable
from .common import EXIT_UNREADABLE, Action, os_error, usage
from .export import add_export
from .letters import add_dead_letters, add_purge, add_redrive
from .status import add_status

NAME = "spool"
#: No --base-url: these commands never talk to Enso. Each action has its own --json.
COMMON = False
HELP = "inspect a spool directory: status, dead letters, redrive, purge, export"


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
      enso-tracker spool status --dir /var/spool/enso
      ENSO_SPOOL_DIR=/var/spool/enso enso-tracker spool dead-letters --code 2002
      enso-tracker spool export -o dead-letters.jsonl        # then fix the cause, and:
      enso-tracker spool redrive --kind rejected --code 2002  # the next tracker delivers them
      enso-tracker spool export --purge -o kept.jsonl         # keep a copy, delete just those

    Every action takes --dir DIR (default: $ENSO_SPOOL_DIR) and --json, after the action.
    Exit codes of the spool actions: 0 done; 1 `status` found dead letters, corrupt,
    unreadable or unsupported files; 2 usage error (no directory, bad flag, purge without
    --yes when stdin is not a terminal), nothing changed; 3 the dead-letter store cannot be
    read (damaged, permission denied), nothing changed; 130 interrupted. They send nothing
    to Enso."""
    sub = parser.add_subparsers(dest="spool_action", required=True, metavar="ACTION")
    for add in (add_status, add_dead_letters, add_redrive, add_purge, add_export):
        add(sub)


def run(args: argparse.Namespace) -> int:
    setup_logging()  # COMMON = False: main() leaves it to us
    path = args.dir or os.environ.get("ENSO_SPOOL_DIR") or None
    if path is None:
        return usage(args, "no spool directory: pass --dir DIR or set ENSO_SPOOL_DIR")
    try:
        spool = Spool(path)
    except ConfigurationError as exc:
        return usage(args, str(exc))
    except OSError as exc:
        return usage(args, os_error(exc))
    action: Action = args.spool_run
    try:
        return action(args, spool, path)
    except ConfigurationError as exc:
        return usage(args, str(exc))
    except OSError as exc:
        return usage(args, os_error(exc))
    except (SpoolCorrupt, sqlite3.Error) as exc:
        return _unreadable(args, spool, exc)


def _unreadable(args: argparse.Namespace, spool: Spool, exc: Exception) -> int:
    """The dead-letter store could not be read: one line saying why and what to do."""
    store = os.path.join(spool.path, DEAD_LETTERS)
    if isinstance(exc, SpoolCorrupt) or is_corrupt(exc):
        why = (
            f"it is damaged ({printable(str(exc).removeprefix(store + ': '))}); the next tracker "
            "started on this directory renames it aside (*.corrupt-*) and starts a new one"
        )
    else:
        why = f"{cannot_open(store, exc)}; run as the user that owns the directory"
    stderr_line(
        f"enso-tracker spool {args.spool_action}: cannot read the dead-letter store "
        f"{printable(store)}: {why}; nothing was changed"
    )
    if args.json:
        print_json({"error": "unreadable", "path": store, "exit_code": EXIT_UNREADABLE})
    return EXIT_UNREADABLE
