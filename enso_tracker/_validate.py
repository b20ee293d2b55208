"""Call-site validation for ``track()``.

The fast checks live inline in ``Tracker.track``; when one fails, the functions here
work out exactly what is wrong and raise an error that names the field and the value.
They also hold the slower conversions (timestamps, metadata) that only run when the
caller passes those arguments.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from ._errors import InvalidEventError, InvalidEventTypeError
from ._record import STR_OVERHEAD

if TYPE_CHECKING:
    from ._config import Config

__all__ = [
    "DECIMAL_DIGITS",
    "EVENT_KEYS",
    "MAX_EXACT_INT",
    "CheckedEvent",
    "bad_value",
    "check_event",
    "check_id",
    "check_name",
    "coerce_value",
    "encode_metadata",
    "is_id",
    "timestamp_ns",
    "wide_cost",
]

#: Enso's server is JavaScript (its invalid dates render as ``NaN``), where integers
#: beyond 2**53 silently lose precision: refuse them rather than bill a rounded value.
MAX_EXACT_INT = 2**53 - 1
#: Significant decimal digits every double carries through a decimal → double → decimal
#: round trip (``sys.float_info.dig``): the most a ``Decimal`` value may have.
DECIMAL_DIGITS = sys.float_info.dig
#: The double's range, exactly (``Decimal(float)`` is exact): magnitudes below the smallest
#: *normal* double lose digits (subnormals) or become 0; above the largest, infinity.
_DOUBLE_MAX = Decimal(sys.float_info.max)
_DOUBLE_MIN_NORMAL = Decimal(sys.float_info.min)
#: Digits a ``Decimal`` value may be written with, trailing zeros included: its JSON text
#: stays short (``100000000000000000000.0`` has 22).
_MAX_DECIMAL_DIGITS = 40

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MIN_MS = 0  # 1970-01-01: nothing billable happened before the epoch
_MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // _MS
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})\Z"
)
_MAX_DEPTH = 32


def check_name(field: str, value: object, max_length: int) -> str:
    """``entity``/``metric`` as a plain ``str``, or an error saying what is wrong."""
    if not isinstance(value, str):
        raise InvalidEventTypeError(field, value, f"must be a str, not {type(value).__name__}")
    # A str subclass goes out as its own characters: str(value) would give a (str, Enum)
    # member's *name* ("Metric.API_CALLS"), and usage would land on an unknown metric.
    value = str.__str__(value)
    if not value or value.isspace():
        raise InvalidEventError(field, value, "must be a non-empty string")
    if len(value) > max_length:
        raise InvalidEventError(field, value, f"longer than {max_length} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEventError(
                field, value, "is not valid Unicode (it holds a lone surrogate)"
            ) from None
    return value


def is_id(value: str, max_length: int) -> bool:
    """The fast check of an ``event_id``/``job_id`` (``check_id`` says what is wrong)."""
    return (
        0 < len(value) <= max_length
        and value.isascii()
        and value.isprintable()
        and (" " not in value)
    )


def wide_cost(name: str) -> int:
    """Bytes a non-ASCII name holds beyond ``len(name)``: its wider code units, and the
    UTF-8 copy CPython caches inside the str once msgspec has encoded it."""
    if name.isascii():
        return 0
    utf8 = len(name.encode("utf-8", "surrogatepass"))
    return sys.getsizeof(name) - STR_OVERHEAD - len(name) + utf8


def check_id(field: str, value: object, max_length: int) -> str:
    """``event_id``/``job_id`` as a plain ``str``, or an error saying what is wrong."""
    if not isinstance(value, str):
        raise InvalidEventTypeError(field, value, f"must be a str, not {type(value).__name__}")
    value = str.__str__(value)  # a StrEnum/str subclass id goes out as its own characters
    if (
        0 < len(value) <= max_length
        and value.isascii()
        and value.isprintable()
        and " " not in value
    ):
        return value
    if not value:
        raise InvalidEventError(field, value, "must be a non-empty string")
    if len(value) > max_length:
        raise InvalidEventError(field, value, f"longer than {max_length} characters")
    raise InvalidEventError(field, value, "must be printable ASCII without spaces")


def bad_value(value: object) -> NoReturn:
    if isinstance(value, bool) or value is None:
        raise InvalidEventTypeError(
            "value", value, "must be an int, float or Decimal (bool and None are not numbers)"
        )
    if isinstance(value, int):
        raise InvalidEventError(
            "value", value, f"integer beyond ±{MAX_EXACT_INT} would lose precision in Enso"
        )
    if isinstance(value, float):
        raise InvalidEventError("value", value, "must be finite (NaN and infinity are refused)")
    raise InvalidEventTypeError(
        "value", value, f"must be an int, float or Decimal, not {type(value).__name__}"
    )


def coerce_value(value: object) -> int | float | Decimal:
    """A ``value`` that is not a plain int or float: checked, and made one if need be.

    Int and float subclasses (IntEnum, numpy.float64) and other integral or real numbers
    (numpy.int64, numpy.float32) go out as plain ints and floats; a Decimal goes out as
    its own text, once :func:`_check_decimal` has made sure a double carries it.
    """
    if isinstance(value, Decimal):
        return _check_decimal(value)
    if isinstance(value, bool) or value is None:
        bad_value(value)
    if isinstance(value, numbers.Integral):
        plain = int(value)
        if -MAX_EXACT_INT <= plain <= MAX_EXACT_INT:
            return plain
        bad_value(plain)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Rational):
        plain_f = float(value)
        if math.isfinite(plain_f):
            return plain_f
        bad_value(plain_f)
    if isinstance(value, numbers.Rational):
        raise InvalidEventTypeError(
            "value", value, "a fraction would be rounded; pass a Decimal for exact values"
        )
    bad_value(value)


def _check_decimal(value: Decimal) -> Decimal:
    """``value`` if Enso, which parses JSON numbers into doubles (wire contract, Values),
    gets back exactly the number sent, else ``InvalidEventError`` naming ``value``.

    The rule: zero; or at most :data:`DECIMAL_DIGITS` (15) significant digits, counted
    once trailing zeros are dropped (``12.50`` has 3, ``1E+20`` and
    ``100000000000000000000.0`` have 1), with a magnitude within the double's *normal*
    range (2.2250738585072014e-308 … 1.7976931348623157e308: smaller ones underflow to
    subnormals or zero, larger ones to infinity); or an integer within
    ±:data:`MAX_EXACT_INT`, like an ``int``. Any 15-digit decimal in that range survives
    the trip through a double, so Enso's number is the one sent. And at most 40 digits
    as written, trailing zeros included, so its JSON text stays short. Nothing here
    rounds: no arithmetic under the caller's ``decimal`` context is done on the value.
    """
    if not value.is_finite():
        raise InvalidEventError("value", value, "must be finite (NaN and infinity are refused)")
    if value.is_zero():
        return value
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if len(digits) > _MAX_DECIMAL_DIGITS:
        # Even when only trailing zeros: the queue's byte estimate allows a fixed 200
        # bytes per event for everything but names, ids and metadata.
        raise InvalidEventError(
            "value", value, f"written with more than {_MAX_DECIMAL_DIGITS} digits"
        )
    significant = len(digits)
    while digits[significant - 1] == 0:  # not zero, so a non-zero digit ends the loop
        significant -= 1
    magnitude = value.copy_abs()  # exact, unlike abs(), which rounds to the context
    if significant > DECIMAL_DIGITS:
        # Beyond 15 digits only integers a double holds exactly are safe (as for ints).
        # Comparing a Decimal with an int is exact.
        integral = exponent + len(digits) - significant >= 0
        if integral and magnitude <= MAX_EXACT_INT:
            return value
        raise InvalidEventError(
            "value",
            value,
            f"has {significant} significant digits; Enso stores a double, which keeps "
            f"{DECIMAL_DIGITS} (or an integer within ±{MAX_EXACT_INT})",
        )
    if magnitude > _DOUBLE_MAX:
        raise InvalidEventError("value", value, "beyond the range of a double (what Enso stores)")
    if magnitude < _DOUBLE_MIN_NORMAL:
        raise InvalidEventError(
            "value", value, "too close to zero for a double (what Enso stores): it would underflow"
        )
    return value


def timestamp_ns(value: object) -> int:
    """Epoch nanoseconds (UTC, whole milliseconds) of a tz-aware datetime or an RFC 3339
    string with an offset. Nanoseconds, because that is what ``time.time_ns()`` gives
    the default timestamp for free; the sender keeps milliseconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidEventError(
                "timestamp",
                value,
                "naive datetime (no timezone); pass an aware one, e.g. "
                "datetime.now(timezone.utc) or dt.replace(tzinfo=timezone.utc)",
            )
        ms = (value - _EPOCH) // _MS
    elif isinstance(value, str):
        if not _RFC3339.match(value):
            raise InvalidEventError(
                "timestamp",
                value,
                "not an RFC 3339 date-time with a timezone, e.g. '2026-04-01T12:00:00Z' "
                "or '2026-04-01T12:00:00.250+02:00'",
            )
        text = value.upper().replace(" ", "T")
        if "." in text:  # datetime wants at most 6 fractional digits; Enso keeps 3
            head, _, rest = text.partition(".")
            digits = len(rest) - len(rest.lstrip("0123456789"))
            text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise InvalidEventError("timestamp", value, f"not a valid date-time: {exc}") from None
        ms = (parsed - _EPOCH) // _MS
    else:
        raise InvalidEventTypeError(
            "timestamp",
            value,
            f"must be a timezone-aware datetime or an RFC 3339 string, not {type(value).__name__}",
        )
    if not _MIN_MS <= ms <= _MAX_MS:
        raise InvalidEventError("timestamp", value, "must be between 1970 and 9999 (UTC)")
    return ms * 1_000_000


