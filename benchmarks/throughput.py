"""Scenario 2: events/s from the first ``track()`` until the server acknowledged them all."""

from __future__ import annotations

import time
from dataclasses import dataclass

from enso_tracker import Config

from ._common import ENTITY, METRIC, Row, Section, Sizes, Summary, progress
from ._servers import ServerProcess
from .hot_path import make_tracker

__all__ = ["BATCH_SIZES", "Delivery", "deliver", "run"]

#: 100 (the former default), the default, and 1,000.
BATCH_SIZES = tuple(sorted({100, Config().max_batch_size, 1_000}))
DEFAULT_BATCH = Config().max_batch_size
#: Generous bound on one run; a run that needs it is reported as failed, not hung.
_FLUSH_TIMEOUT = 120.0


@dataclass(frozen=True)
class Delivery:
    rate: float  # events/s, first track() to flush() returning
    cpu_ns: float  # CPU time of this process per event (caller + sender threads)
    problem: str | None


def deliver(url: str, batch_size: int, n: int) -> Delivery:
    """Track ``n`` events as fast as possible and flush."""
    tracker = make_tracker(url, max_batch_size=batch_size)
    track = tracker.track
    entity, metric = ENTITY, METRIC
    try:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for i in range(n):
            track(entity, metric, i)
        flushed = tracker.flush(_FLUSH_TIMEOUT)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        stats = tracker.stats()
    finally:
        tracker.shutdown(10.0)
    problem = None
    if not flushed or stats.delivered != n:
        problem = (
            f"flushed={flushed}, delivered={stats.delivered} of {n}, dropped={stats.dropped}, "
            f"last_error={stats.last_error}"
        )
    return Delivery(n / elapsed, cpu / n * 1e9, problem)


def run(sizes: Sizes, sink: ServerProcess) -> Section:
    section = Section("2. End-to-end throughput")
    n = sizes.e2e_events
    problems: list[str] = []

    sink_rates: dict[int, list[float]] = {b: [] for b in BATCH_SIZES}
    sink_cpu: dict[int, list[float]] = {b: [] for b in BATCH_SIZES}
    for _ in range(sizes.e2e_repeats_sink):
        for batch in BATCH_SIZES:
            before = sink.count()
            run = deliver(sink.url, batch, n)
            problem = run.problem
            counted = sink.count() - before
            if counted != n:
                problem = f"sink counted {counted} of {n}" + (f"; {problem}" if problem else "")
            if problem:
                problems.append(f"sink, batch {batch}: {problem}")
            else:
                sink_rates[batch].append(run.rate)
                sink_cpu[batch].append(run.cpu_ns)

    fake_rates: dict[int, list[float]] = {b: [] for b in BATCH_SIZES}
    fake_skip: str | None = None
    for _ in range(sizes.e2e_repeats_fake):
        for batch in BATCH_SIZES:
            try:
                # A fresh fake per run: it keeps every event it received.
                with ServerProcess("fake") as fake:
                    run = deliver(fake.url, batch, n)
                    problem = run.problem
                    if fake.wait(n, 30.0) < 0:
                        problem = "FakeEnso did not store every event" + (
                            f"; {problem}" if problem else ""
                        )
            except (RuntimeError, TimeoutError) as exc:
                fake_skip = f"FakeEnso unavailable ({exc})"
                break
            if problem:
                problems.append(f"FakeEnso, batch {batch}: {problem}")
            else:
                fake_rates[batch].append(run.rate)
        if fake_skip:
            break
        progress(f"  FakeEnso repeat done: { {b: len(r) for b, r in fake_rates.items()} }")

    for batch in BATCH_SIZES:
        if sink_rates[batch]:
            summary = Summary.of(sink_rates[batch])
            if batch == DEFAULT_BATCH:  # issue #9: with the default configuration
                section.rows.append(
                    Row.measured(
                        f"counting sink, max_batch_size={batch} (default)",
                        summary,
                        "rate",
                        target="≥ 200,000 ev/s",
                        met=summary.median >= 200_000,
                    )
                )
            else:
                section.rows.append(
                    Row.measured(f"counting sink, max_batch_size={batch}", summary, "rate")
                )
    for batch in BATCH_SIZES:
        if fake_rates[batch]:
            section.rows.append(
                Row.measured(
                    f"FakeEnso, max_batch_size={batch}", Summary.of(fake_rates[batch]), "rate"
                )
            )
    for batch in BATCH_SIZES:
        if sink_cpu[batch]:
            section.rows.append(
                Row.measured(
                    f"client CPU per event (caller + sender), sink, batch {batch}",
                    Summary.of(sink_cpu[batch]),
                )
            )
    if sink_rates[1_000] and sink_rates[100]:
        ratios = [a / b for a, b in zip(sink_rates[1_000], sink_rates[100], strict=False)]
        section.rows.append(
            Row.measured("ratio batch 1,000 / batch 100 (sink)", Summary.of(ratios), "ratio")
        )
    section.details += [
        f"{n:,} events per run, tracked in a tight loop on the main thread "
        "(`track(entity, 'api_calls', i)`), then `flush(120)`; the clock runs from the "
        "first track() until flush() returns, i.e. until every batch was answered.",
        "Each run checks that flush() returned True and stats().delivered == N (a failed run "
        "is listed below and left out of the figures).",
        f"Counting sink: one child process for the whole suite, {sizes.e2e_repeats_sink} "
        "repeats, batch sizes alternated. FakeEnso: a fresh child process per run "
        f"(it stores every event), {sizes.e2e_repeats_fake} repeats.",
        "max_queue_size=10,000,000 and max_queue_bytes=16 GiB so nothing is refused.",
        "Client CPU per event: time.process_time() of the benchmark process over the run "
        "(tracking loop + sender thread; the server is another process) / N.",
    ]
    if fake_skip:
        section.details.append(f"FakeEnso runs skipped: {fake_skip}.")
    section.details += [f"FAILED RUN: {p}" for p in problems]
    return section
