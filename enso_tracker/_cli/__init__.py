"""The ``enso-tracker`` command line (also ``python -m enso_tracker``).

Layout: ``commands/`` (one module per command, each with ``NAME``, ``HELP``,
``configure(parser)`` and ``run(args) -> int``, listed in :data:`COMMANDS`),
``importer/`` (what ``import`` runs on), ``demo/`` (``enso-tracker demo``), and beside
them ``_args`` (the parser, credentials from the environment), ``_output`` (exit codes,
JSON and log output) and ``format`` (human formatting of counts, sizes, ages).

One implementation of the protocol: ``import`` delivers through the public
:class:`~enso_tracker.Tracker`, ``send`` through :func:`~enso_tracker.send_events`, and
``doctor`` and the import's preflight probe Enso with the same credentials handling and
sender (``_http/probe.py``).
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

from ._args import build_parser
from ._output import EXIT_INTERRUPTED, setup_logging
from .commands import demo, doctor, fake_server, import_, receipts, reconcile, send, spool

__all__ = ["COMMANDS", "main"]

COMMANDS: tuple[ModuleType, ...] = (
    import_,
    send,
    doctor,
    spool,
    demo,
    fake_server,
)
COMMANDS += (receipts, reconcile)  # docs/receipts.md


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
