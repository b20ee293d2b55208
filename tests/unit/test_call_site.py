"""``track()``'s refusals to the letter, and its limits to the unit: the exception class
is exact (``InvalidEventTypeError`` is also an ``InvalidEventError``, so ``raises`` alone
could not tell them apart), the message is the whole contract (field, value, problem),
nothing refused is queued, and a value exactly at a limit is accepted and sent."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from enso_tracker import InvalidEventError, InvalidEventTypeError, Tracker
from enso_tracker.testing import FakeEnso
from tests.conftest import Socketless

GOOD: dict[str, Any] = {"entity": "ent_1", "metric": "api_calls", "value": 1}


@pytest.fixture
def socketless_fake() -> FakeEnso:
    return FakeEnso()  # through transport() only: no socket


@pytest.fixture
def socketless_tracker(socketless_fake: FakeEnso, socketless: Socketless) -> Tracker:
    return socketless(socketless_fake, flush_interval=0.05)


REFUSED: list[tuple[dict[str, Any], type[InvalidEventError], str]] = [
    # A lone surrogate: not valid Unicode, so not encodable as UTF-8 JSON; refused here,
    # never dropped later as unencodable.
    (
        {"entity": "ent_\ud800"},
        InvalidEventError,
        r"entity='ent_\ud800': is not valid Unicode (it holds a lone surrogate)",
    ),
    (
        {"metric": "\udcffcalls"},
        InvalidEventError,
        r"metric='\udcffcalls': is not valid Unicode (it holds a lone surrogate)",
    ),
    (
        {"metadata": {"region": "eu\ud800"}},
        InvalidEventTypeError,
        "metadata={'region': 'eu\\ud800'}: cannot be encoded as JSON: 'utf-8' codec can't "
        "encode character '\\ud800' in position 2: surrogates not allowed",
    ),
    (
        {"event_id": "evt_\ud800"},
        InvalidEventError,
        r"event_id='evt_\ud800': must be printable ASCII without spaces",
    ),
    (
        {"entity": "e" * 513},
        InvalidEventError,
        f"entity='{'e' * 76}...: longer than 512 characters",
    ),
    ({"entity": " \t"}, InvalidEventError, r"entity=' \t': must be a non-empty string"),
    ({"metric": 7}, InvalidEventTypeError, "metric=7: must be a str, not int"),
    (
        {"value": 2**53},
        InvalidEventError,
        "value=9007199254740992: integer beyond ±9007199254740991 would lose precision in Enso",
    ),
    (
        {"value": -(2**53)},
        InvalidEventError,
        "value=-9007199254740992: integer beyond ±9007199254740991 would lose precision in Enso",
    ),
    (
        {"value": float("nan")},
        InvalidEventError,
        "value=nan: must be finite (NaN and infinity are refused)",
    ),
    (
        {"value": False},
        InvalidEventTypeError,
        "value=False: must be an int, float or Decimal (bool and None are not numbers)",
    ),
    (
        {"value": Decimal("1.0000000000000001")},
        InvalidEventError,
        "value=Decimal('1.0000000000000001'): has 17 significant digits; Enso stores a "
        "double, which keeps 15 (or an integer within ±9007199254740991)",
    ),
    (
        {"timestamp": "1969-12-31T23:59:59.999Z"},
        InvalidEventError,
        "timestamp='1969-12-31T23:59:59.999Z': must be between 1970 and 9999 (UTC)",
    ),
    (
        {"metadata": {"pad": "x" * 8183}},
        InvalidEventError,
        f"metadata={{'pad': '{'x' * 68}...: is 8193 bytes as JSON, more than 8192",
    ),
    (
        {"event_id": "x" * 129},
        InvalidEventError,
        f"event_id='{'x' * 76}...: longer than 128 characters",
    ),
    ({"job_id": ""}, InvalidEventError, "job_id='': must be a non-empty string"),
]


@pytest.mark.parametrize(("change", "error", "message"), REFUSED)
def test_a_refusal_names_the_field_the_value_and_the_problem_exactly(
    socketless_tracker: Tracker,
    socketless_fake: FakeEnso,
    change: dict[str, Any],
    error: type[InvalidEventError],
    message: str,
) -> None:
    args = {**GOOD, **change}
    with pytest.raises(error, match=f"^{re.escape(message)}$") as raised:
        socketless_tracker.track(args.pop("entity"), args.pop("metric"), args.pop("value"), **args)
    assert type(raised.value) is error
    [field] = change
    assert raised.value.field == field
    given = change[field]
    assert raised.value.value is given or raised.value.value == given  # NaN: itself
    assert socketless_tracker.stats().accepted == 0  # nothing queued
    assert socketless_tracker.flush(5.0)
    assert socketless_fake.batch_requests() == []


ACCEPTED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"entity": "e" * 512}, {"CustomerEntityId": "e" * 512}),
    ({"entity": "é" * 512}, {"CustomerEntityId": "é" * 512}),  # characters, not bytes
    ({"metric": "m" * 512}, {"metric": "m" * 512}),
    ({"value": 2**53 - 1}, {"value": 2**53 - 1}),
    ({"value": -(2**53 - 1)}, {"value": -(2**53 - 1)}),
    ({"value": Decimal("0.100000000000000")}, {"value": 0.1}),  # 15 digits
    ({"timestamp": "1970-01-01T00:00:00Z"}, {"timestamp": "1970-01-01T00:00:00.000Z"}),
    ({"timestamp": "9999-12-31T23:59:59.999Z"}, {"timestamp": "9999-12-31T23:59:59.999Z"}),
    ({"metadata": {"pad": "x" * 8182}}, {"metadata": {"pad": "x" * 8182}}),  # 8192 bytes
    ({"event_id": "x" * 128}, {"eventId": "x" * 128}),
    ({"job_id": "j" * 128}, {"jobId": "j" * 128}),
]


@pytest.mark.parametrize(("change", "sent"), ACCEPTED)
def test_a_value_exactly_at_a_limit_is_accepted_and_sent_as_given(
    socketless_tracker: Tracker,
    socketless_fake: FakeEnso,
    change: dict[str, Any],
    sent: dict[str, Any],
) -> None:
    args = {**GOOD, **change}
    event_id = socketless_tracker.track(
        args.pop("entity"), args.pop("metric"), args.pop("value"), **args
    )
    assert event_id is not None
    assert socketless_tracker.flush(5.0)
    on_wire = socketless_fake.events[event_id]
    assert {key: on_wire.get(key) for key in sent} == sent
