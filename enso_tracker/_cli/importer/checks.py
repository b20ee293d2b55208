"""What ``import`` refuses before anything is sent (a usage error, exit 2).

* Flags that contradict each other (``--source-id`` without ``--id-rule line``, stdin
  twice, a namespace that is not printable text).
* An errors file that is one of the inputs (writing it would destroy the input).
* A ``--spool-dir`` holding another run's or process's events (they would be adopted
  and counted as this run's).
* A CSV header without a mapped column, or an input that cannot be read at all.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..._errors import ConfigurationError
from ..._spool.admin import Spool
from .mapping import Mapper
from .rows import Input, InputDamaged

__all__ = ["check", "errors_out_problem", "spool_problem"]


def check(args: argparse.Namespace) -> tuple[list[Input], str | None]:
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
    problem = errors_out_problem(args, inputs)
    if problem:
        return [], problem
    sources = [i.default_source for i in inputs if not i.is_stdin]
    if line_ids and args.source_id is None and len(set(sources)) != len(sources):
        return [], "two inputs have the same file name, so their eventIds would collide"
    if args.spool_dir is not None:
        problem = spool_problem(args.spool_dir)
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


def errors_out_problem(args: argparse.Namespace, inputs: list[Input]) -> str | None:
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


def spool_problem(path: str) -> str | None:
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
