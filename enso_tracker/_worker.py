"""The worker: the sender thread, its loop, encoding, the sender call, and shutdown.

One daemon thread per tracker, started lazily by ``track()`` and restarted if found
dead. Each round it plans under the ledger's lock, encodes and cuts the batch, sends it
with the lock released, settles the outcome under the lock (``_settle``), then hands
drops and log records to the reporter with the lock released again. It never sleeps
inside a round: all waiting (``flush_interval``, backoff, ``Retry-After``) is on its
wake event, which ``flush()`` and ``shutdown()`` set to cut it short.

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
from typing import Final

from ._config import Config
from ._errors import describe_exception
from ._items import (
    BYTES_OVERHEAD,
    ID,
    IN_BODY,
    JOB,
    META,
    PENDING_OVERHEAD,
    SEQ,
    SIZE,
    Pending,
    QueuedEvent,
    held,
)
from ._ledger import Ledger
from ._model import DropReason
from ._reporting import Reporter, Reports
from ._sender import Retry, Sender
from ._settle import settle_locked
from ._spool import MemorySpool, Spool
from ._wire import EventEncoder, join_batch

__all__ = ["CLOSED", "Worker"]

CLOSED: Final = -1.0  # step(): the tracker is closed, the sender thread ends


class Worker:
    """The sender thread of one tracker, and what it needs: ledger, sender, reporter."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        sender: Sender,
        reporter: Reporter,
        owner: weakref.ReferenceType[object],
        spool: Spool | None = None,
    ) -> None:
        self.config = config
        self.spool: Spool = MemorySpool() if spool is None else spool
        self.ledger = ledger
        self.sender = sender
        self.reporter = reporter
        self._owner = owner
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._encoder = EventEncoder()

    def on_thread(self) -> bool:
        """Whether the caller runs on this worker's thread (``on_drop``, a log handler)."""
        return threading.current_thread() is self.thread

    def abandon(self) -> None:
        """The tracker was collected: the thread ends once nothing is outstanding."""
        self.wake.set()

    # ------------------------------------------------------------------ thread

    def kick(self) -> None:
        thread = self.thread
        if thread is None or not thread.is_alive():
            try:
                self._start()
            finally:
                self.reporter.log.emit()  # "died"/"cannot start", outside _start_lock
        self.wake.set()

    def _start(self) -> None:
        log = self.reporter.log
        with self._start_lock:
            thread = self.thread
            if (thread is not None and thread.is_alive()) or self.ledger.closed:
                return
            if thread is not None:
                log(logging.ERROR, "dead", "enso-tracker sender thread died; restarting")
            thread = threading.Thread(target=self.run, name="enso-tracker-sender", daemon=True)
            # Published before start(): a KeyboardInterrupt inside start() (it waits for
            # the thread to run) must not leave a running thread this object does not
            # know, or the next kick() would start a second one.
            self.thread = thread
            self.ledger.worker_gone = False
            try:
                thread.start()
            except RuntimeError as exc:  # e.g. at interpreter shutdown
                self.ledger.worker_gone = True
                log(logging.ERROR, "start", "cannot start the sender thread: %s", exc)

    def run(self) -> None:
        """The thread's body. Catches everything: it must never die silently."""
        ledger, log = self.ledger, self.reporter.log
        me = threading.current_thread()
        try:
            while self.thread is me:  # one sender per worker, whatever happened to start()
                try:
                    wait = self.step()
                except Exception as exc:
                    error = describe_exception(exc)
                    with ledger.lock:
                        ledger.worker_errors += 1
                        ledger.last_error = f"internal error: {error}"
                        ledger.recover_locked()
                    log(
                        logging.ERROR,
                        "loop",
                        "enso-tracker sender loop error (continuing): %s",
                        error,
                    )
                    wait = self.config.backoff_base  # no hot spin on a bug
                log.emit()
                if wait == CLOSED:
                    return
                if wait is None or wait > 0:
                    # Hold the tracker (keeping it alive, and under the exit hook) only
                    # while it has something to deliver; once it is gone and idle, end.
                    owner = self._owner() if ledger.outstanding else None
                    if owner is None and not ledger.outstanding and self._owner() is None:
                        self._close_sender()
                        return
                    self.wake.wait(None if wait is None else min(wait, threading.TIMEOUT_MAX))
                    owner = None
        except BaseException:
            # SystemExit or KeyboardInterrupt raised in this thread: put the batch back
            # and let the next track() (or flush) start a fresh thread.
            with ledger.lock:
                ledger.worker_errors += 1
                ledger.recover_locked()
            log.always(
                logging.ERROR, "enso-tracker sender thread stopped; the next track() restarts it"
            )
            log.emit()
            raise
        finally:
            if self.thread is me:
                ledger.worker_gone = True

    def _close_sender(self) -> None:
        try:
            self.spool.close()
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
        with ledger.lock:
            if ledger.closed:
                return CLOSED
            now = time.monotonic()
            finish = ledger.finish_on_worker and (not ledger.outstanding or now >= ledger.deadline)
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

    # ------------------------------------------------------------- one request

    def encode(self, item: QueuedEvent) -> bytes:
        # msgspec hands back its growth buffer (up to 1.5x the text): an exact copy keeps
        # a retried event's memory what max_queue_bytes counts.
        return bytes(memoryview(self._encoder.encode(*item[ID:SIZE])))

    def send(self, taken: list[Pending | QueuedEvent]) -> None:
        ledger = self.ledger
        # Encode outside the lock: only this thread touches these objects now.
        encoded: list[Pending] = []
        hard_limit = self.config.max_batch_bytes
        unencodable: list[tuple[Pending, Exception]] = []
        grown = 0
        for entry in taken:
            if isinstance(entry, Pending):
                p = entry
            else:
                try:
                    body = self.encode(entry)
                except Exception as exc:  # validation should make this impossible
                    unencodable.append((Pending(0.0, entry[SEQ], entry, b"", held(entry)), exc))
                    continue
                # Once encoded, the body is what is kept: it replaces the metadata JSON
                # the tuple held (read back from the body if the event is ever reported),
                # and the event's size becomes what it now holds (max_queue_bytes).
                meta = entry[META]
                size = held(entry) + len(body) + PENDING_OVERHEAD
                if meta is not None:
                    size -= len(meta) + BYTES_OVERHEAD
                    entry = (*entry[:META], IN_BODY, entry[JOB], entry[SIZE])
                grown += size - held(entry)
                p = Pending(0.0, entry[SEQ], entry, body, size)
            encoded.append(p)
        now = time.monotonic()
        reports: Reports = []
        try:
            with ledger.lock:
                if ledger.closed:
                    return
                ledger.outstanding_bytes += grown
                batch, too_large = ledger.schedule.cut(encoded, hard_limit)
                ledger.inflight = batch
                ledger.inflight_raw = []
                if too_large:
                    ledger.drop_locked(
                        too_large,
                        DropReason(
                            kind="too_large",
                            message=f"event alone is larger than max_batch_bytes={hard_limit}",
                        ),
                        reports,
                    )
                for p, error in unencodable:
                    ledger.drop_locked(
                        [p],
                        DropReason(
                            kind="unencodable", message=f"cannot be encoded as JSON: {error!r}"
                        ),
                        reports,
                    )
                deadline = ledger.deadline
        finally:
            self.hand_over(reports)
        if not batch:
            return
        for p in batch:
            p.attempts += 1
            if p.first_sent == 0.0:
                p.first_sent = now
        timeout = self.config.timeout
        if deadline != math.inf:
            timeout = max(min(timeout, deadline - now), 0.05)
        body = join_batch([p.body for p in batch])
        try:
            self.spool.stage(batch, body)
            outcome = self.sender.send(body, timeout)
        except Exception as exc:  # a bug in a sender must not lose the batch
            what = describe_exception(exc)
            self.reporter.log(logging.ERROR, "sender", "sender raised %s; will retry", what)
            with ledger.lock:
                ledger.worker_errors += 1
            outcome = Retry(f"sender raised {what}")
        reports = []
        try:
            with ledger.lock:
                if ledger.closed:
                    ledger.inflight = []
                    return  # shutdown() already reported these as dropped at its deadline
                settle_locked(ledger, batch, outcome, time.monotonic(), reports, self.reporter.log)
                # Emptied only now: should the accounting above fail, the loop's recovery
                # puts the batch back in line instead of losing it.
                ledger.inflight = []
                ledger.settled.notify_all()
                ledger.room.notify_all()
        finally:
            self.hand_over(reports)
        self.spool.commit([p for p in batch if p.done])

    def hand_over(self, reports: Reports) -> None:
        """Report drops counted under the lock, then let ``flush()`` see them done.

        Called with the lock released, after every locked section of the sender: it is
        also where log records queued under the lock are emitted.
        """
        if not reports:
            self.reporter.log.emit()
            return
        try:
            self.reporter.report(reports)
        finally:
            self.ledger.handed_over(len(reports))

    # ---------------------------------------------------------------- shutdown

    def begin_shutdown(self, deadline: float) -> None:
        ledger = self.ledger
        with ledger.lock:
            if ledger.closed or ledger.stopping:
                return
            ledger.stopping = True
            ledger.deadline = deadline
            ledger.schedule.expedite()  # one more prompt try for everything that is left
            ledger.room.notify_all()  # blocked track() calls give up now
            pending = ledger.outstanding
        if pending:
            self.kick()
        else:
            self.wake.set()

    def finish_shutdown(self, deadline: float) -> bool:
        """Wait for delivery until ``deadline``, then drop what is left, stop the thread
        and close the sender. True only when every event ``track()`` was given reached
        Enso: nothing dropped (for any reason) and nothing refused."""
        ledger = self.ledger
        reports: Reports = []
        with ledger.settled:
            while ledger.outstanding and not ledger.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.thread is None or not self.thread.is_alive():
                    break  # no sender to wait for (e.g. it could not start at exit)
                ledger.settled.wait(min(remaining, threading.TIMEOUT_MAX))
            if ledger.closed:
                return not ledger.dropped and not ledger.refused
            ledger.close_locked(reports)
            delivered, dropped = ledger.delivered, dict(ledger.dropped)
            refused = dict(ledger.refused)
        self.wake.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(min(max(deadline - time.monotonic(), 0.0), threading.TIMEOUT_MAX))
        # Closing the client also aborts a request still hanging past the deadline.
        self._close_sender()
        lost, turned_away = sum(dropped.values()), sum(refused.values())
        self.reporter.log.always(
            logging.WARNING if lost or turned_away else logging.INFO,
            "enso-tracker shut down: %d delivered, %d dropped%s, %d refused%s",
            delivered,
            lost,
            f" {dropped}" if lost else "",
            turned_away,
            f" {refused}" if turned_away else "",
        )
        self.hand_over(reports)
        return not lost and not turned_away
