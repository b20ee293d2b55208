"""The ``enso-tracker`` command line (also ``python -m enso_tracker``).

Each command is a module with ``NAME``, ``HELP``, ``configure(parser)`` and
``run(args) -> int`` (the exit code), listed in :data:`COMMANDS`. One implementation of
the protocol: ``import`` delivers through the public :class:`~enso_tracker.Tracker`,
``send`` through :func:`~enso_tracker.send_events`, and ``doctor`` and the import's
preflight probe Enso with the same credentials handling and sender (``_http/probe.py``).
``fake-server`` runs :class:`~enso_tracker.testing.FakeEnso` in the foreground.

``spool`` (status, dead-letters, redrive, purge, export) works on a durable spool
directory through the public :class:`~enso_tracker.Spool` and sends nothing itself: a
redrive hands dead letters to the next tracker on the directory. ``doctor`` reports the
status of ``$ENSO_SPOOL_DIR`` when it is set.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType

from . import (
    _cmd_demo,
    _cmd_doctor,
    _cmd_fake_server,
    _cmd_import,
    _cmd_receipts,
    _cmd_reconcile,
    _cmd_send,
    _cmd_spool,
)
from ._args import build_parser
from ._output import EXIT_INTERRUPTED, setup_logging

__all__ = ["COMMANDS", "main"]

COMMANDS: tuple[ModuleType, ...] = (
    _cmd_import,
    _cmd_send,
    _cmd_doctor,
    _cmd_spool,
    _cmd_demo,
    _cmd_fake_server,
)
COMMANDS += (_cmd_receipts, _cmd_reconcile)  # docs/receipts.md


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(COMMANDS)
    args = parser.parse_args(argv)
    if getattr(args, "common", True):
        setup_logging()
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `enso-tracker ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    return code
