"""The books after the answers that are easy to get wrong (issue #22, "Tests that would
catch a wrong book"): each test drives a real Tracker over FakeEnso's socketless
transport (no port, no server thread) or a scripted ``httpx.MockTransport``, then checks
the outcome per eventId, the request count, and the audit (``tests/unit/audit.py``) of
what the queues really hold against the books."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from enso_tracker import Tracker
from enso_tracker.testing import DropRecorder, FakeEnso, Fault, RecordedRequest
from tests.conftest import API_KEY, accepted
from tests.unit.audit import audit

BASE_URL = "https://enso.test"
Make = Callable[..., Tracker]

#: A loop here (a resend loop, an answer decoded forever) fails the test, not the suite.
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def socketless_fake() -> FakeEnso:
    """Served through ``transport()`` only: never started, no socket."""
    return FakeEnso()


@pytest.fixture
def make(socketless_fake: FakeEnso, drop_recorder: DropRecorder) -> Iterator[Make]:
    made: list[Tracker] = []

    def build(transport: httpx.BaseTransport | None = None, **options: Any) -> Tracker:
        options.setdefault("on_drop", drop_recorder)
        options.setdefault("backoff_base", 0.001)
        options.setdefault("backoff_max", 0.01)
        options.setdefault("flush_interval", 0.05)
        options.setdefault("handle_sigterm", False)
        tracker = Tracker(
            api_key=API_KEY,
            base_url=BASE_URL,
            transport=transport or socketless_fake.transport(),
            **options,
        )
        made.append(tracker)
        return tracker

    yield build
    for tracker in made:
        tracker.shutdown(5.0)


def first_answers(
    fake: FakeEnso, *responses: Callable[[], httpx.Response]
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport whose first batch requests get ``responses`` (in order), and every
    other request (logins, later batches) the fake's own answer. Returns it and the
    batch requests seen."""
    behind = fake.transport()
    script = list(responses)
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events/batch"):
            request.read()
            seen.append(request)
            if script:
                return script.pop(0)()
        return behind.handle_request(request)

    return httpx.MockTransport(handle), seen


def ids_in(request: httpx.Request | RecordedRequest) -> list[str]:
    body = request.content if isinstance(request, httpx.Request) else request.body
    return [e["eventId"] for e in json.loads(body)["events"]]


def resent(seen: list[httpx.Request]) -> list[str]:
    """The eventIds of every request after the first, sorted (however they were cut)."""
    return sorted(i for r in seen[1:] for i in ids_in(r))


def answer(success: int, failed: int, records: list[dict[str, Any]] | None, *, bare: bool) -> bytes:
    result: dict[str, Any] = {"summary": {"success": success, "failed": failed, "total": 3}}
    if records is not None:
        result["failedRecords"] = records
    body = result if bare else {"status": "success", "message": "Success", "data": result}
    return json.dumps(body).encode()


def track3(tracker: Tracker) -> list[str]:
    return [accepted(tracker.track("ent_1", "api_calls", i, event_id=f"e{i}")) for i in range(3)]


# ------------------------------------------------- failed records and their statusCode


@pytest.mark.parametrize(
    "record",
    [
        {"index": 1, "error": "bad event", "code": 2003},  # no statusCode at all
        {"index": 1, "error": "bad event", "code": 2003, "statusCode": None},
        {"index": 1, "error": "bad event", "code": 2003, "statusCode": "n/a"},
        {"index": 1, "error": "bad event", "code": 2003, "statusCode": 400},
        {"index": 1, "error": "bad event", "code": 2003, "statusCode": 499},
    ],
    ids=["absent", "null", "not a number", "400", "499"],
)
def test_a_failed_record_without_a_retryable_status_is_rejected_once_not_resent(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder, record: dict[str, Any]
) -> None:
    body = answer(2, 1, [record], bare=False)
    transport, seen = first_answers(socketless_fake, lambda: httpx.Response(200, content=body))
    tracker = make(transport)
    ids = track3(tracker)
    assert tracker.flush(10.0)
    assert len(seen) == 1  # nothing resent: the answer vouched for all three
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped, stats.retried) == (2, {"rejected": 1}, 0)
    assert [e.event_id for e in drop_recorder.events("rejected")] == [ids[1]]
    reason = drop_recorder.reasons()[ids[1]]
    status = record.get("statusCode")
    assert (reason.code, reason.message) == (2003, "bad event")
    assert reason.status == (status if isinstance(status, int) else None)
    assert audit(tracker).events == 0


