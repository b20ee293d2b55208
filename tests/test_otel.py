"""OpenTelemetry export of the tracker's health (issue #20): every figure is stats()'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.metrics", reason="needs the otel extra")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from enso_tracker import Tracker
from enso_tracker.otel import INSTRUMENTS, instrument
from enso_tracker.testing import FakeEnso

from .conftest import API_KEY


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


def test_every_exported_figure_equals_stats(fake: FakeEnso, tmp_path: Path) -> None:
    fake.known_entities = ["ent_ok"]
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    t = Tracker(API_KEY, base_url=fake.url, spool_dir=tmp_path, handle_sigterm=False)
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

    handle.close()  # nothing observed any more
    assert exported(reader) == {}
    t.shutdown()
    provider.shutdown()


def test_instrument_without_a_provider_uses_the_global_one(fake: FakeEnso) -> None:
    t = Tracker(API_KEY, base_url=fake.url, handle_sigterm=False)
    handle = instrument(t)  # the API's no-op provider: registers, exports nowhere
    assert handle.stats() == t.stats()
    t.shutdown()
