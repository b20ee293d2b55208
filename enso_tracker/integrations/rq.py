"""RQ: a work horse delivers its job's events before it ends.

An RQ worker forks a "work horse" for every job, and the horse leaves through
``os._exit()`` once the job is done, skipping ``atexit``: whatever the job tracked is
lost, spool or not. As Sentry's RQ integration does, the trackers are shut down in the
horse at the end of the job (each within its ``shutdown_timeout``), after the job's
success or failure handling and callbacks, before the horse exits. Two cases:

* A tracker made before the horse starts (in the worker's main process: a ``-c``
  settings module, a custom worker class, a preloaded module): ``perform_job`` of RQ's
  base worker class is wrapped; in a horse, the trackers are shut down when it returns.
* A tracker made by the job itself (the usual layout: RQ imports the job's module in
  the horse, so the tracker is made there, in the middle of ``perform_job``): that call
  is already running, so the horse's ``os._exit`` is wrapped instead, in that process
  only, found through a horse's ``perform_job`` on the call stack.

A worker that runs jobs in its own process (``SimpleWorker``) is left alone: it ends
through ``sys.exit`` and so ``atexit``. A horse killed by RQ (job timeout, cold
shutdown) dies with SIGKILL; nothing can run there.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from .. import _lifecycle

__all__ = ["enable"]

_MARK = "_enso_tracker_hook"
_exit_wrapped_in = 0  # the horse whose os._exit is wrapped


def enable() -> bool:
    """Hook RQ's base worker if RQ is imported; True once it is (idempotent)."""
    base: Any = sys.modules.get("rq.worker.base") or sys.modules.get("rq.worker")
    worker: Any = getattr(base, "BaseWorker", None) or getattr(base, "Worker", None)
    original = getattr(worker, "perform_job", None)
    if original is None:
        return False
    if not getattr(original, _MARK, False):

        @functools.wraps(original)
        def perform_job(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return original(self, *args, **kwargs)
            finally:
                if getattr(self, "_is_horse", False):
                    _lifecycle.shutdown_all()

        setattr(perform_job, _MARK, True)
        worker.perform_job = perform_job
    if _in_a_horses_job(worker):
        _wrap_exit()
    return True


def _in_a_horses_job(worker_class: type) -> bool:
    """Whether this call comes from inside a job that a work horse is performing."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "perform_job":
            worker = frame.f_locals.get("self")
            if isinstance(worker, worker_class) and getattr(worker, "_is_horse", False):
                return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _wrap_exit() -> None:
    global _exit_wrapped_in
    pid = os.getpid()
    if _exit_wrapped_in == pid:
        return
    _exit_wrapped_in = pid
    real_exit: Callable[[int], NoReturn] = os._exit

    def _exit(status: int) -> NoReturn:
        try:
            if os.getpid() == pid:  # not in a process the job forked
                _lifecycle.shutdown_all()
        finally:
            real_exit(status)

    setattr(_exit, _MARK, True)
    os._exit = _exit
