"""Re-entry from a signal handler: never wait on a lock the interrupted frame holds.

A Python signal handler runs in the main thread on top of whatever it interrupted. If
that was one of a tracker's own calls holding its lock, and the handler calls the
tracker again (``flush()``, ``stats()``, ``shutdown()``), waiting for the lock would wait
for a frame that cannot resume before the handler returns: a deadlock. The public calls
ask :func:`interrupted_inside` first (a walk of the stack: never on ``track()``'s path)
and then wait for the lock no longer than their timeout.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

__all__ = [
    "REENTRANT_STATS_WAIT",
    "interrupted_inside",
    "lock_free_within",
    "register_lock_holders",
]

#: How long stats() from a signal handler waits for a lock its interrupted frame may hold.
REENTRANT_STATS_WAIT = 0.05

_holders: set[CodeType] = set()


def register_lock_holders(*functions: Callable[..., Any]) -> None:
    """Functions whose frames may hold a tracker part's lock (their ``self``)."""
    _holders.update(function.__code__ for function in functions)


def interrupted_inside(parts: tuple[object, ...]) -> bool:
    """Called by a public method itself: whether its caller runs on a thread that is, further up its
    stack, inside a lock-holding call of one of ``parts``: a signal handler that
    interrupted it."""
    frame: FrameType | None = sys._getframe(2)  # the public method's caller
    while frame is not None:
        if frame.f_code in _holders:
            owner = frame.f_locals.get("self")
            if any(owner is part for part in parts):
                return True
        frame = frame.f_back
    return False


def lock_free_within(lock: threading.Lock, deadline: float) -> bool:
    """Whether ``lock`` could be taken before ``deadline`` (it is released at once)."""
    remaining = min(max(deadline - time.monotonic(), 0.0), threading.TIMEOUT_MAX)
    if lock.acquire(timeout=remaining):
        lock.release()
        return True
    return False
