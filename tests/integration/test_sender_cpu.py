"""The sender's cheap paths (issue #21): one-call batch encoding, per-batch books.

Behaviour only (the figures are in ``benchmarks/sender_cpu.py``): a body encoded in one
call is byte for byte the per-event join; a fresh batch that is not wholly delivered
falls back to per-event bookkeeping with the same eventIds and the same event JSON; the
books balance to the byte.
"""

from __future__ import annotations

import json
from collections import deque
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enso_tracker import ConfigurationError, Tracker
from enso_tracker._record import QueuedEvent, encode_record, event_id_of, seq_of
from enso_tracker._schedule import take
from enso_tracker._wire import EventEncoder, join_batch
from enso_tracker.testing import DropRecorder, FakeEnso, Fault
from tests.conftest import TrackerFactory, accepted, wait_until


def _items() -> list[QueuedEvent]:
    second = 1_764_000_000 * 10**9
    return [
        (1, None, "ent", "api_calls", 1, second, None, None, 0),  # a generated id
        (
            2,
            "custom-id",
            "ent_ü",
            "tökens",
            Decimal("1.000000000000000000001"),
            second + 1,
            b'{"k":"v","n":[1,2]}',
            "job-1",
            0,
        ),
        (3, "evt_a_0x3", 'we"ird\\name', "m", -2.5, second + 999_999_999, None, "j", 0),
        (4, "evt_a_0x4", "ent", "api_calls", 10**15, second + 10**9, b"{}", None, 0),
    ]


def test_batch_encoded_in_one_call_equals_the_per_event_join() -> None:
    items = _items()
    one = EventEncoder().encode_batch(items, "evt_a_")
    each = EventEncoder()
    joined = join_batch([encode_record(each, item, "evt_a_") for item in items])
    assert one == joined
    events = json.loads(one)["events"]
    assert [e["eventId"] for e in events] == ["evt_a_0x1", "custom-id", "evt_a_0x3", "evt_a_0x4"]
    assert events[1]["metadata"] == {"k": "v", "n": [1, 2]}
    assert events[1]["JobId"] == events[1]["jobId"] == "job-1"
    assert "metadata" not in events[0]


def test_take_removes_the_head_in_order() -> None:
    queue: deque[QueuedEvent] = deque(_items())
    taken = take(queue, 3)
    assert taken == _items()[:3]
    assert [seq_of(item) for item in queue] == [4]
    assert take(queue, 0) == []


def _balanced_to_the_byte(tracker: Tracker) -> None:
    stats = tracker.stats()
    assert stats.balanced
    assert stats.queued == stats.in_flight == 0
    assert stats.queued_bytes == 0
    assert tracker._ledger.outstanding_bytes == 0
    assert tracker._ledger.inflight_body == 0


