"""Framework integrations, enabled automatically when the framework is in the process.

In the manner of Sentry's SDK: each integration lives in its own small module and is
enabled by :func:`auto_enable` (called by every ``Tracker()`` unless
``integrations=False``) when its framework is present. None of them imports a framework
that the application has not imported or cannot import.

* :mod:`.celery` (``celery`` imported): a prefork child shuts its trackers down from
  Celery's ``worker_process_shutdown`` signal, since billiard ends it with ``os._exit()``.
* :mod:`.uwsgi` (running under uWSGI): ``uwsgi.atexit`` shuts the trackers down, and
  ``uwsgi.post_fork_hook`` gives each worker, forked from C, fresh tracker state.
* :mod:`.uvicorn` (a tracker made while a uvicorn server holds SIGTERM): the trackers
  are shut down after that server's graceful stop, before it re-raises SIGTERM.
* :mod:`.gunicorn` (``gunicorn`` imported): a worker forked from a ``--preload`` master
  gets the tracker's SIGTERM handler back when its worker class reset SIGTERM to the
  default action (both UvicornWorker packages), and, under the gevent worker, tracker
  state built with gevent's locks.
* :mod:`.rq` (``rq`` imported): a work horse shuts its trackers down at the end of its
  job, since it ends with ``os._exit()``.

Django, Flask, FastAPI and Starlette need nothing: the server they run under is what
starts, forks and stops the process.
"""

from __future__ import annotations

import sys
from importlib import import_module

__all__ = ["auto_enable"]

#: integration module -> the module whose presence in ``sys.modules`` means its
#: framework is in the process (the embedded ``uwsgi`` module exists only under uWSGI)
_INTEGRATIONS = {
    "celery": "celery",
    "uwsgi": "uwsgi",
    "uvicorn": "uvicorn.server",
    "gunicorn": "gunicorn.workers.base",
    "rq": "rq.worker",
}
_enabled: set[str] = set()


def auto_enable() -> None:
    """Enable every integration whose framework is present; idempotent and cheap."""
    if len(_enabled) == len(_INTEGRATIONS):
        return
    modules = sys.modules
    for name, marker in _INTEGRATIONS.items():
        if name not in _enabled and marker in modules:
            integration = import_module(f"{__name__}.{name}")
            if integration.enable():
                _enabled.add(name)
