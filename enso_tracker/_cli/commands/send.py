"""``enso-tracker send``: one event, sent now by ``send_events()``, judged by its eventId.

No tracker and never a spool (``ENSO_SPOOL_DIR`` is not read): what is printed and the
exit code speak of this run's event only, from Enso's per-record answer to it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from ..._direct import send_events
from ..._errors import ConfigurationError, InvalidEventError
from .._args import connection_options, in_env_terms
from .._output import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_UNDELIVERED,
    EXIT_USAGE,
    marks,
    print_json,
    stderr_line,
)
from ..importer.mapping import RowError, parse_number

NAME = "send"
HELP = "send one event and wait for Enso's answer to it"


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
  enso-tracker send ent_6CsgzAdRgTlzT_9O api_calls 1
  enso-tracker send ent_6CsgzAdRgTlzT_9O gb_stored 12.5 --timestamp 2026-04-01T12:00:00Z \\
      --metadata '{"region": "eu"}' --event-id evt_backfill_42

Exit 0 only when Enso's answer accounts for this event as stored; 1 when Enso refused
it (its code is printed); 3 when it could not be delivered within --timeout: it may or
may not have reached Enso, so send it again with the --event-id printed, and Enso
counts it once. ENSO_SPOOL_DIR is never used."""
    parser.add_argument("entity", metavar="ENTITY", help="customer entity (CustomerEntityId)")
    parser.add_argument("metric", metavar="METRIC")
    parser.add_argument("value", metavar="VALUE", help="a number")
    parser.add_argument("--timestamp", help="RFC 3339 with an offset (default: now)")
    parser.add_argument("--metadata", metavar="JSON", help="a JSON object")
    parser.add_argument("--event-id", metavar="ID", help="default: a fresh random id")
    parser.add_argument("--job-id", metavar="ID")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest to try, retries included (default 30)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        value = parse_number(args.value)
    except RowError as exc:
        return _usage(f"VALUE: {exc.reason}")
    event: dict[str, Any] = {"entity": args.entity, "metric": args.metric, "value": value}
    if args.metadata is not None:
        try:
            event["metadata"] = msgspec.json.decode(args.metadata)
        except msgspec.DecodeError:
            return _usage("--metadata is not valid JSON")
        if not isinstance(event["metadata"], dict):
            return _usage("--metadata must be a JSON object")
    for key in ("timestamp", "event_id", "job_id"):
        if getattr(args, key) is not None:
            event[key] = getattr(args, key)
    if not args.timeout > 0:
        return _usage("--timeout must be a positive number of seconds")
    try:
        (result,) = send_events([event], timeout=args.timeout, **connection_options(args))
    except ConfigurationError as exc:
        return _usage(f"configuration error: {in_env_terms(exc)}")
    except InvalidEventError as exc:
        return _usage(f"invalid event: {exc}")
    out: dict[str, Any] = {"eventId": result.event_id, "status": result.state}
    if result.state == "delivered":
        code = EXIT_OK
    elif result.state == "rejected":
        kind = "too_large" if result.status == 413 else "rejected"
        out.update(kind=kind, code=result.code, httpStatus=result.status, message=result.message)
        code = EXIT_INCOMPLETE
    else:  # unauthorized, undelivered
        out.update(httpStatus=result.status, message=result.message)
        code = EXIT_UNDELIVERED
    out["exit_code"] = code
    if args.json:
        print_json(out)
        return code
    ok, bad = marks(sys.stdout)
    if code == EXIT_OK:
        print(f"{ok} delivered {result.event_id}")
    elif code == EXIT_INCOMPLETE:
        extra = [f"status={result.status}"] if result.status is not None else []
        extra += [f"code={result.code!r}"] if result.code is not None else []
        detail = f" ({', '.join(extra)})" if extra else ""
        print(f"{bad} rejected by Enso: {result.message}{detail} (eventId {result.event_id})")
    elif result.state == "unauthorized":
        print(
            f"{bad} not delivered: {result.message}; run `enso-tracker doctor`\n"
            f"  nothing was stored: fix the credentials and re-send with --event-id "
            f"{result.event_id}"
        )
    else:
        print(
            f"{bad} not delivered: {result.message}\n"
            f"  it may have reached Enso: re-send with --event-id {result.event_id} to be sure "
            "it counts once"
        )
    return code


def _usage(message: str) -> int:
    stderr_line(f"enso-tracker send: {message}")
    return EXIT_USAGE
