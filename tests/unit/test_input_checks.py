"""``track()``'s input checks at every edge, to the letter, and ``send_events``' mapping
form (``check_event``) refusing the same input with the same error.

Each refusal is checked for its exact class (``InvalidEventTypeError`` is also an
``InvalidEventError``) and its whole message, which is the contract: it names the field,
the value and the problem. Each acceptance is checked on the wire (FakeEnso's
socketless transport: no port, no thread of its own). ``tests/unit/test_call_site.py``
holds the first table of these; this one covers the rest of ``_validate``'s rules."""

from __future__ import annotations

import enum
import numbers
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import msgspec
import pytest

from enso_tracker import Config, InvalidEventError, InvalidEventTypeError, Tracker
from enso_tracker._validate import check_event
from enso_tracker.testing import FakeEnso
from tests.conftest import API_KEY, Socketless

GOOD: dict[str, Any] = {"entity": "ent_1", "metric": "api_calls", "value": 1}
MAX = 9007199254740991  # 2**53 - 1


@pytest.fixture
def fake() -> FakeEnso:
    return FakeEnso()  # through transport() only: no socket


@pytest.fixture
def tracker(fake: FakeEnso, socketless: Socketless) -> Tracker:
    return socketless(fake, flush_interval=0.05)


class Big(enum.IntEnum):
    HUGE = 2**53


class Plan(enum.StrEnum):
    PRO = "plan_pro"


class Float32:
    """Stands in for numpy.float32: a registered numbers.Real that is no float subclass."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Float32({self.value})"


class Int64:
    """Stands in for numpy.int64: a registered numbers.Integral that is no int subclass."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Int64({self.value})"


numbers.Real.register(Float32)
numbers.Integral.register(Int64)


