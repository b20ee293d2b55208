"""Celery: a prefork child delivers its events before it ends.

billiard ends a pool child with ``os._exit()`` (recycled by ``max_tasks_per_child`` or
``max_memory_per_child``, stopped at a warm shutdown, or terminated with SIGTERM, which
billiard turns into ``sys.exit()`` in the child), so neither ``atexit`` nor our SIGTERM
handler runs there. Just before, in the child, Celery sends ``worker_process_shutdown``:
the receiver shuts down the child's live trackers, in parallel, each within its
``shutdown_timeout``. The receivers are plain module functions; trackers are only ever
reached through :func:`enso_tracker._lifecycle.live` (weak references).

A child needs nothing at its start: billiard forks with ``os.fork()``, which runs the
tracker's fork hooks, and a spawned child builds its own trackers. ``worker_process_init``
is used for ordering only: it fires once the application has imported its modules and
connected its own receivers, and moving ours to the end there lets an application's
``worker_process_shutdown`` receiver still track.

The Celery main process leaves through ``sys.exit()``; the ``atexit`` hook covers it.
"""

from __future__ import annotations

import sys
from typing import Any

from .. import _lifecycle

__all__ = ["enable"]

_UID = "enso_tracker.integrations.celery"


def enable() -> bool:
    """Connect the receivers if Celery is imported; True once they are (idempotent)."""
    if "celery" not in sys.modules:  # never import Celery for an application
        return False
    try:
        from celery import signals
    except Exception:  # a broken or partial Celery: the tracker still works without it
        return False
    signals.worker_process_init.connect(_on_process_init, weak=False, dispatch_uid=_UID)
    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False, dispatch_uid=_UID)
    return True


def _on_process_init(**_: Any) -> None:
    from celery import signals

    # Last in line, after the receivers the application connected while importing.
    signals.worker_process_shutdown.disconnect(_on_process_shutdown, dispatch_uid=_UID)
    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False, dispatch_uid=_UID)


def _on_process_shutdown(**_: Any) -> None:
    _lifecycle.shutdown_all()
