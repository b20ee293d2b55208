"""The record of one event after ``track()``: the queued tuple, then its encoded ``Pending``
(after Vector's ``record.rs``).

``track()`` appends a tuple (the cheapest thing to build); the sender thread turns it into
a :class:`Pending` once encoded, which carries it through retries. The byte figures are
what ``max_queue_bytes`` counts, measured with tracemalloc (``tests/system/test_hardening.py``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

import msgspec

__all__ = [
    "BYTES_OVERHEAD",
    "ENTITY",
    "EVENT_OVERHEAD",
    "ID",
    "IN_BODY",
    "JOB",
    "META",
    "METRIC",
    "PENDING_OVERHEAD",
    "SEQ",
    "SIZE",
    "STR_OVERHEAD",
    "TS",
    "VALUE",
    "WHOLE_BODY",
    "Pending",
    "QueuedEvent",
    "event_id_of",
    "held",
    "metadata_of",
]

# Layout of a queued event; a tuple because it is the cheapest thing to build in track().
QueuedEvent = tuple[
    int, str | None, str, str, int | float | Decimal, int, bytes | None, str | None, int
]
SEQ: Final = 0  # acceptance sequence number (== accepted count when it was queued)
#: The caller's ``event_id``, or None for a generated one, which is not stored (a ~75-byte
#: string per queued event): it is ``id_prefix + hex(seq)``, rebuilt by ``event_id_of``
#: when the event is encoded or reported.
ID: Final = 1
ENTITY: Final = 2
METRIC: Final = 3
VALUE: Final = 4
TS: Final = 5  # epoch nanoseconds, UTC
META: Final = 6  # metadata, already JSON
JOB: Final = 7
SIZE: Final = 8  # estimated bytes beyond EVENT_OVERHEAD (see held()), for max_queue_bytes

# max_queue_bytes counts what an event really holds (measured with tracemalloc; see
# tests/system/test_hardening.py): CPython object headers included, names in bytes not
# characters, and, once it is encoded, its wire body in place of its metadata JSON.
STR_OVERHEAD: Final = 49  # header of an ASCII str
BYTES_OVERHEAD: Final = 33  # header of a bytes object
#: One queued event beyond its strings: the tuple and its deque slot, the generated id,
#: the timestamp and value objects, and the headers of fresh entity and metric strs.
EVENT_OVERHEAD: Final = 420
#: Added once the event is encoded: the Pending struct, its floats, its body's header
#: and its heap entries (the body's own length is counted on top).
PENDING_OVERHEAD: Final = 240


def event_id_of(item: QueuedEvent, prefix: str) -> str:
    """The eventId of a queued event: the caller's, or the generated one (see ``ID``)."""
    given = item[ID]
    return prefix + hex(item[SEQ]) if given is None else given


def held(item: QueuedEvent) -> int:
    """Bytes a queued event holds. The tuple stores what it holds beyond EVENT_OVERHEAD:
    usually under 257, an int CPython caches, where the whole figure would cost one more
    int object (32 bytes) per queued event."""
    return item[SIZE] + EVENT_OVERHEAD


#: The metadata slot of an encoded event: its JSON lives in the wire body only.
IN_BODY: Final = b"<metadata in the wire body>"
#: The metadata slot of an event read back from the spool: the tuple holds only its
#: sequence and size; everything else is read from the wire body if it is ever reported.
WHOLE_BODY: Final = b"<event in the wire body>"


class Pending(msgspec.Struct, order=True, gc=False):
    """An event the sender has taken from the queue: encoded once, retried as is.

    A Struct because the sender makes one per event (cheaper than a slotted class; see
    ``benchmarks/NOTES.md``); ``order=True`` gives the retry heap its order (due time,
    then acceptance), and ``gc=False`` is safe since it never takes part in a cycle.
    """

    due: float
    seq: int
    item: QueuedEvent
    body: bytes
    #: Bytes it holds now (its item's estimate, grown by the body once encoded).
    size: int = 0
    attempts: int = 0
    first_sent: float = 0.0
    #: Noted in the schedule's low-water heap (see ``Schedule.park``), and whether that
    #: entry is stale: settled since.
    parked: bool = False
    done: bool = False
    #: Largest batch this event may go in; halved each time its batch fails while the
    #: server is otherwise healthy (``Schedule.on_failure``), so a poison event ends up
    #: alone.
    group: int = 1 << 30
    #: With a spool: the ``StoredBatch`` (row on disk) holding this event, until settled.
    row: Any = None
    #: Receipts (``_receipts``): the ``DropReason`` of a dropped event (None: delivered),
    #: then ``FOLDED`` once its receipt is counted.
    receipt: Any = None


class _MetadataOnly(msgspec.Struct):
    metadata: msgspec.Raw = msgspec.Raw()  # empty: the body has no metadata


_decode_metadata_only = msgspec.json.Decoder(_MetadataOnly).decode


def metadata_of(body: bytes) -> bytes | None:
    """The metadata JSON of an encoded event, read back from its wire body."""
    raw = _decode_metadata_only(body).metadata
    return bytes(raw) if raw else None