class NoOffset(tzinfo):
    """A tzinfo that does not know its offset: the datetime is naive after all."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def __repr__(self) -> str:
        return "NoOffset()"

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


class Attributes(Mapping[str, Any]):
    """A read-only mapping that is no dict (as a pydantic model's view might be)."""

    def __init__(self, **items: Any) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def nested(depth: int) -> dict[str, Any]:
    """A dict whose leaf is ``depth`` levels down."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


def nested_lists(depth: int) -> dict[str, Any]:
    """A dict holding lists whose leaf is ``depth`` levels down (the dict is the first)."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"a": value}


NAIVE = (
    "naive datetime (no timezone); pass an aware one, e.g. datetime.now(timezone.utc) or "
    "dt.replace(tzinfo=timezone.utc)"
)
NOT_NUMBER = "must be an int, float or Decimal (bool and None are not numbers)"
FINITE = "must be finite (NaN and infinity are refused)"
BEYOND = f"integer beyond ±{MAX} would lose precision in Enso"
DIGITS = f"significant digits; Enso stores a double, which keeps 15 (or an integer within ±{MAX})"
NOT_RFC3339 = (
    "not an RFC 3339 date-time with a timezone, e.g. '2026-04-01T12:00:00Z' "
    "or '2026-04-01T12:00:00.250+02:00'"
)
ID_CHARS = "must be printable ASCII without spaces"
E, T = InvalidEventError, InvalidEventTypeError

REFUSED: list[tuple[dict[str, Any], type[InvalidEventError], str]] = [
    # entity / metric
    ({"entity": None}, T, "entity=None: must be a str, not NoneType"),
    ({"entity": b"ent"}, T, "entity=b'ent': must be a str, not bytes"),
    ({"metric": 7.5}, T, "metric=7.5: must be a str, not float"),
    ({"entity": ""}, E, "entity='': must be a non-empty string"),
    ({"metric": "\n"}, E, r"metric='\n': must be a non-empty string"),
    ({"metric": "\u2003"}, E, r"metric='\u2003': must be a non-empty string"),  # wide space
    ({"metric": "m" * 513}, E, f"metric='{'m' * 76}...: longer than 512 characters"),
    ({"entity": "é" * 513}, E, f"entity='{'é' * 76}...: longer than 512 characters"),
    (
        {"entity": "é\ud800"},
        E,
        r"entity='é\ud800': is not valid Unicode (it holds a lone surrogate)",
    ),
    (
        {"metric": "calls\udfff"},
        E,
        r"metric='calls\udfff': is not valid Unicode (it holds a lone surrogate)",
    ),
    # value
    ({"value": None}, T, f"value=None: {NOT_NUMBER}"),
    ({"value": True}, T, f"value=True: {NOT_NUMBER}"),
    ({"value": "1"}, T, "value='1': must be an int, float or Decimal, not str"),
    ({"value": 1j}, T, "value=1j: must be an int, float or Decimal, not complex"),
    (
        {"value": Fraction(1, 3)},
        T,
        "value=Fraction(1, 3): a fraction would be rounded; pass a Decimal for exact values",
    ),
    ({"value": float("inf")}, E, f"value=inf: {FINITE}"),
    ({"value": float("-inf")}, E, f"value=-inf: {FINITE}"),
    ({"value": MAX + 1}, E, f"value={MAX + 1}: {BEYOND}"),
    ({"value": Big.HUGE}, E, f"value={2**53}: {BEYOND}"),  # an IntEnum: as the plain int
    ({"value": Int64(2**53)}, E, f"value={2**53}: {BEYOND}"),
    ({"value": Int64(-(2**53))}, E, f"value={-(2**53)}: {BEYOND}"),
    ({"value": Float32(float("nan"))}, E, f"value=nan: {FINITE}"),
    ({"value": Float32(float("-inf"))}, E, f"value=-inf: {FINITE}"),
    ({"value": Decimal("NaN")}, E, f"value=Decimal('NaN'): {FINITE}"),
    ({"value": Decimal("-Infinity")}, E, f"value=Decimal('-Infinity'): {FINITE}"),
    (
        {"value": Decimal("1" + "0" * 40)},  # 41 digits as written, 1 significant
        E,
        f"value=Decimal('1{'0' * 40}'): written with more than 40 digits",
    ),
    (
        {"value": Decimal("0.1234567890123456")},
        E,
        f"value=Decimal('0.1234567890123456'): has 16 {DIGITS}",
    ),
    (
        {"value": Decimal("123456789012345.60")},  # 16 significant, not an integer
        E,
        f"value=Decimal('123456789012345.60'): has 16 {DIGITS}",
    ),
    (
        {"value": Decimal("9007199254740992")},  # an integer, one past 2**53 - 1
        E,
        f"value=Decimal('9007199254740992'): has 16 {DIGITS}",
    ),
    (
        {"value": Decimal("-9007199254740992")},
        E,
        f"value=Decimal('-9007199254740992'): has 16 {DIGITS}",
    ),
    (
        {"value": Decimal("12345678901234560")},  # 16 significant, integral, too big
        E,
        f"value=Decimal('12345678901234560'): has 16 {DIGITS}",
    ),
    (
        {"value": Decimal("1.8E+308")},
        E,
        "value=Decimal('1.8E+308'): beyond the range of a double (what Enso stores)",
    ),
    (
        {"value": Decimal("-1.8E+308")},
        E,
        "value=Decimal('-1.8E+308'): beyond the range of a double (what Enso stores)",
    ),
    (
        {"value": Decimal("2.2E-308")},
        E,
        "value=Decimal('2.2E-308'): too close to zero for a double (what Enso stores): "
        "it would underflow",
    ),
    (
        {"value": Decimal("-1E-320")},
        E,
        "value=Decimal('-1E-320'): too close to zero for a double (what Enso stores): "
        "it would underflow",
    ),
    # timestamp
    (
        {"timestamp": datetime(2026, 1, 1)},
        E,
        f"timestamp=datetime.datetime(2026, 1, 1, 0, 0): {NAIVE}",
    ),
    (
        {"timestamp": datetime(2026, 1, 1, tzinfo=NoOffset())},
        E,
        f"timestamp=datetime.datetime(2026, 1, 1, 0, 0, tzinfo=NoOffset()): {NAIVE}",
    ),
    ({"timestamp": "2026-04-01T12:00:00"}, E, f"timestamp='2026-04-01T12:00:00': {NOT_RFC3339}"),
    ({"timestamp": "2026-04-01T12:00Z"}, E, f"timestamp='2026-04-01T12:00Z': {NOT_RFC3339}"),
    (
        {"timestamp": "2026-04-01T12:00:00Z "},
        E,
        f"timestamp='2026-04-01T12:00:00Z ': {NOT_RFC3339}",
    ),
    (
        {"timestamp": "2026-02-30T00:00:00Z"},
        E,
        "timestamp='2026-02-30T00:00:00Z': not a valid date-time: day is out of range for month",
    ),
    (
        {"timestamp": 1_700_000_000},
        T,
        "timestamp=1700000000: must be a timezone-aware datetime or an RFC 3339 string, not int",
    ),
    (
        {"timestamp": datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)},
        E,
        "timestamp=datetime.datetime(1969, 12, 31, 23, 59, 59, 999999, "
        "tzinfo=datetime.timezone....: must be between 1970 and 9999 (UTC)",  # cut at 80
    ),
    (
        {"timestamp": "9999-12-31T23:59:59.999-00:01"},  # 10000-01-01 in UTC
        E,
        "timestamp='9999-12-31T23:59:59.999-00:01': must be between 1970 and 9999 (UTC)",
    ),
    # metadata
    ({"metadata": ["a"]}, T, "metadata=['a']: must be a mapping, not list"),
    ({"metadata": "{}"}, T, "metadata='{}': must be a mapping, not str"),
    ({"metadata": nested(33)}, E, "metadata=1: nested deeper than 32 levels"),
    ({"metadata": nested_lists(33)}, E, "metadata=1: nested deeper than 32 levels"),
    ({"metadata": {"a": [1, float("inf")]}}, E, "metadata=inf: holds a NaN or infinite float"),
    ({"metadata": {"a": (1, float("nan"))}}, E, "metadata=nan: holds a NaN or infinite float"),
    (
        {"metadata": {"a": [{"b": float("-inf")}]}},
        E,
        "metadata=-inf: holds a NaN or infinite float",
    ),
    ({"metadata": MappingProxyType({1: "a"})}, T, "metadata=1: keys must be str, not int"),
    (
        {"metadata": {"a": MappingProxyType({"b": float("nan")})}},
        E,
        "metadata=nan: holds a NaN or infinite float",
    ),
    ({"metadata": {"a": {(1, 2): 3}}}, T, "metadata=(1, 2): keys must be str, not tuple"),
    # event_id / job_id
    ({"event_id": 7}, T, "event_id=7: must be a str, not int"),
    ({"event_id": "evt\x00"}, E, rf"event_id='evt\x00': {ID_CHARS}"),
    ({"event_id": "evt\t1"}, E, rf"event_id='evt\t1': {ID_CHARS}"),
    (  # as long as allowed, but with a space: the space is what is wrong
        {"event_id": "x" * 127 + " "},
        E,
        f"event_id='{'x' * 76}...: {ID_CHARS}",
    ),
    ({"job_id": b"job"}, T, "job_id=b'job': must be a str, not bytes"),
    ({"job_id": "job 1"}, E, f"job_id='job 1': {ID_CHARS}"),
    ({"job_id": "jöb"}, E, f"job_id='jöb': {ID_CHARS}"),
    ({"job_id": "j" * 129}, E, f"job_id='{'j' * 76}...: longer than 128 characters"),
]


