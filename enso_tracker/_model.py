"""The public data model: what ``on_drop`` receives and what ``stats()`` returns."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

import msgspec

__all__ = ["DeadLetter", "DropKind", "DropReason", "Event", "SpoolStatus", "Stats"]

DropKind = Literal[
    # accepted by track(), then never delivered:
    "rejected",  # Enso refused it for good (a 4xx, or a per-record failure)
    "too_large",  # alone in a batch and still refused with 413 / over max_batch_bytes
    "retries_exhausted",  # max_retries or max_event_age ran out while Enso kept failing
    "shutdown",  # still undelivered when shutdown()'s deadline passed
    "unencodable",  # msgspec could not encode it (a bug: validation should prevent it)
    "spool_full",  # the durable spool was at max_spool_bytes (or the disk was full)
    "corrupt",  # read back from the spool with a bad CRC: quarantined as a dead letter
    # refused by track() itself (it returned None):
    "queue_full",  # max_queue_size or max_queue_bytes reached
    "closed",  # track() after shutdown()
]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One usage event as ``track()`` accepted it (timestamp already normalised)."""

    event_id: str
    entity: str
    metric: str
    value: int | float | Decimal
    #: RFC 3339, UTC, milliseconds: ``2026-04-01T12:00:00.000Z``.
    timestamp: str
    metadata: dict[str, Any] | None = None
    job_id: str | None = None


