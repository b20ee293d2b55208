"""``enso-tracker import FILE...``: its flags and the run (checks before anything is sent
in ``importer.checks``, the run in ``importer.engine``, the summary in ``importer.summary``)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from types import FrameType

from ..._errors import ConfigurationError
from .._args import positive
from .._output import EXIT_USAGE, route_logs, stderr_line
from ..importer.checks import check
from ..importer.engine import Importer
from ..importer.errors_out import ErrorsOut
from ..importer.progress import RichMissing, Ticker, make_display
from ..importer.rows import DEFAULT_MAX_LINE_BYTES
from ..importer.summary import print_summary
from ..importer.timestamps import zone

NAME = "import"
HELP = "import usage rows from JSONL or CSV files (gzipped or not, or - for stdin)"


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(match[1]), int(match[2])


def _zone(text: str) -> str:
    try:
        zone(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
  enso-tracker import events.jsonl                       # rows in the API's own shape
  enso-tracker import usage.csv.gz --entity customer --metric-name api_calls \\
      --value calls --timestamp ts --metadata region plan
  zcat part-*.gz | enso-tracker import - --format jsonl
  enso-tracker import big.csv --shard 0/4   # and 1/4, 2/4, 3/4 on other machines
  enso-tracker import usage.csv --dry-run   # validate only; errors with file:line
  enso-tracker import prices.csv --timestamp-format '%b %d %Y' --timezone America/New_York
  enso-tracker import events.jsonl.errors.jsonl   # once fixed: same eventIds, billed once

eventId (unless the row has one, or --id-column names it), the same however the
input is split, ordered or sharded, and on any machine:
  content = json.dumps([entity, metric, repr(float(value)), timestamp_ms],
                       ensure_ascii=False, separators=(",", ":")).encode()
  "imp_" + sha256(f"{namespace}\\n{k}\\n".encode() + content).hexdigest()[:32]
  k: 0 for the first row with this content in the whole input, 1 for the second...
  namespace: --id-namespace (default empty). Re-running the same import bills
  nothing twice; import all files of one backfill in one run (or one --shard set)."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="JSONL or CSV, .gz, or -")
    parser.add_argument(
        "--format",
        choices=("auto", "jsonl", "csv"),
        default="auto",
        help="input format (default: from the name, else from the first byte)",
    )
    mapping = parser.add_argument_group("field mapping (defaults: the API's own names)")
    mapping.add_argument("--entity", metavar="COL", help="customer entity (CustomerEntityId)")
    metric = mapping.add_mutually_exclusive_group()
    metric.add_argument("--metric", metavar="COL", help="metric column (metric)")
    metric.add_argument("--metric-name", metavar="NAME", help="one metric for every row")
    mapping.add_argument("--value", metavar="COL", help="value column (value)")
    mapping.add_argument(
        "--timestamp",
        metavar="COL",
        help="time column (timestamp): RFC 3339 with an offset, unless "
        "--timestamp-format or --timezone say otherwise",
    )
    mapping.add_argument(
        "--timestamp-format",
        metavar="FORMAT",
        help="how timestamps are written: a strptime format (e.g. '%%b %%d %%Y' for "
        "'Jan 1 2000'), epoch-s or epoch-ms (default: RFC 3339 / ISO 8601)",
    )
    mapping.add_argument(
        "--timezone",
        metavar="ZONE",
        type=_zone,
        help="time zone of timestamps written without one, e.g. Europe/Paris or UTC "
        "(default: such timestamps are refused)",
    )
    mapping.add_argument(
        "--metadata",
        metavar="COL",
        nargs="+",
        action="extend",
        help="columns to put in metadata, by name (added to a 'metadata' object field)",
    )
    mapping.add_argument("--job-id", metavar="ID", help="JobId for every row (else JobId/jobId)")
    ids = parser.add_argument_group("event ids")
    ids.add_argument("--id-column", metavar="COL", help="take each eventId from this column")
    ids.add_argument(
        "--id-namespace",
        metavar="TEXT",
        help="part of every derived id: tells two separate backfills of identical rows apart",
    )
    ids.add_argument(
        "--id-rule",
        choices=("content", "line"),
        default="content",
        help="content (default): ids from each row's mapped event; line: the ids of "
        "enso-tracker 0.x (file name and line), only to finish an import begun with them",
    )
    ids.add_argument(
        "--source-id",
        metavar="ID",
        help="with --id-rule line: the source key (default: the file name)",
    )
    ids.add_argument(
        "--max-distinct",
        type=positive,
        default=20_000_000,
        metavar="N",
        help="distinct events one process counts at most, ~100 bytes each (default "
        "20,000,000); past it the import stops: split it with --shard",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--dry-run", action="store_true", help="validate every row, send nothing")
    run.add_argument(
        "--errors-out",
        metavar="FILE",
        help="write bad rows here (default: <input>.errors.jsonl next to each input)",
    )
    run.add_argument("--shard", type=_shard, metavar="I/N", help="import only shard I of N")
    run.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="a durable spool for this run, in a directory of its own (never taken from "
        "$ENSO_SPOOL_DIR: that one is an application's; its leftovers are not this run's)",
    )
    run.add_argument(
        "--receipts-dir",
        metavar="DIR",
        help="keep receipts of this run (totals per entity, metric, hour) in DIR, and show "
        "the run's own in the summary (never taken from $ENSO_RECEIPTS_DIR; with "
        "--spool-dir they are kept there by default); docs/receipts.md",
    )
    run.add_argument(
        "--progress",
        choices=("auto", "rich", "plain", "none"),
        default="auto",
        help="progress on stderr (auto: rich or plain on a terminal, none otherwise; "
        "plain or rich forced off a terminal: plain lines, no escape codes)",
    )
    run.add_argument(
        "--max-line-bytes",
        type=positive,
        default=DEFAULT_MAX_LINE_BYTES,
        metavar="N",
        help="a longer line is an error row, skipped without being held in memory "
        f"(default: {DEFAULT_MAX_LINE_BYTES:,})",
    )
    run.add_argument("--batch-size", type=positive, default=1000, help="events per request")
    run.add_argument(
        "--max-queue", type=positive, default=10_000, help="events held in memory at most"
    )
    run.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up (exit 3) after this long without delivery progress",
    )


def run(args: argparse.Namespace) -> int:
    inputs, problem = check(args)
    if problem:
        stderr_line(f"enso-tracker import: {problem}")
        return EXIT_USAGE
    errors = ErrorsOut(
        args.errors_out,
        [
            (i.path, i.is_stdin, args.source_id or ("stdin" if i.is_stdin else i.default_source))
            for i in inputs
        ],
        args.shard,
    )
    try:
        display = make_display(args.progress)
    except RichMissing as exc:
        stderr_line(f"enso-tracker import: {exc}")
        return EXIT_USAGE
    importer = Importer(args, inputs, errors, display)
    try:
        if not args.dry_run:
            importer.start_tracker()
        errors.open()
    except ConfigurationError as exc:
        stderr_line(f"enso-tracker import: configuration error: {exc}")
        return EXIT_USAGE
    except OSError as exc:
        stderr_line(f"enso-tracker import: cannot write the errors file: {exc}; use --errors-out")
        if importer.tracker is not None:
            importer.tracker.shutdown(0.0)
        return EXIT_USAGE
    if importer.tracker is not None:  # fail fast: Enso unreachable or refusing (exit 3)
        from ..importer.preflight import check_enso  # beside its one use

        importer.stopped = check_enso(args, importer.tracker.config)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        importer.request_interrupt()

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    ticker = Ticker(display, importer.snapshot)
    route_logs(display.log)  # a log line must not tear the live progress line apart
    try:
        if importer.stopped is None:
            importer.run()
        elif importer.tracker is not None:  # the preflight said no: not one row is read
            importer.tracker.shutdown(0.0)
    finally:
        ticker.close()
        route_logs(None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    written = errors.close()
    code = importer.exit_code()
    try:
        print_summary(args, importer, written, code)
    except BrokenPipeError:
        # `enso-tracker import ... | head -1`: the reader left. The exit code still says
        # what happened to the rows; stdout goes nowhere so that exiting stays quiet.
        _silence_stdout()
    return code


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
