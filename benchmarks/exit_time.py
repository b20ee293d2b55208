"""Scenario 5: how long a process that tracked events takes to exit (atexit delivery)."""

from __future__ import annotations

from ._common import Row, Section, Sizes, Summary
from ._proc import ChildResult, run_child
from ._servers import ServerProcess, closed_port

__all__ = ["run"]

#: Allowed beyond shutdown_timeout when the server is unreachable (interpreter teardown).
MARGIN = 0.5


def _parse(result: ChildResult) -> tuple[float, float, int, int]:
    """Seconds from the last track() to exit and to the end of the hook; delivered; dropped."""
    tracked = hooked = None
    delivered = dropped = -1
    for line in result.stdout.splitlines():
        words = line.split()
        if words[:1] == ["TRACKED"]:
            tracked = float(words[1])
        elif words[:1] == ["HOOKED"]:
            hooked = float(words[1])
            delivered, dropped = int(words[2]), int(words[3])
    if tracked is None or hooked is None or result.returncode != 0:
        raise RuntimeError(
            f"exit child failed (rc={result.returncode}): {result.stdout[-300:]!r} "
            f"{result.stderr[-300:]!r}"
        )
    return result.ended - tracked, hooked - tracked, delivered, dropped


def run(sizes: Sizes, sink: ServerProcess) -> Section:
    section = Section("5. Exit")
    n = sizes.exit_events
    timeout = sizes.exit_shutdown_timeout
    up_exit: list[float] = []
    up_hook: list[float] = []
    up_total: list[float] = []
    down_exit: list[float] = []
    down_total: list[float] = []
    problems: list[str] = []
    with closed_port() as dead_url:
        for _ in range(sizes.exit_repeats):
            before = sink.count()
            result = run_child(["exit", sink.url, str(n), "5.0"], timeout=60.0)
            try:
                exit_s, hook_s, delivered, _ = _parse(result)
            except RuntimeError as exc:
                problems.append(f"server up: {exc}")
            else:
                counted = sink.count() - before
                if delivered != n or counted != n:
                    problems.append(f"server up: delivered={delivered}, sink counted {counted}")
                up_exit.append(exit_s)
                up_hook.append(hook_s)
                up_total.append(result.ended - result.started)

            result = run_child(["exit", dead_url, str(n), str(timeout)], timeout=60.0)
            try:
                exit_s, _, delivered, dropped = _parse(result)
            except RuntimeError as exc:
                problems.append(f"server unreachable: {exc}")
            else:
                if dropped != n:
                    problems.append(f"server unreachable: dropped={dropped} of {n}")
                down_exit.append(exit_s)
                down_total.append(result.ended - result.started)

    if up_exit:
        section.rows += [
            Row.measured("server up: last track() → process gone", Summary.of(up_exit), "s"),
            Row.measured("server up: of which the atexit hook", Summary.of(up_hook), "s"),
            Row.measured("server up: whole child (spawn → exit)", Summary.of(up_total), "s"),
        ]
    if down_exit:
        summary = Summary.of(down_exit)
        section.rows += [
            Row.measured(
                f"unreachable (shutdown_timeout={timeout:g} s): last track() → process gone",
                summary,
                "s",
                target=f"≤ {timeout + MARGIN:g} s",
                met=summary.high <= timeout + MARGIN,
            ),
            Row.measured("unreachable: whole child (spawn → exit)", Summary.of(down_total), "s"),
        ]
    section.details += [
        f"A child process tracks {n:,} events (default options) and "
        "returns from its main without calling flush() or shutdown(); the tracker's atexit "
        f"hook delivers. {sizes.exit_repeats} repeats per case, alternated.",
        "'last track() → process gone' runs from the child's time.monotonic() after its last "
        "track() to the parent seeing the child exit (CLOCK_MONOTONIC is system-wide); "
        "'atexit hook' ends in an atexit handler registered before enso_tracker was "
        "imported, so it runs after the tracker's hook.",
        "Server up: the counting sink; each run checks that the sink counted all events. "
        f"Unreachable: a bound, non-listening loopback port, shutdown_timeout={timeout:g} s; "
        "each run checks that all events were reported dropped. The target is judged on "
        f"the slowest run (max), with {MARGIN} s margin for interpreter teardown.",
    ]
    section.details += [f"FAILED RUN: {p}" for p in problems]
    return section
