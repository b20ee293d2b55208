"""``enso-tracker import FILE...``: flags, checks before anything is sent, the summary."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from types import FrameType
from typing import Any

from .._errors import ConfigurationError
from .._spool.admin import Spool
from ._errors_out import ErrorsOut
from ._import import Importer
from ._import_receipts import write_summary
from ._mapping import Mapper
from ._output import EXIT_USAGE, clean, print_json, route_logs, stderr_line
from ._progress import RichMissing, Ticker, make_display
from ._rows import DEFAULT_MAX_LINE_BYTES, Input, InputDamaged
from ._timestamps import zone

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


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return int(text)


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
        type=_positive,
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
        type=_positive,
        default=DEFAULT_MAX_LINE_BYTES,
        metavar="N",
        help="a longer line is an error row, skipped without being held in memory "
        f"(default: {DEFAULT_MAX_LINE_BYTES:,})",
    )
    run.add_argument("--batch-size", type=_positive, default=1000, help="events per request")
    run.add_argument(
        "--max-queue", type=_positive, default=10_000, help="events held in memory at most"
    )
    run.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up (exit 3) after this long without delivery progress",
    )


def _check(args: argparse.Namespace) -> tuple[list[Input], str | None]:
    """The inputs, or a usage problem (found before anything is sent)."""
    paths: list[str] = args.files
    if paths.count("-") > 1:
        return [], "stdin (-) can be read only once"
    if args.id_namespace is not None and not args.id_namespace.isprintable():
        return [], "--id-namespace must be printable text"
    line_ids = args.id_rule == "line"
    if args.source_id is not None:
        if not line_ids:
            return [], "--source-id belongs to --id-rule line; content ids need no source"
        if len(paths) > 1:
            return [], "--source-id names one input; import several files one by one"
        if not args.source_id.isprintable() or not args.source_id.strip():
            return [], "--source-id must be non-empty printable text"
    if line_ids and "-" in paths and args.source_id is None and args.id_column is None:
        return [], (
            "stdin has no file name to derive stable eventIds from: pass --source-id "
            "(the same on every re-run), or --id-column"
        )
    inputs: list[Input] = []
    for path in paths:
        try:
            inputs.append(Input(path, args.format, args.max_line_bytes))
        except OSError as exc:
            return [], f"{path}: {exc.strerror or exc}"
    problem = _errors_out_problem(args, inputs)
    if problem:
        return [], problem
    sources = [i.default_source for i in inputs if not i.is_stdin]
    if line_ids and args.source_id is None and len(set(sources)) != len(sources):
        return [], "two inputs have the same file name, so their eventIds would collide"
    if args.spool_dir is not None:
        problem = _spool_problem(args.spool_dir)
        if problem:
            return [], problem
    required = Mapper(args).required_columns()
    for inp in inputs:
        if inp.is_stdin:
            continue
        try:
            header = inp.read_header()
        except InputDamaged as exc:  # nothing of it can be read: nothing sent
            return [], f"{inp.name}: cannot read: {exc.reason}"
        except (OSError, EOFError) as exc:
            return [], f"{inp.name}: cannot read: {getattr(exc, 'strerror', None) or exc}"
        if header is not None:
            missing = [c for c in required if c not in header]
            if missing:
                return [], (
                    f"{inp.name}: no column {', '.join(map(repr, missing))} in the header "
                    f"(columns: {', '.join(header)}); map them with --entity/--value/..."
                )
    return inputs, None


def _errors_out_problem(args: argparse.Namespace, inputs: list[Input]) -> str | None:
    """An errors file that is one of the inputs would be emptied before it is read."""
    targets = [args.errors_out] if args.errors_out is not None else []
    if args.errors_out is None:
        suffix = f".shard-{args.shard[0]}-of-{args.shard[1]}" if args.shard else ""
        targets = [f"{i.path}{suffix}.errors.jsonl" for i in inputs if not i.is_stdin]
    for target in targets:
        try:
            out = os.stat(target)
        except OSError:
            continue  # does not exist yet: cannot be an input
        for inp in inputs:
            try:
                st = os.fstat(sys.stdin.fileno()) if inp.is_stdin else os.stat(inp.path)
            except (OSError, ValueError):
                continue
            if (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
                return (
                    f"the errors file {target} is the input {inp.name}: writing it would "
                    "destroy the input; choose another --errors-out"
                )
    return None


def _spool_problem(path: str) -> str | None:
    """Why ``--spool-dir`` cannot be this run's, or None. A tracker adopts the leftovers
    of dead processes in its directory: an import's counts, exit code and errors file
    would then speak of events that are not its rows. So the directory must hold none."""
    if not os.path.exists(path):
        return None  # the tracker creates it, 0700
    try:
        status = Spool(path).status()
    except (ConfigurationError, OSError) as exc:
        return f"--spool-dir {path}: {exc}"
    if status.events:
        return (
            f"--spool-dir {path}: holds {status.events:,} undelivered events of other runs or "
            "processes, which this run would adopt and count as its own; let their "
            "application deliver them (or `enso-tracker spool export --pending --dir DIR`), "
            "or give an empty directory"
        )
    return None


def run(args: argparse.Namespace) -> int:
    inputs, problem = _check(args)
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
        from ._preflight import check_enso  # beside its one use

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
        _summary(args, importer, written, code)
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


def _summary(
    args: argparse.Namespace, imp: Importer, written: list[dict[str, Any]], code: int
) -> None:
    books = imp.books()
    books["errors_files"] = written
    books["invalid_reasons"] = imp.invalid_reasons()
    books["exit_code"] = code
    receipts = books["receipts"] = (
        imp.receipts.result(imp.tracker) if imp.receipts and imp.tracker else None
    )
    if args.json:
        print_json(books)
        return
    out = sys.stdout
    title = "dry run (nothing sent)" if imp.dry_run else "the books"
    out.write(f"== enso-tracker import: {title} ==\n")
    rows = [("rows read", books["rows_read"])]
    if imp.shard:
        rows.append((f"  in other shards than {books['shard']}", books["other_shards"]))
    rows.append(("invalid", books["invalid"]))
    if not imp.dry_run:
        rows += [("accepted", books["accepted"]), ("delivered", books["delivered"])]
        rows.append(("dropped", sum(books["dropped"].values())))
        rows += [(f"  {kind}", n) for kind, n in sorted(books["dropped"].items())]
    else:
        rows.append(("valid", books["valid"]))
    for label, n in rows:
        out.write(f"{label:<32}{n:>10,}\n")
    if books["invalid_reasons"]:
        out.write("invalid rows by reason:\n")
    for r in books["invalid_reasons"]:
        first = f" (first: {clean(r['first'])})" if r.get("first") else ""
        label = f"{r['field']}: " if r["field"] else ""
        out.write(f"  {r['count']:>8,} x {clean(label + r['reason'])}{first}\n")
    if imp.drop_reasons:
        out.write("dropped because:\n")
    for reason, n in sorted(imp.drop_reasons.items(), key=lambda item: -item[1]):
        out.write(f"  {n:>8,} x {reason}\n")
    if receipts is not None:
        write_summary(out, receipts)
    for f in written:
        out.write(f"errors file: {f['path']} ({f['records']} records)\n")
    if imp.damaged:
        out.write(f"damaged input: {clean(imp.damaged)}\n")
    if imp.stopped:
        out.write(
            f"stopped: {imp.stopped}. {imp.rerun_advice} to finish: rows already "
            "delivered keep their eventIds and are not billed again.\n"
        )
    verdict = {
        0: "every valid row delivered" if not imp.dry_run else "every row valid",
        1: "some rows invalid or refused by Enso: see the errors file",
        3: "some rows not delivered: re-run the same command",
        4: "an input could not be read to its end: replace it, then re-run the command",
        130: "interrupted: re-run the same command",
    }.get(code, "")
    out.write(f"exit {code}: {verdict}\n")
    out.flush()
