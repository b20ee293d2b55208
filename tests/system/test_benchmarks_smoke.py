"""Smoke test of the benchmark suite: ``python -m benchmarks --quick`` runs and reports.

No timing assertions: the figures of a quick run mean nothing; this only checks that
every scenario runs end to end and lands in the report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]

HEADINGS = (
    "## Summary",
    "### 1. Hot path",
    "### 2. End-to-end throughput",
    "### 3. Memory",
    "### 4. Caller overhead",
    "### 5. Exit",
    "### 6. Peers",
    "### Async: event-loop gap during aflush()",
    "### 8. Durable spool",
    "### 9. Spool adoption",
    "### 10. CLI import",
    "### 11. Receipts",
    "### 12. Sender CPU",
)


@pytest.mark.timeout(60)
def test_quick_benchmark_run_writes_every_scenario(tmp_path: Path) -> None:
    output = tmp_path / "r.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = output.read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert heading in report, f"{heading!r} missing from the report"
    assert "| Scenario |" in result.stdout  # the table also goes to stdout
    assert "skipped: error" not in report, report
