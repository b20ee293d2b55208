"""Property-based: arbitrary values thrown at track() are either refused at the call site
with a clear error, or accepted and later delivered intact. The worker never crashes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enso_tracker import InvalidEventError, Tracker
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(),
    st.text(max_size=8),
)
metadata_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=3)
    ),
    max_leaves=6,
)
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.decimals(),
    st.text(max_size=12),
    st.binary(max_size=4),
    st.complex_numbers(),
)
junk = anything


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually ``valid``, sometimes anything at all (one_of alone would favour junk)."""
    return st.integers(0, 4).flatmap(lambda i: junk if i == 4 else valid)


names = st.text(min_size=1, max_size=20)
numbers = st.one_of(
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False),
)
aware = st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC))
ids = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1)
# Mostly plausible values with a share of anything at all, so both outcomes are common.
calls = st.fixed_dictionaries(
    {
        "entity": mostly(names),
        "metric": mostly(st.one_of(st.sampled_from(["api_calls", "gb"]), names)),
        "value": mostly(numbers),
    },
    optional={
        "timestamp": st.one_of(
            aware,
            aware.map(lambda d: d.isoformat()),
            st.datetimes(),  # naive: must be refused
            st.text(max_size=30),
            junk,
        ),
        "metadata": st.one_of(st.dictionaries(st.text(max_size=6), metadata_values), junk),
        "event_id": mostly(ids),
        "job_id": mostly(ids),
    },
)


def expected_timestamp(value: Any) -> str | None:
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    moment = moment.astimezone(UTC)
    moment -= timedelta(microseconds=moment.microsecond % 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def same_number(sent: Any, wanted: Any) -> bool:
    if isinstance(wanted, Decimal):
        return bool(sent == float(wanted))
    return (bool(sent == wanted) and type(sent) is type(wanted)) or float(sent) == float(wanted)


def test_arbitrary_arguments_are_refused_or_delivered_intact() -> None:
    drops = DropRecorder()
    accepted: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    refused: list[str] = []
    with FakeEnso() as fake:
        tracker = Tracker(api_key=API_KEY, base_url=fake.url, on_drop=drops, flush_interval=0.05)

        @settings(
            max_examples=400,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(calls)
        def one_call(kwargs: dict[str, Any]) -> None:
            event_id = kwargs.get("event_id")
            if isinstance(event_id, str) and event_id in seen_ids:
                return  # a reused id is Enso's dedup at work, not a validation question
            error: InvalidEventError | None = None
            try:
                returned = tracker.track(**kwargs)
            except InvalidEventError as exc:
                error = exc
            if error is not None:
                refused.append(error.field)
                assert error.field in kwargs
                assert str(error).startswith(f"{error.field}=")
                return
            assert returned is not None
            if isinstance(event_id, str):
                assert returned == event_id
            seen_ids.add(returned)
            accepted[returned] = kwargs

        one_call()
        assert tracker.flush(30.0)
        stats = tracker.stats()
        tracker.shutdown(5.0)
        on_server = fake.events
    # The strategies must exercise both outcomes, or this test proves nothing.
    assert len(accepted) >= 40, len(accepted)
    assert {"entity", "value", "timestamp", "metadata"} <= set(refused)
    assert stats.worker_errors == 0
    assert stats.accepted == len(accepted) == stats.delivered
    assert drops.calls == []
    assert set(on_server) == set(accepted)
    for event_id, kwargs in accepted.items():
        sent = on_server[event_id]
        assert sent["CustomerEntityId"] == str(kwargs["entity"])
        assert sent["metric"] == str(kwargs["metric"])
        assert same_number(sent["value"], kwargs["value"]), (sent["value"], kwargs["value"])
        want_ts = expected_timestamp(kwargs.get("timestamp"))
        if want_ts is not None:
            assert sent["timestamp"] == want_ts
        if kwargs.get("metadata") is not None:
            assert sent["metadata"] == kwargs["metadata"]
        else:
            assert "metadata" not in sent
        if kwargs.get("job_id") is not None:
            assert sent["JobId"] == sent["jobId"] == kwargs["job_id"]
