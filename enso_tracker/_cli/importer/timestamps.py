"""Timestamps of real exports: ``--timestamp-format`` and ``--timezone``.

Without options a row's timestamp goes to ``track()`` as it is: RFC 3339 with an offset,
nothing guessed. With them:

* ``--timestamp-format epoch-s`` / ``epoch-ms``: seconds or milliseconds since 1970 UTC, as
  a number or numeric text (``1714564800``, ``"1714564800.25"``); exact (decimal arithmetic,
  no float rounding). ``--timezone`` does not apply: an epoch is UTC by definition.
* ``--timestamp-format FORMAT`` (``strptime`` codes, e.g. ``"%b %d %Y"`` for
  ``Jan 1 2000``): a value with ``%z`` carries its offset; one without needs ``--timezone``.
* ``--timezone ZONE`` (IANA name via ``zoneinfo``, e.g. ``Europe/Paris``, or ``UTC``): the zone
  of values that have none (RFC 3339 without an offset, ``2026-04-01 12:00:00``, or a
  ``--timestamp-format`` without ``%z``). Values with an offset keep theirs. A wall time
  that does not exist in the zone (the hour skipped when clocks go forward) is refused; one
  that exists twice (the hour repeated when they go back) is the first of the two.

Without ``--timezone`` a value with no offset is refused, and the message names the option:
billing a day in the wrong zone is worse than asking.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..._validate import timestamp_ns

__all__ = ["RepeatCache", "TimestampError", "explain", "make_parser", "zone"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_TEXT: Final = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)\s*\Z")
#: Distinct timestamp texts remembered: exports repeat a few values (a day, a minute) a lot.
_CACHE: Final = 4096
_NO_ZONE: Final = (
    "has no time zone: pass --timezone ZONE for such values (e.g. --timezone UTC or "
    "--timezone Europe/Paris), or give times with an offset (2026-04-01T12:00:00Z)"
)


class TimestampError(ValueError):
    """Why a timestamp value cannot be read (without the value: the caller names it)."""


def zone(name: str) -> tzinfo:
    """``--timezone``: an IANA zone, or ``ValueError`` saying why not."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"--timezone {name!r}: not a known time zone (an IANA name like Europe/Paris, or UTC)"
        ) from None


def make_parser(fmt: str | None, tz: tzinfo | None) -> Callable[[Any], Any] | None:
    """What turns a row's timestamp into ``track()``'s, or None to pass it on unchanged."""
    if fmt in ("epoch-s", "epoch-ms"):
        scale = 1 if fmt == "epoch-s" else 1000
        return lambda value: _epoch(value, scale)
    if fmt is None and tz is None:
        return None
    text_parser = functools.lru_cache(maxsize=_CACHE)(functools.partial(_from_text, fmt=fmt, tz=tz))

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            raise TimestampError(f"must be text, not {type(value).__name__}")
        return text_parser(value)

    return parse


def _from_text(value: str, fmt: str | None, tz: tzinfo | None) -> datetime:
    if fmt is None:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise TimestampError(
                "not an ISO 8601 / RFC 3339 date-time; for other formats pass "
                "--timestamp-format (a strptime format, epoch-s or epoch-ms)"
            ) from None
    else:
        try:
            parsed = datetime.strptime(value.strip(), fmt)
        except ValueError:
            raise TimestampError(f"does not match --timestamp-format {fmt!r}") from None
    if parsed.tzinfo is not None:
        return parsed
    if tz is None:
        raise TimestampError(_NO_ZONE)
    local = parsed.replace(tzinfo=tz)
    # A wall time skipped by a clock change does not survive the round trip through UTC.
    if local.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != parsed:
        raise TimestampError(f"does not exist in {tz} (skipped when the clocks changed)")
    return local


def _epoch(value: Any, scale: int) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TimestampError(f"must be a number of seconds since 1970, not {type(value).__name__}")
    if isinstance(value, str) and not _EPOCH_TEXT.match(value):
        raise TimestampError("is not a number (epoch time)")
    try:
        number = Decimal(value if isinstance(value, str | int) else repr(value))
    except InvalidOperation:
        raise TimestampError("is not a number (epoch time)") from None
    if not number.is_finite():
        raise TimestampError("is not a finite number (epoch time)")
    ms = number * 1000 / scale
    try:
        # Whole milliseconds, as Enso keeps them (rounded down, like track()).
        return _EPOCH + timedelta(milliseconds=int(ms.to_integral_value(rounding="ROUND_FLOOR")))
    except OverflowError:
        raise TimestampError("is out of range (epoch time)") from None


def explain(value: Any, problem: str) -> str:
    """A better reason than ``track()``'s for a refused timestamp without options: naive
    values and other formats are common in exports, and each has its option."""
    if isinstance(value, str) and not _EPOCH_TEXT.match(value):
        try:
            _from_text(value, None, None)
        except TimestampError as exc:
            return str(exc)
    elif isinstance(value, int | float | str) and not isinstance(value, bool):
        return "is a number: for epoch times pass --timestamp-format epoch-s (or epoch-ms)"
    return problem


class RepeatCache:
    """RFC 3339 text -> the aware datetime ``track()`` makes of it, for exports whose rows
    share timestamps (hourly or daily rollups): ``track()`` then skips parsing the text.

    Built with the library's own ``timestamp_ns``, so a text is accepted or refused (with
    the same ``InvalidEventError``) exactly as ``track()`` would, and the datetime holds
    the same millisecond. Bounded (cleared when full). Judged every ``_REPEAT_PROBE``
    lookups: when most of them missed, ``active`` turns False for good (the caller then
    passes the text on), since a miss costs more than letting ``track()`` parse.
    """

    __slots__ = ("_lookups", "_map", "_misses", "active")

    def __init__(self) -> None:
        self._map: dict[str, datetime] = {}
        self._lookups = 0
        self._misses = 0
        self.active = True

    def __call__(self, text: str) -> datetime:
        self._lookups += 1
        found = self._map.get(text)
        if found is not None:
            return found
        ms = timestamp_ns(text) // 1_000_000  # raises as track() would
        value = _EPOCH + timedelta(milliseconds=ms)
        if len(self._map) >= _REPEAT_KEPT:
            self._map.clear()
        self._map[text] = value
        self._misses += 1
        if self._lookups >= _REPEAT_PROBE:
            self.active = self._misses * 2 <= self._lookups
            self._lookups = self._misses = 0
        return value


_REPEAT_KEPT: Final = 65_536
_REPEAT_PROBE: Final = 4096