def _call(tracker: Tracker, change: dict[str, Any]) -> str | None:
    args = {**GOOD, **change}
    return tracker.track(args.pop("entity"), args.pop("metric"), args.pop("value"), **args)


@pytest.mark.parametrize(("change", "error", "message"), REFUSED)
def test_track_refuses_with_the_exact_error(
    tracker: Tracker,
    fake: FakeEnso,
    change: dict[str, Any],
    error: type[InvalidEventError],
    message: str,
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$") as raised:
        _call(tracker, change)
    assert type(raised.value) is error
    [field] = change
    assert raised.value.field == field
    assert tracker.stats().accepted == 0  # nothing queued
    assert tracker.flush(5.0)
    assert fake.batch_requests() == []


@pytest.mark.parametrize(("change", "error", "message"), REFUSED)
def test_send_events_refuses_the_same_input_with_the_same_error(
    change: dict[str, Any], error: type[InvalidEventError], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$") as raised:
        check_event({**GOOD, **change}, Config(), msgspec.json.Encoder())
    assert type(raised.value) is error


def test_metadata_json_cannot_encode_is_refused_naming_it() -> None:
    with pytest.raises(InvalidEventTypeError) as raised:
        check_event({**GOOD, "metadata": {"a": object()}}, Config(), msgspec.json.Encoder())
    assert type(raised.value) is InvalidEventTypeError
    assert str(raised.value).startswith("metadata={'a': <object object at ")
    assert "cannot be encoded as JSON: " in str(raised.value)


# ------------------------------------------------------------------------ accepted


ACCEPTED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"entity": Plan.PRO}, {"CustomerEntityId": "plan_pro"}),
    ({"metric": Plan.PRO}, {"metric": "plan_pro"}),
    ({"entity": "é" * 512}, {"CustomerEntityId": "é" * 512}),
    ({"metric": " calls "}, {"metric": " calls "}),  # sent as given: not stripped
    ({"value": Big.HUGE - 1}, {"value": MAX}),
    ({"value": Int64(-MAX)}, {"value": -MAX}),
    ({"value": Int64(MAX)}, {"value": MAX}),
    ({"value": MAX}, {"value": MAX}),
    ({"value": -MAX}, {"value": -MAX}),
    ({"value": Float32(0.5)}, {"value": 0.5}),
    ({"value": -0.0}, {"value": -0.0}),
    ({"value": Decimal("0E-1000")}, {"value": 0.0}),
    ({"value": Decimal("-0")}, {"value": 0}),
    ({"value": Decimal("1." + "0" * 39)}, {"value": 1.0}),  # 40 digits as written
    ({"value": Decimal("0.123456789012345")}, {"value": 0.123456789012345}),
    ({"value": Decimal("9007199254740991")}, {"value": MAX}),  # 16 digits, an exact int
    ({"value": Decimal("-9007199254740991")}, {"value": -MAX}),
    ({"value": Decimal("1234567890123456.0")}, {"value": 1234567890123456.0}),  # integral
    ({"value": Decimal("1.79769313486231E+308")}, {"value": 1.79769313486231e308}),
    ({"value": Decimal("2.3E-308")}, {"value": 2.3e-308}),
    ({"value": Decimal("-2.3E-308")}, {"value": -2.3e-308}),
    (
        {"timestamp": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)},
        {"timestamp": "9999-12-31T23:59:59.999Z"},
    ),
    (
        {"timestamp": datetime(1970, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))},
        {"timestamp": "1970-01-01T00:00:00.000Z"},
    ),
    ({"timestamp": "2026-04-01T12:00:00.9999999+01:00"}, {"timestamp": "2026-04-01T11:00:00.999Z"}),
    ({"timestamp": "2026-04-01T12:00:00.5z"}, {"timestamp": "2026-04-01T12:00:00.500Z"}),
    ({"metadata": nested(32)}, {"metadata": nested(32)}),
    ({"metadata": nested_lists(32)}, {"metadata": nested_lists(32)}),
    ({"metadata": MappingProxyType({"a": 1})}, {"metadata": {"a": 1}}),
    ({"metadata": Attributes(a=[1, (2, 3)], b=None)}, {"metadata": {"a": [1, [2, 3]], "b": None}}),
    (
        {"metadata": {"t": True, "f": 0.25, "s": "x", "n": None}},
        {"metadata": {"t": True, "f": 0.25, "s": "x", "n": None}},
    ),
    ({"event_id": Plan.PRO}, {"eventId": "plan_pro"}),
    ({"event_id": "e"}, {"eventId": "e"}),
    ({"event_id": "x" * 128}, {"eventId": "x" * 128}),
    ({"job_id": "j"}, {"JobId": "j", "jobId": "j"}),
    ({"job_id": "j" * 128}, {"JobId": "j" * 128, "jobId": "j" * 128}),
    ({"event_id": "~!#$%&'()*+,-./:;<=>?@[]^_`{|}"}, {"eventId": "~!#$%&'()*+,-./:;<=>?@[]^_`{|}"}),
    ({"job_id": Plan.PRO}, {"JobId": "plan_pro", "jobId": "plan_pro"}),
]


