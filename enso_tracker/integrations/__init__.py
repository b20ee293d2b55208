"""Framework integrations, enabled automatically when the framework is in the process.

In the manner of Sentry's SDK: each integration lives in its own small module and is
enabled by :func:`auto_enable` (called by every ``Tracker()`` unless
``integrations=False``) when its framework is present. None of them imports a framework
that the application has not imported or cannot import.

* :mod:`.celery` (``celery`` imported): a prefork child shuts its trackers down from
  Celery's ``worker_process_shutdown`` signal, since billiard ends it with ``os._exit()``.
* :mod:`.uwsgi` (running under uWSGI): ``uwsgi.atexit`` shuts the trackers down, and
  ``uwsgi.post_fork_hook`` gives each worker, forked from C, fresh tracker state.

Django, Flask, FastAPI and Starlette need nothing: the server they run under is what
starts, forks and stops the process.
"""

from __future__ import annotations

import sys

__all__ = ["auto_enable"]

_enabled: set[str] = set()


def auto_enable() -> None:
    """Enable every integration whose framework is present; idempotent and cheap."""
    if len(_enabled) == 2:  # nothing left to look for
        return
    if "celery" not in _enabled and "celery" in sys.modules:
        from . import celery

        if celery.enable():
            _enabled.add("celery")
    if "uwsgi" not in _enabled and "uwsgi" in sys.modules:
        from . import uwsgi

        if uwsgi.enable():
            _enabled.add("uwsgi")
