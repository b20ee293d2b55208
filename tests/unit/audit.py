"""An audit of the books: what the queues really hold, counted event by event.

``Stats.balanced`` is counter arithmetic (accepted = delivered + dropped + pending + ...):
an event lost from every queue while still counted as pending, or the bytes of a
delivered event never given back, leave it True, until ``flush()`` waits forever or
``track()`` refuses everything as ``queue_full``. :func:`audit` walks every place an
event can be held in memory and checks the ledger's counts against it:

* every held event is held once (no sequence number in two places);
* ``outstanding`` is the number of events held;
* ``outstanding_bytes`` is what they hold (a queued event its ``held()`` estimate, a
  taken one its ``Pending.size``), plus the body of a fresh batch in flight;
* ``stats()`` balances, its ``pending`` is ``outstanding`` plus the spool's backlog, and
  its ``queued_bytes`` is what the events not in flight hold.

This is the one place in the tests that reads the ledger's private state: when the
ledger's fields change, this function changes with them, not every test. (So is
:func:`watch_waits`, which lets a test see that a caller waits on the ledger.)
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from enso_tracker import Tracker
from enso_tracker._ledger import Ledger
from enso_tracker._record import SEQ, Pending, held


@dataclass(frozen=True)
class Holdings:
    """What the ledger holds in memory, as counted by walking it."""

    events: int
    bytes: int
    #: Of those, what waits (not in flight): what ``stats().queued_bytes`` reports.
    waiting_bytes: int
    seqs: tuple[int, ...]


def _ledger_of(subject: Ledger | Tracker) -> Ledger:
    ledger: Any = subject._ledger if isinstance(subject, Tracker) else subject
    assert isinstance(ledger, Ledger)
    return ledger


def holdings_locked(ledger: Ledger) -> Holdings:
    """Every event held in memory, with ``ledger.lock`` held by the caller."""
    spool = ledger.spool  # the spool stage's books (None without a spool)
    spooling = spool.spooling if spool is not None else []
    staged = spool.staged if spool is not None else ()
    waiting_raw = [*ledger.queue, *spooling]
    schedule = ledger.schedule
    waiting: list[Pending] = [*schedule.ready, *schedule.retry, *staged]
    raw = [*waiting_raw, *ledger.inflight_raw]
    pendings = [*waiting, *ledger.inflight]
    seqs = tuple([item[SEQ] for item in raw] + [p.seq for p in pendings])
    size = sum(held(item) for item in raw) + sum(p.size for p in pendings)
    waits = sum(held(item) for item in waiting_raw) + sum(p.size for p in waiting)
    return Holdings(len(seqs), size + ledger.inflight_body, waits, seqs)


def audit(subject: Ledger | Tracker) -> Holdings:
    """Check the books against what is held (see the module docstring); returns it."""
    ledger = _ledger_of(subject)
    with ledger.lock:
        held_now = holdings_locked(ledger)
        books = (ledger.outstanding, ledger.outstanding_bytes)
        stats = ledger.snapshot(0, 0, locked=False)
        on_disk = ledger.on_disk
    twice = sorted(seq for seq, n in Counter(held_now.seqs).items() if n > 1)
    assert not twice, f"events held in two places at once: {twice}"
    assert books == (held_now.events, held_now.bytes), (
        f"the books say {books[0]} events and {books[1]} bytes are held; "
        f"the queues hold {held_now.events} events and {held_now.bytes} bytes"
    )
    assert stats.balanced, stats
    assert stats.queued_bytes == held_now.waiting_bytes, (stats.queued_bytes, held_now)
    assert stats.pending == books[0] + on_disk, (stats.pending, books[0], on_disk)
    return held_now


class _WatchedCondition(threading.Condition):
    """A condition that sets ``waiting`` each time a caller starts to wait on it (with
    the lock still held: whoever takes the lock next finds the caller waiting)."""

    def __init__(self, lock: threading.Lock, waiting: threading.Event) -> None:
        super().__init__(lock)
        self._waiting = waiting

    def wait(self, timeout: float | None = None) -> bool:
        self._waiting.set()
        return super().wait(timeout)


def watch_waits(subject: Ledger | Tracker, on: Literal["room", "settled"]) -> threading.Event:
    """An event set once a caller waits on the ledger's condition ``on``: ``room``, a
    ``track()`` blocked for room (``queue_full_policy="block"``); ``settled``, a
    ``flush()`` waiting for its events. A test moves the books only then, so that what
    it checks is that the move wakes the caller, not that the caller looked late."""
    ledger: Any = _ledger_of(subject)
    waiting = threading.Event()
    watched = _WatchedCondition(ledger.lock, waiting)
    if on == "room":
        ledger._room = watched
    else:
        ledger._settled = watched
    return waiting
