"""The worker: the sender thread (start, restart, the caller-run fallback) and its loop.
Its mixins hold the rest of the sender's side: the one-request path (encode, cut,
send, settle) in :class:`~._send.SendPath`, shutdown in
:class:`~._shutdown.ShutdownPath`.

One daemon thread per tracker, started lazily by ``track()`` and restarted if found
dead. A thread that cannot start (resource limits; CPython 3.12.0-3.12.2 after the main
thread returned, gh-113964) is tried again with backoff, and until one runs, ``flush()``
and ``shutdown()`` run its rounds in their caller's thread (:meth:`Worker.deliver_inline`).
Each round it plans under the ledger's lock, then sends one request (``_send``):
encodes and cuts the batch, sends it with the lock released, has the ledger apply the
outcome under the lock, then hands drops and log records to the reporter with the lock
released again. It never sleeps
inside a round: all waiting (``flush_interval``, backoff, ``Retry-After``) is on its
wake event, which ``flush()`` and ``shutdown()`` set to cut it short.

With a spool, a second thread runs the spool stage (``_spool.spooler.Spooler``): the
worker starts, restarts and, when it cannot start, runs its rounds the same way, and
after each locked section of either thread the spooler commits to disk
(:meth:`Worker.hand_over`). Without a spool there is no spooler.

It holds its tracker weakly (as OpenTelemetry's worker does), and strongly only while
events are outstanding: a tracker dropped without ``shutdown()`` first delivers what it
holds, then is collected; its finalizer wakes the thread, which then exits and closes
the HTTP client.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from ._config import Config
from ._errors import describe_exception
from ._http.sender import Outcome, Sender
from ._ledger import Ledger
from ._pump import CLOSED, alive
from ._record import Pending, QueuedEvent
from ._reporting import Reporter
from ._send import SendPath
from ._shutdown import ShutdownPath
from ._spool.disk import DiskSpool
from ._spool.spooler import Spooler
from ._wire import EventEncoder

__all__ = ["CLOSED", "Worker"]


#: Trackers whose thread could not start. A running thread keeps its tracker alive while
#: events are outstanding (its frame is a GC root); without one, this module does, so a
#: tracker dropped without shutdown() still reaches the exit hook's shutdown().
_HELD: set[object] = set()


class _Holder(Protocol):
    """Who holds a thread of one role: the worker (the sender), or the spooler."""

    thread: threading.Thread | None


class Worker(ShutdownPath, SendPath):
    """The sender thread of one tracker, and what it needs: ledger, sender, reporter."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        sender: Sender,
        reporter: Reporter,
        owner: weakref.ReferenceType[object],
        disk: DiskSpool | None = None,
    ) -> None:
        self.config = config
        self.disk = disk
        self.ledger = ledger
        self.sender = sender
        self.reporter = reporter
        self._owner = owner
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        #: With a spool: the spool stage and its thread (``_spool.spooler``); None
        #: without one, and then no spool code runs.
        self.spooler: Spooler | None = None
        if disk is not None and ledger.spool is not None:
            self.spooler = Spooler(config, ledger, ledger.spool, disk, reporter, self)
        self._start_lock = threading.Lock()
        #: After a thread failed to start: no new try before this (``time.monotonic()``).
        self._start_retry_at = 0.0
        self._start_failures = 0
        #: The caller's thread running the rounds itself (no thread could start), and
        #: its caller's deadline, which also cuts the requests it sends.
        self._inline: threading.Thread | None = None
        self._inline_deadline = math.inf
        self._inline_lock = threading.Lock()
        self._encoder = EventEncoder()
        #: Receipts (``_receipts.SpoolReceipts``), None when off; set by the tracker.
        self.receipts: Any = None
        #: Called (seconds, body bytes, outcome) after each request, outside the ledger
        #: lock; None when off (``otel.instrument`` sets it). What it raises is counted
        #: as a hook error and swallowed.
        self.request_observer: Callable[[float, int, Outcome], None] | None = None

    def fork_locks(self) -> list[threading.Lock | threading.RLock]:
        """The locks every SQLite call of this worker's threads runs under, in the order
        they nest (held around a fork: see ``_lifecycle._before_fork``)."""
        return self.spooler.fork_locks() if self.spooler is not None else []

    def on_thread(self) -> bool:
        """Whether the caller runs on one of this worker's threads (``on_drop``, a log
        handler): it must never wait for them."""
        current = threading.current_thread()
        spooler = self.spooler
        return (
            current is self.thread
            or current is self._inline
            or (spooler is not None and current is spooler.thread)
        )

    def abandon(self) -> None:
        """The tracker was collected: the threads end once nothing is outstanding."""
        self.wake.set()
        if self.spooler is not None:
            self.spooler.wake.set()

    # ------------------------------------------------------------------ thread

    def kick(self) -> None:
        thread = self.thread
        spooler = self.spooler
        if (
            thread is None
            or not thread.is_alive()
            or (spooler is not None and not alive(spooler.thread))
        ):
            try:
                self._start()
            finally:
                self.reporter.log.emit()  # "died"/"cannot start", outside _start_lock
        if spooler is not None:
            spooler.wake.set()
        self.wake.set()

    def _start(self) -> None:
        if time.monotonic() < self._start_retry_at:
            return  # the last start failed: track() does not retry it on every call
        with self._start_lock:
            if self.ledger.closed or self._inline is not None:
                return  # a caller's thread runs the rounds now: never two senders
            started = self._start_one(self, self.run, "sender")
            if started and self.spooler is not None:
                started = self._start_one(self.spooler, self.spool_run, "spooler")
            if started:
                self._start_failures = 0
                self._start_retry_at = 0.0
                self._release()
            else:
                owner = self._owner()
                if owner is not None:  # held as a thread would hold it (see _HELD)
                    _HELD.add(owner)
                self._start_failures += 1
                backoff = self.config.backoff_base * 2.0 ** min(self._start_failures - 1, 30)
                self._start_retry_at = time.monotonic() + min(backoff, self.config.backoff_max)

    def _start_one(self, holder: _Holder, target: Callable[[], None], role: str) -> bool:
        """Whether the thread of this role (``holder.thread``) runs (already, or started
        now)."""
        log = self.reporter.log
        thread = holder.thread
        if thread is not None and thread.is_alive():
            return True
        if thread is not None and thread.ident is not None:  # it ran once: it died
            log(logging.ERROR, "dead", "enso-tracker %s thread died; restarting", role)
        thread = threading.Thread(target=target, name=f"enso-tracker-{role}", daemon=True)
        # Published before start(): a KeyboardInterrupt inside start() (it waits for
        # the thread to run) must not leave a running thread this object does not
        # know, or the next kick() would start a second one.
        holder.thread = thread
        self.ledger.thread_started()
        try:
            thread.start()
        except Exception as exc:  # resource limits, interpreter shutdown, a patched start
            self.ledger.thread_gone()
            log(
                logging.ERROR,
                "start",
                "cannot start the enso-tracker %s thread (%s): events stay queued, the "
                "start is retried, and flush()/shutdown() deliver them in their own thread",
                role,
                describe_exception(exc),
            )
            return False
        return True

    def stalled(self) -> bool:
        """Whether a thread this worker needs is not running (it could not start)."""
        spooler = self.spooler
        return not alive(self.thread) or (spooler is not None and not alive(spooler.thread))

    def deliver_inline(self, done: Callable[[], bool], deadline: float) -> None:
        """Run the rounds of the threads that are not running, in the caller's thread,
        until ``done()`` or ``deadline``: the fallback of ``flush()`` and ``shutdown()``
        when no thread could start. Waits (backoff, ``Retry-After``) are slept here, cut
        short by ``flush()``/``track()`` as the thread's would be."""
        if self._inline is threading.current_thread():
            return  # already running them: a shutdown() from on_drop, finished by step()
        # One caller at a time runs the rounds; another (a shutdown() while a flush()
        # sends) waits for it, then goes on with what is left, within its own deadline.
        left = max(0.0, min(deadline - time.monotonic(), threading.TIMEOUT_MAX))
        if not self._inline_lock.acquire(timeout=left):
            return
        try:
            self._deliver_inline(done, deadline)
        finally:
            self._inline_lock.release()

    def _deliver_inline(self, done: Callable[[], bool], deadline: float) -> None:
        with self._start_lock:
            if self.ledger.closed or not self.stalled():
                return
            self._inline = threading.current_thread()
            self._inline_deadline = deadline
        ledger = self.ledger
        try:
            # A shutdown() asked from on_drop during these rounds is finished by them
            # (step() does it), as the sender thread would.
            while not done() or (ledger.finish_on_worker and not ledger.closed):
                now = time.monotonic()
                if now >= deadline:
                    return
                wait: float | None = None
                ran = False
                spooler = self.spooler
                if spooler is not None and not alive(spooler.thread):
                    ran = True
                    wait = self._round(spooler.step, spooler.recover_locked)
                if not alive(self.thread):
                    ran = True
                    sent = self._round(self.step, self.ledger.recover_locked)
                    wait = sent if wait is None else wait if sent is None else min(wait, sent)
                if not ran or wait == CLOSED:
                    return  # a thread started meanwhile, or the tracker is closed
                if wait is None or wait > 0:
                    left = deadline - time.monotonic()
                    if wait is not None:
                        left = min(left, wait)
                    self.wake.wait(max(0.0, min(left, threading.TIMEOUT_MAX)))
        finally:
            with self._start_lock:
                self._inline = None
                self._inline_deadline = math.inf

    def _release(self) -> None:
        owner = self._owner()
        if owner is not None:
            _HELD.discard(owner)

    def _round(
        self,
        step: Callable[[], float | None],
        recover: Callable[[], None],
    ) -> float | None:
        """One step of the caller-run fallback, with the thread loop's error handling."""
        try:
            wait = step()
        except Exception as exc:
            error = describe_exception(exc)
            with self.ledger.lock:
                self.ledger.count_internal_error_locked(f"internal error: {error}")
                recover()
            self.reporter.log(logging.ERROR, "loop", "enso-tracker round error: %s", error)
            wait = self.config.backoff_base
        self.reporter.log.emit()
        return wait

    def run(self) -> None:
        """The sender thread's body."""
        self._loop(self, self.wake, self.step, self.ledger.recover_locked, "sender")

    def spool_run(self) -> None:
        """The spooler thread's body (with a spool only): the spooler's rounds
        (``_spool.spooler``) in this same loop."""
        spooler = self.spooler
        assert spooler is not None
        self._loop(spooler, spooler.wake, spooler.step, spooler.recover_locked, "spooler")

    def _loop(
        self,
        holder: _Holder,
        wake: threading.Event,
        step: Callable[[], float | None],
        recover: Callable[[], None],
        role: str,
    ) -> None:
        """A thread's loop. Catches everything: it must never die silently."""
        ledger, log = self.ledger, self.reporter.log
        me = threading.current_thread()
        try:
            while holder.thread is me:  # one per role, whatever happened to start()
                try:
                    wait = step()
                except Exception as exc:
                    error = describe_exception(exc)
                    with ledger.lock:
                        ledger.count_internal_error_locked(f"internal error: {error}")
                        recover()
                    log(
                        logging.ERROR,
                        "loop",
                        "enso-tracker %s loop error (continuing): %s",
                        role,
                        error,
                    )
                    wait = self.config.backoff_base  # no hot spin on a bug
                log.emit()
                if wait == CLOSED:
                    return
                if wait is None or wait > 0:
                    # Hold the tracker (keeping it alive, and under the exit hook) only
                    # while it has something to deliver; once it is gone and idle, end.
                    busy = ledger.outstanding or ledger.on_disk
                    owner = self._owner() if busy else None
                    if owner is None and not busy and self._owner() is None:
                        if holder is self:
                            if self.spooler is not None:
                                self.spooler.wake.set()
                            self._close_sender()
                        return
                    wake.wait(None if wait is None else min(wait, threading.TIMEOUT_MAX))
                    owner = None
        except BaseException:
            # SystemExit or KeyboardInterrupt raised in this thread: put the batch back
            # and let the next track() (or flush) start a fresh thread.
            with ledger.lock:
                ledger.count_internal_error_locked()
                recover()
            log.always(
                logging.ERROR,
                "enso-tracker %s thread stopped; the next track() restarts it",
                role,
            )
            log.emit()
            raise
        finally:
            if holder.thread is me:
                ledger.thread_gone()

    def _close_sender(self) -> None:
        try:
            if self.disk is not None:
                self.disk.close()
            elif self.receipts is not None:
                self.receipts.store.close()
            self.sender.close()
        except Exception as exc:
            self.reporter.log(
                logging.ERROR,
                "close",
                "closing the HTTP client failed: %s",
                describe_exception(exc),
            )

    def step(self) -> float | None:
        """One round: send a batch, or say how long to sleep.

        Returns 0.0 after sending, the seconds to sleep (``None``: until woken), or
        ``CLOSED``. It never sleeps itself, so the loop can let go of the tracker while
        idle.
        """
        ledger = self.ledger
        self.wake.clear()
        taken: list[Pending | QueuedEvent] = []
        wait: float | None = None
        with ledger.lock:
            if ledger.closed:
                return CLOSED
            now = time.monotonic()
            finish = ledger.finish_on_worker and (
                not (ledger.outstanding or ledger.on_disk) or now >= ledger.deadline
            )
            if not finish:
                taken, wait = ledger.plan_locked(now)
                if ledger.finish_on_worker:  # shutdown() from on_drop: this thread ends it
                    wait = min(ledger.deadline - now, math.inf if wait is None else wait)
        if finish:
            self.finish_shutdown(ledger.deadline)
            return CLOSED
        if not taken:
            return wait
        self.send(taken)
        return 0.0
