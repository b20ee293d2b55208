"""Every validation rule: the bad value is refused at the call site and never reaches Enso."""

from __future__ import annotations

import enum
import numbers
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from enso_tracker import InvalidEventError, InvalidEventTypeError
from enso_tracker.testing import FakeEnso
from tests.conftest import TrackerFactory

GOOD: dict[str, Any] = {"entity": "ent_1", "metric": "api_calls", "value": 1}

BAD_CASES: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("entity", {"entity": ""}, InvalidEventError),
    ("entity", {"entity": "   "}, InvalidEventError),
    ("entity", {"entity": None}, InvalidEventTypeError),
    ("entity", {"entity": 42}, InvalidEventTypeError),
    ("entity", {"entity": "e" * 513}, InvalidEventError),
    ("metric", {"metric": ""}, InvalidEventError),
    ("metric", {"metric": b"api_calls"}, InvalidEventTypeError),
    ("metric", {"metric": "m" * 513}, InvalidEventError),
    ("value", {"value": True}, InvalidEventTypeError),
    ("value", {"value": None}, InvalidEventTypeError),
    ("value", {"value": float("nan")}, InvalidEventError),
    ("value", {"value": float("inf")}, InvalidEventError),
    ("value", {"value": float("-inf")}, InvalidEventError),
    ("value", {"value": Decimal("NaN")}, InvalidEventError),
    ("value", {"value": Decimal("Infinity")}, InvalidEventError),
    ("value", {"value": 2**53}, InvalidEventError),
    ("value", {"value": "1"}, InvalidEventTypeError),
    ("value", {"value": 1j}, InvalidEventTypeError),
    ("value", {"value": Fraction(1, 3)}, InvalidEventTypeError),
    ("timestamp", {"timestamp": datetime(2026, 4, 1, 12, 0)}, InvalidEventError),
    ("timestamp", {"timestamp": "2026-04-01T12:00:00"}, InvalidEventError),
    ("timestamp", {"timestamp": "yesterday"}, InvalidEventError),
    ("timestamp", {"timestamp": "2026-13-01T12:00:00Z"}, InvalidEventError),
    ("timestamp", {"timestamp": "1969-12-31T23:59:59Z"}, InvalidEventError),
    ("timestamp", {"timestamp": 1_700_000_000}, InvalidEventTypeError),
    ("metadata", {"metadata": ["a", "b"]}, InvalidEventTypeError),
    ("metadata", {"metadata": {1: "a"}}, InvalidEventTypeError),
    ("metadata", {"metadata": {"a": {"b": {2: 3}}}}, InvalidEventTypeError),
    ("metadata", {"metadata": {"a": object()}}, InvalidEventTypeError),
    ("metadata", {"metadata": {"a": float("nan")}}, InvalidEventError),
    ("metadata", {"metadata": {"a": "x" * 9000}}, InvalidEventError),
    ("event_id", {"event_id": ""}, InvalidEventError),
    ("event_id", {"event_id": 7}, InvalidEventTypeError),
    ("event_id", {"event_id": "has space"}, InvalidEventError),
    ("event_id", {"event_id": "évènement"}, InvalidEventError),
    ("event_id", {"event_id": "x" * 129}, InvalidEventError),
    ("job_id", {"job_id": ""}, InvalidEventError),
    ("job_id", {"job_id": 3.5}, InvalidEventTypeError),
]


@pytest.mark.parametrize(("field", "change", "error"), BAD_CASES)
def test_bad_argument_is_refused_and_never_sent(
    tracker: TrackerFactory,
    fake_enso: FakeEnso,
    field: str,
    change: dict[str, Any],
    error: type[Exception],
) -> None:
    t = tracker()
    args = {**GOOD, **change}
    entity, metric, value = args.pop("entity"), args.pop("metric"), args.pop("value")
    with pytest.raises(error) as info:
        t.track(entity, metric, value, **args)
    assert info.value.field == field  # type: ignore[attr-defined]
    assert str(info.value).startswith(f"{field}=")
    # The refused call left no trace: only the good event reaches the server.
    good_id = t.track("ent_ok", "api_calls", 1)
    assert t.flush(5.0)
    assert list(fake_enso.events) == [good_id]
    stats = t.stats()
    assert stats.accepted == 1
    assert stats.refused == {}


