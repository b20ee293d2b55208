"""A public ``on_drop`` recorder, so a test can assert what was never delivered, and why."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from .._model import DropReason, Event

__all__ = ["DropRecorder"]


class DropRecorder:
    """An ``on_drop`` hook that records what it was given (thread-safe).

    ::

        from enso_tracker import Tracker
        from enso_tracker.testing import DropRecorder, FakeEnso

        with FakeEnso(known_entities={"ent_1"}) as fake:
            drops = DropRecorder()
            tracker = Tracker(api_key=fake.api_key, base_url=fake.url, on_drop=drops)
            tracker.track("ent_unknown", "api_calls", 1)
            tracker.shutdown(5.0)
            assert [r.code for r in drops.reasons().values()] == [2002]

    ``on_drop`` runs on the tracker's sender thread: :meth:`wait_for` waits for drops
    without sleeping.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        #: Each call as it came: the events and their reason.
        self.calls: list[tuple[list[Event], DropReason]] = []

    def __call__(self, events: Sequence[Event], reason: DropReason) -> None:
        with self._changed:
            self.calls.append((list(events), reason))
            self._changed.notify_all()

    def __len__(self) -> int:
        """Events recorded (not calls)."""
        with self._changed:
            return sum(len(events) for events, _ in self.calls)

    def events(self, kind: str | None = None) -> list[Event]:
        """The dropped events, oldest first; only those of ``kind`` (``"rejected"``…)."""
        with self._changed:
            return [e for es, r in self.calls for e in es if kind is None or r.kind == kind]

    def reasons(self) -> dict[str, DropReason]:
        """Each dropped event's reason, by eventId."""
        with self._changed:
            return {e.event_id: r for es, r in self.calls for e in es}

    def kinds(self) -> dict[str, int]:
        """How many events were dropped, by kind (as ``Stats.dropped`` counts them)."""
        counts: dict[str, int] = {}
        with self._changed:
            for events, reason in self.calls:
                counts[reason.kind] = counts.get(reason.kind, 0) + len(events)
        return counts

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` events were recorded; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(len(events) for events, _ in self.calls) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def clear(self) -> None:
        with self._changed:
            self.calls.clear()
