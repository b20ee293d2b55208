"""The module-level default tracker: ``enso_tracker.init()`` then ``enso_tracker.track()``."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ._errors import NotInitializedError
from ._model import Stats
from ._tracker import Tracker

__all__ = ["flush", "get_tracker", "init", "shutdown", "stats", "track"]

_default: Tracker | None = None
_init_lock = threading.Lock()


def init(api_key: str | None = None, **options: Any) -> Tracker:
    """Create the default tracker (replacing, and shutting down, any previous one).

    Takes the same arguments as :class:`Tracker`. With no credentials at all, the
    environment is read as by :meth:`Tracker.from_env`.
    """
    global _default
    has_credentials = api_key is not None or "client_key" in options or "sender" in options
    tracker = Tracker(api_key, **options) if has_credentials else Tracker.from_env(**options)
    with _init_lock:
        previous, _default = _default, tracker
    if previous is not None:
        previous.shutdown()
    return tracker


def get_tracker() -> Tracker:
    """The default tracker; raises :class:`NotInitializedError` before :func:`init`."""
    tracker = _default
    if tracker is None:
        raise NotInitializedError("call enso_tracker.init(api_key=...) first")
    return tracker


def track(
    entity: str,
    metric: str,
    value: int | float | Decimal,
    *,
    timestamp: Any = None,
    metadata: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    job_id: str | None = None,
) -> str | None:
    """:meth:`Tracker.track` on the default tracker."""
    return get_tracker().track(
        entity,
        metric,
        value,
        timestamp=timestamp,
        metadata=metadata,
        event_id=event_id,
        job_id=job_id,
    )


def flush(timeout: float | None = None) -> bool:
    """:meth:`Tracker.flush` on the default tracker (True when there is none)."""
    tracker = _default
    return True if tracker is None else tracker.flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """:meth:`Tracker.shutdown` on the default tracker, which is then forgotten."""
    global _default
    with _init_lock:
        tracker, _default = _default, None
    return True if tracker is None else tracker.shutdown(timeout)


def stats() -> Stats:
    """:meth:`Tracker.stats` of the default tracker."""
    return get_tracker().stats()