def _walk(value: Any, depth: int) -> None:
    """Refuse what msgspec would silently turn into ``null`` or coerce (NaN, int keys)."""
    if depth > _MAX_DEPTH:
        raise InvalidEventError("metadata", value, f"nested deeper than {_MAX_DEPTH} levels")
    kind = type(value)
    if kind is str or kind is int:  # the common leaves: nothing to refuse (ABC checks cost)
        return
    if kind is float:
        if not math.isfinite(value):
            raise InvalidEventError("metadata", value, "holds a NaN or infinite float")
    elif kind is dict or isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEventTypeError(
                    "metadata", key, f"keys must be str, not {type(key).__name__}"
                )
            _walk(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _walk(item, depth + 1)


def encode_metadata(metadata: object, encoder: msgspec.json.Encoder, max_bytes: int) -> bytes:
    """The JSON of ``metadata``, a snapshot taken now (later mutations are not sent)."""
    if not isinstance(metadata, Mapping):
        raise InvalidEventTypeError(
            "metadata", metadata, f"must be a mapping, not {type(metadata).__name__}"
        )
    _walk(metadata, 0)
    try:
        raw = encoder.encode(metadata if type(metadata) is dict else dict(metadata))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidEventTypeError(
            "metadata", metadata, f"cannot be encoded as JSON: {exc}"
        ) from None
    if len(raw) > max_bytes:
        raise InvalidEventError(
            "metadata", metadata, f"is {len(raw)} bytes as JSON, more than {max_bytes}"
        )
    return raw


#: The keys of an event given as a mapping (``send_events``): ``track()``'s argument names.
EVENT_KEYS = frozenset({"entity", "metric", "value", "timestamp", "metadata", "event_id", "job_id"})
_REQUIRED = ("entity", "metric", "value")
#: An event checked as ``track()`` checks it: event_id (None: to be made), entity,
#: metric, value, timestamp (epoch ns), metadata JSON, job_id.
CheckedEvent = tuple[str | None, str, str, int | float | Decimal, int, bytes | None, str | None]


def check_event(event: object, config: Config, encoder: msgspec.json.Encoder) -> CheckedEvent:
    """An event given as a mapping of ``track()``'s arguments, checked by the same helpers
    and in the same order as ``Tracker.track`` (names, value, timestamp, metadata, ids),
    so the same input raises the same error."""
    if not isinstance(event, Mapping):
        raise InvalidEventTypeError(
            "event", event, f"must be a mapping of track()'s arguments, not {type(event).__name__}"
        )
    unknown = sorted(str(k) for k in event if k not in EVENT_KEYS)
    if unknown:
        raise InvalidEventTypeError(
            "event", unknown[0], f"unknown key; the keys are {', '.join(sorted(EVENT_KEYS))}"
        )
    for key in _REQUIRED:
        if key not in event:
            raise InvalidEventTypeError(key, None, "is required")
    entity = check_name("entity", event["entity"], config.max_name_length)
    metric = check_name("metric", event["metric"], config.max_name_length)
    value = event["value"]
    if type(value) is int:  # track()'s inline fast checks, then the same helpers
        if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            bad_value(value)
    elif type(value) is float:
        if not math.isfinite(value):
            bad_value(value)
    else:
        value = coerce_value(value)
    timestamp = event.get("timestamp")
    ts = time.time_ns() if timestamp is None else timestamp_ns(timestamp)
    metadata = event.get("metadata")
    meta = None
    if metadata is not None:
        meta = bytes(encode_metadata(metadata, encoder, config.max_metadata_bytes))
    event_id = event.get("event_id")
    if event_id is not None:
        event_id = check_id("event_id", event_id, config.max_id_length)
    job_id = event.get("job_id")
    if job_id is not None:
        job_id = check_id("job_id", job_id, config.max_id_length)
    return event_id, entity, metric, value, ts, meta, job_id