@pytest.mark.parametrize(("change", "sent"), ACCEPTED)
def test_track_accepts_and_sends_as_given(
    tracker: Tracker, fake: FakeEnso, change: dict[str, Any], sent: dict[str, Any]
) -> None:
    event_id = _call(tracker, change)
    assert event_id is not None
    assert tracker.flush(5.0)
    on_wire = fake.events[event_id]
    assert {key: on_wire.get(key) for key in sent} == sent
    for key, want in sent.items():
        assert type(on_wire[key]) is type(want)


@pytest.mark.parametrize(("change", "sent"), ACCEPTED)
def test_send_events_accepts_the_same_input(change: dict[str, Any], sent: dict[str, Any]) -> None:
    event_id, entity, metric, value, ts, meta, job_id = check_event(
        {**GOOD, **change}, Config(), msgspec.json.Encoder()
    )
    given = {**GOOD, **change}
    assert (entity, metric) == (str.__str__(given["entity"]), str.__str__(given["metric"]))
    assert type(entity) is str
    assert type(metric) is str
    if "event_id" in change:
        assert event_id == sent["eventId"]
        assert type(event_id) is str
    if "job_id" in change:
        assert job_id == sent["jobId"]
        assert type(job_id) is str
    if "metadata" in change:
        assert meta is not None
        assert msgspec.json.decode(meta) == sent["metadata"]
    if "value" in change:  # an exact Decimal stays one; other numbers become int or float
        assert type(value) is (
            Decimal if isinstance(given["value"], Decimal) else type(sent["value"])
        )
        assert float(value) == sent["value"]
    assert ts >= 0


