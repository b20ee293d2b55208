"""Where the time goes: ``python -m benchmarks.profiling [--seconds S] [--batch B]``.

Not part of ``python -m benchmarks`` (it needs a few seconds of sampling); its output is
what ``benchmarks/NOTES.md`` was written from.

1. A sampling profile of a workload that tracks events in a tight loop while the sender
   delivers them to the counting sink: with py-spy (``--gil``: only samples of the
   thread holding the GIL, i.e. CPU spent in Python), per line of ``Tracker.track`` and
   per function of the sender thread. Without py-spy, cProfile (per function, both
   threads) is used instead.
2. A micro-ablation of the operations ``track()`` is made of, each timed alone.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import linecache
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from ._common import ENTITY, METRIC
from ._servers import ServerProcess
from .hot_path import make_tracker

_FRAME = re.compile(r"^(?P<func>.+) \((?P<file>[^()]+):(?P<line>\d+)\)$")
_ROOT = Path(__file__).resolve().parent.parent


def workload(seconds: float, batch: int) -> None:
    """Track in a tight loop (200k per round, then flush) for ``seconds``."""
    with ServerProcess("sink") as sink:
        tracker = make_tracker(sink.url, max_batch_size=batch)
        track = tracker.track
        entity, metric = ENTITY, METRIC
        deadline = time.monotonic() + seconds
        rounds = 0
        while time.monotonic() < deadline and rounds < 1000:
            for i in range(200_000):
                track(entity, metric, i)
            tracker.flush(60.0)
            rounds += 1
        stats = tracker.stats()
        tracker.shutdown(10.0)
    print(f"workload: {rounds} rounds, delivered={stats.delivered:,}", file=sys.stderr)


# ------------------------------------------------------------------ py-spy


def _parse_frame(text: str) -> tuple[str, str, int] | None:
    match = _FRAME.match(text)
    if match is None:
        return None
    return match["func"], match["file"], int(match["line"])


def _source(file: str, line: int) -> str:
    for base in (_ROOT, *map(Path, sys.path)):
        path = base / file
        if path.exists():
            return linecache.getline(str(path), line).strip()
    return ""


def analyse_raw(lines: Iterable[str]) -> str:
    """Markdown tables from py-spy's ``--format raw --threads`` output."""
    per_thread: collections.Counter[str] = collections.Counter()
    track_lines: collections.Counter[tuple[str, int]] = collections.Counter()
    track_total = 0
    sender_inclusive: collections.Counter[str] = collections.Counter()
    sender_leaf: collections.Counter[str] = collections.Counter()
    sender_total = 0
    for raw in lines:
        stack, _, count_text = raw.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        per_thread[thread] += count
        parsed = [p for p in map(_parse_frame, frames[1:]) if p is not None]
        in_track = [p for p in parsed if p[0] == "Tracker.track"]
        if in_track:
            track_total += count
            func, file, line = in_track[-1]
            track_lines[(file, line)] += count
        if thread == "enso-tracker-sender" and parsed:
            sender_total += count
            seen: set[str] = set()
            for func, file, _line in parsed:
                if "enso_tracker" in file and func not in seen:
                    seen.add(func)
                    sender_inclusive[func] += count
            func, file, line = parsed[-1]
            sender_leaf[f"{func} ({file.split('site-packages/')[-1]})"] += count
    total = sum(per_thread.values()) or 1
    out = ["Samples holding the GIL, by thread:", ""]
    out += [f"- {name}: {n} ({100 * n / total:.0f} %)" for name, n in per_thread.most_common()]
    out += ["", f"`Tracker.track` by line ({track_total} samples):", ""]
    out += ["| line | share | source |", "|---:|---:|---|"]
    for (file, line), n in track_lines.most_common(15):
        out.append(f"| {line} | {100 * n / (track_total or 1):.1f} % | `{_source(file, line)}` |")
    out += ["", f"Sender thread, inclusive per enso_tracker function ({sender_total} samples):", ""]
    out += ["| function | share |", "|---|---:|"]
    for func, n in sender_inclusive.most_common(15):
        out.append(f"| {func} | {100 * n / (sender_total or 1):.1f} % |")
    out += ["", "Sender thread, leaf frames:", "", "| frame | share |", "|---|---:|"]
    for frame, n in sender_leaf.most_common(15):
        out.append(f"| {frame} | {100 * n / (sender_total or 1):.1f} % |")
    return "\n".join(out)


