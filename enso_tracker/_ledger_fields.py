"""The fields of :class:`~._ledger.Ledger` that its mixins (``_ledger_send.SenderMoves``,
``_ledger_spool.SpoolerMoves``, ``_ledger_state.LedgerState``) read and write, declared
once for all. ``Ledger`` sets every one of them; its invariants and lock discipline
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
    from ._ledger_state import Counters, State
    from ._spool.books import SpoolBooks

__all__ = ["LedgerFields"]


class LedgerFields:
    """Declarations only: no state, no behaviour."""

    if not TYPE_CHECKING:  # Ledger's instances stay slotted; mypy checks its slots there
        __slots__ = ()

    lock: threading.Lock
    state: State
    counters: Counters
    seq: int
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
    _deadline: float
    _finish_on_worker: bool
