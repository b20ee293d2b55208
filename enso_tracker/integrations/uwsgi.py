"""uWSGI: exit and fork hooks that the embedded interpreter does not otherwise run.

* **Exit.** uWSGI calls ``uwsgi.atexit`` in a process that is ending (the master, and a
  worker stopped or recycled when it is not in the middle of a request); Python's own
  ``atexit`` handlers run only if the interpreter is finalized after it, which uWSGI does
  not always do. The hook shuts every live tracker down, after the application's own
  ``uwsgi.atexit`` (which may still track).
* **Fork.** uWSGI forks its workers from C, so ``os.register_at_fork`` hooks do not run
  (unless ``--py-call-osafterfork``). ``uwsgi.post_fork_hook`` gives every tracker fresh
  state in the worker before the application's own post-fork code runs, so ``flush()``
  and ``stats()`` in a worker never see the master's events (``track()`` checks the pid
  anyway).

An existing hook is chained, never replaced; with ``uwsgidecorators`` already imported,
the fork hook joins its ``postfork`` chain. (Importing ``uwsgidecorators`` later replaces
``uwsgi.post_fork_hook``: the pid check in ``track()`` and ``shutdown()`` still holds.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .. import _lifecycle

__all__ = ["enable"]

_MARK = "_enso_tracker_hook"


def enable() -> bool:
    """Install the hooks if this process runs under uWSGI; True once they are in place."""
    uwsgi: Any = sys.modules.get("uwsgi")  # the embedded module: present only under uWSGI
    if uwsgi is None or not hasattr(uwsgi, "opt"):
        return False
    _chain(uwsgi, "atexit", _at_exit, first=False)
    decorators: Any = sys.modules.get("uwsgidecorators")
    current = getattr(uwsgi, "post_fork_hook", None)
    if decorators is not None and current is getattr(decorators, "postfork_chain_hook", 0):
        chain: list[Callable[[], None]] = decorators.postfork_chain
        if _after_fork not in chain:
            chain.insert(0, _after_fork)
    else:
        _chain(uwsgi, "post_fork_hook", _after_fork, first=True)
    return True


def _chain(uwsgi: Any, name: str, ours: Callable[[], None], *, first: bool) -> None:
    existing: Callable[[], Any] | None = getattr(uwsgi, name, None)
    if getattr(existing, _MARK, False):
        return  # already ours (or ours around the application's)

    def hook() -> None:
        if existing is None:
            ours()
        elif first:
            try:
                ours()
            finally:
                existing()
        else:
            try:
                existing()
            finally:
                ours()

    setattr(hook, _MARK, True)
    setattr(uwsgi, name, hook)


def _at_exit() -> None:
    _lifecycle.shutdown_all()


def _after_fork() -> None:
    _lifecycle.after_fork_in_child()