def test_fresh_batch_wholly_delivered_keeps_exact_books(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker(flush_interval=10.0)
    ids = [accepted(t.track("ent", "api_calls", i, metadata={"i": i})) for i in range(50)]
    assert t.flush(10.0)
    assert [e["eventId"] for e in fake_enso.batch_requests()[0].json()["events"]] == ids
    assert t.stats().delivered == 50
    assert t.stats().requests == 1
    _balanced_to_the_byte(t)


def test_fresh_batch_partly_failed_is_retried_with_the_same_event_json(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    t = tracker(flush_interval=10.0)
    ids = [accepted(t.track("ent", "api_calls", i, metadata={"i": i})) for i in range(6)]
    fake_enso.script(Fault(status=200, record_status={0: 503, 4: 500}), Fault(status=503))
    assert t.flush(10.0)
    requests = fake_enso.batch_requests()
    first = requests[0].json()["events"]
    assert [e["eventId"] for e in first] == ids
    resent = [e for r in requests[1:] for e in r.json()["events"]]
    # Resent as they first went, byte for byte in JSON terms, and nothing else.
    by_id = {e["eventId"]: e for e in first}
    assert {e["eventId"] for e in resent} == {ids[0], ids[4]}
    assert all(e == by_id[e["eventId"]] for e in resent)
    assert set(fake_enso.events) == set(ids)
    stats = t.stats()
    assert stats.delivered == 6
    assert drop_recorder.calls == []
    _balanced_to_the_byte(t)


def test_fresh_batch_refused_whole_is_dropped_with_its_metadata(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    t = tracker(flush_interval=10.0)
    ids = [accepted(t.track("ent", "api_calls", i, metadata={"i": i})) for i in range(3)]
    fake_enso.script(Fault(status=400))
    assert t.flush(10.0)
    dropped = drop_recorder.events("rejected")
    assert [e.event_id for e in dropped] == ids
    assert [e.metadata for e in dropped] == [{"i": 0}, {"i": 1}, {"i": 2}]
    _balanced_to_the_byte(t)


def test_fresh_batch_over_the_learned_limit_is_cut_per_event(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    fake_enso.max_body_bytes = 20_000
    t = tracker(flush_interval=10.0, max_batch_size=500)
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(400)]
    assert t.flush(10.0)
    assert sorted(fake_enso.events) == sorted(ids)
    assert all(len(r.body) <= 20_000 for r in fake_enso.batch_requests() if r.status == 200)
    assert fake_enso.duplicates == {}
    _balanced_to_the_byte(t)
    # Later fresh batches are cut to the learned limit before they are sent.
    limit = t._ledger.schedule.byte_limit
    assert limit <= 20_000
    fake_enso.reset()
    more = [accepted(t.track("ent", "api_calls", i)) for i in range(400)]
    assert t.flush(10.0)
    assert sorted(fake_enso.events) == sorted(more)
    assert all(len(r.body) <= limit for r in fake_enso.batch_requests())


def test_a_backlog_goes_in_fuller_requests_within_the_byte_limit(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker(
        flush_interval=10.0, max_batch_size=50, max_backlog_batch_size=400, max_batch_bytes=40_000
    )
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(1_000)]
    assert t.flush(10.0)
    requests = fake_enso.batch_requests()
    sizes = [len(r.json()["events"]) for r in requests]
    assert max(sizes) > 50  # fuller than max_batch_size: it was a backlog
    assert max(sizes) <= 400
    assert all(len(r.body) <= 40_000 for r in requests)
    assert [e["eventId"] for r in requests for e in r.json()["events"]] == ids
    _balanced_to_the_byte(t)


def test_without_a_backlog_requests_keep_max_batch_size(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker(flush_interval=10.0, max_batch_size=50, max_backlog_batch_size=50)
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(300)]
    assert t.flush(10.0)
    sizes = [len(r.json()["events"]) for r in fake_enso.batch_requests()]
    assert max(sizes) <= 50
    assert sum(sizes) == len(ids)
    with pytest.raises(ConfigurationError, match="max_backlog_batch_size"):
        tracker(max_backlog_batch_size=0)


def test_an_error_mid_request_puts_a_fresh_batch_back_with_exact_books(
    tracker: TrackerFactory, fake_enso: FakeEnso, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = tracker(flush_interval=10.0)
    worker = t._worker
    real_request = worker.request
    calls: list[int] = []

    def request(body: bytes, timeout: float, batch: Any) -> Any:
        calls.append(len(body))
        if len(calls) == 1:
            raise RuntimeError("a bug after the body was counted")
        return real_request(body, timeout, batch)

    monkeypatch.setattr(worker, "request", request)
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(20)]
    assert t.flush(10.0)
    assert set(fake_enso.events) == set(ids)
    assert t.stats().worker_errors == 1
    _balanced_to_the_byte(t)


def test_a_backlog_over_a_learned_413_limit_is_cut_and_delivered_once(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    fake_enso.max_body_bytes = 30_000
    t = tracker(flush_interval=10.0, max_batch_size=100, max_backlog_batch_size=2_000)
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(3_000)]
    assert t.flush(20.0)
    assert sorted(fake_enso.events) == sorted(ids)
    assert fake_enso.duplicates == {}
    requests = fake_enso.batch_requests()
    refused = [r for r in requests if r.status == 413]
    # Each 413 halves the limit for good (and its events go back, split): a few, no storm.
    assert 1 <= len(refused) <= 6
    assert all(r.status in (200, 413) for r in requests)
    assert sum(len(r.json()["events"]) for r in requests if r.status == 200) == 3_000
    assert t.stats().dropped == {}
    _balanced_to_the_byte(t)


_names = st.text(min_size=1, max_size=30).filter(lambda s: not s.isspace())
_values = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=6),
)
_metadata = st.one_of(
    st.none(),
    st.dictionaries(
        st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20)), max_size=3
    ),
)
_events = st.lists(
    st.tuples(
        _names,
        _names,
        _values,
        st.integers(min_value=0, max_value=2**62),
        _metadata,
        st.one_of(st.none(), st.text(alphabet="abcdef0123456789-", min_size=1, max_size=40)),
        st.one_of(st.none(), st.text(alphabet="xyz0123456789_", min_size=1, max_size=20)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_events)
def test_one_call_body_equals_the_per_event_join_for_any_events(events: list[Any]) -> None:
    items: list[QueuedEvent] = []
    for seq, (entity, metric, value, ts, metadata, job, given_id) in enumerate(events, 1):
        meta = None if metadata is None else msgspec.json.encode(metadata)
        items.append((seq, given_id, entity, metric, value, ts, meta, job, 0))
    one = EventEncoder().encode_batch(items, "evt_p_")
    each = EventEncoder()
    joined = join_batch([encode_record(each, item, "evt_p_") for item in items])
    assert one == joined
    decoded = msgspec.json.decode(one)["events"]
    assert [e["eventId"] for e in decoded] == [event_id_of(item, "evt_p_") for item in items]


def test_full_batches_soon_after_a_request_gather_into_one_fuller_request(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    # Config.min_request_interval: the first full batch goes at once; the next ones,
    # filled within the gap, wait it out and go together (within max_backlog_batch_size).
    t = tracker(flush_interval=10.0, max_batch_size=10, min_request_interval=2.0)
    first = [accepted(t.track("ent", "api_calls", i)) for i in range(10)]
    assert wait_until(lambda: t.stats().delivered == 10)
    rest = [accepted(t.track("ent", "api_calls", i)) for i in range(25)]
    assert wait_until(lambda: t.stats().delivered == 35)
    sizes = [len(r.json()["events"]) for r in fake_enso.batch_requests()]
    assert sizes == [10, 25]
    assert sorted(fake_enso.events) == sorted(first + rest)
    _balanced_to_the_byte(t)


def test_a_negative_min_request_interval_is_refused(tracker: TrackerFactory) -> None:
    with pytest.raises(ConfigurationError, match=r"min_request_interval=-1\.0"):
        tracker(min_request_interval=-1.0)
