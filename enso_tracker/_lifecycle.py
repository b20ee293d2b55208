"""Process lifecycle: the registry of live trackers, and every way a process ends or forks.

* **Registry.** Live trackers are held by weak reference (a tracker nobody references
  can still be collected), in one module-level set for every hook below, rather than a
  closure per tracker as OpenTelemetry registers.
* **atexit.** Registered at import, so it runs after the exit handlers an application
  registers later (``atexit`` is last-in, first-out): those may still track. All live
  trackers are shut down in parallel, each within its ``shutdown_timeout``.
* **fork.** ``os.register_at_fork`` gives every tracker fresh state in the child; the
  pid check in ``track()`` covers forks that skip the hooks (uWSGI forking from C).
* **multiprocessing.** Its children leave through ``os._exit()``, skipping ``atexit``;
  its exit finalizers do run, so one is armed in every child (see
  :class:`_MultiprocessingHook`).
* **SIGTERM.** Python runs no ``atexit`` hook when SIGTERM kills it, and SIGTERM is how
  most platforms stop a process: ``docker stop``, Kubernetes, gunicorn and uWSGI
  stopping workers, ``multiprocessing.Pool.terminate()`` (``with Pool() as p:`` ends with
  it). So, at the first tracker made in the main thread, if SIGTERM still has its default
  action (kill), a handler is installed that shuts every live tracker down, then
  restores the default action and raises SIGTERM again: the exit status stays "killed by
  SIGTERM". Where that default action does not end the process (Python as PID 1 in a
  container without an init, which the kernel shields from it), the process exits with
  status 128 + SIGTERM (143) instead, as ``docker stop`` expects. A handler the
  application installed is never replaced (the disposition is no longer the default),
  and one installed later replaces ours, which is the application's call. Opt out with
  ``handle_sigterm=False`` or ``ENSO_HANDLE_SIGTERM=0``.

  A signal handler runs in the main thread between two bytecodes of whatever it
  interrupted. If that was tracker code, the interrupted frame may hold a tracker lock
  that the shutdown needs, and it cannot release it before the handler returns: then the
  shutdown runs on a helper thread while the interrupted code finishes, and the helper
  raises SIGTERM again when it is done.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from ._log import log

__all__ = [
    "after_fork_in_child",
    "forget",
    "live",
    "register",
    "reinstall_sigterm_handler",
    "renew_after_patching",
    "shutdown_all",
]


class Managed(Protocol):
    """What the hooks need of a tracker."""

    @property
    def shutdown_timeout(self) -> float: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def _begin_shutdown(self, deadline: float) -> None: ...

    def _finish_shutdown(self, deadline: float) -> bool: ...

    def _after_fork_in_child(self) -> None: ...

    def _renew_after_patching(self) -> None: ...

    def _fork_locks(self) -> list[threading.Lock | threading.RLock]: ...


_live: weakref.WeakSet[Managed] = weakref.WeakSet()


def register(tracker: Managed, *, handle_sigterm: bool) -> None:
    """Put a new tracker under every hook; cheap after the first tracker of a process."""
    _live.add(tracker)
    _mp_hook.arm()
    if handle_sigterm:
        _install_sigterm_handler()


def forget(tracker: Managed) -> None:
    _live.discard(tracker)


def live() -> list[Managed]:
    """The trackers alive in this process (a copy)."""
    return list(_live)


def shutdown_all() -> None:
    """Shut every live tracker down, all in parallel, each within its shutdown_timeout."""
    trackers = live()
    now = time.monotonic()
    deadlines = [now + t.shutdown_timeout for t in trackers]
    for t, deadline in zip(trackers, deadlines, strict=True):
        t._begin_shutdown(deadline)
    for t, deadline in zip(trackers, deadlines, strict=True):
        try:
            t._finish_shutdown(deadline)
        except Exception:  # must not break other exit hooks
            log.exception("enso-tracker shutdown failed")


atexit.register(shutdown_all)


def after_fork_in_child() -> None:
    """Give every live tracker fresh state in a forked child: run by
    ``os.register_at_fork``, and by integrations for forks made from C (uWSGI). A
    tracker already reset for this process is left alone, so running it twice is
    harmless."""
    for t in live():
        t._after_fork_in_child()


def renew_after_patching() -> None:
    """For integrations: in a forked child that monkey-patched ``threading`` after the
    fork (gunicorn's gevent worker), rebuild the fresh state of every tracker not yet
    used in this process with the patched primitives."""
    for t in live():
        t._renew_after_patching()


#: Locks taken around a fork (see ``_before_fork``), to release on both sides.
_held_over_fork: list[threading.Lock | threading.RLock] = []


def _before_fork() -> None:
    """Take each tracker's spool locks, so no thread of ours is inside SQLite when the
    process forks: the child would inherit SQLite's own mutexes locked, and hang at its
    first SQLite call. Bounded: a lock held longer (a fork from on_drop) is skipped."""
    for t in live():
        for lock in t._fork_locks():
            if lock.acquire(timeout=5.0):
                _held_over_fork.append(lock)


def _after_fork_in_parent() -> None:
    while _held_over_fork:
        _held_over_fork.pop().release()


def _after_fork_in_child_hook() -> None:
    _after_fork_in_parent()  # the child's copies: released, then the child builds anew
    after_fork_in_child()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child_hook,
)


class _MultiprocessingHook:
    """multiprocessing children leave through ``os._exit()``, skipping ``atexit``; its
    own exit finalizers do run, so in those children the trackers are shut down from one.

    Never armed in the main process: importing ``multiprocessing.util`` registers its own
    ``atexit`` hook, later than ours and so run earlier, which would shut the trackers
    down before an application's exit handler that still tracks. A forked child's
    bootstrap clears the finalizers it inherited, then runs the "after fork" callbacks:
    one of those arms the finalizer in every forked child; a spawned or forkserver child
    arms it when its first tracker is made.
    """

    pid = 0  # the process the after-fork callback was registered in
    armed_pid = 0  # the process whose finalizer is armed

    def arm(self) -> None:
        pid = os.getpid()
        if self.pid == pid:
            return
        self.pid = pid
        import multiprocessing
        from multiprocessing import util

        util.register_after_fork(self, _MultiprocessingHook.in_child)
        if multiprocessing.parent_process() is not None:
            self._arm_finalizer()

    def in_child(self) -> None:
        self.pid = os.getpid()  # the inherited after-fork callback serves grandchildren too
        self._arm_finalizer()

    def _arm_finalizer(self) -> None:
        if self.armed_pid == os.getpid():
            return
        self.armed_pid = os.getpid()
        from multiprocessing import util

        util.Finalize(None, shutdown_all, exitpriority=100)


_mp_hook = _MultiprocessingHook()

# ------------------------------------------------------------------------- SIGTERM

_state_lock = threading.Lock()
_installed_pid = 0
_stopping = False


def reinstall_sigterm_handler() -> bool:
    """For integrations: in a process forked from one whose trackers installed the SIGTERM
    handler, put it back after the framework reset SIGTERM to its default action (as
    gunicorn's UvicornWorker does in every worker). Never replaces a handler someone set;
    True if ours is in place."""
    if not _installed_pid or not _live:  # never installed here nor before the fork
        return False
    return _install_sigterm_handler()


def _install_sigterm_handler() -> bool:
    """Install the graceful SIGTERM handler if it is wanted and possible; True if it is in
    place (now or already)."""
    global _installed_pid
    if _installed_pid == os.getpid():
        return True
    # Only the main thread may set handlers (a later tracker may): ``signal.signal``
    # raises ValueError elsewhere, caught below. ``threading`` is not asked: under
    # eventlet's monkey-patching the main thread's greenlet is not ``main_thread()``.
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
    spawn = _green_spawn()
    if spawn is not None:  # in gevent's or eventlet's loop, which may not block
        spawn(_stop_then_die)
        return
    if _inside_tracker(frame):
        try:
            threading.Thread(target=_stop_then_die, name="enso-tracker-sigterm").start()
            return
        except RuntimeError:  # no thread can start (limits, interpreter exit): stop here;
            pass  # the re-entry guard keeps it from waiting on a lock this frame holds
    _stop_then_die()


def _stop_then_die() -> None:
    try:
        shutdown_all()
    finally:
        if threading.current_thread() is threading.main_thread():
            _die()
        else:  # only the main thread may restore the default action: it does so in
            os.kill(os.getpid(), signal.SIGTERM)  # _on_sigterm, seeing _stopping


def _die() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)  # like raise(3): never returns if it kills
    # Still alive: the default action did not end the process. PID 1 (a container
    # started without an init) ignores it. End the process as the signal would have,
    # in the shell's and Docker's terms: exit status 128 + SIGTERM (143).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: exit all the same
            stream.flush()
    os._exit(128 + signal.SIGTERM)


def _inside_tracker(frame: FrameType | None) -> bool:
    """Whether the interrupted code is enso-tracker's own (it may hold a tracker lock)."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("enso_tracker."):
            return True
        frame = frame.f_back
    return False


def _green_spawn() -> Callable[[Callable[[], None]], object] | None:
    """If the handler runs in the hub of gevent or eventlet (the greenlet that runs their
    event loop: where a signal lands while every other greenlet waits), their ``spawn``;
    else None. Waiting for the sender there is refused (gevent's
    ``BlockingSwitchOutError``) or hangs the loop, so the stop runs in a greenlet of its
    own, which the hub starts as soon as the handler returns."""
    greenlet: Any = sys.modules.get("greenlet")
    if greenlet is None:
        return None
    current = greenlet.getcurrent()
    gevent_hub: Any = sys.modules.get("gevent.hub")
    if gevent_hub is not None and isinstance(current, gevent_hub.Hub):
        spawn: Callable[[Callable[[], None]], object] = sys.modules["gevent"].spawn
        return spawn
    eventlet_hubs: Any = sys.modules.get("eventlet.hubs")
    hub = getattr(getattr(eventlet_hubs, "_threadlocal", None), "hub", None)
    if hub is not None and current is getattr(hub, "greenlet", None):
        eventlet_spawn: Callable[[Callable[[], None]], object] = sys.modules["eventlet"].spawn

        def spawn_and_wake(stop: Callable[[], None]) -> object:
            greenlet = eventlet_spawn(stop)
            _wake_eventlet_hub(hub)
            return greenlet

        return spawn_and_wake
    return None


def _wake_eventlet_hub(hub: Any) -> None:
    """Make eventlet's hub leave the poll the signal interrupted. Python resumes an
    interrupted ``poll`` after the handler (PEP 475) with the time the hub chose (up to
    a minute with nothing scheduled), and eventlet has no wake-up call of its own: a
    pipe with a byte in it, watched by the hub, ends that wait, and the hub then starts
    the greenlet just spawned. Best effort: without it the stop starts at the hub's next
    wake-up."""
    # ``posix``, not ``os``: eventlet patches ``os.write`` with one that waits on the hub,
    # which the hub itself may not do; ``os`` re-exports these from ``posix``.
    real_os: Any = sys.modules.get("posix")
    try:
        r, w = real_os.pipe()
    except Exception:  # not POSIX: the stop just starts at the hub's next wake-up
        return

    def woken(_fileno: int) -> None:
        hub.remove(listener)
        real_os.close(r)
        real_os.close(w)

    try:
        hub.mark_as_reopened(r)  # a listener left on a recycled descriptor number
        listener = hub.add(hub.READ, r, woken, _ignore, _ignore)
        real_os.write(w, b"\0")
    except Exception:  # an eventlet whose hub API differs: the stop just starts later
        real_os.close(r)
        real_os.close(w)


def _ignore(*_: object) -> None:
    pass
