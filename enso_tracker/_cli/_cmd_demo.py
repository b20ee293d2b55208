"""``enso-tracker demo``: the main job against an embedded fake Enso (``make demo``)."""

from __future__ import annotations

import argparse

NAME = "demo"
COMMON = False  # no --base-url/--json: the demo runs against its own embedded fake
HELP = "track events from several threads into an embedded fake Enso, then check the books"


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
    enso-tracker demo
    enso-tracker demo --seconds 10 --threads 12 --quiet"""
    parser.add_argument("--seconds", type=float, default=4.0, help="how long the app runs")
    parser.add_argument("--threads", type=int, default=6, help="request-handler threads")
    parser.add_argument("--quiet", action="store_true", help="no live progress line")


def run(args: argparse.Namespace) -> int:
    from .._demo import run_demo  # imports the fake server: only for this command

    return run_demo(seconds=args.seconds, threads=args.threads, live=not args.quiet)