@pytest.mark.parametrize("status", [500, 503, "503", 408, 425, 429])
def test_a_failed_record_with_a_retryable_status_is_resent_alone_and_delivered_once(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder, status: int | str
) -> None:
    record = {"index": 2, "error": "busy", "code": "transient", "statusCode": status}
    body = answer(2, 1, [record], bare=False)
    transport, seen = first_answers(socketless_fake, lambda: httpx.Response(200, content=body))
    tracker = make(transport)
    ids = track3(tracker)
    assert tracker.flush(10.0)
    assert [ids_in(r) for r in seen] == [ids, [ids[2]]]
    assert socketless_fake.event_ids() == [ids[2]]  # the first answer was canned: only the resend
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped, stats.retried) == (3, {}, 1)
    assert drop_recorder.calls == []
    assert audit(tracker).events == 0


# ------------------------------------------------------------------ retry budgets


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_an_event_failing_alone_per_record_ends_retries_exhausted_after_its_budget(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder, max_retries: int
) -> None:
    tracker = make(max_retries=max_retries)
    socketless_fake.fail_event_ids(["e1"], status=503, times=1000)
    ids = track3(tracker)
    assert tracker.flush(10.0)  # a budget-spent event that vanished would hang here
    sent = [ids_in(r).count("e1") for r in socketless_fake.batch_requests()]
    assert sum(sent) == max_retries + 1  # the first try, then max_retries retries
    stats = tracker.stats()
    assert stats.delivered == 2
    assert stats.dropped == {"retries_exhausted": 1}
    assert stats.retried == max_retries
    [event] = drop_recorder.events("retries_exhausted")
    assert event.event_id == ids[1]
    message = drop_recorder.reasons()[ids[1]].message
    assert message.startswith(f"gave up after {max_retries + 1} attempts over ")
    # its own failure, as Enso answered it for this record
    assert message.endswith(
        "; last error: Service temporarily unavailable (status=503, code=transient)"
    )
    assert audit(tracker).events == 0
    assert stats.balanced


def test_a_retries_exhausted_drop_names_its_own_records_failure_not_another_ones(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder
) -> None:
    # One batch: "gone" rejected (unknown customer, 2002), "flaky" failing 503 on its own.
    # The budget-spent "flaky" once named the ledger-wide last error: "gone"'s rejection.
    socketless_fake.known_entities = ["ent_1"]
    socketless_fake.fail_event_ids(["flaky"], status=503, times=1000)
    tracker = make(max_retries=0)
    accepted(tracker.track("ent_missing", "api_calls", 1, event_id="gone"))
    accepted(tracker.track("ent_1", "api_calls", 2, event_id="flaky"))
    assert tracker.flush(10.0)
    reasons = drop_recorder.reasons()
    assert (reasons["gone"].kind, reasons["gone"].code) == ("rejected", 2002)
    assert reasons["flaky"].kind == "retries_exhausted"
    assert reasons["flaky"].message.endswith(
        "; last error: Service temporarily unavailable (status=503, code=transient)"
    )
    assert "Customer entity not found" not in reasons["flaky"].message
    assert tracker.stats().balanced


