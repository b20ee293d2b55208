"""Shared pieces: run sizes, robust statistics, result rows, machine description."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

API_KEY = "test-api-key"
ENTITY = "ent_6CsgzAdRgTlzT_9O"
METRIC = "api_calls"
#: Calls timed together; the per-call figure is the chunk's time divided by this.
CHUNK = 100


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; ``quick`` keeps everything to a few seconds."""

    quick: bool
    repeats: int  # repeats of the cheap scenarios
    hot_calls: int  # track() calls per repeat (single thread)
    thread_calls: int  # track() calls per thread per repeat (4 threads)
    e2e_events: int  # events per end-to-end run
    e2e_repeats_sink: int
    e2e_repeats_fake: int
    memory_events: int
    memory_repeats: int
    overhead_loop: int  # iterations of the CPU-bound loop
    overhead_repeats: int
    overhead_rate: int  # events/s tracked by the second thread
    exit_events: int
    exit_repeats: int
    exit_shutdown_timeout: float  # for the unreachable-server case
    peer_calls: int  # hot-path calls per repeat for the peers (they are slow)
    peer_repeats: int
    peer_events: int  # events per throughput run for the peers
    peer_e2e_repeats: int


FULL = Sizes(
    quick=False,
    repeats=5,
    hot_calls=100_000,
    thread_calls=25_000,
    e2e_events=200_000,
    e2e_repeats_sink=5,
    e2e_repeats_fake=5,
    memory_events=100_000,
    memory_repeats=5,
    overhead_loop=1_500_000,
    overhead_repeats=20,
    overhead_rate=20_000,
    exit_events=10_000,
    exit_repeats=5,
    exit_shutdown_timeout=2.0,
    peer_calls=20_000,
    peer_repeats=5,
    peer_events=40_000,
    peer_e2e_repeats=5,
)

QUICK = Sizes(
    quick=True,
    repeats=2,
    hot_calls=2_000,
    thread_calls=500,
    e2e_events=2_000,
    e2e_repeats_sink=1,
    e2e_repeats_fake=1,
    memory_events=2_000,
    memory_repeats=1,
    overhead_loop=50_000,
    overhead_repeats=1,
    overhead_rate=20_000,
    exit_events=200,
    exit_repeats=1,
    exit_shutdown_timeout=0.3,
    peer_calls=300,
    peer_repeats=1,
    peer_events=300,
    peer_e2e_repeats=1,
)


def progress(message: str) -> None:
    """Progress goes to stderr; stdout carries only the final table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method; ``values`` need not be sorted."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Summary:
    """Median of repeats and their spread: min - max, or the interquartile range."""

    median: float
    low: float
    high: float
    n: int
    iqr: bool = False

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        data = list(values)
        if not data:
            raise ValueError("no values")
        return cls(statistics.median(data), min(data), max(data), len(data))

    @classmethod
    def quartiles(cls, values: Iterable[float]) -> Summary:
        """For noisy figures with many repeats: the spread is Q1 - Q3."""
        data = list(values)
        if len(data) < 4:
            return cls.of(data)
        q1, _, q3 = statistics.quantiles(data, n=4)
        return cls(statistics.median(data), q1, q3, len(data), iqr=True)


def fmt_ns(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.1f} µs"
    return f"{value:,.0f} ns"


def fmt_rate(value: float) -> str:
    return f"{value:,.0f} ev/s"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def fmt_pct(value: float) -> str:
    return f"{value:+.1f} %"


def fmt_share(value: float) -> str:
    return f"{value:.1f} %"


def fmt_bytes(value: float) -> str:
    return f"{value:,.0f} B"


def fmt_s(value: float) -> str:
    if abs(value) < 1:
        return f"{value * 1000:,.0f} ms"
    return f"{value:.2f} s"


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    figure: str
    median: str
    spread: str
    target: str = ""
    met: bool | None = None  # None: no target on this row

    @classmethod
    def measured(
        cls,
        figure: str,
        summary: Summary,
        fmt: str = "ns",
        *,
        target: str = "",
        met: bool | None = None,
    ) -> Row:
        formatter = _FORMATTERS[fmt]
        kind = "IQR " if summary.iqr else ""
        spread = f"{kind}{formatter(summary.low)} - {formatter(summary.high)} (n={summary.n})"
        return cls(figure, formatter(summary.median), spread, target, met)


_FORMATTERS = {
    "ns": fmt_ns,
    "rate": fmt_rate,
    "ratio": fmt_ratio,
    "pct": fmt_pct,
    "share": fmt_share,
    "bytes": fmt_bytes,
    "s": fmt_s,
}


@dataclass
class Section:
    """One scenario: its heading, its summary rows and free-form details."""

    heading: str
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    skipped: str | None = None


def render_table(sections: Sequence[Section]) -> str:
    lines = [
        "| Scenario | Figure | Median | Spread: min - max or IQR (n repeats) | Target | Status |",
        "|---|---|---:|---|---|---|",
    ]
    for section in sections:
        name = section.heading
        if section.skipped is not None:
            lines.append(f"| {name} | — | — | — | — | skipped: {section.skipped} |")
        for row in section.rows:
            status = "" if row.met is None else ("met" if row.met else "**missed**")
            lines.append(
                f"| {name} | {row.figure} | {row.median} | {row.spread} | {row.target} | {status} |"
            )
            name = ""
    return "\n".join(lines)


def render_details(sections: Sequence[Section]) -> str:
    out: list[str] = []
    for section in sections:
        out.append(f"### {section.heading}")
        out.append("")
        if section.skipped is not None:
            out.append(f"Skipped: {section.skipped}.")
            out.append("")
        out.extend(f"- {line}" for line in section.details)
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_ticks() -> tuple[int, int]:
    """(all, steal) jiffies of the whole machine from /proc/stat; (0, 0) if unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields), (fields[7] if len(fields) > 7 else 0)


def machine_lines(steal_pct: float | None = None) -> list[str]:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(
        f"{name} {package_version(name)}"
        for name in (
            "enso-tracker",
            "httpx",
            "msgspec",
            "segment-analytics-python",
            "posthog",
        )
    )
    steal = (
        ""
        if steal_pct is None
        else f"; CPU time stolen by the hypervisor during the run: {steal_pct:.1f} %"
    )
    return [
        f"- Date: {now}",
        f"- CPU: {cpu_model()}, {cores} logical cores ({usable} usable){steal}",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()}",
        f"- Packages: {versions}",
    ]
