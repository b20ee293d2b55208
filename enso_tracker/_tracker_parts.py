"""A tracker's parts: its construction (arguments resolved, pipeline built, hooks
registered), the pipeline rebuilt in a forked child, and the plumbing its public calls
share (deadlines, re-entry, the two halves of a shutdown).

A base class of :class:`~._tracker.Tracker`, which owns the public API and ``track()``'s
hot path; its constructor calls ``_configure()``, ``_build_parts()`` and ``_start()``
in that order. The hooks of :mod:`._lifecycle` (exit, fork, SIGTERM, patched
``threading``) call the methods below.

Design constraints (what must never break):

* One pipeline per process: ``_pid`` is the process the parts were built in. A forked
  child starts with empty books, fresh locks and no thread or connection
  (``_after_fork_in_child``): the parent still owns, and delivers, every event it had
  queued; the child never reports, waits for or resends them, nor touches the parent's
  spool files or receipts store.
* ``_build_parts()`` does no I/O, starts no thread and logs nothing: in a forked child a
  lock inherited mid-acquire would never be released.
* A tracker shut down (or stopping) stays closed in its forked children.
* Jitter comes from a generator of our own, ids from ``os.urandom``: an application that
  seeds ``random`` changes neither.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from . import _lifecycle
from ._config import Config, env_flag
from ._debug import debug_from_env
from ._disabled import DisabledSender, DisabledWorker
from ._errors import ConfigurationError
from ._http.auth import ApiKey, ClientCredentials, make_credentials
from ._http.sender import HttpSender, Sender
from ._ledger import Ledger, State
from ._receipts import make_receipts
from ._reentry import REENTRANT_STATS_WAIT, lock_free_within
from ._reporting import Reporter
from ._schedule import Schedule
from ._spool.directory import check_directory
from ._spool.disk import DiskSpool
from ._spool.identity import fingerprint
from ._worker import Worker
from .integrations import auto_enable

if TYPE_CHECKING:
    import httpx

__all__ = ["TrackerParts"]

#: Our own generator: drawing jitter from the global one would shift the sequence of an
#: application that seeds `random` for reproducibility.
_jitter_rng = random.Random()


def _new_id_prefix() -> str:
    # 80 random bits per tracker (drawn again in a forked child): unique across
    # processes, machines and forks (a collision needs ~10^12 trackers), while each id
    # costs only a counter increment. os.urandom, not `random`: an application that
    # calls random.seed() must not make two processes hand out the same ids.
    token = base64.b32encode(os.urandom(10)).decode("ascii").lower()
    return f"evt_{token}_"  # + hex(seq): "evt_…_0x1f"


class TrackerParts:
    """The parts of a tracker and their life across forks."""

    _config: Config
    _sender: Sender
    _identity: str  # whom its spool files are written for (see _configure)
    _pid: int
    _reporter: Reporter
    _ledger: Ledger
    _worker: Worker

    if TYPE_CHECKING:  # the tracker's own (``_lifecycle.Managed``)

        @property
        def shutdown_timeout(self) -> float: ...

        def flush(self, timeout: float | None = None) -> bool: ...

    def _configure(
        self,
        api_key: str | None,
        client_key: str | None,
        client_secret: str | None,
        config: Config | None,
        transport: httpx.BaseTransport | None,
        sender: Sender | None,
        options: dict[str, Any],
    ) -> bool:
        """The constructor's arguments, resolved: ``_config`` (directories checked and
        created), ``_sender`` and ``_identity``; True if ``ENSO_DISABLED`` disabled it."""
        debug_from_env()
        by_env = "disabled" not in options and env_flag(os.environ, "ENSO_DISABLED")
        if by_env:
            options["disabled"] = True
        try:
            cfg = (config or Config()).replace(**options) if options else (config or Config())
        except TypeError as exc:
            raise ConfigurationError(str(exc)) from None
        if cfg.disabled:
            # Credentials, when given, are checked as in production, then never used; no
            # spool directory is created or read.
            if api_key is not None or client_key is not None or client_secret is not None:
                if sender is not None:
                    raise ConfigurationError("pass credentials or a sender, not both")
                make_credentials(api_key, client_key, client_secret, cfg.base_url)
                api_key = client_key = client_secret = None
            sender = DisabledSender()
            cfg = cfg.replace(spool_dir=None, receipts_dir=None, receipts=False)
        self._config = cfg
        credentials = None
        if sender is None:
            credentials = make_credentials(api_key, client_key, client_secret, cfg.base_url)
            sender = HttpSender(cfg, credentials, transport)
        elif api_key is not None or client_key is not None or client_secret is not None:
            raise ConfigurationError("pass credentials or a sender, not both")
        #: Whom this tracker's spool files are written for: it adopts only those
        #: (a custom sender: the destination alone). PBKDF2: computed with a spool only.
        self._identity = ""
        if cfg.spool_dir is not None or cfg.receipts_dir is not None:
            self._identity = (
                credentials.spool_identity(cfg.base_url)
                if isinstance(credentials, ApiKey | ClientCredentials)
                else fingerprint(cfg.base_url, "sender", "")
            )
        self._sender = sender
        if cfg.spool_dir is not None:
            cfg = self._config = cfg.replace(spool_dir=check_directory(cfg.spool_dir, create=True))
        if cfg.receipts_dir is not None:
            full = check_directory(cfg.receipts_dir, create=True)
            cfg = self._config = cfg.replace(receipts_dir=full)
        return by_env

    def _start(self, by_env: bool) -> None:
        """The built tracker goes live: its hooks registered, integrations enabled, what
        dead processes left in the spool adopted (the constructor's last step)."""
        cfg = self._config
        if cfg.disabled:
            self._reporter.log.always(
                # From the environment it is a process-wide switch, easy to leave on.
                logging.WARNING if by_env else logging.INFO,
                "enso-tracker is disabled%s: events are validated and counted, never sent",
                " by ENSO_DISABLED" if by_env else "",
            )
            self._reporter.log.emit()
        _lifecycle.register(self, handle_sigterm=cfg.handle_sigterm)
        if cfg.integrations:
            auto_enable()
        if cfg.spool_dir is not None:
            # What dead processes left is taken over now, before the constructor returns
            # (stats() counts it, and a shutdown() right away waits for it): a directory
            # listing and, per file found, an index read and SQLite's quick_check.
            assert self._worker.spooler is not None
            self._worker.spooler.adopt(time.monotonic())
            self._worker.kick()

    def _build_parts(self) -> None:
        """The pipeline, fresh: at construction, and in a forked child (no I/O, no thread,
        no logging; a lock inherited mid-acquire would never be released)."""
        cfg = self._config
        self._pid = os.getpid()
        id_prefix = _new_id_prefix()
        self._reporter = Reporter(cfg.on_drop, id_prefix)
        schedule = Schedule.from_config(cfg, _jitter_rng)
        self._ledger = Ledger(cfg, schedule, id_prefix)
        disk = None
        if cfg.spool_dir is not None:
            # The files are opened by the spooler thread, at its first need.
            disk = DiskSpool(
                cfg.spool_dir,
                durability=cfg.durability,
                max_bytes=cfg.max_spool_bytes,
                max_dead_letter_bytes=cfg.max_dead_letter_bytes,
                identity=self._identity,
                max_dir_bytes=cfg.max_spool_dir_bytes,
                min_free_bytes=cfg.spool_min_free_bytes,
            )
        self._worker = (DisabledWorker if cfg.disabled else Worker)(
            cfg, self._ledger, self._sender, self._reporter, weakref.ref(self), disk
        )
        receipts = make_receipts(cfg, self._identity)  # docs/receipts.md
        if receipts is not None:
            self._worker.receipts = receipts
            receipts.ledger = self._ledger  # generated eventIds: its id_prefix
            self._ledger.keep_receipts()
            if disk is not None:
                disk.receipts = receipts
        # Collected without shutdown(): the idle worker ends and closes the sender. Not
        # at exit: the exit hook shuts the tracker down first.
        weakref.finalize(self, self._worker.abandon).atexit = False

    def _parts(self) -> tuple[object, ...]:
        """What a signal handler may have interrupted holding a lock (see _reentry)."""
        return (self, self._ledger, self._worker, self._worker.wake)

    def _deadline_in(self, timeout: float | None) -> float:
        """The ``time.monotonic()`` deadline of a public call's timeout (may be ``inf``)."""
        if timeout is None:
            timeout = self._config.shutdown_timeout
        if not timeout >= 0:  # negative, or NaN
            timeout = 0.0
        return time.monotonic() + timeout

    def _called_back_inline(self, deadline: float) -> bool:
        """Whether this is user code (``on_drop``, a log handler) called by the rounds
        this thread runs for ``flush()``/``shutdown()`` when no sender thread could
        start: inside those calls, but holding no lock (what a signal handler that
        interrupted them could not be sure of)."""
        return self._worker.on_thread() and lock_free_within(
            self._ledger.lock, min(deadline, time.monotonic() + REENTRANT_STATS_WAIT)
        )

    def _begin_shutdown(self, deadline: float) -> None:
        if self._pid != os.getpid():
            # A fork that skipped the hooks (uWSGI forks from C): the parent's events are
            # the parent's, never reported or waited for here.
            self._after_fork_in_child()
        self._worker.begin_shutdown(deadline)

    def _finish_shutdown(self, deadline: float) -> bool:
        ok = self._worker.finish_shutdown(deadline)
        _lifecycle.forget(self)
        return ok

    def _fork_locks(self) -> list[threading.Lock | threading.RLock]:
        """Held around a fork (see _lifecycle._before_fork): with a spool, the locks
        every SQLite call of this tracker's threads runs under, in the order they nest."""
        return self._worker.fork_locks()

    def _after_fork_in_child(self) -> None:
        # The parent still owns (and will deliver) every event it had queued: the child
        # starts with empty books, fresh locks and no thread or connection.
        if self._pid == os.getpid():
            return  # already reset for this process (a hook and the pid check both ran)
        led = self._ledger
        closed = led.state is not State.OPEN
        if self._worker.disk is not None:
            self._worker.disk.abandon()  # the parent's files: never touched from here
        if self._worker.receipts is not None:
            self._worker.receipts.store.abandon()
        self._build_parts()
        if closed:  # a tracker shut down (or stopping) stays so
            self._ledger.inherit_closed()
        self._sender.after_fork()

    def _renew_after_patching(self) -> None:
        # A forked child that monkey-patches ``threading`` after the fork (gunicorn's
        # gevent worker) got real locks from the fork hook, and its sender would be a
        # greenlet: a greenlet waiting on a real lock blocks every greenlet, and the exit
        # hook then waits forever. Built anew with the patched ones, while the tracker is
        # untouched in this process (its sender starts at the first track()).
        if (
            self._pid != os.getpid()
            or self._worker.thread is not None
            or type(self._ledger.lock) is type(threading.Lock())
        ):
            return
        self._pid = 0
        self._after_fork_in_child()
