"""``enso-tracker fake-server``: :class:`~enso_tracker.testing.FakeEnso` in the foreground.

For trying the CLI without an Enso account, and for integration tests of clients in
other languages. The first line on stdout says where it listens and which key it takes
(``ENSO_BASE_URL=… ENSO_API_KEY=…``, or one JSON object with ``--json``), flushed at once
so a parent process can read it; SIGINT or SIGTERM stop it cleanly (exit 0), with what
it received on stderr. Plain HTTP: it binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

from ..._config_checks import is_loopback_host
from .._output import EXIT_OK, EXIT_USAGE, print_json, stderr_line

NAME = "fake-server"
COMMON = False  # it is the server: no --base-url
HELP = "run a fake Enso (enso_tracker.testing.FakeEnso) until Ctrl-C, printing its URL"


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a probability from 0 to 1")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port from 0 (any free) to 65535")
    return int(text)


def _client(text: str) -> tuple[str, str]:
    key, sep, secret = text.partition(":")
    if not sep or not key or not secret:
        raise argparse.ArgumentTypeError("expected CLIENT_KEY:CLIENT_SECRET")
    return key, secret


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
  enso-tracker fake-server --port 8089 --entity ent_1 --entity ent_2
  enso-tracker fake-server --fail-rate 0.2 --status 503      # one batch in five fails
  enso-tracker fake-server --json > server.json &           # {"url": ..., "api_key": ...}

Then, in another shell (the first line printed is these two variables):
  ENSO_BASE_URL=http://127.0.0.1:8089 ENSO_API_KEY=test-api-key \\
      enso-tracker send ent_1 api_calls 1"""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="port to bind (0: any free one)")
    parser.add_argument(
        "--entity",
        metavar="ID",
        action="append",
        help="a CustomerEntityId that exists (repeatable); others are refused with 2002. "
        "Default: every id exists",
    )
    parser.add_argument(
        "--api-key", default="test-api-key", help="the bearer key it accepts (test-api-key)"
    )
    parser.add_argument(
        "--client",
        metavar="KEY:SECRET",
        type=_client,
        action="append",
        help="client credentials that /auth/system-login accepts (repeatable)",
    )
    faults = parser.add_argument_group("faults (batch requests)")
    faults.add_argument(
        "--fail-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="answer this share of batch requests with --status, storing nothing",
    )
    faults.add_argument(
        "--status", type=int, default=503, help="status of those failures (default 503)"
    )
    faults.add_argument(
        "--lost-answer-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="store this share of batches, then drop the connection before answering",
    )
    faults.add_argument("--seed", type=int, default=0, help="for reproducible faults")
    faults.add_argument(
        "--max-body-bytes", type=int, metavar="N", help="answer 413 to larger bodies"
    )
    parser.add_argument("--json", action="store_true", help="the first line as a JSON object")


def run(args: argparse.Namespace) -> int:
    from ...testing import FakeEnso  # the test server: imported for this command only

    if not 400 <= args.status <= 599:
        stderr_line(f"enso-tracker fake-server: --status {args.status}: expected 4xx or 5xx")
        return EXIT_USAGE
    if args.fail_rate + args.lost_answer_rate > 1.0:
        stderr_line("enso-tracker fake-server: --fail-rate + --lost-answer-rate exceed 1")
        return EXIT_USAGE
    fake = FakeEnso(
        api_keys=(args.api_key,),
        client_credentials=dict(args.client or ()),
        known_entities=args.entity,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
    )
    fake.chaos(args.fail_rate, args.lost_answer_rate, args.seed, status=args.status)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            fake.start()
        except OSError as exc:
            stderr_line(
                f"enso-tracker fake-server: cannot listen on {args.host}:{args.port}: {exc}"
            )
            return EXIT_USAGE
        host = f"[{fake.host}]" if ":" in fake.host else fake.host  # an IPv6 literal
        _announce(args, f"http://{host}:{fake.port}")
        while not stop.wait(1.0):  # a signal handler runs between waits
            pass
    finally:
        fake.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stderr_line(
        f"enso-tracker fake-server: stopped; {len(fake.event_ids())} events stored, "
        f"{sum(fake.duplicates.values())} duplicates, {len(fake.requests)} requests"
    )
    return EXIT_OK


def _announce(args: argparse.Namespace, url: str) -> None:
    if args.json:
        info: dict[str, Any] = {"url": url, "api_key": args.api_key}
        info["known_entities"] = sorted(args.entity) if args.entity else None
        print_json(info)  # flushes
    else:
        sys.stdout.write(f"ENSO_BASE_URL={url} ENSO_API_KEY={args.api_key}\n")
        sys.stdout.flush()
    if not is_loopback_host(args.host):
        stderr_line(
            "enso-tracker fake-server: plain http on a non-loopback address: clients need "
            "allow_insecure_http=True, and anyone on the network can send to it"
        )
    stderr_line("enso-tracker fake-server: serving; Ctrl-C (or SIGTERM) stops it")