def test_naive_datetime_message_says_how_to_fix(tracker: TrackerFactory) -> None:
    with pytest.raises(InvalidEventError, match=r"timezone\.utc"):
        tracker().track("e", "m", 1, timestamp=datetime(2026, 1, 1))


class Plan(enum.StrEnum):
    PRO = "plan_pro"


class Units(enum.IntEnum):
    TEN = 10


class Float32:
    """Stands in for numpy.float32: a registered numbers.Real that is no float subclass."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        return self.value


class Int64:
    """Stands in for numpy.int64: a registered numbers.Integral that is no int subclass."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value


numbers.Real.register(Float32)
numbers.Integral.register(Int64)


GOOD_VALUES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"value": 0}, {"value": 0}),
    ({"value": -3}, {"value": -3}),
    ({"value": 2**53 - 1}, {"value": 2**53 - 1}),
    ({"value": 12.5}, {"value": 12.5}),
    ({"value": Units.TEN}, {"value": 10}),
    ({"value": Float32(2.5)}, {"value": 2.5}),
    ({"value": Int64(7)}, {"value": 7}),
    ({"entity": Plan.PRO}, {"CustomerEntityId": "plan_pro"}),
    (
        {"timestamp": datetime(2026, 4, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))},
        {"timestamp": "2026-04-01T12:00:00.123Z"},
    ),
    ({"timestamp": "2026-04-01T12:00:00Z"}, {"timestamp": "2026-04-01T12:00:00.000Z"}),
    ({"timestamp": "2026-04-01t12:00:00.5+05:30"}, {"timestamp": "2026-04-01T06:30:00.500Z"}),
    (
        {"timestamp": "2026-04-01 12:00:00.123456789-01:00"},
        {"timestamp": "2026-04-01T13:00:00.123Z"},
    ),
    ({"timestamp": datetime(1970, 1, 1, tzinfo=UTC)}, {"timestamp": "1970-01-01T00:00:00.000Z"}),
    (
        {"metadata": {"region": "eu", "n": [1, 2.5, None]}},
        {"metadata": {"region": "eu", "n": [1, 2.5, None]}},
    ),
    ({"event_id": "evt_custom_1"}, {"eventId": "evt_custom_1"}),
    ({"job_id": "job_nightly"}, {"JobId": "job_nightly", "jobId": "job_nightly"}),
]


@pytest.mark.parametrize(("kwargs", "expected"), GOOD_VALUES)
def test_good_arguments_reach_the_wire_normalised(
    tracker: TrackerFactory, fake_enso: FakeEnso, kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    t = tracker()
    args = {**GOOD, **kwargs}
    entity, metric, value = args.pop("entity"), args.pop("metric"), args.pop("value")
    event_id = t.track(entity, metric, value, **args)
    assert event_id is not None
    assert t.flush(5.0)
    sent = fake_enso.events[event_id]
    for key, want in expected.items():
        assert sent[key] == want
        assert type(sent[key]) is type(want)


def test_metadata_is_snapshotted_at_track_time(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker()
    metadata = {"region": "eu"}
    event_id = t.track("e", "m", 1, metadata=metadata)
    metadata["region"] = "us"  # the caller reuses its dict
    assert event_id is not None
    assert t.flush(5.0)
    assert fake_enso.events[event_id]["metadata"] == {"region": "eu"}


def test_default_timestamp_is_the_time_of_the_call(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker()
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    event_id = t.track("e", "m", 1)
    after = datetime.now(UTC) + timedelta(milliseconds=1)
    assert event_id is not None
    assert t.flush(5.0)
    sent = datetime.fromisoformat(fake_enso.events[event_id]["timestamp"])
    assert before <= sent <= after