class DropReason(msgspec.Struct, frozen=True, kw_only=True):
    """Why a group of events will never be delivered, in terms a person can act on."""

    kind: DropKind
    message: str
    #: Enso's error code for a rejected record (``2002``, ``"27"``…), when it gave one.
    code: int | str | None = None
    #: The HTTP status (of the request, or the record's ``statusCode``), when there was one.
    status: int | None = None

    def __str__(self) -> str:
        extra = []
        if self.status is not None:
            extra.append(f"status={self.status}")
        if self.code is not None:
            extra.append(f"code={self.code!r}")
        suffix = f" ({', '.join(extra)})" if extra else ""
        return f"{self.kind}: {self.message}{suffix}"


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """A consistent snapshot of a tracker's counters, taken under its lock.

    The books always balance: ``accepted == delivered + sum(dropped.values()) + pending``
    (plus ``disabled`` for a disabled tracker; see :attr:`balanced` for the spool's terms).
    Events that ``track()`` refused (it returned ``None``) were never accepted and are
    counted in ``refused`` instead.
    """

    #: Events ``track()`` returned an id for.
    accepted: int
    #: Events Enso acknowledged (absent from ``failedRecords`` of a 2xx answer).
    delivered: int
    #: Accepted events that will never be delivered, by :data:`DropKind`.
    dropped: dict[str, int]
    #: Events ``track()`` refused (``queue_full``, ``closed``).
    refused: dict[str, int]
    #: Times an event was put back to be sent again (one event may count many times).
    retried: int
    #: Accepted events waiting to be sent (new or retrying), and their estimated bytes.
    queued: int
    queued_bytes: int
    #: Events in the request being sent right now.
    in_flight: int
    #: HTTP requests to /events/batch, and how many of them failed as a whole.
    requests: int
    failed_requests: int
    #: Successful logins (client-credentials mode).
    logins: int
    #: Unexpected errors caught in the sender loop, and exceptions raised by user code
    #: (``on_drop`` or a logging handler): counted, never propagated.
    worker_errors: int
    hook_errors: int
    #: ``"ok"``, or ``"unauthorized"`` while Enso refuses the credentials.
    auth_state: Literal["ok", "unauthorized"]
    #: The last delivery problem, for humans (never holds a secret).
    last_error: str | None
    #: ``time.time()`` of the last 2xx answer from Enso.
    last_success_at: float | None
    #: With a spool: every event accepted up to this sequence number (the N-th accepted
    #: event has sequence N) is on disk or settled. The loss window of a ``kill -9`` is
    #: what lies beyond it: at most ``spool_interval`` of events, plus the batch being
    #: written. Without a spool: what is settled (nothing survives the process).
    durable_seq: int = 0
    #: Events on disk and not yet settled (own and adopted; part of ``queued``).
    spooled: int = 0
    #: Bytes of this tracker's spool file (with its WAL).
    spool_bytes: int = 0
    #: Events taken over from the spool files of processes that are gone (and
    #: redriven dead letters): delivered by this tracker, on top of ``accepted``.
    adopted: int = 0
    #: After shutdown: undelivered events left on disk for the next tracker on the
    #: directory (not dropped).
    left_in_spool: int = 0
    #: Dead letters written to the spool directory's store, and evicted from it (oldest
    #: first, past ``max_dead_letter_bytes``).
    dead_letters: int = 0
    dead_letters_evicted: int = 0
    #: Spool files in the directory written for another destination or credential:
    #: left untouched for a tracker of their identity (docs/spool.md).
    foreign_spool_files: int = 0
    #: Spool files left as they are because they may not or cannot be opened now
    #: (a symlink, another user's, permission denied, out of descriptors): retried at
    #: every scan; ``last_error`` says why.
    skipped_spool_files: int = 0
    #: Events a disabled tracker (``disabled=True``, ``ENSO_DISABLED=1``) validated and
    #: let go without sending: settled, never delivered, never dropped.
    disabled: int = 0
    #: Receipts (docs/receipts.md) that could not be written (logged at ERROR): some
    #: totals or per-event rows are missing. Pending totals a move could not take yet
    #: stay in their spool file and are not counted here.
    receipt_errors: int = 0

    @property
    def pending(self) -> int:
        """Accepted events not yet settled (queued or in flight)."""
        return self.queued + self.in_flight

    @property
    def balanced(self) -> bool:
        """Whether every accepted (or adopted) event is delivered, dropped with a reason,
        pending, left in the spool for the next start, or let go by a disabled tracker."""
        return self.accepted + self.adopted == (
            self.delivered
            + sum(self.dropped.values())
            + self.pending
            + self.left_in_spool
            + self.disabled
        )


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An event Enso will never take, kept in the spool directory with why.

    ``event`` is None for a ``corrupt`` record (bytes that failed their CRC: nothing in
    them can be trusted); ``body`` is the event's exact wire JSON (or those bytes).
    """

    event: Event | None
    reason: DropReason
    #: ``time.time()`` when it was stored.
    stored_at: float
    body: bytes
    #: Its number in the store: a letter stored later has a higher one (a watermark
    #: for ``Spool.purge_dead_letters(through=...)``); 0 if it was never stored.
    id: int = 0


class SpoolStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a spool directory holds (``Spool(path).status()``)."""

    path: str
    #: Spool files, and how many of them a running process owns.
    files: int
    live_files: int
    #: Undelivered events in every spool file, and the bytes the directory uses.
    events: int
    bytes: int
    #: ``time.time()`` when the oldest undelivered batch was written.
    oldest: float | None
    dead_letters: int
    dead_letters_by_kind: dict[str, int]
    #: By Enso's code as text (``"2002"``); ``""`` for none.
    dead_letters_by_code: dict[str, int]
    dead_letters_evicted: int
    #: Damaged files: renamed aside (``*.corrupt-*``), or found damaged and not yet set
    #: aside (the next tracker on the directory does that, recovering what it can).
    corrupt_files: list[str]
    #: Files of another format version.
    unsupported_files: list[str]
    #: Undelivered events by the identity their file was written for (the first 12 hex
    #: digits of its fingerprint of destination and credential, never a secret; see
    #: docs/spool.md). Only a tracker of that identity delivers them.
    events_by_identity: dict[str, int] = {}
    #: Names in the directory that are never opened (symlinks, not regular files).
    refused_files: list[str] = []
    #: Files that could not be opened, and why (``"permission denied"``, busy…): not
    #: damaged, and they may hold undelivered events: never delete them.
    unreadable_files: dict[str, str] = {}
