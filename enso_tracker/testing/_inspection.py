"""What a test reads of :class:`~enso_tracker.testing.FakeEnso` and how it waits: the
stored events, duplicates, recorded requests, counters, and ``wait_for``.

Owns: the read side of the fake's state, as a base class of ``FakeEnso`` (which owns the
state, its settings and the controls that change it).

Design constraints (what must never break):

* Every read takes the fake's one lock and returns a copy: an assertion never races with
  the server threads, and never changes what the fake holds.
* Waits never poll: ``wait_for`` waits on the condition notified after every request
  arrives or completes (and on ``reset()``/``release()``), so a test waits for a fact,
  not for time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Self

from ._api import BATCH, LOGIN
from ._messages import route_of
from ._recorded import RecordedRequest
from ._state import FakeState

__all__ = ["Inspection"]


class Inspection(FakeState):
    """The inspection and waits of ``FakeEnso``; the attributes are set by its constructor."""

    @property
    def events(self) -> dict[str, dict[str, Any]]:
        """Unique accepted events by eventId (derived ids included), first-received order."""
        with self._lock:
            return copy.deepcopy(self._events)

    def event_ids(self) -> list[str]:
        """Ids of the unique accepted events, in first-received order."""
        with self._lock:
            return list(self._events)

    @property
    def received(self) -> int:
        """Accepted event records including duplicates: what a non-deduping server counts."""
        with self._lock:
            return self._received

    @property
    def duplicates(self) -> dict[str, int]:
        """eventId -> number of extra copies received after the first."""
        with self._lock:
            return dict(self._duplicates)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in completion order."""
        with self._lock:
            return list(self._requests)

    def batch_requests(self) -> list[RecordedRequest]:
        """Only the ``/events/batch`` requests, e.g. to count client attempts."""
        return self._requests_for(BATCH)

    def login_requests(self) -> list[RecordedRequest]:
        """Only the ``/auth/system-login`` requests, e.g. to check no bearer was sent."""
        return self._requests_for(LOGIN)

    def _requests_for(self, route: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if route_of(r.path) == route]

    @property
    def login_count(self) -> int:
        """Number of ``/auth/system-login`` attempts, successful or not."""
        with self._lock:
            return self._login_count

    @property
    def in_flight(self) -> int:
        """Requests received but not yet answered, e.g. to know a request is now hanging."""
        with self._lock:
            return self._in_flight

    @property
    def pending_faults(self) -> int:
        """Scripted faults not yet consumed by a batch request."""
        with self._lock:
            return len(self._plan.faults)

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds or ``timeout`` passes; return whether it held.

        The predicate is re-evaluated whenever a request arrives or completes, so tests
        never need sleeps to "let the background sender run".
        """
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self), timeout=timeout))

    def wait_for_events(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` unique events are stored."""
        return self.wait_for(lambda fake: len(fake._events) >= n, timeout)
