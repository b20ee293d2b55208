"""Shutdown of the sender's side: stop intake, deliver until the deadline, close.

A mixin of :class:`~._worker.Worker` (which sets every attribute below).
:meth:`ShutdownPath.begin_shutdown` moves the ledger to STOPPING (nothing more is
accepted, backoffs are cut short) and wakes or starts the threads;
:meth:`ShutdownPath.finish_shutdown` waits for delivery until the deadline (running
the rounds in the caller's thread when no thread could start), then has the ledger drop
what is left as ``shutdown`` (``Ledger.close_locked``: CLOSED), joins the threads,
closes the sender and logs one summary line. ``shutdown()`` called on the sender thread
itself is finished by that thread (``Worker.step``), by the same deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._ledger import Ledger
from ._reporting import Reporter, Reports

if TYPE_CHECKING:
    from ._spool.spooler import Spooler

__all__ = ["ShutdownPath"]


class ShutdownPath:
    """The shutdown half of ``Worker`` (which sets every attribute below)."""

    ledger: Ledger
    reporter: Reporter
    wake: threading.Event
    thread: threading.Thread | None
    spooler: Spooler | None

    if TYPE_CHECKING:  # the worker's own

        def kick(self) -> None: ...

        def stalled(self) -> bool: ...

        def deliver_inline(self, done: Callable[[], bool], deadline: float) -> None: ...

        def hand_over(self, reports: Reports) -> None: ...

        def _release(self) -> None: ...

        def _close_sender(self) -> None: ...

    def begin_shutdown(self, deadline: float) -> None:
        ledger = self.ledger
        with ledger.lock:
            if not ledger.begin_stop_locked(deadline):
                return
            pending = ledger.outstanding or ledger.on_disk
        if pending:
            self.kick()
        else:
            self.wake.set()

    def _nothing_left(self) -> bool:
        with self.ledger.lock:
            return not (self.ledger.outstanding or self.ledger.on_disk)

    def finish_shutdown(self, deadline: float) -> bool:
        """Wait for delivery until ``deadline``, then drop what is left, stop the thread
        and close the sender. True only when every event ``track()`` was given reached
        Enso: nothing dropped (for any reason) and nothing refused."""
        ledger = self.ledger
        reports: Reports = []
        if self.stalled():
            self.deliver_inline(lambda: ledger.closed or self._nothing_left(), deadline)
        with ledger.lock:
            while (ledger.outstanding or ledger.on_disk) and not ledger.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.thread is None or not self.thread.is_alive():
                    break  # no sender to wait for (e.g. it could not start at exit)
                ledger.wait_locked(min(remaining, threading.TIMEOUT_MAX))
            if ledger.closed:
                return not ledger.counters.dropped and not ledger.counters.refused
            ledger.close_locked(reports)
            delivered, dropped = ledger.counters.delivered, dict(ledger.counters.dropped)
            refused = dict(ledger.counters.refused)
            books = ledger.spool
            left = books.left_in_spool if books is not None else 0
            foreign = books.foreign_files if books is not None else 0
        self.wake.set()
        spooler = self.spooler
        if spooler is not None:
            spooler.wake.set()
        for thread in (self.thread, spooler.thread if spooler is not None else None):
            # (A thread that never started cannot be joined: join() would raise.)
            if (
                thread is not None
                and thread.is_alive()
                and thread is not threading.current_thread()
            ):
                assert thread is not None
                thread.join(min(max(deadline - time.monotonic(), 0.0), threading.TIMEOUT_MAX))
        self._release()
        # Closing the client also aborts a request still hanging past the deadline.
        self._close_sender()
        lost, turned_away = sum(dropped.values()), sum(refused.values())
        self.reporter.log.always(
            logging.WARNING if lost or turned_away or left or foreign else logging.INFO,
            "enso-tracker shut down: %d delivered, %d dropped%s, %d refused%s%s%s",
            delivered,
            lost,
            f" {dropped}" if lost else "",
            turned_away,
            f" {refused}" if turned_away else "",
            f", {left} left in the spool for the next start" if left else "",
            f"; {foreign} spool files of another destination or credential left untouched"
            if foreign
            else "",
        )
        self.hand_over(reports)
        return not lost and not turned_away and not left
