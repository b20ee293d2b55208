"""Scenario 10: ``enso-tracker import`` rows/s, CSV and JSONL (issue #17's targets).

The console script runs as a user runs it (a child process, ``--json`` for its books)
against the counting sink, on generated files: a CSV export with its own column names
(``--entity customer --metric-name api_calls --value calls --timestamp ts --metadata
region``) and JSONL in the API's own shape. The rate is rows over the command's whole
wall time, interpreter start included; the CPU figure (the child's user + system time
per row) is steadier on a shared machine. Every run must deliver every row.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ._common import API_KEY, Row, Section, Sizes, Summary, progress
from ._servers import ServerProcess

__all__ = ["run"]

CSV_TARGET = 50_000.0  # rows/s
JSONL_TARGET = 80_000.0
CSV_MAPPING: tuple[str, ...] = ("--entity", "customer", "--metric-name", "api_calls")
CSV_MAPPING += ("--value", "calls", "--timestamp", "ts", "--metadata", "region")


def write_inputs(directory: Path, rows: int, kind: str) -> tuple[Path, Path]:
    """A CSV export and an API-shaped JSONL file of ``rows`` rows each (seeded).

    ``rollup``: hourly usage per customer, as billing exports usually are (5,000
    customers an hour, so each timestamp is shared by 5,000 rows). ``events``: raw
    events, each with its own millisecond (the worst case for every timestamp cache).
    """
    rng = random.Random(17)
    csv_path = directory / f"{kind}.csv"
    jsonl_path = directory / f"{kind}.jsonl"
    start = datetime(2026, 4, 1, tzinfo=UTC)
    with csv_path.open("w") as c, jsonl_path.open("w") as j:
        c.write("customer,calls,ts,region\n")
        for i in range(rows):
            if kind == "rollup":
                entity = f"ent_{i % 5000:05d}"
                at = start + timedelta(hours=i // 5000)
            else:
                entity = f"ent_{rng.randrange(5000):05d}"
                at = start + timedelta(milliseconds=i * 1371 + rng.randrange(1000))
            ts = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            value = rng.randrange(1, 500) if i % 4 else round(rng.random() * 100, 3)
            region = ("eu", "us", "ap")[i % 3]
            c.write(f"{entity},{value},{ts},{region}\n")
            row = {"CustomerEntityId": entity, "metric": "api_calls", "value": value}
            row["timestamp"] = ts
            j.write(json.dumps(row, separators=(",", ":")) + "\n")
    return csv_path, jsonl_path


def import_once(
    path: Path, extra: tuple[str, ...], url: str
) -> tuple[float, float, dict[str, Any]]:
    """(wall seconds, child CPU seconds, the books) of one ``enso-tracker import``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENSO_")}
    env.update({"ENSO_API_KEY": API_KEY, "ENSO_BASE_URL": url})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "enso_tracker", "import", str(path), *extra, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"import exited {proc.returncode}: {proc.stderr[-500:]}")
    books: dict[str, Any] = json.loads(proc.stdout)
    return wall, cpu, books


def run(sizes: Sizes, sink: ServerProcess) -> Section:
    rows = 2_000 if sizes.quick else 200_000
    repeats = 1 if sizes.quick else 3
    section = Section("10. CLI import")
    with tempfile.TemporaryDirectory(prefix="enso-bench-import-") as tmp:
        for kind in ("rollup", "events"):
            csv_path, jsonl_path = write_inputs(Path(tmp), rows, kind)
            for name, path, extra, target in (
                ("CSV", csv_path, CSV_MAPPING, CSV_TARGET),
                ("JSONL", jsonl_path, (), JSONL_TARGET),
            ):
                rates, cpu_rates = [], []
                for _ in range(repeats):
                    before = sink.count()
                    wall, cpu, books = import_once(path, extra, sink.url)
                    after = sink.count()
                    if books["delivered"] != rows or after - before != rows:
                        raise RuntimeError(f"{name}: {books['delivered']} delivered of {rows}")
                    rates.append(rows / wall)
                    cpu_rates.append(rows / cpu)
                    progress(
                        f"import {kind} {name}: {rows / wall:,.0f} rows/s, "
                        f"{rows / cpu:,.0f} rows per CPU s"
                    )
                rate = Summary.of(rates)
                section.rows.append(
                    Row.measured(
                        f"import {name} ({kind}), rows/s",
                        rate,
                        "rate",
                        target=f">= {target:,.0f} rows/s" if kind == "rollup" else "",
                        met=rate.median >= target if kind == "rollup" else None,
                    )
                )
                section.rows.append(
                    Row.measured(
                        f"import {name} ({kind}), rows per CPU second",
                        Summary.of(cpu_rates),
                        "rate",
                    )
                )
    section.details.append(
        f"{rows:,} rows per file, {repeats} runs each, every row delivered to the counting "
        "sink. rows/s: over the command's whole wall time (interpreter start included); "
        "rows per CPU second: over its CPU time (user + system, all threads), steadier "
        "on a shared machine. rollup: hourly usage per customer (timestamps shared by "
        "5,000 rows); events: one millisecond per row. CSV: an export with its own "
        "column names and a metadata column; JSONL: the API's shape."
    )
    return section
