"""What the tracker's background threads (the sender, and with a spool the spooler)
share: the answer a round gives its loop.

A round (``Worker.step``, ``Spooler.step``) never sleeps: it returns ``0.0`` (it did
something: come straight back), the seconds to wait on its wake event (``None``: until
woken), or :data:`CLOSED` (the tracker is closed: the thread ends).
"""

from __future__ import annotations

import threading
from typing import Final

__all__ = ["CLOSED", "alive", "sooner"]

CLOSED: Final = -1.0  # a round's answer: the tracker is closed, the thread ends


def sooner(a: float | None, b: float | None) -> float | None:
    """The shorter of two waits (None: no limit)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def alive(thread: threading.Thread | None) -> bool:
    """Whether ``thread`` exists and runs (a thread that never started does not)."""
    return thread is not None and thread.is_alive()
