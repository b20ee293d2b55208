"""Scripted misbehaviour: what a test asks the fake to get wrong, and when.

:class:`FaultPlan` is plain state with no lock of its own: :class:`~.FakeEnso` calls it
with its lock held, so a fault is consumed atomically with the request that meets it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Fault", "FaultPlan"]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by the next ``/events/batch`` request.

    Faults apply before authentication, so they model infrastructure (load balancer,
    gateway, network) failures in front of the real service:

    * ``delay``: wait this long first (cut short by ``stop()``), then do the rest.
    * ``drop_connection``: reset the TCP connection without any response.
    * ``status != 200``: answer with that status, ``Retry-After`` if given and ``body``
      (default: the error envelope); nothing is stored.
    * ``status == 200`` with ``body``: send that raw body (e.g. garbage); nothing is stored.
    * ``status == 200`` with ``record_status``: process normally, but the records at those
      request indexes fail with that per-record ``statusCode`` (code ``"transient"``) and
      are not stored.
    * ``store_then_drop``: process normally (records stored as a 200 would store them),
      then reset the connection without an answer: Enso took the batch but the client
      never heard (through ``transport()``: ``httpx.ReadError`` after storing).
    * ``answer_twice``: process normally, then write the answer twice in one go on the
      kept-alive connection, as a broken server or proxy would. A client that reads the
      copy as the answer to its next request books that request's events by another
      batch's answer. Through ``transport()`` (no connection) the answer is sent once.

    Through :meth:`FakeEnso.transport() <enso_tracker.testing.FakeEnso.transport>` (no
    socket), ``drop_connection`` raises ``httpx.ReadError`` in the client, and a ``delay``
    longer than the client's read timeout raises ``httpx.ReadTimeout`` once that timeout
    has passed; every other field behaves exactly as over the socket.
    """

    status: int = 200
    retry_after: str | None = None
    body: bytes | None = None
    delay: float = 0.0
    drop_connection: bool = False
    record_status: Mapping[int, int] | None = None
    store_then_drop: bool = False
    answer_twice: bool = False

    def __post_init__(self) -> None:
        """Reject impossible faults at script time, not deep inside a server thread."""
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status}")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")


class FaultPlan:
    """The faults in force: the script, the hang, failing and poison eventIds."""

    def __init__(self) -> None:
        self.faults: deque[Fault] = deque()
        self.hang_active = False
        self.hang_seconds: float | None = None
        #: Bumped whenever a hang ends, so requests waiting on the old one wake up.
        self.hang_generation = 0
        self.failing_ids: dict[str, tuple[int, int]] = {}  # eventId -> (status, times left)
        self.poison_ids: frozenset[str] = frozenset()
        self.poison_status = 500
        #: ``FakeEnso.chaos``: random faults for requests the script does not cover.
        self.chaos_503 = 0.0
        self.chaos_store_then_drop = 0.0
        self.chaos_status = 503
        self.chaos_rng = random.Random(0)

    def clear(self) -> None:
        """Forget every fault and end the hang (the caller notifies waiters)."""
        self.faults.clear()
        self.chaos(0.0, 0.0, 0)
        self.failing_ids.clear()
        self.poison_ids = frozenset()
        self.poison_status = 500
        self.end_hang()

    def script(self, faults: Iterable[Fault]) -> None:
        self.faults.extend(faults)

    def next_fault(self) -> Fault | None:
        if self.faults:
            return self.faults.popleft()
        if self.chaos_503 or self.chaos_store_then_drop:
            draw = self.chaos_rng.random()
            if draw < self.chaos_503:
                return Fault(status=self.chaos_status)
            if draw < self.chaos_503 + self.chaos_store_then_drop:
                return Fault(store_then_drop=True)
        return None

    def chaos(self, p503: float, p_store_then_drop: float, seed: int, status: int = 503) -> None:
        if not (p503 >= 0 and p_store_then_drop >= 0 and p503 + p_store_then_drop <= 1):
            raise ValueError("chaos probabilities must be >= 0 and sum to at most 1")
        if not 400 <= status <= 599:
            raise ValueError(f"chaos status must be a 4xx or 5xx status, got {status}")
        self.chaos_status = status
        self.chaos_503 = p503
        self.chaos_store_then_drop = p_store_then_drop
        self.chaos_rng = random.Random(seed)

    def hang(self, seconds: float | None) -> None:
        if seconds is not None and seconds < 0:
            raise ValueError(f"seconds must be >= 0 or None, got {seconds}")
        self.hang_active = True
        self.hang_seconds = seconds

    def end_hang(self) -> None:
        self.hang_active = False
        self.hang_seconds = None
        self.hang_generation += 1

    def current_hang(self) -> tuple[int, float | None] | None:
        """``(generation, seconds)`` of the hang a request arriving now must wait out."""
        return (self.hang_generation, self.hang_seconds) if self.hang_active else None

    def fail_ids(self, ids: Collection[str], status: int, times: int) -> None:
        for event_id in ids:
            if times > 0:
                self.failing_ids[event_id] = (status, times)
            else:
                self.failing_ids.pop(event_id, None)

    def take_record_failure(self, event_id: str) -> int | None:
        """The per-record status this sighting of ``event_id`` fails with, if any."""
        failing = self.failing_ids.get(event_id)
        if failing is None:
            return None
        status, left = failing
        if left > 1:
            self.failing_ids[event_id] = (status, left - 1)
        else:
            del self.failing_ids[event_id]
        return status

    def poison(self, ids: Collection[str], status: int) -> None:
        self.poison_ids = frozenset(ids)
        self.poison_status = status

    def poisoned_status(self, records: list[Any]) -> int | None:
        """The status that fails this whole request, if it carries a poison eventId."""
        if not self.poison_ids:
            return None
        for record in records:
            if isinstance(record, dict) and record.get("eventId") in self.poison_ids:
                return self.poison_status
        return None
