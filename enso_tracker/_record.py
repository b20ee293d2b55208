"""The record of one event after ``track()``: the queued tuple, then its encoded ``Pending``
(after Vector's ``record.rs``).

``track()`` appends a tuple (the cheapest thing to build); the sender thread turns it into
a :class:`Pending` once encoded, which carries it through retries. The byte figures are
what ``max_queue_bytes`` counts, measured with tracemalloc (``tests/system/test_hardening.py``).

Invariant: the tuple's layout (``SEQ`` … ``SIZE``) is spelled only here, in ``track()``
(which builds it inline: the hot path) and in ``_wire.codec`` (which encodes it). Every
other module reads a record through the names below: ``seq_of``/``size_of`` (C-level
getters for hot loops), ``encode_record``/``pending_of`` (the sender's
per-event encoding), ``unencoded``/``delivered`` (a tuple as a ``Pending``), ``spooled``
(events read back from a spool row: no tuple), ``growth`` (bytes gained by encoding),
``fold_facts`` (the receipts' fold)
and ``public_events``/``read_back`` (what ``on_drop`` is handed: an encoded event's
body is decoded only then, outside the lock).
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._model import Event
from ._wire.codec import body_event_id, event_of, metadata_of

if TYPE_CHECKING:
    from ._spool.files import StoredBatch
    from ._wire.codec import EventEncoder

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
    "Pending",
    "QueuedEvent",
    "delivered",
    "encode_record",
    "event_id_of",
    "fold_facts",
    "growth",
    "held",
    "pending_of",
    "public_events",
    "read_back",
    "seq_of",
    "size_of",
    "spooled",
    "unencoded",
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

#: A record's ``SEQ`` and ``SIZE``: C-level getters (``map``, ``sum``) for hot loops.
seq_of: Final = itemgetter(SEQ)
size_of: Final = itemgetter(SIZE)

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


class Pending(msgspec.Struct, order=True, gc=False):
    """An event the sender has taken from the queue: encoded once, retried as is.

    A Struct because the sender makes one per event (cheaper than a slotted class; see
    ``benchmarks/NOTES.md``); ``order=True`` gives the retry heap its order (due time,
    then acceptance), and ``gc=False`` is safe since it never takes part in a cycle.
    """

    due: float
    seq: int
    #: The queued tuple; None for an event read back from a spool row, whose body is all
    #: it is (decoded only if it is ever reported, or for its receipt: ``read_back``).
    item: QueuedEvent | None
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
    #: (Imported for type checking only: msgspec resolves a field's type only to decode
    #: or inspect, and a ``Pending`` is never decoded.)
    row: StoredBatch | None = None
    #: Receipts (``_receipts``): the ``DropReason`` of a dropped event (None: delivered),
    #: then ``FOLDED`` once its receipt is counted.
    receipt: Any = None


# ------------------------------------------------------------------ tuple -> Pending


def unencoded(item: QueuedEvent) -> Pending:
    """A queued event as a ``Pending`` not encoded (no body), holding what it held: to
    drop it (unencodable, left at close) or report it."""
    return Pending(0.0, item[SEQ], item, b"", held(item))


def delivered(items: list[QueuedEvent]) -> list[Pending]:
    """Events of a fresh batch Enso took whole, as ``Pending``s for the receipts' fold
    (size 0: their bytes are already released). One comprehension, under the lock."""
    return [Pending(0.0, item[SEQ], item, b"") for item in items]


def encode_record(encoder: EventEncoder, item: QueuedEvent, prefix: str) -> bytes:
    """One event's wire bytes (``prefix``: the tracker's id prefix, for a generated
    eventId). An exact copy: msgspec hands back its growth buffer (up to 1.5x the text),
    and a retried event's memory must stay what ``max_queue_bytes`` counts."""
    given = item[ID]
    event_id = prefix + hex(item[SEQ]) if given is None else given
    return bytes(memoryview(encoder.encode(event_id, *item[ENTITY:SIZE])))


def pending_of(item: QueuedEvent, body: bytes) -> Pending:
    """The ``Pending`` of an event once encoded as ``body``. The body is what is kept: it
    replaces the metadata JSON the tuple held (``IN_BODY``: read back only if the event is
    ever reported), and its size becomes what it now holds (``max_queue_bytes``)."""
    meta = item[META]
    size = item[SIZE] + EVENT_OVERHEAD + len(body) + PENDING_OVERHEAD
    if meta is not None:
        size -= len(meta) + BYTES_OVERHEAD
        item = (*item[:META], IN_BODY, item[JOB], item[SIZE])
    return Pending(0.0, item[SEQ], item, body, size)


def spooled(bodies: list[bytes], seqs: Iterable[int], row: StoredBatch | None) -> list[Pending]:
    """``Pending``s for the events of a spool row (``row``: its ``StoredBatch``), their
    bodies as they were sent and no tuple (``item`` None): everything but the sequence is
    read back from the body if the event is ever reported. Counted as an encoded event
    (its size figure includes a tuple it no longer holds: on the safe side)."""
    return [
        Pending(0.0, seq, None, body, EVENT_OVERHEAD + PENDING_OVERHEAD + len(body), row=row)
        for body, seq in zip(bodies, seqs, strict=False)  # seqs may be endless (adoption)
    ]


def growth(pendings: list[Pending]) -> int:
    """Bytes ``pendings``, just encoded from their tuples, hold beyond what the tuples
    held (``held``): their bodies and ``Pending``s."""
    return sum([p.size - p.item[SIZE] - EVENT_OVERHEAD for p in pendings if p.item is not None])


# ------------------------------------------------------------------ what a record says


def fold_facts(item: QueuedEvent, prefix: str) -> tuple[str, str, str, Any, int]:
    """(eventId, entity, metric, value, ts_ns) of a record for the receipts' fold."""
    seq, given, entity, metric, value, ts, _, _, _ = item
    return (prefix + hex(seq) if given is None else given), entity, metric, value, ts


def public_events(
    entries: Sequence[Pending] | Sequence[QueuedEvent],
    prefix: str,
    timestamp: Callable[[int], str],
    decode_metadata: Callable[[bytes], dict[str, Any]],
) -> list[Event]:
    """The public :class:`~._model.Event` of each dropped event, for ``on_drop``: what
    an encoded one kept only in its wire body is read back (:func:`read_back`).
    ``timestamp`` renders epoch nanoseconds (``EventEncoder.timestamp``)."""
    items = [read_back(e) if isinstance(e, Pending) else e for e in entries]
    return [
        Event(
            event_id=event_id_of(item, prefix),
            entity=item[ENTITY],
            metric=item[METRIC],
            value=item[VALUE],
            timestamp=timestamp(item[TS]),
            metadata=None if item[META] is None else decode_metadata(item[META]),
            job_id=item[JOB],
        )
        for item in items
    ]


def read_back(p: Pending) -> QueuedEvent:
    """A dropped event's tuple, whole: what the pipeline kept only in its wire body read
    back (its metadata, ``IN_BODY``; or all of it: a spooled event, never held in memory
    as a tuple). For ``on_drop`` only: never called under the lock."""
    item = p.item
    if item is None:
        return _item_of_body(p.body, p.seq)
    if item[META] is IN_BODY:
        return (*item[:META], metadata_of(p.body), item[JOB], item[SIZE])
    return item


def _item_of_body(body: bytes, seq: int) -> QueuedEvent:
    """The tuple of an event read back from the spool (for reporting)."""
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
