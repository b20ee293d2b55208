"""``enso-tracker send``: one event, through a tracker, and Enso's answer for it."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from .._errors import ConfigurationError, InvalidEventError
from .._model import DropReason, Event
from ._args import make_tracker
from ._mapping import RowError, parse_number
from ._output import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNDELIVERED,
    EXIT_USAGE,
    marks,
    print_json,
    stderr_line,
)

NAME = "send"
HELP = "send one event and wait for Enso's answer to it"


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
  enso-tracker send ent_6CsgzAdRgTlzT_9O api_calls 1
  enso-tracker send ent_6CsgzAdRgTlzT_9O gb_stored 12.5 --timestamp 2026-04-01T12:00:00Z \\
      --metadata '{"region": "eu"}' --event-id evt_backfill_42

After exit code 3 the event may or may not have reached Enso: send it again with the
--event-id printed, and Enso counts it once."""
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
        help="longest to wait for Enso's answer (default 30)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        value = parse_number(args.value)
    except RowError as exc:
        return _usage(f"VALUE: {exc.reason}")
    metadata: Any = None
    if args.metadata is not None:
        try:
            metadata = msgspec.json.decode(args.metadata)
        except msgspec.DecodeError:
            return _usage("--metadata is not valid JSON")
        if not isinstance(metadata, dict):
            return _usage("--metadata must be a JSON object")
    drops: list[tuple[Event, DropReason]] = []
    lock = threading.Lock()

    def on_drop(events: Sequence[Event], reason: DropReason) -> None:
        with lock:
            drops.extend((e, reason) for e in events)

    try:
        tracker = make_tracker(
            args,
            on_drop=on_drop,
            max_batch_size=1,
            flush_interval=0.01,
            backoff_base=0.2,
            backoff_max=2.0,
        )
    except ConfigurationError as exc:
        return _usage(f"configuration error: {exc}")
    try:
        try:
            event_id = tracker.track(
                args.entity,
                args.metric,
                value,
                timestamp=args.timestamp,
                metadata=metadata,
                event_id=args.event_id,
                job_id=args.job_id,
            )
        except InvalidEventError as exc:
            return _usage(f"invalid event: {exc}")
        assert event_id is not None  # an empty tracker never refuses
        deadline = time.monotonic() + max(args.timeout, 0.0)
        while not tracker.flush(min(0.2, max(deadline - time.monotonic(), 0.0))):
            if tracker.stats().auth_state == "unauthorized" or time.monotonic() >= deadline:
                break
        last_error = tracker.stats().last_error
    except KeyboardInterrupt:
        tracker.shutdown(1.0)
        return EXIT_INTERRUPTED
    finally:
        tracker.shutdown(1.0)
    stats = tracker.stats()
    with lock:
        reason = drops[0][1] if drops else None
    result: dict[str, Any] = {"eventId": event_id}
    if stats.delivered:
        result["status"] = "delivered"
        code = EXIT_OK
    elif reason is not None and reason.kind in ("rejected", "too_large"):
        result.update(status="rejected", kind=reason.kind, code=reason.code)
        result.update(httpStatus=reason.status, message=reason.message)
        code = EXIT_INCOMPLETE
    else:
        why = last_error or (str(reason) if reason else "no answer")
        if stats.auth_state == "unauthorized":
            why = f"Enso refuses the credentials ({why}); run `enso-tracker doctor`"
        result.update(status="undelivered", message=why)
        code = EXIT_UNDELIVERED
    result["exit_code"] = code
    if args.json:
        print_json(result)
    else:
        ok, bad = marks(sys.stdout)
        if code == EXIT_OK:
            print(f"{ok} delivered {event_id}")
        elif code == EXIT_INCOMPLETE:
            print(f"{bad} rejected by Enso: {reason} (eventId {event_id})")
        else:
            print(
                f"{bad} not delivered: {result['message']}\n"
                f"  it may have reached Enso: re-send with --event-id {event_id} to be sure "
                "it counts once"
            )
    return code


def _usage(message: str) -> int:
    stderr_line(f"enso-tracker send: {message}")
    return EXIT_USAGE
