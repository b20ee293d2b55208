"""Scenario 3: resident memory per queued event while the server is unreachable."""

from __future__ import annotations

import json

from ._common import Row, Section, Sizes, Summary
from ._proc import run_child
from ._servers import closed_port

__all__ = ["run"]

TARGET = 240  # bytes of RSS per queued event (issue #9)


def run(sizes: Sizes) -> Section:
    section = Section("3. Memory")
    per_event: list[float] = []
    problems: list[str] = []
    sample: dict[str, int] = {}
    with closed_port() as url:
        for _ in range(sizes.memory_repeats):
            result = run_child(["memory", url, str(sizes.memory_events)], timeout=60.0)
            if result.returncode != 0:
                problems.append(f"child exited {result.returncode}: {result.stderr[-500:]}")
                continue
            data: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
            pending = data["queued"] + data["in_flight"]
            if pending < data["events"]:
                problems.append(f"only {pending} of {data['events']} events were held: {data}")
                continue
            per_event.append((data["rss_after"] - data["rss_before"]) / data["events"])
            sample = data
    if per_event:
        summary = Summary.of(per_event)
        section.rows.append(
            Row.measured(
                "RSS per queued event",
                summary,
                "bytes",
                target=f"≤ {TARGET} B",
                met=summary.median <= TARGET,
            )
        )
    else:
        section.skipped = "no successful run"
    section.details += [
        f"{sizes.memory_events:,} events queued in a fresh child process per repeat "
        f"({sizes.memory_repeats} repeats); base_url is a loopback port that is bound but "
        "not listening (connections refused), flush_interval=3600 s.",
        "RSS = VmRSS from /proc/self/status after gc.collect(), read once the tracker and "
        "its sender thread exist and again after the last track(); the caller's entity "
        "strings and values come from pools built before the first reading, so the "
        "difference is what the tracker holds (queue tuples, event ids, timestamps, the "
        "few batches the sender encoded and keeps for retry).",
    ]
    if sample:
        section.details.append(
            f"Last run: RSS {sample['rss_before'] / 2**20:.1f} MiB -> "
            f"{sample['rss_after'] / 2**20:.1f} MiB; queued={sample['queued']:,}, "
            f"in_flight={sample['in_flight']:,}, failed requests so far={sample['requests']}."
        )
    section.details += [f"FAILED RUN: {p}" for p in problems]
    return section
