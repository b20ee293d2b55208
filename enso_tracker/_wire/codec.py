"""The request bodies of ``POST /events/batch``: encoding and decoding, in one place.

Owns the wire spelling of an event (:class:`WireEvent`, names exactly as Enso spells them;
``docs/wire-contract.md``) and of a body (``{"events":[...]}``, :func:`join_batch`,
:data:`BODY_OVERHEAD`), both ways:

* encode: :class:`EventEncoder`, a fresh batch in one msgspec call or events one by one;
* decode, where events are read back from bytes we wrote (spool rows, dead letters, an
  encoded event reported to ``on_drop``): :func:`split_batch` cuts a body into each
  event's exact bytes, :func:`event_of` reads one back as an :class:`~.._model.Event`,
  :func:`metadata_of` only its metadata, :func:`body_event_id` only its eventId.

Invariant: ``event_of(encode(...))`` gives back what was encoded (value digits exact), and
:meth:`EventEncoder.encode_batch` is byte for byte :func:`join_batch` of
:meth:`EventEncoder.encode` (both tested). The queued-event tuple is ``_record``'s; this
module reads it only in :meth:`EventEncoder.encode_batch` (the hot path, positionally).
Answers are ``_wire.response``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec

from .._model import Event

if TYPE_CHECKING:
    from .._record import QueuedEvent

__all__ = [
    "BODY_OVERHEAD",
    "EventEncoder",
    "WireEvent",
    "body_event_id",
    "event_of",
    "join_batch",
    "metadata_of",
    "split_batch",
]


# ------------------------------------------------------------------ encoding


class WireEvent(msgspec.Struct, omit_defaults=True):
    """One element of ``events``; names exactly as Enso spells them."""

    CustomerEntityId: str
    metric: str
    value: int | float | Decimal
    timestamp: str
    eventId: str
    metadata: msgspec.Raw | None = None
    # Enso's API page documents both spellings with one meaning (docs/wire-contract.md).
    JobId: str | None = None
    jobId: str | None = None


_PREFIX = b'{"events":['
_SUFFIX = b"]}"
#: Bytes of the body that are not events: prefix, suffix (commas are counted per event).
BODY_OVERHEAD = len(_PREFIX) + len(_SUFFIX)


def join_batch(encoded: list[bytes]) -> bytes:
    return _PREFIX + b",".join(encoded) + _SUFFIX


_DAYS_KEPT = 4096


class _Batch(msgspec.Struct):
    """A whole body: ``{"events":[...]}``, the same bytes as :func:`join_batch`."""

    events: list[WireEvent]


class EventEncoder:
    """Encodes a fresh batch in one call (:meth:`encode_batch`), or events one by one
    (:meth:`encode`) where a batch must be cut at an exact byte size or retried in part.

    Built once per tracker: the msgspec encoder is reused, and the RFC 3339 text of the
    current millisecond (and second) is cached, since the events of a burst share it.
    """

    __slots__ = ("_days", "_encoder", "_ms", "_ms_text", "_second", "_second_text")

    def __init__(self) -> None:
        # Decimal goes out as an exact JSON number, never a string or a rounded float.
        self._encoder = msgspec.json.Encoder(decimal_format="number")
        self._second = -1
        self._second_text = ""
        self._ms = -1
        self._ms_text = ""
        #: Day number -> "YYYY-MM-DDT": events of other seconds (an import's, a backlog's)
        #: mostly share a few days; the time of day is plain arithmetic (UTC has no leap
        #: seconds in POSIX time). Bounded: cleared when full.
        self._days: dict[int, str] = {}

    def timestamp(self, ns: int) -> str:
        ms = ns // 1_000_000
        if ms == self._ms:  # events of a burst share their millisecond
            return self._ms_text
        seconds, millis = divmod(ms, 1000)
        if seconds != self._second:
            day, rest = divmod(seconds, 86_400)
            date = self._days.get(day)
            if date is None:
                t = time.gmtime(day * 86_400)
                date = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
                if len(self._days) >= _DAYS_KEPT:
                    self._days.clear()
                self._days[day] = date
            hours, rest = divmod(rest, 3600)
            minutes, secs = divmod(rest, 60)
            self._second_text = f"{date}{hours:02d}:{minutes:02d}:{secs:02d}."
            self._second = seconds
        self._ms = ms
        self._ms_text = f"{self._second_text}{millis:03d}Z"
        return self._ms_text

    def encode_batch(self, items: Sequence[QueuedEvent], prefix: str) -> bytes:
        """The body of a request carrying ``items``, in one msgspec call: byte for byte
        what :func:`join_batch` makes of the events' :meth:`encode` (tested), at about a
        third of its CPU (no ``bytes`` per event, no join). May hand back msgspec's
        growth buffer: fine for a body that lives one request. ``prefix``: the tracker's
        id prefix, for generated eventIds (``_record.event_id_of``)."""
        ts = self.timestamp
        raw = msgspec.Raw
        return self._encoder.encode(
            _Batch(
                [
                    # Positional: WireEvent's field order (cheaper than keywords).
                    WireEvent(
                        e,
                        m,
                        v,
                        ts(t),
                        prefix + hex(s) if i is None else i,
                        None if md is None else raw(md),
                        j,
                        j,
                    )
                    for s, i, e, m, v, t, md, j, _ in items
                ]
            )
        )

    def encode(
        self,
        event_id: str,
        entity: str,
        metric: str,
        value: int | float | Decimal,
        ts_ns: int,
        metadata: bytes | None,
        job_id: str | None,
    ) -> bytes:
        return self._encoder.encode(
            WireEvent(
                CustomerEntityId=entity,
                metric=metric,
                value=value,
                timestamp=self.timestamp(ts_ns),
                eventId=event_id,
                metadata=None if metadata is None else msgspec.Raw(metadata),
                JobId=job_id,
                jobId=job_id,
            )
        )


# ------------------------------------------------------------------ decoding


class _RawBatch(msgspec.Struct):
    """A whole body read back: each event as its exact bytes."""

    events: list[msgspec.Raw]


class _ReadEvent(msgspec.Struct):
    """One wire event read back: its value as written (see ``_number``)."""

    CustomerEntityId: str
    metric: str
    value: msgspec.Raw
    timestamp: str
    eventId: str
    metadata: dict[str, Any] | None = None
    JobId: str | None = None
    jobId: str | None = None


_decode_batch = msgspec.json.Decoder(_RawBatch).decode
_decode_wire = msgspec.json.Decoder(_ReadEvent).decode
_decode_any = msgspec.json.Decoder().decode


def split_batch(body: bytes) -> list[bytes]:
    """The events of a ``{"events": [...]}`` body, each its exact bytes."""
    return [bytes(raw) for raw in _decode_batch(body).events]


def _number(raw: bytes) -> int | float | Decimal:
    text = raw.decode("ascii")
    if text.lstrip("-").isdigit():
        return int(text)
    as_float = float(text)
    # A float that reads back as the same text stays a float; anything else (a Decimal
    # such as 0.10) keeps its exact digits.
    return as_float if repr(as_float) == text else Decimal(text)


def event_of(body: bytes) -> Event:
    """The :class:`Event` one wire event encodes (``msgspec.DecodeError`` if it does not)."""
    wire = _decode_wire(body)
    return Event(
        event_id=wire.eventId,
        entity=wire.CustomerEntityId,
        metric=wire.metric,
        value=_number(bytes(wire.value)),
        timestamp=wire.timestamp,
        metadata=wire.metadata,
        job_id=wire.JobId if wire.JobId is not None else wire.jobId,
    )


def body_event_id(body: bytes) -> str | None:
    """The eventId of one wire event, if it has a readable one."""
    try:
        found = _decode_any(body)
    except msgspec.DecodeError:
        return None
    value = found.get("eventId") if isinstance(found, dict) else None
    return value if isinstance(value, str) else None


class _MetadataOnly(msgspec.Struct):
    metadata: msgspec.Raw = msgspec.Raw()  # empty: the body has no metadata


_decode_metadata_only = msgspec.json.Decoder(_MetadataOnly).decode


def metadata_of(body: bytes) -> bytes | None:
    """The metadata JSON of an encoded event, read back from its wire body."""
    raw = _decode_metadata_only(body).metadata
    return bytes(raw) if raw else None
