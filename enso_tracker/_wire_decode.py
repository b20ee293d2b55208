"""The decode side of the ``/events/batch`` wire format: a body back into its events.

Used where events are read back from disk (spool rows, dead letters) or reported after
being encoded: :func:`split_batch` cuts a body into each event's exact bytes,
:func:`event_of` reads one back as an :class:`~._model.Event`, :func:`item_of` as a
queued-event tuple (for ``on_drop``). The encode side is ``_wire``.
"""

from __future__ import annotations

import calendar
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from ._model import Event
from ._record import QueuedEvent

__all__ = ["body_event_id", "event_of", "item_of", "split_batch"]


class _Batch(msgspec.Struct):
    events: list[msgspec.Raw]


class _Wire(msgspec.Struct):
    CustomerEntityId: str
    metric: str
    value: msgspec.Raw
    timestamp: str
    eventId: str
    metadata: dict[str, Any] | None = None
    JobId: str | None = None
    jobId: str | None = None


_decode_batch = msgspec.json.Decoder(_Batch).decode
_decode_wire = msgspec.json.Decoder(_Wire).decode
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


def item_of(body: bytes, seq: int) -> QueuedEvent:
    """The queued-event tuple of an event read back from the spool (for reporting)."""
    try:
        event = event_of(body)
        stamp = datetime.fromisoformat(event.timestamp)
        ts = (calendar.timegm(stamp.utctimetuple()) * 1_000_000 + stamp.microsecond) * 1000
        meta = None if event.metadata is None else msgspec.json.encode(event.metadata)
        return (
            seq,
            event.event_id,
            event.entity,
            event.metric,
            event.value,
            ts,
            meta,
            event.job_id,
            0,
        )
    except (msgspec.DecodeError, ValueError, UnicodeDecodeError):
        return (seq, body_event_id(body) or "", "", "", 0, 0, None, None, 0)


def body_event_id(body: bytes) -> str | None:
    """The eventId of one wire event, if it has a readable one."""
    try:
        found = _decode_any(body)
    except msgspec.DecodeError:
        return None
    value = found.get("eventId") if isinstance(found, dict) else None
    return value if isinstance(value, str) else None
