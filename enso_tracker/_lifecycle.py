"""SIGTERM as a graceful stop: deliver, then die of SIGTERM as the platform expects.

Python runs no ``atexit`` hook when SIGTERM kills it, and SIGTERM is how most platforms
stop a process: ``docker stop``, Kubernetes, gunicorn and uWSGI stopping workers,
``multiprocessing.Pool.terminate()`` (``with Pool() as p:`` ends with it). So, at the
first tracker made in the main thread, if SIGTERM still has its default action (kill),
the tracker installs a handler that shuts every live tracker down within its
``shutdown_timeout``, then restores the default action and raises SIGTERM again: the
exit status stays "killed by SIGTERM". A handler the application installed is never
replaced (the disposition is no longer the default), and one installed later replaces
ours, which is the application's call. Opt out with ``handle_sigterm=False`` or
``ENSO_HANDLE_SIGTERM=0``.

A signal handler runs in the main thread between two bytecodes of whatever it
interrupted. If that was tracker code, the interrupted frame may hold a tracker lock
that the shutdown needs, and it cannot release it before the handler returns: then the
shutdown runs on a helper thread while the interrupted code finishes, and the helper
raises SIGTERM again when it is done.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["install_sigterm_handler"]

_state_lock = threading.Lock()
_installed_pid = 0
_shutdown_all: Callable[[], None] | None = None
_stopping = False


def install_sigterm_handler(shutdown_all: Callable[[], None]) -> bool:
    """Install the graceful SIGTERM handler if it is wanted and possible; True if it is in
    place (now or already). Call from ``Tracker()``; cheap after the first call."""
    global _installed_pid, _shutdown_all
    if _installed_pid == os.getpid():  # a forked child inherits the handler itself
        return True
    if threading.current_thread() is not threading.main_thread():
        return False  # only the main thread may set handlers; a later tracker may
    if os.environ.get("ENSO_HANDLE_SIGTERM", "1").strip().lower() in ("0", "false", "no"):
        return False
    with _state_lock:
        try:
            current = signal.getsignal(signal.SIGTERM)
            if current is _on_sigterm:  # inherited over fork
                _installed_pid = os.getpid()
                return True
            if current is not signal.SIG_DFL:
                return False  # the application (or its server) handles SIGTERM itself
            _shutdown_all = shutdown_all
            signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # e.g. a subinterpreter
            return False
        _installed_pid = os.getpid()
    return True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _stopping
    if _stopping:  # a second SIGTERM while stopping, or our own re-raise: die now
        _die()
        return
    _stopping = True
    if _inside_tracker(frame):
        threading.Thread(target=_stop_then_die, name="enso-tracker-sigterm").start()
        return
    _stop_then_die()


def _stop_then_die() -> None:
    try:
        if _shutdown_all is not None:
            _shutdown_all()
    finally:
        if threading.current_thread() is threading.main_thread():
            _die()
        else:  # only the main thread may restore the default action: it does so in
            os.kill(os.getpid(), signal.SIGTERM)  # _on_sigterm, seeing _stopping


def _die() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _inside_tracker(frame: FrameType | None) -> bool:
    """Whether the interrupted code is enso-tracker's own (it may hold a tracker lock)."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("enso_tracker."):
            return True
        frame = frame.f_back
    return False
