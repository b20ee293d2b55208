"""The record after ``track()`` (``_record``) and the request-body codec (``_wire.codec``):
what is encoded reads back the same, and every figure ``max_queue_bytes`` counts moves
as documented when a tuple becomes a ``Pending``."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any, cast

import msgspec

from enso_tracker._model import Event
from enso_tracker._record import (
    BYTES_OVERHEAD,
    EVENT_OVERHEAD,
    PENDING_OVERHEAD,
    QueuedEvent,
    delivered,
    encode_record,
    fold_facts,
    growth,
    held,
    pending_of,
    public_events,
    read_back,
    seq_of,
    size_of,
    spooled,
    unencoded,
)
from enso_tracker._spool.files import StoredBatch
from enso_tracker._wire import (
    BODY_OVERHEAD,
    EventEncoder,
    body_event_id,
    event_of,
    join_batch,
    metadata_of,
    split_batch,
)

SECOND_NS = 1_764_000_000 * 10**9  # 2025-11-24T16:00:00Z
PREFIX = "evt_t_"


def _item(seq: int, event_id: str | None = None, meta: bytes | None = None) -> QueuedEvent:
    return (seq, event_id, "cust_1", "api_calls", Decimal("0.10"), SECOND_NS + 5_000_000, meta,
            "job-7", 17)  # fmt: skip


def test_a_body_reads_back_as_the_event_that_was_encoded() -> None:
    item = _item(3, meta=b'{"plan":"pro","n":2}')
    body = encode_record(EventEncoder(), item, PREFIX)
    assert event_of(body) == Event(
        event_id="evt_t_0x3",
        entity="cust_1",
        metric="api_calls",
        value=Decimal("0.10"),  # exact digits, not the float 0.1
        timestamp="2025-11-24T16:00:00.005Z",
        metadata={"plan": "pro", "n": 2},
        job_id="job-7",
    )
    assert metadata_of(body) == b'{"plan":"pro","n":2}'
    assert body_event_id(body) == "evt_t_0x3"
    assert metadata_of(encode_record(EventEncoder(), _item(4), PREFIX)) is None


def test_a_batch_body_is_its_events_joined_and_splits_back_into_them() -> None:
    items = [_item(1), _item(2, "given"), _item(3, meta=b'{"k":[1]}')]
    encoder = EventEncoder()
    each = [encode_record(encoder, item, PREFIX) for item in items]
    body = encoder.encode_batch(items, PREFIX)
    assert body == join_batch(each)
    assert len(body) == BODY_OVERHEAD + sum(map(len, each)) + len(each) - 1
    assert split_batch(body) == each
    assert [event_of(b).event_id for b in each] == ["evt_t_0x1", "given", "evt_t_0x3"]


def test_once_encoded_the_body_replaces_the_metadata_in_the_books() -> None:
    meta = b'{"plan":"pro"}'
    item = _item(5, meta=meta)
    body = encode_record(EventEncoder(), item, PREFIX)
    p = pending_of(item, body)
    assert (p.seq, p.body) == (5, body)
    assert p.item is not None
    assert p.item[6] != meta  # the JSON is kept once, in the body
    assert p.size == held(item) + len(body) + PENDING_OVERHEAD - len(meta) - BYTES_OVERHEAD
    assert growth([p]) == p.size - held(item)
    # Read back for on_drop: the tuple as track() built it.
    assert read_back(p) == item
    plain = _item(6)
    q = pending_of(plain, encode_record(EventEncoder(), plain, PREFIX))
    assert q.item == plain
    assert q.size == held(plain) + len(q.body) + PENDING_OVERHEAD


def test_a_tuple_as_a_pending_keeps_its_seq_and_what_it_held() -> None:
    item = _item(9)
    assert (seq_of(item), size_of(item), held(item)) == (9, 17, 17 + EVENT_OVERHEAD)
    p = unencoded(item)
    assert (p.seq, p.item, p.body, p.size) == (9, item, b"", held(item))
    [d] = delivered([item])
    assert (d.seq, d.item, d.size) == (9, item, 0)  # its bytes were released with the batch


def test_a_spool_row_takes_exactly_one_sequence_per_event_and_keeps_no_tuple() -> None:
    encoder = EventEncoder()
    bodies = [encode_record(encoder, _item(i, f"id{i}"), PREFIX) for i in (1, 2)]
    adopted_seq = itertools.count(100)
    row = cast(StoredBatch, object())  # only its identity is checked
    pendings = spooled(bodies, adopted_seq, row)
    assert next(adopted_seq) == 102  # the endless sequence lent two numbers, no more
    assert [(p.seq, p.item, p.body, p.row) for p in pendings] == [
        (100, None, bodies[0], row),
        (101, None, bodies[1], row),
    ]
    assert pendings[0].size == EVENT_OVERHEAD + PENDING_OVERHEAD + len(bodies[0])
    assert growth(pendings) == 0  # not encoded here: nothing grew
    assert read_back(pendings[1])[1:5] == ("id2", "cust_1", "api_calls", Decimal("0.10"))


def test_an_unreadable_spooled_body_reads_back_as_what_can_be_known() -> None:
    [p] = spooled([b'{"eventId":"kept","value":"oops"}'], [4], None)
    assert read_back(p) == (4, "kept", "", "", 0, 0, None, None, 0)


def test_receipts_read_the_event_id_rebuilt_and_the_fields_as_queued() -> None:
    assert fold_facts(_item(10), PREFIX) == (
        "evt_t_0xa",
        "cust_1",
        "api_calls",
        Decimal("0.10"),
        SECOND_NS + 5_000_000,
    )
    assert fold_facts(_item(10, "mine"), PREFIX)[0] == "mine"


def test_on_drop_sees_the_same_event_whatever_the_pipeline_held() -> None:
    item = _item(12, meta=b'{"a":1}')
    encoder = EventEncoder()
    body = encode_record(encoder, item, PREFIX)
    [from_spool] = spooled([body], [12], None)
    decode = msgspec.json.Decoder(dict[str, Any]).decode
    views = [
        public_events(entries, PREFIX, encoder.timestamp, decode)
        for entries in ([item], [pending_of(item, body)], [from_spool])
    ]
    assert views[0] == views[1] == views[2] == [event_of(body)]
