"""Scenario 6: the same hot-path and throughput measurements for peer SDKs.

Peers are optional (the ``bench`` extra): each is imported with importlib and skipped
with "not installed" when absent. Both post ``{"batch": [...]}`` bodies (Segment to
``/v1/batch``, PostHog to ``/batch/``), which the counting sink counts and answers
``200 {}``. Their clients and enso-tracker's are measured in the same run, interleaved,
and every comparison is a ratio within one repeat.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from enso_tracker import Config

from ._common import CHUNK, ENTITY, METRIC, Row, Section, Sizes, Summary, percentile
from ._servers import ServerProcess
from .hot_path import make_tracker, time_track

__all__ = ["run"]

TARGET_RATIO = 20.0
DEFAULT_BATCH = Config().max_batch_size
_QUEUE = 2_000_000  # peers' max_queue_size: never the limiting factor here


@dataclass(frozen=True)
class Client:
    """A live peer client: the object, one call with a given value, and its teardown."""

    client: Any
    one: Callable[[int], object]
    close: Callable[[], None]


@dataclass(frozen=True)
class Peer:
    name: str
    module: str
    factory: Callable[[str], Client]  # a client posting to the given base URL
    timer: Callable[[int, Any], list[float]]  # the hand-written hot-path loop
    call: str


def _segment(url: str) -> Client:
    analytics: Any = importlib.import_module("segment.analytics")
    client = analytics.Client("bench-write-key", host=url, max_queue_size=_QUEUE)

    def one(value: int) -> object:
        return client.track(user_id=ENTITY, event=METRIC, properties={"value": value})

    return Client(client, one, client.join)  # join(): stop the consumer after its upload


def _posthog(url: str) -> Client:
    posthog: Any = importlib.import_module("posthog")
    client = posthog.Posthog("phc_bench", host=url, max_queue_size=_QUEUE, flush_interval=0.5)

    def one(value: int) -> object:
        return client.capture(event=METRIC, distinct_id=ENTITY, properties={"value": value})

    return Client(client, one, client.shutdown)


def _time_segment(chunks: int, client: Any) -> list[float]:
    pc = time.perf_counter_ns
    track = client.track
    entity, metric, value = ENTITY, METRIC, 1
    out: list[float] = []
    for _ in range(chunks):
        t0 = pc()
        for _ in range(CHUNK):
            track(user_id=entity, event=metric, properties={"value": value})
        out.append((pc() - t0) / CHUNK)
    return out


def _time_posthog(chunks: int, client: Any) -> list[float]:
    pc = time.perf_counter_ns
    capture = client.capture
    entity, metric, value = ENTITY, METRIC, 1
    out: list[float] = []
    for _ in range(chunks):
        t0 = pc()
        for _ in range(CHUNK):
            capture(event=metric, distinct_id=entity, properties={"value": value})
        out.append((pc() - t0) / CHUNK)
    return out


PEERS = (
    Peer(
        "segment-analytics-python",
        "segment.analytics",
        _segment,
        _time_segment,
        "`Client.track(user_id=entity, event=metric, properties={'value': v})`",
    ),
    Peer(
        "posthog",
        "posthog",
        _posthog,
        _time_posthog,
        "`Posthog.capture(event=metric, distinct_id=entity, properties={'value': v})`",
    ),
)


def _installed(peer: Peer) -> bool:
    try:
        importlib.import_module(peer.module)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Peers log every failed or slow upload; keep the benchmark's output readable."""
    loggers = [logging.getLogger(name) for name in ("segment", "posthog", "backoff")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _throughput(sink: ServerProcess, one: Callable[[int], object], n: int) -> float | None:
    """Events/s from the first call until the sink counted all ``n`` events."""
    before = sink.count()
    t0 = time.perf_counter()
    for i in range(n):
        one(i)
    counted = sink.wait(before + n, 120.0) - before
    elapsed = time.perf_counter() - t0
    return n / elapsed if counted >= n else None


def run(sizes: Sizes, sink: ServerProcess) -> Section:
    section = Section("6. Peers")
    present = [peer for peer in PEERS if _installed(peer)]
    missing = [peer.name for peer in PEERS if peer not in present]
    if missing:
        section.details.append(f"Not installed (skipped): {', '.join(missing)}.")
    if not present:
        section.skipped = "not installed (make bench, or pip install --group bench)"
        return section
    chunks = max(1, sizes.peer_calls // CHUNK)
    hot: dict[str, list[float]] = {"enso": [], **{p.name: [] for p in present}}
    hot_p99: dict[str, list[float]] = {name: [] for name in hot}
    ratios: dict[str, list[float]] = {p.name: [] for p in present}
    rates: dict[str, list[float]] = {"enso": [], **{p.name: [] for p in present}}
    rate_ratios: dict[str, list[float]] = {p.name: [] for p in present}
    problems: list[str] = []

    tracker = make_tracker(sink.url)
    clients: dict[str, Client] = {}
    with _quiet():
        try:
            for peer in present:
                clients[peer.name] = peer.factory(sink.url)
            # Hot path, interleaved: enso, then each peer, per repeat.
            time_track(max(1, chunks // 10), tracker.track)
            for _ in range(sizes.peer_repeats):
                samples: dict[str, list[float]] = {}
                # Each client is timed while its own consumer runs, then drained, so the
                # next one is not measured against another client's backlog.
                for name, timer, client in [
                    ("enso", time_track, tracker.track),
                    *((p.name, p.timer, clients[p.name].client) for p in present),
                ]:
                    expected = sink.count() + chunks * CHUNK
                    samples[name] = timer(chunks, client)
                    if sink.wait(expected, 120.0) < expected:
                        problems.append(f"hot path: the sink did not receive every {name} event")
                for name, values in samples.items():
                    hot[name].append(percentile(values, 0.5))
                    hot_p99[name].append(percentile(values, 0.99))
                for peer in present:
                    ratios[peer.name].append(hot[peer.name][-1] / hot["enso"][-1])

            # Throughput to the counting sink, interleaved, same completion criterion.
            n = sizes.peer_events
            for _ in range(sizes.peer_e2e_repeats):
                enso_rate = _throughput(sink, lambda v: tracker.track(ENTITY, METRIC, v), n)
                if enso_rate is None:
                    problems.append("throughput: enso-tracker run incomplete")
                    continue
                rates["enso"].append(enso_rate)
                for peer in present:
                    rate = _throughput(sink, clients[peer.name].one, n)
                    if rate is None:
                        problems.append(f"throughput: {peer.name} run incomplete")
                        continue
                    rates[peer.name].append(rate)
                    rate_ratios[peer.name].append(enso_rate / rate)
        finally:
            tracker.shutdown(10.0)
            for client in clients.values():
                client.close()

    enso_med = Summary.of(hot["enso"])
    section.rows.append(Row.measured("enso-tracker track(), median", enso_med))
    for peer in present:
        ratio = Summary.of(ratios[peer.name])
        section.rows += [
            Row.measured(f"{peer.name} call, median", Summary.of(hot[peer.name])),
            Row.measured(f"{peer.name} call, p99", Summary.of(hot_p99[peer.name])),
            Row.measured(
                f"ratio {peer.name} / enso-tracker (call cost)",
                ratio,
                "ratio",
                target=f"≥ {TARGET_RATIO:g}x",
                met=ratio.median >= TARGET_RATIO,
            ),
        ]
    if rates["enso"]:
        section.rows.append(
            Row.measured(
                f"throughput enso-tracker (default batch {DEFAULT_BATCH}) → sink",
                Summary.of(rates["enso"]),
                "rate",
            )
        )
    for peer in present:
        if rates[peer.name]:
            section.rows += [
                Row.measured(
                    f"throughput {peer.name} → sink", Summary.of(rates[peer.name]), "rate"
                ),
                Row.measured(
                    f"ratio enso-tracker / {peer.name} (throughput)",
                    Summary.of(rate_ratios[peer.name]),
                    "ratio",
                    target=f"≥ {TARGET_RATIO:g}x",
                    met=Summary.of(rate_ratios[peer.name]).median >= TARGET_RATIO,
                ),
            ]
    section.details += [
        "Calls: enso-tracker `track(entity, metric, 1)`; "
        + "; ".join(f"{p.name} {p.call}" for p in present)
        + ".",
        "Peers use their defaults (batches of 100, background consumer thread, "
        "keep-alive `requests` session) except max_queue_size=2,000,000 and, for PostHog, "
        "flush_interval=0.5 s (Segment's default upload_interval).",
        f"Hot path: {sizes.peer_repeats} repeats of {chunks * CHUNK:,} calls per client "
        f"(fewer than scenario 1 because peer calls are ~20-50x slower), chunks of {CHUNK}, "
        "clients one after the other within a repeat; ratio per repeat. Each client's own "
        "consumer/sender runs while it is timed; the sink then receives everything before "
        "the next client starts.",
        f"Throughput: {sizes.peer_events:,} events per run, {sizes.peer_e2e_repeats} repeats, "
        "interleaved; clock from the first call until the sink counted every event "
        "(peers report no acknowledgements), enso-tracker with its default batch "
        f"({DEFAULT_BATCH}).",
    ]
    section.details += [f"FAILED RUN: {p}" for p in problems]
    return section
