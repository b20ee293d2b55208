"""OpenTelemetry export of the tracker's health (issue #20): every figure is stats()'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.metrics", reason="needs the otel extra")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from enso_tracker import Tracker
from enso_tracker.otel import (
    INSTRUMENTS,
    OUTCOME,
    REQUEST_DURATION,
    REQUEST_SIZE,
    SPOOL_BACKLOG_AGE,
    instrument,
)
from enso_tracker.testing import FakeEnso, Fault
from tests.conftest import API_KEY, wait_until


def exported(reader: InMemoryMetricReader) -> dict[str, tuple[str, dict[tuple[Any, ...], Any]]]:
    """name → (unit, {attributes: value}) of one collection."""
    data = reader.get_metrics_data()
    out: dict[str, tuple[str, dict[tuple[Any, ...], Any]]] = {}
    if data is None:  # nothing observed
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "enso_tracker"
            for metric in scope.metrics:
                points = {
                    tuple(sorted((p.attributes or {}).items())): getattr(p, "value", None)
                    for p in metric.data.data_points
                }
                out[metric.name] = (metric.unit or "", points)
    return out


def test_every_exported_figure_equals_stats(fake_enso: FakeEnso, tmp_path: Path) -> None:
    fake_enso.known_entities = ["ent_ok"]
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    t = Tracker(API_KEY, base_url=fake_enso.url, spool_dir=tmp_path, handle_sigterm=False)
    handle = instrument(t, meter_provider=provider)
    for i in range(30):
        t.track("ent_ok" if i % 3 else "ent_unknown", "api_calls", 1)
    t.flush(20)
    stats = t.stats()
    got = exported(reader)
    reason = "enso.tracker.drop.reason"
    assert got["enso.tracker.events.accepted"] == ("{event}", {(): 30})
    assert got["enso.tracker.events.delivered"] == ("{event}", {(): stats.delivered})
    assert stats.delivered == 20
    assert got["enso.tracker.events.dropped"] == ("{event}", {((reason, "rejected"),): 10})
    assert got["enso.tracker.queue.size"] == ("By", {(): stats.queued_bytes})
    assert got["enso.tracker.spool.size"] == ("By", {(): stats.spool_bytes})
    assert stats.spool_bytes > 0
    assert got["enso.tracker.auth.state"][1] == {
        (("enso.tracker.auth.state", "ok"),): 1,
        (("enso.tracker.auth.state", "unauthorized"),): 0,
    }
    assert got["enso.tracker.last_success"] == ("s", {(): stats.last_success_at})
    # Every single-figure instrument, generically: the field it reads, as stats() has it.
    for name, _, unit, _, read in INSTRUMENTS:
        expected = {tuple(sorted(a.items())): v for v, a in read(stats)}
        if expected:
            assert got[name] == (unit, expected), name
    assert got["enso.tracker.dead_letters"][1] == {(): 10}

    handle.close()  # nothing observed any more; the histograms keep their cumulative points
    assert set(exported(reader)) == {REQUEST_DURATION, REQUEST_SIZE}
    t.shutdown()
    provider.shutdown()


def test_instrument_without_a_provider_uses_the_global_one(fake_enso: FakeEnso) -> None:
    t = Tracker(API_KEY, base_url=fake_enso.url, handle_sigterm=False)
    handle = instrument(t)  # the API's no-op provider: registers, exports nowhere
    assert handle.stats() == t.stats()
    t.shutdown()


def histograms(reader: InMemoryMetricReader, name: str) -> dict[str, tuple[int, float]]:
    """outcome → (count, sum) of one histogram in one collection."""
    data = reader.get_metrics_data()
    out: dict[str, tuple[int, float]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for p in metric.data.data_points:
                        assert isinstance(p, HistogramDataPoint)
                        out[str((p.attributes or {})[OUTCOME])] = (p.count, p.sum)
    return out


def test_request_histograms_count_every_request_and_its_bytes(fake_enso: FakeEnso) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    t = Tracker(
        API_KEY, base_url=fake_enso.url, handle_sigterm=False, backoff_base=0.01, backoff_max=0.05
    )
    handle = instrument(t, meter_provider=provider)
    fake_enso.script(Fault(status=503), Fault(status=503))
    for i in range(3):
        for _ in range(10):
            t.track(f"ent_{i}", "api_calls", 1)
        assert t.flush(10)
    sent = fake_enso.batch_requests()
    stats = t.stats()
    assert stats.requests == len(sent) >= 5  # 2 refused + at least one per flush
    duration = histograms(reader, REQUEST_DURATION)
    size = histograms(reader, REQUEST_SIZE)
    assert duration["retry"][0] == size["retry"][0] == 2
    assert duration["answered"][0] == size["answered"][0] == len(sent) - 2
    assert sum(n for n, _ in duration.values()) == stats.requests
    assert sum(total for _, total in size.values()) == sum(len(r.body) for r in sent)
    assert all(total > 0 for _, total in duration.values())
    got = exported(reader)
    assert got[REQUEST_DURATION][0] == "s"
    assert got[REQUEST_SIZE][0] == "By"

    handle.close()  # the sender calls nothing any more
    assert t._worker.request_observer is None
    t.track("ent_0", "api_calls", 1)
    assert t.flush(10)
    assert sum(n for n, _ in histograms(reader, REQUEST_DURATION).values()) == len(sent)
    t.shutdown()
    provider.shutdown()


def test_a_raising_request_observer_costs_no_event(fake_enso: FakeEnso) -> None:
    t = Tracker(API_KEY, base_url=fake_enso.url, handle_sigterm=False)

    def broken(seconds: float, nbytes: int, outcome: object) -> None:
        raise RuntimeError("exporter down")

    t._worker.request_observer = broken
    for _ in range(5):
        t.track("ent_ok", "api_calls", 1)
    assert t.flush(10)
    stats = t.stats()
    assert stats.delivered == 5
    assert fake_enso.received == 5
    assert stats.hook_errors == stats.requests >= 1
    t.shutdown()


def test_spool_backlog_age_grows_while_enso_is_down_and_is_zero_after(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    fake_enso.chaos(p503=1.0)  # Enso unavailable
    t = Tracker(
        API_KEY,
        base_url=fake_enso.url,
        spool_dir=tmp_path,
        handle_sigterm=False,
        backoff_base=0.01,
        backoff_max=0.05,
    )
    instrument(t, meter_provider=provider)

    def age() -> float:
        value = exported(reader)[SPOOL_BACKLOG_AGE]
        assert value[0] == "s"
        return float(value[1][()])

    assert age() == 0.0  # a spool, nothing on it yet
    for _ in range(10):
        t.track("ent_ok", "api_calls", 1)
    assert wait_until(lambda: t.stats().spooled == 10)
    first = age()
    assert first > 0.0
    assert wait_until(lambda: age() > first)  # it grows while nothing is delivered
    assert fake_enso.received == 0

    fake_enso.chaos()  # Enso back
    assert t.flush(10)
    assert fake_enso.received == 10
    assert age() == 0.0  # delivered: settled rows (even those deleted later) are no backlog
    t.shutdown()
    assert age() == 0.0  # a closed tracker's spool: nothing held open
    provider.shutdown()


def test_spool_backlog_age_is_zero_without_a_spool(fake_enso: FakeEnso) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    t = Tracker(API_KEY, base_url=fake_enso.url, handle_sigterm=False)
    handle = instrument(t, meter_provider=provider)
    assert exported(reader)[SPOOL_BACKLOG_AGE] == ("s", {(): 0.0})
    handle.close()
    assert SPOOL_BACKLOG_AGE not in exported(reader)
    t.shutdown()
    provider.shutdown()


def test_auth_state_is_exported_as_unauthorized_while_enso_refuses_the_key(
    fake_enso: FakeEnso,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    t = Tracker("not-the-key", base_url=fake_enso.url, handle_sigterm=False, backoff_base=0.01)
    instrument(t, meter_provider=provider)
    t.track("ent_ok", "api_calls", 1)
    assert wait_until(lambda: t.stats().auth_state == "unauthorized")
    got = exported(reader)
    assert got["enso.tracker.auth.state"][1] == {
        (("enso.tracker.auth.state", "ok"),): 0,
        (("enso.tracker.auth.state", "unauthorized"),): 1,
    }
    assert histograms(reader, REQUEST_DURATION)["unauthorized"][0] >= 1
    assert fake_enso.received == 0
    t.shutdown(0.5)
    provider.shutdown()