@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_lone_event_whose_requests_fail_ends_retries_exhausted_after_its_budget(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder, max_retries: int
) -> None:
    socketless_fake.script(*[Fault(status=503)] * 50)
    tracker = make(max_retries=max_retries)
    event_id = accepted(tracker.track("ent_1", "api_calls", 1, event_id="alone"))
    assert tracker.flush(10.0)
    assert len(socketless_fake.batch_requests()) == max_retries + 1
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped) == (0, {"retries_exhausted": 1})
    assert [e.event_id for e in drop_recorder.events("retries_exhausted")] == [event_id]
    assert "HTTP 503" in drop_recorder.reasons()[event_id].message
    assert audit(tracker).events == 0
    # The tracker is not stuck: the next event goes through.
    socketless_fake.reset()
    later = accepted(tracker.track("ent_1", "api_calls", 1))
    assert tracker.flush(10.0)
    assert socketless_fake.event_ids() == [later]


# -------------------------------------------------- answers in a compressed encoding


def _corrupt_gzip() -> bytes:
    return b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"\xff" * 40  # gzip header, then garbage


def _truncated_gzip() -> bytes:
    whole = gzip.compress(answer(3, 0, [], bare=False))
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", _corrupt_gzip()),
        ("gzip", _truncated_gzip()),
        ("gzip", b"not gzip at all"),
        ("deflate", b"\xff\xff\xff\xff" * 10),  # neither zlib-wrapped nor raw deflate
        ("deflate", zlib.compress(answer(3, 0, [], bare=False))[:-9]),  # cut short
        ("x-gzip", b""),
    ],
    ids=["gzip garbage", "gzip cut", "not gzip", "deflate garbage", "deflate cut", "empty"],
)
def test_an_undecodable_answer_is_retried_never_decoded_forever(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder, encoding: str, body: bytes
) -> None:
    headers = {"Content-Encoding": encoding}
    transport, seen = first_answers(
        socketless_fake, lambda: httpx.Response(200, content=body, headers=headers)
    )
    tracker = make(transport)
    ids = track3(tracker)
    assert tracker.flush(10.0)
    assert ids_in(seen[0]) == ids
    assert resent(seen) == ids  # each resent once (maybe bisected: a suspect failure)
    assert sorted(socketless_fake.event_ids()) == ids
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped, stats.failed_requests) == (3, {}, 1)
    assert drop_recorder.calls == []
    assert audit(tracker).events == 0


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),  # zlib-wrapped, as the RFC says
        ("deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),  # raw, as some send
        ("GZip , identity", gzip.compress),
    ],
    ids=["gzip", "deflate zlib", "deflate raw", "gzip listed oddly"],
)
def test_a_compressed_answer_vouches_like_a_plain_one(
    make: Make, socketless_fake: FakeEnso, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    body = compress(answer(2, 1, [{"index": 0, "error": "no", "code": 2002}], bare=False))
    headers = {"Content-Encoding": encoding}
    transport, seen = first_answers(
        socketless_fake, lambda: httpx.Response(200, content=body, headers=headers)
    )
    tracker = make(transport)
    track3(tracker)
    assert tracker.flush(10.0)
    assert len(seen) == 1
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped, stats.failed_requests) == (2, {"rejected": 1}, 0)
    assert audit(tracker).events == 0


# ------------------------------------------- a summary without failedRecords (bare)


@pytest.mark.parametrize("bare", [True, False], ids=["bare", "wrapped"])
def test_a_summary_without_failed_records_that_counts_none_delivers_all(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder, bare: bool
) -> None:
    body = answer(3, 0, None, bare=bare)
    transport, seen = first_answers(socketless_fake, lambda: httpx.Response(200, content=body))
    tracker = make(transport)
    track3(tracker)
    assert tracker.flush(10.0)
    assert len(seen) == 1
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped, stats.failed_requests) == (3, {}, 0)
    assert audit(tracker).events == 0


