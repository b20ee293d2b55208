"""Logging that is safe to call anywhere, including under the tracker lock.

A logging handler is user code: it may sleep (a slow network handler), raise, or call
back into the tracker (``stats()``, ``shutdown()``). Run under the tracker lock, the first
stalls every ``track()`` and the last deadlocks the sender. So records are only *queued*
where they arise and emitted by :meth:`DeferredLog.emit`, which the tracker calls once it
has released its lock; an exception from a handler is counted, never propagated.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Final

__all__ = ["DeferredLog", "ErrorCounter", "log"]

log = logging.getLogger("enso_tracker")

#: At most one record per key per this many seconds; the rest are counted.
LOG_EVERY: Final = 60.0


class ErrorCounter:
    """Exceptions raised by user code (logging handlers, ``on_drop``), counted.

    Its own small lock, never held while user code runs, so a raising hook can be counted
    from any thread without touching the tracker lock.
    """

    __slots__ = ("_lock", "count")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


class DeferredLog:
    """Rate-limited records (at most one per key per interval), emitted outside the lock."""

    def __init__(self, errors: ErrorCounter, interval: float = LOG_EVERY) -> None:
        self._errors = errors
        self._interval = interval
        self._lock = threading.Lock()  # guards the rate-limit books only
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        # deque.append/popleft are atomic: records may be queued from any thread.
        self._pending: deque[tuple[int, str, tuple[object, ...]]] = deque()

    def __call__(
        self, level: int, key: str, msg: str, *args: object, events: int | None = None
    ) -> None:
        """Queue a record unless one with this key was queued within the interval.

        What is held back is counted and said in the next record of the key: in events
        when the records are about ``events`` (a drop of 200,000 refusals one by one
        reads "200,000 more in the last 60 s"), else in records."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + (1 if events is None else events)
                return
            held = self._held.pop(key, 0)
            self._last[key] = now
        if held:
            if events is None:
                msg += " (%d similar messages suppressed)"
            else:
                msg += " (and %d more event(s) like it in the last %.0f s)"
            args = (*args, held, self._interval) if events is not None else (*args, held)
        self._pending.append((level, msg, args))

    def always(self, level: int, msg: str, *args: object) -> None:
        """Queue a record that is never rate-limited (state changes, the exit summary)."""
        self._pending.append((level, msg, args))

    def emit(self) -> None:
        """Hand the queued records to ``logging``. Call with no tracker lock held."""
        pending = self._pending
        while pending:
            try:
                level, msg, args = pending.popleft()
            except IndexError:  # another thread emitted the last one
                return
            try:
                log.log(level, msg, *args)
            except Exception:  # a handler or filter raised: count it, keep going
                self._errors.add()
