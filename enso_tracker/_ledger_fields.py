"""The fields of :class:`~._ledger.Ledger` that its two mixins of moves
(``_ledger_send.SenderMoves``, ``_ledger_spool.SpoolerMoves``) read and write, declared
once for both. ``Ledger`` sets every one of them; its invariants and lock discipline
are listed in ``_ledger``.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

from ._record import Pending, QueuedEvent
from ._schedule import Schedule

if TYPE_CHECKING:
    from ._config import Config
    from ._ledger import Counters
    from ._spool.books import SpoolBooks

__all__ = ["LedgerFields"]


class LedgerFields:
    """Declarations only: no state, no behaviour."""

    if not TYPE_CHECKING:  # Ledger's instances stay slotted; mypy checks its slots there
        __slots__ = ()

    counters: Counters
    config: Config
    schedule: Schedule
    spool: SpoolBooks | None
    queue: deque[QueuedEvent]
    inflight: list[Pending]
    inflight_raw: list[QueuedEvent]
    inflight_body: int
    outstanding: int
    outstanding_bytes: int
    _settled: threading.Condition
    _room: threading.Condition
    _finished: list[Pending]
    _receipts: bool
    _reporting: int