@pytest.mark.parametrize("bare", [True, False], ids=["bare", "wrapped"])
def test_a_summary_counting_a_failure_it_does_not_list_resends_every_unlisted_event(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder, bare: bool
) -> None:
    body = answer(2, 1, None, bare=bare)
    transport, seen = first_answers(socketless_fake, lambda: httpx.Response(200, content=body))
    tracker = make(transport)
    ids = track3(tracker)
    assert tracker.flush(10.0)
    assert resent(seen) == ids  # all three resent: which one failed is unknown
    assert sorted(socketless_fake.event_ids()) == ids
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped) == (3, {})
    assert drop_recorder.calls == []
    assert "leaves events unaccounted for" in (stats.last_error or "")
    assert audit(tracker).events == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"summary":{"success":3,"failed":0}}',  # no total
        b'{"summary":{"success":3,"failed":0,"total":4}}',
        b'{"summary":{"success":2,"failed":0,"total":3}}',
        b'{"summary":{"success":3,"failed":-1,"total":3}}',
        b'{"status":"error","data":{"summary":{"success":3,"failed":0,"total":3}}}',
        b'{"summary":{"success":2,"failed":1,"total":3},"failedRecords":[{"index":3}]}',
        b'{"summary":{"success":1,"failed":2,"total":3},'
        b'"failedRecords":[{"index":0,"statusCode":400},{"index":0,"statusCode":400}]}',
        b'{"summary":{"success":3,"failed":0,"total":3},"failedRecords":[{"index":0}]}',
        b'{"failedRecords":[]}',
    ],
    ids=[
        "no total",
        "total too high",
        "counts short",
        "negative",
        "status error",
        "index outside",
        "index twice",
        "more listed than counted",
        "no summary",
    ],
)
def test_an_answer_that_does_not_add_up_delivers_and_rejects_nothing(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder, body: bytes
) -> None:
    transport, seen = first_answers(socketless_fake, lambda: httpx.Response(200, content=body))
    tracker = make(transport)
    ids = track3(tracker)
    assert tracker.flush(10.0)
    assert resent(seen) == ids
    if b"summary" in body:  # parsed, but it does not add up: no sign the batch is at fault
        assert [ids_in(r) for r in seen] == [ids, ids]  # so resent whole, not bisected
    assert sorted(socketless_fake.event_ids()) == ids
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped, stats.failed_requests) == (3, {}, 1)
    assert drop_recorder.calls == []
    assert audit(tracker).events == 0


# ------------------------------------------------------------------- byte accounting


def test_partly_failed_batches_give_back_every_byte(make: Make, socketless_fake: FakeEnso) -> None:
    # Each round: one event rejected, one retried alone, the rest delivered. A byte of
    # theirs kept after settling would add up round after round to a full queue.
    tracker = make(max_queue_bytes=40_000, max_batch_size=10)
    socketless_fake.known_entities = ["ent_1"]
    for round_ in range(30):
        socketless_fake.script(Fault(record_status={3: 503}))
        for i in range(10):
            entity = "ent_gone" if i == 7 else "ent_1"
            accepted(tracker.track(entity, "api_calls", i, metadata={"pad": "x" * 500}))
        assert tracker.flush(10.0), round_
        assert audit(tracker).bytes == 0, round_
    stats = tracker.stats()
    assert stats.queued_bytes == 0
    assert stats.refused == {}
    assert (stats.delivered, stats.dropped) == (270, {"rejected": 30})


def test_bytes_held_while_a_batch_is_in_flight_match_the_books(
    make: Make, socketless_fake: FakeEnso
) -> None:
    socketless_fake.hang(None)
    tracker = make(max_batch_size=5)
    for i in range(12):
        tracker.track("ent_1", "api_calls", i, metadata={"n": i})
    assert socketless_fake.wait_for(lambda f: f.in_flight >= 1, 10.0)
    during = audit(tracker)  # a fresh batch in flight (its body too), the rest queued
    assert during.events == 12
    stats = tracker.stats()
    assert stats.in_flight >= 5
    assert stats.in_flight + stats.queued == 12
    assert stats.durable_seq == 0  # without a spool: settled, and nothing is yet
    socketless_fake.release()
    assert tracker.flush(10.0)
    assert audit(tracker).events == 0
    stats = tracker.stats()
    assert (stats.queued_bytes, stats.durable_seq) == (0, 12)


