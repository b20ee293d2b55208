"""``python -m enso_tracker demo``: the main job, against an embedded fake Enso."""

from __future__ import annotations

import argparse
import sys

from ._demo import run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enso_tracker")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="track events from several threads into a fake Enso")
    demo.add_argument("--seconds", type=float, default=4.0, help="how long the app runs")
    demo.add_argument("--threads", type=int, default=6, help="request-handler threads")
    demo.add_argument("--quiet", action="store_true", help="no live progress line")
    args = parser.parse_args(argv)
    return run_demo(seconds=args.seconds, threads=args.threads, live=not args.quiet)


if __name__ == "__main__":
    sys.exit(main())
