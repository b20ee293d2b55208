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
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ._config import OnDrop
from ._errors import describe_exception
from ._log import DeferredLog, ErrorCounter
from ._model import DropReason, Event
from ._record import Pending, QueuedEvent, public_events
from ._wire import EventEncoder

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

    def hand_over(self, reports: Reports, handed_over: Callable[[int], None]) -> None:
        """After a locked section, with the lock released: emit the log records queued
        under it, or report the drops and then, even if reporting failed, tell the ledger
        they reached ``on_drop`` (``Ledger.handed_over``: a waiting ``flush()`` may
        return). The one ending of the sender's and the spooler's rounds."""
        if not reports:
            self.log.emit()
            return
        try:
            self.report(reports)
        finally:
            handed_over(len(reports))

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
        """The ``Event``s ``on_drop`` is handed: what an encoded event kept only in its
        wire body is read back here (``_record.public_events``), outside the lock."""
        return public_events(events, self.id_prefix, self._encoder.timestamp, self._decode_metadata)