def profile_with_py_spy(py_spy: str, seconds: float, batch: int, rate: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "profile.txt")
        command = [
            py_spy,
            "record",
            "--gil",
            "--threads",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            raw,
            "--",
            sys.executable,
            "-m",
            "benchmarks.profiling",
            "--workload",
            str(seconds),
            "--batch",
            str(batch),
        ]
        subprocess.run(command, check=True, cwd=_ROOT, timeout=seconds + 120)
        with open(raw, encoding="utf-8") as fh:
            return analyse_raw(fh)


# ------------------------------------------------------------------ cProfile fallback


def profile_with_cprofile(seconds: float, batch: int) -> str:
    """cProfile of both threads: the sender's profiler is enabled as the thread starts."""
    main = cProfile.Profile()
    sender = cProfile.Profile()

    def start_in_thread(frame: FrameType, event: str, arg: Any) -> None:
        sys.setprofile(None)
        if threading.current_thread().name == "enso-tracker-sender":
            sender.enable()

    threading.setprofile(start_in_thread)
    try:
        main.enable()
        workload(seconds, batch)
        main.disable()
    finally:
        threading.setprofile(None)
    out: list[str] = []
    for name, prof in (("main thread", main), ("sender thread", sender)):
        buffer = io.StringIO()
        pstats.Stats(prof, stream=buffer).sort_stats("tottime").print_stats(15)
        out += [f"cProfile, {name} (by own time):", "", "```", buffer.getvalue().strip(), "```", ""]
    return "\n".join(out)


# ------------------------------------------------------------------ ablation


ABLATION = (
    ("method call, 3 args + 4 keyword-only defaults", "o.track(e, m, v)"),
    ("method call, 3 positional args only", "o.track3(e, m, v)"),
    ("3 inline checks of a name (type/empty/len)", "type(e) is not str or not e or len(e) > 512"),
    ("os.getpid() (fork check)", "os.getpid() != pid"),
    ("time.time_ns() // 1_000_000", "time.time_ns() // 1_000_000"),
    ("time.time_ns()", "time.time_ns()"),
    ("with lock: (uncontended threading.Lock)", "with lock: pass"),
    ("lock.acquire(); lock.release()", "lock.acquire(); lock.release()"),
    ("f-string event id f'{prefix}{seq:x}'", "f'{prefix}{seq:x}'"),
    ("prefix + hex(seq)", "prefix + hex(seq)"),
    ("next(itertools.count)", "next(counter)"),
    ("9-tuple + deque.append", "q.append((seq, prefix, e, m, v, seq, None, None, 230))"),
    ("attribute load self._x", "o.x"),
    ("attribute store self._x = y", "o.x = 1"),
)


class _Probe:
    x = 0

    def track(
        self,
        entity: str,
        metric: str,
        value: int,
        *,
        timestamp: object = None,
        metadata: object = None,
        event_id: object = None,
        job_id: object = None,
    ) -> None:
        return None

    def track3(self, entity: str, metric: str, value: int) -> None:
        return None


def ablation(number: int = 300_000, repeat: int = 5) -> str:
    import itertools

    env: dict[str, Any] = {
        "o": _Probe(),
        "os": os,
        "time": time,
        "pid": os.getpid(),
        "lock": threading.Lock(),
        "prefix": "evt_0123456789ab1f2_",
        "seq": 123_456,
        "counter": itertools.count(1),
        "q": collections.deque(),
        "e": ENTITY,
        "m": METRIC,
        "v": 1,
    }

    def cost(stmt: str) -> float:
        best = min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat))
        env["q"].clear()
        return best / number * 1e9

    empty = cost("pass")
    out = ["Micro-ablation (best of 5, ns per operation, empty statement subtracted):", ""]
    out += ["| operation | ns |", "|---|---:|"]
    for label, stmt in ABLATION:
        out.append(f"| {label} | {cost(stmt) - empty:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the workload")
    parser.add_argument("--batch", type=int, default=100, help="max_batch_size of the workload")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument(
        "--cprofile", action="store_true", help="use cProfile even if py-spy exists"
    )
    parser.add_argument("--workload", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workload is not None:  # the profiled child
        workload(args.workload, args.batch)
        return 0
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    print(f"## Profile (max_batch_size={args.batch}, {args.seconds:g} s)\n")
    if py_spy and not args.cprofile:
        print(f"py-spy `record --gil --threads --rate {args.rate}`\n")
        print(profile_with_py_spy(py_spy, args.seconds, args.batch, args.rate))
    else:
        print(profile_with_cprofile(args.seconds, args.batch))
    print()
    print(ablation())
    return 0


if __name__ == "__main__":
    sys.exit(main())