# --------------------------------------------------------------- limits, exactly


WHEN = "2026-01-01T00:00:00Z"


def _one_event_body(fake: FakeEnso, make: Make, entity: str) -> int:
    """Bytes of the request body carrying this one event (ids of 5 characters)."""
    before = len(fake.batch_requests())
    probe = make(max_batch_bytes=64 * 1024, max_name_length=50_000)
    probe.track(entity, "m", 1, event_id="probe", timestamp=WHEN)
    assert probe.flush(10.0)
    return len(fake.batch_requests()[before].body)


def test_an_event_exactly_at_max_batch_bytes_is_sent_and_one_byte_more_is_too_large(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder
) -> None:
    limit = 16 * 1024  # the smallest max_batch_bytes
    entity = "e" * (limit - _one_event_body(socketless_fake, make, "e" * 1000) + 1000)
    assert _one_event_body(socketless_fake, make, entity) == limit
    socketless_fake.reset()
    tracker = make(max_batch_bytes=limit, max_name_length=50_000)
    fits = accepted(tracker.track(entity, "m", 1, event_id="fits1", timestamp=WHEN))
    over = accepted(tracker.track(entity + "e", "m", 1, event_id="over1", timestamp=WHEN))
    assert tracker.flush(10.0)
    assert socketless_fake.event_ids() == [fits]
    assert [len(r.body) for r in socketless_fake.batch_requests()] == [limit]
    assert [e.event_id for e in drop_recorder.events("too_large")] == [over]
    assert tracker.stats().dropped == {"too_large": 1}
    assert audit(tracker).events == 0


