"""Reporting drops: log lines and ``on_drop``, always with the tracker lock released.

Drops are counted under the lock (``Ledger.drop_locked``) into a list of reports, and
handed here once it is released: ``on_drop`` and logging handlers are user code, which
may sleep, raise or call back into the tracker. An exception from either is counted
(``hook_errors``), logged and never propagated. Without an ``on_drop`` hook no
:class:`~enso_tracker.Event` is ever built, and nothing is decoded: a report carries the
dropped ``Pending``s as they were (or, for ``track()``'s refusals, the tuple), and what
an ``Event`` needs from a wire body (metadata, a spooled event's fields) is read back
here, never under the lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from ._config import OnDrop
from ._errors import describe_exception
from ._log import DeferredLog, ErrorCounter
from ._model import DropReason, Event
from ._record import (
    ENTITY,
    IN_BODY,
    JOB,
    META,
    METRIC,
    SIZE,
    TS,
    VALUE,
    WHOLE_BODY,
    Pending,
    QueuedEvent,
    event_id_of,
    metadata_of,
)
from ._wire import EventEncoder
from ._wire_decode import item_of

__all__ = ["Reporter", "Reports"]

#: Drops counted under the lock, waiting to be logged and handed to ``on_drop``: the
#: dropped events as the pipeline held them (encoded ``Pending``s, or queued tuples).
Reports = list[tuple[list[Pending] | list[QueuedEvent], DropReason]]


class Reporter:
    """The tracker's log (deferred, rate-limited) and its ``on_drop`` hook."""

    def __init__(self, on_drop: OnDrop | None, id_prefix: str = "") -> None:
        self.on_drop = on_drop
        self.id_prefix = id_prefix  # the ledger's: generated eventIds are rebuilt with it
        # Fresh after a fork too: a lock inherited mid-acquire would never be released.
        self.hook_errors = ErrorCounter()
        self.log = DeferredLog(self.hook_errors)
        self._encoder = EventEncoder()  # for timestamps: cached per millisecond
        self._decode_metadata = msgspec.json.Decoder(dict[str, Any]).decode

    def report(self, reports: Reports) -> None:
        """Log and hand drops to ``on_drop``; never under the lock, never raising."""
        for events, reason in reports:
            if not events:  # a corrupt spool record: nothing in it can be trusted
                self.log.always(logging.ERROR, "enso-tracker lost a spool record: %s", reason)
                continue
            self.log(
                logging.WARNING if reason.kind in ("queue_full", "closed") else logging.ERROR,
                f"drop:{reason.kind}",
                "enso-tracker dropped %d event(s): %s",
                len(events),
                reason,
                events=len(events),
            )
            hook = self.on_drop
            if hook is None:
                continue  # no hook: do not pay for building Event objects
            try:
                hook(self.public_events(events), reason)
            except Exception as exc:
                self.hook_errors.add()
                self.log(
                    logging.ERROR, "hook", "on_drop raised %s; ignored", describe_exception(exc)
                )
        self.log.emit()

    def public_events(self, events: Sequence[Pending] | Sequence[QueuedEvent]) -> list[Event]:
        items = [self.item_of(e) if isinstance(e, Pending) else e for e in events]
        return [
            Event(
                event_id=event_id_of(item, self.id_prefix),
                entity=item[ENTITY],
                metric=item[METRIC],
                value=item[VALUE],
                timestamp=self._encoder.timestamp(item[TS]),
                metadata=None if item[META] is None else self._decode_metadata(item[META]),
                job_id=item[JOB],
            )
            for item in items
        ]

    @staticmethod
    def item_of(p: Pending) -> QueuedEvent:
        """A dropped event's tuple, with what the pipeline kept only in its wire body
        read back: its metadata (``IN_BODY``), or all of it (``WHOLE_BODY``: a spooled
        event, never held in memory as a tuple)."""
        item = p.item
        if item[META] is IN_BODY:
            return (*item[:META], metadata_of(p.body), item[JOB], item[SIZE])
        if item[META] is WHOLE_BODY:
            return item_of(p.body, p.seq)
        return item
