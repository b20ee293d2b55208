"""The worker: the sender thread, its loop, encoding, the sender call, and shutdown.

One daemon thread per tracker, started lazily by ``track()`` and restarted if found
dead. A thread that cannot start (resource limits; CPython 3.12.0-3.12.2 after the main
thread returned, gh-113964) is tried again with backoff, and until one runs, ``flush()``
and ``shutdown()`` run its rounds in their caller's thread (:meth:`Worker.deliver_inline`).
Each round it plans under the ledger's lock, encodes and cuts the batch, sends it
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

import heapq
import itertools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, Final

from ._config import Config
from ._debug import log_request
from ._errors import describe_exception
from ._items import (
    BYTES_OVERHEAD,
    ENTITY,
    EVENT_OVERHEAD,
    IN_BODY,
    JOB,
    META,
    PENDING_OVERHEAD,
    SEQ,
    SIZE,
    Pending,
    QueuedEvent,
    event_id_of,
    held,
)
from ._ledger import Ledger
from ._model import DropReason
from ._reporting import Reporter, Reports
from ._schedule import NO_SEQ
from ._sender import Answered, Outcome, Retry, Sender
from ._settle import settle_fresh_locked, settle_locked
from ._spool.disk import DiskSpool, pendings_of
from ._spool.errors import (
    Problem,
    SpoolClosed,
    SpoolCorrupt,
    SpoolFull,
    SpoolUnavailable,
)
from ._spool.files import SpoolFile, StoredBatch
from ._wire import BODY_OVERHEAD, EventEncoder, join_batch, reconcile
from ._wire_decode import split_batch

__all__ = ["CLOSED", "Worker", "cut_rows"]

CLOSED: Final = -1.0  # step(): the tracker is closed, the sender thread ends
#: Rows of adopted files read from disk at a time (their place and size, not bodies).
ADOPT_CHUNK: Final = 1024


def cut_rows(pendings: list[Pending], limit: int) -> list[list[Pending]]:
    """``pendings`` (each alone within ``limit``) in order, cut into groups whose joined
    body (``join_batch``) is at most ``limit`` bytes."""
    rows: list[list[Pending]] = []
    current: list[Pending] = []
    size = BODY_OVERHEAD
    for p in pendings:
        need = len(p.body) + (1 if current else 0)
        if current and size + need > limit:
            rows.append(current)
            current, size = [], BODY_OVERHEAD
            need = len(p.body)
        current.append(p)
        size += need
    if current:
        rows.append(current)
    return rows


_size_of = itemgetter(SIZE)  # what a queued event holds beyond EVENT_OVERHEAD

#: Trackers whose thread could not start. A running thread keeps its tracker alive while
#: events are outstanding (its frame is a GC root); without one, this module does, so a
#: tracker dropped without shutdown() still reaches the exit hook's shutdown().
_HELD: set[object] = set()


class Worker:
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
        self._adopted_seqs = itertools.count(NO_SEQ + 1)
        self.ledger = ledger
        self.sender = sender
        self.reporter = reporter
        self._owner = owner
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        #: With a spool: the thread that writes batches to disk (``spool_run``).
        self.spool_wake = threading.Event()
        self.spool_thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: After a thread failed to start: no new try before this (``time.monotonic()``).
        self._start_retry_at = 0.0
        self._start_failures = 0
        #: The caller's thread running the rounds itself (no thread could start), and
        #: its caller's deadline, which also cuts the requests it sends.
        self._inline: threading.Thread | None = None
        self._inline_deadline = math.inf
        self._inline_lock = threading.Lock()
        self._commit_lock = threading.Lock()  # one disk commit at a time (both threads)
        self._deletes_due: float | None = None  # spooler: when idle deletes are carried out
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
        if self.disk is None:
            return []
        return [self._commit_lock, self.disk.lock]

    def on_thread(self) -> bool:
        """Whether the caller runs on one of this worker's threads (``on_drop``, a log
        handler): it must never wait for them."""
        current = threading.current_thread()
        return current is self.thread or current is self.spool_thread or current is self._inline

    def abandon(self) -> None:
        """The tracker was collected: the threads end once nothing is outstanding."""
        self.wake.set()
        self.spool_wake.set()

    # ------------------------------------------------------------------ thread

    def kick(self) -> None:
        thread = self.thread
        spooler = self.spool_thread
        if (
            thread is None
            or not thread.is_alive()
            or (self.disk is not None and (spooler is None or not spooler.is_alive()))
        ):
            try:
                self._start()
            finally:
                self.reporter.log.emit()  # "died"/"cannot start", outside _start_lock
        self.spool_wake.set()
        self.wake.set()

    def _start(self) -> None:
        if time.monotonic() < self._start_retry_at:
            return  # the last start failed: track() does not retry it on every call
        with self._start_lock:
            if self.ledger.closed or self._inline is not None:
                return  # a caller's thread runs the rounds now: never two senders
            started = self._start_one("thread", self.run, "sender")
            if started and self.disk is not None:
                started = self._start_one("spool_thread", self.spool_run, "spooler")
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

    def _start_one(self, attr: str, target: Callable[[], None], role: str) -> bool:
        """Whether the thread of this role runs (already, or started now)."""
        log = self.reporter.log
        thread = getattr(self, attr)
        if thread is not None and thread.is_alive():
            return True
        if thread is not None and thread.ident is not None:  # it ran once: it died
            log(logging.ERROR, "dead", "enso-tracker %s thread died; restarting", role)
        thread = threading.Thread(target=target, name=f"enso-tracker-{role}", daemon=True)
        # Published before start(): a KeyboardInterrupt inside start() (it waits for
        # the thread to run) must not leave a running thread this object does not
        # know, or the next kick() would start a second one.
        setattr(self, attr, thread)
        self.ledger.worker_gone = False
        try:
            thread.start()
        except Exception as exc:  # resource limits, interpreter shutdown, a patched start
            self.ledger.worker_gone = True
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
        roles = (self.thread, self.spool_thread) if self.disk is not None else (self.thread,)
        return any(thread is None or not thread.is_alive() for thread in roles)

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
                if self.disk is not None and not _alive(self.spool_thread):
                    ran = True
                    wait = self._round(self.spool_step, self.ledger.spool_recover_locked)
                if not _alive(self.thread):
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
                self.ledger.worker_errors += 1
                self.ledger.last_error = f"internal error: {error}"
                recover()
            self.reporter.log(logging.ERROR, "loop", "enso-tracker round error: %s", error)
            wait = self.config.backoff_base
        self.reporter.log.emit()
        return wait

    def run(self) -> None:
        """The sender thread's body."""
        self._loop("thread", self.wake, self.step, self.ledger.recover_locked, "sender")

    def spool_run(self) -> None:
        """The spooler thread's body (with a spool only): writes, adopts, loads, so a
        request hanging for ``timeout`` never holds events off the disk."""
        self._loop(
            "spool_thread",
            self.spool_wake,
            self.spool_step,
            self.ledger.spool_recover_locked,
            "spooler",
        )

    def _loop(
        self,
        attr: str,
        wake: threading.Event,
        step: Callable[[], float | None],
        recover: Callable[[], None],
        role: str,
    ) -> None:
        """A thread's loop. Catches everything: it must never die silently."""
        ledger, log = self.ledger, self.reporter.log
        me = threading.current_thread()
        try:
            while getattr(self, attr) is me:  # one per role, whatever happened to start()
                try:
                    wait = step()
                except Exception as exc:
                    error = describe_exception(exc)
                    with ledger.lock:
                        ledger.worker_errors += 1
                        ledger.last_error = f"internal error: {error}"
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
                        if attr == "thread":
                            self.spool_wake.set()
                            self._close_sender()
                        return
                    wake.wait(None if wait is None else min(wait, threading.TIMEOUT_MAX))
                    owner = None
        except BaseException:
            # SystemExit or KeyboardInterrupt raised in this thread: put the batch back
            # and let the next track() (or flush) start a fresh thread.
            with ledger.lock:
                ledger.worker_errors += 1
                recover()
            log.always(
                logging.ERROR,
                "enso-tracker %s thread stopped; the next track() restarts it",
                role,
            )
            log.emit()
            raise
        finally:
            if getattr(self, attr) is me:
                ledger.worker_gone = True

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

    # ------------------------------------------------------------- one request

    def encode(self, item: QueuedEvent) -> bytes:
        # msgspec hands back its growth buffer (up to 1.5x the text): an exact copy keeps
        # a retried event's memory what max_queue_bytes counts.
        event_id = event_id_of(item, self.ledger.id_prefix)
        return bytes(memoryview(self._encoder.encode(event_id, *item[ENTITY:SIZE])))

    def encode_all(
        self, taken: Sequence[Pending | QueuedEvent]
    ) -> tuple[list[Pending], list[tuple[Pending, Exception]], int]:
        """Encode what is not yet (outside the lock: only this thread touches these
        objects now): the Pendings, those that could not be encoded, and the bytes the
        events now hold beyond what they held."""
        encoded: list[Pending] = []
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
        return encoded, unencodable, grown

    def drop_unsendable_locked(
        self,
        too_large: list[Pending],
        unencodable: list[tuple[Pending, Exception]],
        reports: Reports,
    ) -> None:
        """Events that can never go in a request: alone over ``max_batch_bytes``, or
        that msgspec could not encode."""
        if too_large:
            self.ledger.drop_locked(
                too_large,
                DropReason(
                    kind="too_large",
                    message="event alone is larger than "
                    f"max_batch_bytes={self.config.max_batch_bytes}",
                ),
                reports,
            )
        for p, error in unencodable:
            self.ledger.drop_locked(
                [p],
                DropReason(kind="unencodable", message=f"cannot be encoded as JSON: {error!r}"),
                reports,
            )

    def send(self, taken: list[Pending | QueuedEvent]) -> None:
        if not isinstance(taken[0], Pending) and self.send_fresh(taken):  # type: ignore[arg-type]
            return  # fresh events only (the schedule puts Pendings first): one body
        ledger = self.ledger
        hard_limit = self.config.max_batch_bytes
        encoded, unencodable, grown = self.encode_all(taken)
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
                self.drop_unsendable_locked(too_large, unencodable, reports)
                deadline = min(ledger.deadline, self._inline_deadline)
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
        outcome = self.request(join_batch([p.body for p in batch]), timeout, batch)
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

    def request(self, body: bytes, timeout: float, batch: Sequence[Pending] | int) -> Outcome:
        """The sender's outcome for one body (``batch``: its events, or how many on a
        first try); a sender that raises is a retry. Logged at DEBUG (``ENSO_DEBUG``)."""
        started = time.monotonic()
        try:
            outcome = self.sender.send(body, timeout)
        except Exception as exc:  # a bug in a sender must not lose the batch
            what = describe_exception(exc)
            self.reporter.log(logging.ERROR, "sender", "sender raised %s; will retry", what)
            with self.ledger.lock:
                self.ledger.worker_errors += 1
            outcome = Retry(f"sender raised {what}")
        took = time.monotonic() - started
        log_request(self.reporter.log, batch, len(body), outcome, took)
        observer = self.request_observer
        if observer is not None:
            try:
                observer(took, len(body), outcome)
            except Exception:  # a metrics pipeline must not cost a batch
                self.reporter.hook_errors.add()
        return outcome

    def send_fresh(self, items: list[QueuedEvent]) -> bool:
        """Send events straight from the queue as one body encoded in one msgspec call,
        with books kept per batch: no per-event body, ``Pending`` or loop when Enso takes
        them all (the common case). Only when it does not are the events encoded one by
        one and settled as any other batch (retries, bisection, 413 and partial failures
        need per-event bodies). False, having done nothing, when the per-event path must
        cut the batch: it does not encode, or its body is over the byte limit.

        Memory: the body is counted in ``outstanding_bytes`` while the request runs, on
        top of the queued events' own estimates, which stay as they were.
        """
        ledger = self.ledger
        try:
            body = self._encoder.encode_batch(items, ledger.id_prefix)
        except Exception:  # an event msgspec refuses: the per-event path isolates it
            return False
        size = len(body)
        if size > ledger.schedule.byte_limit:  # only this thread changes it
            return False
        n = len(items)
        now = time.monotonic()
        with ledger.lock:
            if ledger.closed:
                return True  # shutdown() accounted for them (inflight_raw)
            ledger.outstanding_bytes += size
            ledger.inflight_body = size
            deadline = min(ledger.deadline, self._inline_deadline)
        timeout = self.config.timeout
        if deadline != math.inf:
            timeout = max(min(timeout, deadline - now), 0.05)
        outcome = self.request(body, timeout, n)
        del body
        if isinstance(outcome, Answered):
            verdict = reconcile(outcome.answer, n)  # pure: settle_locked checks it again
            if verdict.vouched and not verdict.failures:
                held_total = sum(map(_size_of, items)) + n * EVENT_OVERHEAD
                with ledger.lock:
                    ledger.outstanding_bytes -= size
                    ledger.inflight_body = 0
                    if not ledger.closed:  # else shutdown() already reported them
                        settle_fresh_locked(ledger, items, held_total)
                    ledger.inflight_raw = []
                    ledger.settled.notify_all()
                    ledger.room.notify_all()
                if self.receipts is not None:  # folded and written before flush() returns
                    self.report_problems(self.receipts.commit_settled(ledger))
                self.reporter.log.emit()
                return True
        # Per-event objects, only now: the schedule retries, bisects and splits them.
        pendings, unencodable, grown = self.encode_all(items)
        for p in pendings:
            p.attempts = 1
            p.first_sent = now
        if unencodable:  # cannot happen (the batch encoded); indices would not match
            outcome = Retry("an event of the batch no longer encodes alone")
        reports: Reports = []
        try:
            with ledger.lock:
                ledger.outstanding_bytes -= size
                ledger.inflight_body = 0
                if ledger.closed:
                    ledger.inflight_raw = []
                    return True  # shutdown() already reported these as dropped
                ledger.outstanding_bytes += grown
                ledger.inflight = pendings
                ledger.inflight_raw = []
                self.drop_unsendable_locked([], unencodable, reports)
                settle_locked(
                    ledger, pendings, outcome, time.monotonic(), reports, self.reporter.log
                )
                ledger.inflight = []  # only now: see send()
                ledger.settled.notify_all()
                ledger.room.notify_all()
        finally:
            self.hand_over(reports)
        return True

    # ------------------------------------------------------------ the spool

    def spool_step(self) -> float | None:
        """One round of the spooler: adopt or load when due, else write the queued
        events that are due to disk, or say how long to sleep (as ``step``)."""
        ledger, disk = self.ledger, self.disk
        assert disk is not None
        self.spool_wake.clear()
        if ledger.closed:
            return CLOSED
        now = time.monotonic()
        if self.disk_chores(now):
            return 0.0
        with ledger.lock:
            if ledger.closed:
                return CLOSED
            raw, wait = ledger.spool_plan_locked(now)
            stopping = ledger.stopping
        if raw:
            self._deletes_due = None  # the write carried the deferred deletes
            self.spool_write(raw)
            return 0.0
        if wait is None and disk.deletes_deferred():
            # Idle: settled rows are deleted after spool_interval without a write (busy,
            # each write carries them: one transaction instead of two).
            if self._deletes_due is None:
                self._deletes_due = now + self.config.spool_interval
            if now >= self._deletes_due or stopping:
                self._deletes_due = None
                self.report_problems(disk.flush_deletes())
            else:
                wait = self._deletes_due - now
        if not stopping:
            wait = _sooner(wait, max(disk.next_scan - now, 0.0))
        return wait

    def spool_write(self, raw: list[QueuedEvent]) -> None:
        """Encode a batch taken from the queue and commit it to disk, one row per
        ``max_batch_bytes`` (a row is never larger than what a request may carry, nor
        than what the spool can hold); only then do its events join ``staged`` (or the
        backlog) to be sent.

        When the spool is full (a bound, the file size limit, the disk): if some rows of
        this batch were written, the rest waits at the head of the queue until rows are
        deleted (or ``backoff_base``); if none was, ``queue_full_policy`` decides: the
        rest is dropped as ``spool_full`` or held in memory (``track()`` then blocks)."""
        ledger, disk = self.ledger, self.disk
        assert disk is not None
        encoded, unencodable, _ = self.encode_all(raw)
        hard_limit = self.config.max_batch_bytes
        keep = [p for p in encoded if BODY_OVERHEAD + len(p.body) <= hard_limit]
        too_large = [p for p in encoded if BODY_OVERHEAD + len(p.body) > hard_limit]
        written: list[tuple[list[Pending], StoredBatch]] = []
        rest: list[Pending] = []  # not written: the chunk that failed and those after it
        full: str | None = None
        failed: str | None = None
        chunks = cut_rows(keep, hard_limit)
        for i, chunk in enumerate(chunks):
            try:
                row = disk.write(join_batch([p.body for p in chunk]), len(chunk), chunk[0].seq)
            except SpoolFull as exc:
                full = str(exc)
            except SpoolClosed:
                return  # shutdown closed the spool: it accounted for these events
            except Exception as exc:  # an I/O error, a file gone bad: send from memory
                failed = describe_exception(exc)
            else:
                written.append((chunk, row))
                continue
            rest = [p for later in chunks[i:] for p in later]
            break
        size = disk.own_size() if written else 0
        hold = full is not None and (bool(written) or self.config.queue_full_policy == "block")
        reports: Reports = []
        log = self.reporter.log
        try:
            with ledger.lock:
                if ledger.closed:
                    return  # shutdown() already accounted for these at its deadline
                ledger.spooling = []
                if hold:
                    # Back at the head of the line, as they were (not encoded): written
                    # once the spool has room, in order.
                    back = {p.seq for p in rest}
                    ledger.queue.extendleft(reversed([q for q in raw if q[SEQ] in back]))
                    ledger.spool_gate = time.monotonic() + self.config.backoff_base
                    if not written:
                        log(logging.WARNING, "spool_full", "the spool is full (%s); holding", full)
                    rest = []
                kept = [p for chunk, _ in written for p in chunk] + rest + too_large
                # Encoded: they now hold their bodies (the held back ones are raw again).
                ledger.outstanding_bytes += sum([p.size - held(p.item) for p in kept])
                self.drop_unsendable_locked(too_large, unencodable, reports)
                if full is not None and rest:
                    ledger.drop_locked(
                        rest,
                        DropReason(kind="spool_full", message=f"the spool is full: {full}"),
                        reports,
                    )
                elif rest:
                    # Sent from memory; ready like retries (staged keeps to disk order).
                    ledger.schedule.enqueue(rest)
                    for p in rest:
                        heapq.heappush(ledger.volatile, (p.seq, p))
                    ledger.worker_errors += 1
                    ledger.last_error = f"cannot write to the spool: {failed}"
                    log(
                        logging.ERROR,
                        "spool_write",
                        "cannot write to the spool (%s); sending from memory, not durable",
                        failed,
                    )
                for chunk, row in written:
                    for p in chunk:
                        p.row = row
                    ledger.stage_locked(chunk, row)
                if written:
                    ledger.spool_bytes = size
                ledger.room.notify_all()  # memory freed (rows on disk only, drops)
                ledger.settled.notify_all()
        finally:
            self.hand_over(reports)
        self.wake.set()  # the sender: new events to send

    def adopt(self, now: float) -> bool:
        """Take over the spool files of processes that are gone (at construction, then
        every ``ADOPT_INTERVAL`` on the spooler). True if it found anything."""
        ledger, disk = self.ledger, self.disk
        assert disk is not None
        try:
            events, salvaged, problems = disk.adopt(now)
        except OSError as exc:  # the directory went away, or unreadable: try again later
            self.report_problems([("error", f"cannot look for spool files: {exc}")])
            return False
        self.report_problems(problems)
        with ledger.lock:
            ledger.foreign_files = len(disk.foreign)
            ledger.skipped_files = len(disk.refused)
            if ledger.closed:
                return False
            ledger.adopt_locked([], events)  # rows read later, a chunk at a time
        for body in salvaged:
            self.adopt_salvaged(body)
        if events or salvaged:
            self.spool_wake.set()
        return bool(events or salvaged)

    def read_adopted(self) -> bool:
        """The next chunk of adopted rows, once those read before are all loaded: what
        memory holds for a backlog stays the same whatever its number of rows."""
        ledger, disk = self.ledger, self.disk
        assert disk is not None
        rows, broken, vanished, problems = disk.read_adopted(ADOPT_CHUNK)
        self.report_problems(problems)
        reports: Reports = []
        try:
            with ledger.lock:
                if ledger.closed:
                    return False
                ledger.refill_locked(rows)
                if vanished:
                    ledger.lose_unread_locked(
                        vanished,
                        "rows of an adopted spool file vanished before they were read",
                        reports,
                    )
        finally:
            self.hand_over(reports)
        for file, why in broken:
            if disk.closed:
                return False
            self.lose_file(file, why)
        return bool(rows or broken or vanished)

    def disk_chores(self, now: float) -> bool:
        """Adopt orphan spool files when due, load a backlog row when memory has room.
        True if it did something (the loop then comes straight back)."""
        ledger, disk = self.ledger, self.disk
        assert disk is not None
        if now >= disk.next_scan and not ledger.stopping:
            return self.adopt(now)
        with ledger.lock:
            refill = not ledger.backlog_adopted and ledger.unread_adopted > 0
        if refill and self.read_adopted():
            return True
        with ledger.lock:
            if ledger.backlog_adopted:
                row, own = ledger.backlog_adopted[0], False
            elif ledger.backlog_own:
                row, own = ledger.backlog_own[0], True
            else:
                return False
            if not ledger.window_locked():
                return False
        reports: Reports = []
        try:
            bodies, raw = disk.load(row)
        except SpoolClosed:
            if disk.closed:
                return False  # shutdown closed the files: what is left stays on disk
            self.lose_file(row.file, "the file was set aside as unreadable")
            return True
        except SpoolCorrupt as exc:
            self.lose_file(row.file, str(exc))
            return True
        except SpoolUnavailable as exc:  # busy, out of descriptors: not damage, later
            self.report_problems([("error", f"cannot read a spool record now: {exc}")])
            return False
        try:
            with ledger.lock:
                if ledger.closed:
                    return False
                if bodies is None or len(bodies) != row.n:
                    why = (
                        f"a spool record of {row.n} events failed its CRC check"
                        if bodies is None
                        else f"a spool record says {row.n} events and holds {len(bodies)}"
                    )
                    ledger.corrupt_locked(row, own, raw, f"{why} ({row.file.path})", reports)
                    ledger.settled.notify_all()
                    disk_rows = [row]
                else:
                    first = row.first_seq if own else None
                    ledger.load_locked(pendings_of(bodies, row, first, self._adopted_seqs), own=own)
                    disk_rows = []
        finally:
            self.hand_over(reports)
        for gone in disk_rows:
            self.report_problems(disk.delete(gone.file, [gone]))
        self.wake.set()  # the sender: events to send
        return True

    def adopt_salvaged(self, body: bytes) -> None:
        """A batch recovered from a damaged file: written to our own file, then adopted."""
        disk = self.disk
        assert disk is not None
        try:
            n = len(split_batch(body))
            row = disk.write(body, n, 0)
        except Exception as exc:
            self.report_problems([("error", f"cannot keep a recovered batch: {exc}")])
            return
        with self.ledger.lock:
            self.ledger.adopt_locked([row])

    def lose_file(self, file: SpoolFile, why: str) -> None:
        """A file became unreadable: set it aside; every backlog row of it is lost (read
        or not yet)."""
        ledger = self.ledger
        disk = self.disk
        assert disk is not None
        target = file.quarantine()
        unread = disk.forget_unread(file)
        reports: Reports = []
        try:
            with ledger.lock:
                ledger.lose_unread_locked(unread, f"spool file unreadable ({why})", reports)
                for backlog, own in ((ledger.backlog_adopted, False), (ledger.backlog_own, True)):
                    while backlog and backlog[0].file is file:
                        ledger.corrupt_locked(
                            backlog[0], own, b"", f"spool file unreadable ({why})", reports
                        )
        finally:
            self.hand_over(reports)
        self.report_problems([("corrupt", f"unreadable spool file renamed to {target}: {why}")])
        self.commit_disk()

    def commit_disk(self) -> None:
        """Store the dead letters, then delete the rows whose events are all settled
        (in that order: a crash between the two resends, never loses)."""
        disk = self.disk
        if disk is None:
            return
        ledger = self.ledger
        with ledger.lock:
            finished, dead = ledger.take_finished_locked()
            if not finished and not dead:
                return
            ledger.committing += 1  # flush() waits for this commit (Ledger.settled_locked)
        stored = evicted = size = 0
        problems: list[Problem] = []
        try:
            with self._commit_lock:
                if dead:
                    try:
                        stored, evicted = disk.store_dead(dead)
                    except Exception as exc:
                        problems.append(("error", f"cannot store dead letters: {exc}"))
                    aside = disk.dead.take_quarantined()
                    if aside is not None:
                        problems.append(
                            ("corrupt", f"unreadable dead-letter store renamed to {aside}")
                        )
                problems.extend(disk.settle(finished))
                if ledger.flush_waiters or ledger.stopping:
                    # Someone waits: the delivered rows leave the disk before it returns
                    # (a process that flushes and exits must not leave them to resend).
                    problems.extend(disk.flush_deletes())
                size = disk.own_size()
        finally:
            with ledger.lock:
                ledger.committing -= 1
                ledger.dead_letters += stored
                ledger.dead_evicted += evicted
                ledger.spool_bytes = size
                ledger.settled.notify_all()
        room = False
        if finished:
            with ledger.lock:
                # Rows deleted (or about to be, with the next write): a batch held back
                # for a full spool is tried again now, not at the end of its backoff.
                room = ledger.spool_gate > 0.0
                ledger.spool_gate = 0.0
        if (
            room
            or ledger.backlog_own
            or ledger.backlog_adopted
            or ledger.unread_adopted
            or not ledger.queue
        ):
            # Room freed: the spooler may load a backlog row; or it may be idle, and
            # must time the deletes it now holds (spool_step).
            self.spool_wake.set()
        self.report_problems(problems)

    def report_problems(self, problems: list[Problem]) -> None:
        if not problems:
            return
        log = self.reporter.log
        with self.ledger.lock:
            self.ledger.last_error = problems[-1][1]
        for kind, message in problems:
            log.always(logging.ERROR, "enso-tracker spool (%s): %s", kind, message)
        log.emit()

    def hand_over(self, reports: Reports) -> None:
        """Report drops counted under the lock, then let ``flush()`` see them done.

        Called with the lock released, after every locked section of the sender: it is
        also where log records queued under the lock are emitted, and, with a spool,
        where dead letters are stored and settled rows deleted (before ``flush()`` may
        return: a caller who flushed finds its dead letters stored).
        """
        if self.disk is not None:
            self.commit_disk()
        elif self.receipts is not None:
            self.report_problems(self.receipts.commit_settled(self.ledger))
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
        with ledger.settled:
            while (ledger.outstanding or ledger.on_disk) and not ledger.closed:
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
            left = ledger.left_in_spool
            foreign = ledger.foreign_files
        self.wake.set()
        self.spool_wake.set()
        for thread in (self.thread, self.spool_thread):
            # (A thread that never started cannot be joined: join() would raise.)
            if _alive(thread) and thread is not threading.current_thread():
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


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def _sooner(a: float | None, b: float | None) -> float | None:
    """The shorter of two waits (None: no limit)."""
    if a is None:
        return b
    return a if b is None else min(a, b)