# ----------------------------------------------------- send_events' mapping, itself


@pytest.mark.parametrize(
    ("event", "error", "message"),
    [
        ([1], T, "event=[1]: must be a mapping of track()'s arguments, not list"),
        (
            {**GOOD, "colour": "red", "amount": 1},
            T,
            "event='amount': unknown key; the keys are entity, event_id, job_id, metadata, "
            "metric, timestamp, value",
        ),
        ({"metric": "m", "value": 1}, T, "entity=None: is required"),
        ({"entity": "e", "value": 1}, T, "metric=None: is required"),
        ({"entity": "e", "metric": "m"}, T, "value=None: is required"),
    ],
)
def test_send_events_refuses_a_mapping_that_is_not_an_event(
    event: object, error: type[InvalidEventError], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$") as raised:
        check_event(event, Config(), msgspec.json.Encoder())
    assert type(raised.value) is error


def test_send_events_gives_the_checked_event_field_by_field() -> None:
    event = {
        "entity": "ent_1",
        "metric": "api_calls",
        "value": Decimal("2.50"),
        "timestamp": "2026-04-01T12:00:00.250Z",
        "metadata": {"region": "eu"},
        "event_id": "evt_1",
        "job_id": "job_1",
    }
    ms = int(datetime(2026, 4, 1, 12, 0, 0, 250000, tzinfo=UTC).timestamp() * 1000)
    assert check_event(event, Config(), msgspec.json.Encoder()) == (
        "evt_1",
        "ent_1",
        "api_calls",
        Decimal("2.50"),
        ms * 1_000_000,
        b'{"region":"eu"}',
        "job_1",
    )


def test_send_events_limits_are_the_configs() -> None:
    config = Config(max_name_length=4, max_id_length=3, max_metadata_bytes=16)
    encoder = msgspec.json.Encoder()
    assert check_event({**GOOD, "entity": "abcd", "metric": "m"}, config, encoder)[1] == "abcd"
    with pytest.raises(InvalidEventError, match=r"^entity='abcde': longer than 4 characters$"):
        check_event({**GOOD, "entity": "abcde", "metric": "m"}, config, encoder)
    with pytest.raises(InvalidEventError, match=r"^metric='api_calls': longer than 4 characters$"):
        check_event({"entity": "e", "metric": "api_calls", "value": 1}, config, encoder)
    assert (
        check_event({**GOOD, "entity": "e", "metric": "m", "event_id": "abc"}, config, encoder)[0]
        == "abc"
    )
    with pytest.raises(InvalidEventError, match=r"^job_id='abcd': longer than 3 characters$"):
        check_event({**GOOD, "entity": "e", "metric": "m", "job_id": "abcd"}, config, encoder)
    fits = {"p": "x" * 8}  # {"p":"xxxxxxxx"}: 16 bytes as JSON
    assert check_event({**GOOD, "metadata": fits}, config_meta(), encoder)[5] == b'{"p":"xxxxxxxx"}'
    with pytest.raises(InvalidEventError, match=r"is 17 bytes as JSON, more than 16$"):
        check_event({**GOOD, "metadata": {"p": "x" * 9}}, config_meta(), encoder)


def config_meta() -> Config:
    return Config(max_metadata_bytes=16)


# ------------------------------------- what an accepted name is counted at (max_queue_bytes)


def _queued_bytes(fake: FakeEnso, entity: Any, metric: Any) -> int:
    """``stats().queued_bytes`` of one event held in the queue (not yet sent)."""
    tracker = Tracker(
        api_key=API_KEY,
        base_url="https://enso.test",
        transport=fake.transport(),
        handle_sigterm=False,
        flush_interval=3600.0,  # held until shutdown: nothing leaves the queue meanwhile
    )
    try:
        tracker.track(entity, metric, 1, event_id="evt_1")
        return tracker.stats().queued_bytes
    finally:
        tracker.shutdown(5.0)


def fresh(text: str) -> str:
    """A new str of ``text``'s characters: one msgspec never encoded (an encoded str
    caches its UTF-8 copy inside it, which ``sys.getsizeof`` then includes)."""
    return "".join([text[:1], text[1:]])


@pytest.mark.parametrize("char", ["é", "€", "\U0001d11e"], ids=["latin-1", "BMP", "astral"])
def test_a_wide_name_is_counted_at_what_its_str_really_holds(fake: FakeEnso, char: str) -> None:
    # A non-ASCII str has a larger header and wider code units than an ASCII one of the
    # same length (sys.getsizeof says how much), and once msgspec encodes it, CPython
    # caches its UTF-8 copy inside it: both count against max_queue_bytes.
    wide, narrow = char * 100, "x" * 100
    extra = sys.getsizeof(fresh(wide)) - sys.getsizeof(narrow) + len(wide.encode("utf-8"))
    base = _queued_bytes(fake, narrow, narrow)
    assert _queued_bytes(fake, fresh(wide), narrow) == base + extra
    assert _queued_bytes(fake, narrow, fresh(wide)) == base + extra
    assert _queued_bytes(fake, fresh(wide), fresh(wide)) == base + 2 * extra


def test_a_str_enum_name_is_counted_as_its_plain_str(fake: FakeEnso) -> None:
    assert _queued_bytes(fake, Plan.PRO, Plan.PRO) == _queued_bytes(fake, "plan_pro", "plan_pro")
