"""``enso-tracker demo``: the main job against an embedded fake Enso (``make demo``)."""

from __future__ import annotations

import argparse

NAME = "demo"
COMMON = False  # no --base-url/--json: the demo runs against its own embedded fake
HELP = "track events from several threads into an embedded fake Enso, then check the books"


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
    enso-tracker demo
    enso-tracker demo --seconds 10 --threads 12 --quiet
    enso-tracker demo --crash     # kill -9 an app that tracks with a spool; a new one delivers"""
    parser.add_argument(
        "--seconds", type=float, help="how long the app runs (default 4; with --crash, 2)"
    )
    parser.add_argument("--threads", type=int, default=6, help="request-handler threads")
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
    parser.add_argument(
        "--crash",
        action="store_true",
        help="the durable spool: an app is kill -9'ed mid-stream, a new process delivers "
        "every event it had committed",
    )


def run(args: argparse.Namespace) -> int:
    if args.crash:
        from ..demo.crash import run_crash_demo

        return run_crash_demo(seconds=2.0 if args.seconds is None else args.seconds)
    from ..demo.live import run_demo  # imports the fake server: only for this command

    seconds = 4.0 if args.seconds is None else args.seconds
    return run_demo(seconds=seconds, threads=args.threads, live=not args.quiet)
