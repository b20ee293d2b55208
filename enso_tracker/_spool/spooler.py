"""The spooler: the spool stage's own thread, between ``track()``'s queue and the sender.

With a spool (``Config.spool_dir``) the tracker runs two threads: this one writes what
``track()`` queued to disk, adopts orphan files and loads the backlog back into memory;
the sender thread (``_worker``) sends what the spooler staged. Without a spool there is
no ``Spooler`` and none of this runs. The invariants are listed in ``enso_tracker._spool``.

* One round (:meth:`Spooler.step`) adopts or loads when due, else writes the queued
  events that are due as rows of this process's file, one row per ``max_batch_bytes``;
  only then do its events join ``staged`` (or the backlog) and the sender is woken.
* After every locked section of either thread, :meth:`Spooler.commit` stores the dead
  letters, then deletes the rows whose events are all settled (in that order).
* It talks to the ledger through its books (``Ledger.spool``: ``SpoolBooks``), under the
  ledger's lock, and does disk work with that lock released. A request hanging for
  ``timeout`` on the sender never holds events off the disk.

Thread ownership (start, restart if found dead, the caller-run fallback) is the
worker's, shared with the sender thread: the spooler only says what one round is.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from .._config import Config
from .._errors import describe_exception
from .._ledger import Ledger, State
from .._model import DropReason
from .._pump import CLOSED, sooner
from .._record import Pending, QueuedEvent, growth, seq_of
from .._reporting import Reporter, Reports
from .._schedule import NO_SEQ
from .._wire import BODY_OVERHEAD, join_batch
from .backlog import BacklogRounds
from .books import SpoolBooks
from .disk import DiskSpool
from .errors import Problem, SpoolClosed, SpoolFull
from .files import StoredBatch

__all__ = ["SenderSide", "Spooler", "cut_rows"]


class SenderSide(Protocol):
    """What the spooler needs of the sender's side (``Worker``): its wake event, the
    one event encoder, the drop of what can never be sent, and problem reports."""

    @property
    def wake(self) -> threading.Event: ...

    def encode_all(
        self, taken: Sequence[Pending | QueuedEvent]
    ) -> tuple[list[Pending], list[tuple[Pending, Exception]], int]: ...

    def drop_unsendable_locked(
        self,
        too_large: list[Pending],
        unencodable: list[tuple[Pending, Exception]],
        reports: Reports,
    ) -> None: ...

    def report_problems(self, problems: list[Problem]) -> None: ...


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


class Spooler(BacklogRounds):
    """The spool stage of one tracker: its thread, wake event, and rounds."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        books: SpoolBooks,
        disk: DiskSpool,
        reporter: Reporter,
        host: SenderSide,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.books = books
        self.disk = disk
        self.reporter = reporter
        self.host = host
        self.wake = threading.Event()
        #: The spooler thread; started, and restarted if found dead, by the worker.
        self.thread: threading.Thread | None = None
        self._commit_lock = threading.Lock()  # one disk commit at a time (both threads)
        self._deletes_due: float | None = None  # when idle deletes are carried out
        self._adopted_seqs = itertools.count(NO_SEQ + 1)

    def fork_locks(self) -> list[threading.Lock | threading.RLock]:
        """The locks every SQLite call of the tracker's threads runs under, in the order
        they nest (held around a fork: see ``_lifecycle._before_fork``)."""
        return [self._commit_lock, self.disk.lock]

    def recover_locked(self) -> None:
        """After an unexpected error in a round: what it had taken goes back in line."""
        self.books.recover_locked()

    def rescan_soon(self) -> None:
        """Look for orphan files at the next round (a redrive just wrote one)."""
        self.disk.next_scan = 0.0
        self.wake.set()

    # ------------------------------------------------------------------ rounds

    def step(self) -> float | None:
        """One round of the spooler: adopt or load when due, else write the queued
        events that are due to disk, or say how long to sleep (as ``Worker.step``)."""
        ledger, books, disk = self.ledger, self.books, self.disk
        self.wake.clear()
        if ledger.closed:
            return CLOSED
        now = time.monotonic()
        if self.disk_chores(now):
            return 0.0
        with ledger.lock:
            if ledger.closed:
                return CLOSED
            raw, wait = books.plan_locked(now)
            stopping = ledger.state is not State.OPEN
        if raw:
            self._deletes_due = None  # the write carried the deferred deletes
            self.write(raw)
            return 0.0
        if wait is None and disk.deletes_deferred():
            # Idle: settled rows are deleted after spool_interval without a write (busy,
            # each write carries them: one transaction instead of two).
            if self._deletes_due is None:
                self._deletes_due = now + self.config.spool_interval
            if now >= self._deletes_due or stopping:
                self._deletes_due = None
                self.host.report_problems(disk.flush_deletes())
            else:
                wait = self._deletes_due - now
        if not stopping:
            wait = sooner(wait, max(disk.next_scan - now, 0.0))
        return wait

    def write(self, raw: list[QueuedEvent]) -> None:
        """Encode a batch taken from the queue and commit it to disk, one row per
        ``max_batch_bytes`` (a row is never larger than what a request may carry, nor
        than what the spool can hold); only then do its events join ``staged`` (or the
        backlog) to be sent.

        When the spool is full (a bound, the file size limit, the disk): if some rows of
        this batch were written, the rest waits at the head of the queue until rows are
        deleted (or ``backoff_base``), and waits again if rows were deleted meanwhile but
        the room is not there yet; if none was and nothing was freed since the batch was
        held back, ``queue_full_policy`` decides: the rest is dropped as ``spool_full``
        or held in memory (``track()`` then blocks)."""
        ledger, books, disk = self.ledger, self.books, self.disk
        encoded, unencodable, _ = self.host.encode_all(raw)
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
        reports: Reports = []
        log = self.reporter.log
        try:
            with ledger.lock:
                if ledger.closed:
                    return  # shutdown() already accounted for these at its deadline
                # Held, not dropped: part of this batch fit; or "block"; or rows were
                # deleted since it was last held back (the sender is draining: the room
                # is coming, a deletion may just not have reached the file yet).
                hold = full is not None and (
                    bool(written) or self.config.queue_full_policy == "block" or books.room_freed
                )
                books.room_freed = False
                books.spooling = []
                if hold:
                    # Back at the head of the line, as they were (not encoded): written
                    # once the spool has room, in order.
                    back = {p.seq for p in rest}
                    ledger.requeue_locked([q for q in raw if seq_of(q) in back])
                    books.gate = time.monotonic() + self.config.backoff_base
                    if not written:
                        log(logging.WARNING, "spool_full", "the spool is full (%s); holding", full)
                    rest = []
                kept = [p for chunk, _ in written for p in chunk] + rest + too_large
                # Encoded: they now hold their bodies (the held back ones are raw again).
                ledger.grown_locked(growth(kept))
                self.host.drop_unsendable_locked(too_large, unencodable, reports)
                if full is not None and rest:
                    ledger.drop_locked(
                        rest,
                        DropReason(kind="spool_full", message=f"the spool is full: {full}"),
                        reports,
                    )
                elif rest:
                    # Sent from memory; ready like retries (staged keeps to disk order).
                    ledger.ready_locked(rest)
                    for p in rest:
                        heapq.heappush(books.volatile, (p.seq, p))
                    ledger.count_internal_error_locked(f"cannot write to the spool: {failed}")
                    log(
                        logging.ERROR,
                        "spool_write",
                        "cannot write to the spool (%s); sending from memory, not durable",
                        failed,
                    )
                for chunk, row in written:
                    for p in chunk:
                        p.row = row
                    books.stage_locked(chunk, row)
                if written:
                    books.own_bytes = size
                ledger.spooled_locked()  # memory freed (rows on disk only, drops)
        finally:
            self.hand_over(reports)
        self.host.wake.set()  # the sender: new events to send

    def commit(self) -> None:
        """Store the dead letters, then delete the rows whose events are all settled
        (in that order: a crash between the two resends, never loses)."""
        ledger, books, disk = self.ledger, self.books, self.disk
        with ledger.lock:
            finished, dead = ledger.take_finished_locked()
            if not finished and not dead:
                return
            ledger.begin_commit_locked()  # flush() waits for this commit
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
                problems.extend(disk.release_rows(finished))
                if ledger.flush_waiters or ledger.state is not State.OPEN:
                    # Someone waits: the delivered rows leave the disk before it returns
                    # (a process that flushes and exits must not leave them to resend).
                    problems.extend(disk.flush_deletes())
                size = disk.own_size()
        finally:
            with ledger.lock:
                books.dead_letters += stored
                books.dead_evicted += evicted
                books.own_bytes = size
                ledger.end_commit_locked()
        room = False
        if finished:
            with ledger.lock:
                # Rows deleted (or about to be, with the next write): a batch held back
                # for a full spool is tried again now, not at the end of its backoff.
                room = books.gate > 0.0
                books.gate = 0.0
                books.room_freed = books.room_freed or room
        if (
            room
            or books.backlog_own
            or books.backlog_adopted
            or books.unread_adopted
            or not ledger.queue
        ):
            # Room freed: the spooler may load a backlog row; or it may be idle, and
            # must time the deletes it now holds (``step``).
            self.wake.set()
        self.host.report_problems(problems)

    def hand_over(self, reports: Reports) -> None:
        """``Worker.hand_over`` for the spooler's own locked sections: commit to disk,
        then report the drops and let ``flush()`` see them done."""
        self.commit()
        self.reporter.hand_over(reports, self.ledger.handed_over)
