"""gunicorn: a worker forked from a ``--preload`` master gets the SIGTERM handler back,
and, under the gevent worker, locks that gevent can schedule around.

With ``--preload`` the application, and so its tracker, is made in the master, which
installs the tracker's SIGTERM handler there; every worker inherits it over ``fork``.
Worker classes that leave signals to the server they run (``uvicorn.workers.UvicornWorker``
and the ``uvicorn-worker`` package's ``uvicorn_worker.UvicornWorker``) then reset SIGTERM
to its default action in ``init_signals()``. uvicorn captures SIGTERM while it serves,
restores the default action it found and raises SIGTERM again: the worker is killed with
its queue, no ``atexit`` hook runs, and nothing says so. No tracker is made in the
worker (the app was imported in the master), so nothing of ours runs there to notice.

The hook wraps ``Worker.load_wsgi`` (gunicorn's base worker class), which every worker
runs after ``init_signals()`` and before it serves: when the tracker's handler was
installed before the fork and SIGTERM now has its default action, the handler is put
back, uvicorn captures and restores it, and its re-raised SIGTERM shuts the trackers
down before the worker dies. A handler the worker class set itself (gunicorn's own
sync, gthread, gevent and eventlet workers, which end through ``sys.exit`` and so
``atexit``) is never replaced.

The same hook serves the gevent worker with ``--preload``: it monkey-patches
``threading`` after the fork, so the fresh tracker state the fork hook built holds real
locks, while the sender started later is a greenlet; waiting on a real lock blocks the
whole worker, and its exit hung until gunicorn's SIGKILL. A tracker not yet used in the
worker is rebuilt there with the patched primitives.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from .. import _lifecycle

__all__ = ["enable"]

_MARK = "_enso_tracker_hook"


def enable() -> bool:
    """Wrap the base worker's ``load_wsgi`` if gunicorn is imported; True once it is."""
    base: Any = sys.modules.get("gunicorn.workers.base")
    worker: Any = getattr(base, "Worker", None)
    original = getattr(worker, "load_wsgi", None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True

    @functools.wraps(original)
    def load_wsgi(self: Any) -> Any:
        _lifecycle.renew_after_patching()
        _lifecycle.reinstall_sigterm_handler()
        return original(self)

    setattr(load_wsgi, _MARK, True)
    worker.load_wsgi = load_wsgi
    return True