@pytest.mark.parametrize(("short", "requests"), [(0, 1), (1, 2)])
def test_two_events_filling_max_batch_bytes_exactly_go_in_one_request(
    make: Make, socketless_fake: FakeEnso, short: int, requests: int
) -> None:
    overhead = len(b'{"events":[]}')
    event = _one_event_body(socketless_fake, make, "e" * 1000) - overhead  # with a 1000-char entity
    # Two events in one body: overhead + 2 * event + 1 (the comma); one byte short of it
    # must still be a valid max_batch_bytes (16 KiB at least).
    pad = -(-(16 * 1024 + 1 - overhead - 1) // 2) - event
    size = overhead + 2 * (event + pad) + 1
    socketless_fake.reset()
    tracker = make(max_batch_bytes=size - short, max_name_length=50_000, flush_interval=10.0)
    for n in range(2):
        tracker.track("e" * (1000 + pad), "m", 1, event_id=f"two{n}{short}", timestamp=WHEN)
    assert tracker.flush(10.0)
    bodies = [len(r.body) for r in socketless_fake.batch_requests()]
    assert len(bodies) == requests, bodies
    assert sum(bodies) == size + (requests - 1) * (overhead - 1)
    assert len(socketless_fake.events) == 2
    assert audit(tracker).events == 0


@pytest.mark.parametrize(("short", "refused"), [(0, {}), (1, {"queue_full": 1})])
def test_max_queue_bytes_admits_an_event_that_fills_it_exactly(
    make: Make, short: int, refused: dict[str, int]
) -> None:
    def fill(tracker: Tracker) -> None:  # queued, not sent: flush_interval is far off
        for n in range(2):
            tracker.track("ent_1", "api_calls", 1, metadata={"pad": "p" * 3000}, event_id=f"a{n}")

    probe = make(flush_interval=10.0)
    fill(probe)
    two = probe.stats().queued_bytes
    assert two > 6000
    assert audit(probe).bytes == two
    tracker = make(max_queue_bytes=two - short, flush_interval=10.0)
    fill(tracker)
    assert tracker.stats().refused == refused
    assert audit(tracker).events == 2 - short


def test_max_queue_size_admits_exactly_that_many(make: Make, socketless_fake: FakeEnso) -> None:
    tracker = make(max_queue_size=3, flush_interval=10.0)
    results = [tracker.track("ent_1", "api_calls", i) for i in range(4)]
    assert [r is not None for r in results] == [True, True, True, False]
    assert tracker.stats().refused == {"queue_full": 1}
    assert audit(tracker).events == 3
    assert tracker.flush(10.0)
    assert len(socketless_fake.events) == 3
    assert tracker.track("ent_1", "api_calls", 9) is not None  # room again


def test_a_disabled_tracker_lets_events_go_with_their_bytes(drop_recorder: DropRecorder) -> None:
    # Validated, counted as disabled, never sent: nothing stays held, not even a byte,
    # however many events (a byte kept per event would fill max_queue_bytes).
    tracker = Tracker(
        disabled=True, max_queue_bytes=4096, on_drop=drop_recorder, handle_sigterm=False
    )
    try:
        for i in range(200):
            accepted(tracker.track("ent_1", "api_calls", i, metadata={"pad": "x" * 900}))
        held_now = audit(tracker)
        assert (held_now.events, held_now.bytes) == (0, 0)
        stats = tracker.stats()
        assert (stats.disabled, stats.refused, stats.queued_bytes) == (200, {}, 0)
    finally:
        assert tracker.shutdown(5.0)
    assert drop_recorder.calls == []


def test_an_exhausted_event_names_its_cause_not_a_previous_exhaustion(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder
) -> None:
    # The second event to run out of retries finds the first one's retries_exhausted
    # text in last_error: the cause is its own record's failure, never that text nested.
    tracker = make(max_retries=1)
    socketless_fake.fail_event_ids(["first", "second"], status=503, times=1000)
    for event_id in ("first", "second"):
        accepted(tracker.track("ent_1", "api_calls", 1, event_id=event_id))
        assert tracker.flush(10.0)
    messages = [drop_recorder.reasons()[event_id].message for event_id in ("first", "second")]
    for message in messages:
        assert message.startswith("gave up after 2 attempts over ")
        assert message.endswith(
            "s; last error: Service temporarily unavailable (status=503, code=transient)"
        ), message
        assert message.count("last error") == 1
    assert tracker.stats().dropped == {"retries_exhausted": 2}
    assert audit(tracker).events == 0


def test_block_policy_refuses_once_block_timeout_passes_without_room(make: Make) -> None:
    # Nothing leaves the queue (flush_interval is far off): a third event waits
    # block_timeout for room, then is refused as queue_full; the queue never grows past
    # max_queue_size.
    tracker = make(
        max_queue_size=2, queue_full_policy="block", block_timeout=0.2, flush_interval=10.0
    )
    assert [tracker.track("ent_1", "api_calls", i) is not None for i in range(2)] == [True] * 2
    assert tracker.track("ent_1", "api_calls", 3) is None
    stats = tracker.stats()
    assert (stats.accepted, stats.refused) == (2, {"queue_full": 1})
    assert audit(tracker).events == 2


def test_a_dropped_event_is_reported_with_its_generated_id_and_its_metadata(
    make: Make, socketless_fake: FakeEnso, drop_recorder: DropRecorder
) -> None:
    socketless_fake.known_entities = ["ent_1"]
    tracker = make()
    gone = accepted(tracker.track("ent_gone", "api_calls", 5, metadata={"region": "eu"}))
    kept = accepted(tracker.track("ent_1", "api_calls", 1, metadata={"region": "us"}))
    assert tracker.flush(10.0)
    [event] = drop_recorder.events("rejected")
    assert (event.event_id, event.entity, event.value, event.metadata) == (
        gone,
        "ent_gone",
        5,
        {"region": "eu"},
    )
    assert socketless_fake.event_ids() == [kept]
    assert audit(tracker).events == 0
