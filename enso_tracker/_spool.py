"""The durable spool as the sender thread sees it: write, adopt, load, settle.

Opt-in (``Config.spool_dir``). Without it the worker keeps everything in memory and
nothing here runs. With it, the pipeline gains one stage between ``track()``'s queue and
the sender (README "Durable spool")::

    track() → queue → [sender thread: encode, one row per batch → disk] → staged → send
                                                      ↘ backlog (on disk only) ↗

* Every ``spool_interval`` (or as soon as a batch is full, or a flush asks) the sender
  thread takes a batch from the queue, encodes it, and commits its exact body as one row
  of this process's spool file; only then may any of it be sent. ``track()`` gains no
  disk I/O: it never waits for the disk.
* The events of a written row stay in memory (``staged``) while memory is comfortable;
  past half of ``max_queue_bytes`` (Enso down longer than memory lasts) new rows stay on
  disk only (the backlog) and are loaded back, oldest first, as sending frees room.
* A row is deleted when every event in it is settled: delivered, or dropped for good
  (then also stored as a dead letter). What is undelivered at shutdown stays on disk.
* Spool files of processes that are gone are adopted at start and every
  ``ADOPT_INTERVAL``: their rows join the backlog, are sent first, and their file is
  removed once drained.

Runs on the spooler and sender threads (one at a time: ``DiskSpool.lock``), with the
ledger's lock released.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Final

import msgspec

from ._dead_letters import DeadLetterStore, split_batch
from ._items import EVENT_OVERHEAD, PENDING_OVERHEAD, WHOLE_BODY, Pending
from ._model import DropReason
from ._spool_budget import Budget, file_size_limit, is_io_error
from ._spool_store import (
    PAGE_SIZE,
    Durability,
    SpoolClosed,
    SpoolCorrupt,
    SpoolEmpty,
    SpoolFile,
    SpoolFull,
    SpoolUnsupported,
    StoredBatch,
    create_own,
    find_orphans,
    open_orphan,
    quarantine,
    remove_files,
    salvage,
)

__all__ = ["ADOPT_INTERVAL", "DiskSpool", "Problem", "SpoolClosed", "pendings_of"]

#: How often a running tracker looks for spool files left by processes that died.
ADOPT_INTERVAL: Final = 60.0
#: A drained file larger than this is rebuilt small (VACUUM; ~0.1 s per 200 MB).
COMPACT_ABOVE: Final = 64 * 1024 * 1024

#: Something to report about a file (logged, and counted by the caller).
Problem = tuple[str, str]  # (kind, message): "corrupt" | "unsupported" | "empty" | "error"


class _Unread:
    """Where reading an adopted file's rows got to: the last rowid handed out, and the
    events of the rows after it."""

    __slots__ = ("after", "events", "file")

    def __init__(self, file: SpoolFile, events: int) -> None:
        self.file = file
        self.after = 0
        self.events = events


class DiskSpool:
    """This process's spool file, the files it adopted, and the dead-letter store."""

    def __init__(
        self,
        directory: str,
        *,
        durability: Durability,
        max_bytes: int,
        max_dead_letter_bytes: int,
        max_dir_bytes: int | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        self.directory = directory
        self.durability: Durability = durability
        self.max_bytes = max_bytes
        self.budget = Budget(
            directory,
            max_file_bytes=max_bytes,
            max_dir_bytes=max_bytes if max_dir_bytes is None else max_dir_bytes,
            min_free_bytes=min_free_bytes,
        )
        self.own: SpoolFile | None = None  # created at the first write
        self.adopted: list[SpoolFile] = []
        #: Adopted files whose rows are not all read yet, oldest first.
        self.unread: deque[_Unread] = deque()
        self.dead = DeadLetterStore(directory, max_bytes=max_dead_letter_bytes)
        self.skip: set[str] = set()  # files refused once (another format): not again
        self.next_scan = 0.0  # monotonic time of the next look for orphans
        self.closed = False
        #: Both threads call in (the spooler writes, either commits): one at a time.
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ entry points
    # Every entry point takes ``lock``: the spooler and the sender both call in.

    def write(self, body: bytes, n: int, first_seq: int) -> StoredBatch:
        with self.lock:
            return self._write_unlocked(body, n, first_seq)

    def adopt(self, now: float) -> tuple[int, list[bytes], list[Problem]]:
        with self.lock:
            return self._adopt_unlocked(now)

    def read_adopted(
        self, limit: int
    ) -> tuple[list[StoredBatch], list[tuple[SpoolFile, str]], int]:
        with self.lock:
            return self._read_adopted_unlocked(limit)

    def load(self, row: StoredBatch) -> tuple[list[bytes] | None, bytes]:
        with self.lock:
            return self._load_unlocked(row)

    def settle(self, settled: list[Pending]) -> list[Problem]:
        with self.lock:
            return self._settle_unlocked(settled)

    def delete(self, file: SpoolFile, rows: list[StoredBatch]) -> list[Problem]:
        with self.lock:
            return self._delete_unlocked(file, rows)

    def close(self) -> None:
        with self.lock:
            self._close_unlocked()

    # ------------------------------------------------------------------ writing

    def _write_unlocked(self, body: bytes, n: int, first_seq: int) -> StoredBatch:
        """Commit one batch (``SpoolFull``, ``SpoolCorrupt`` or an OS/SQLite error)."""
        if self.closed:
            raise SpoolClosed("the spool is closed (shutdown)")
        own = self.own
        now = time.monotonic()
        if own is None:
            # Not even created when a bound leaves no room for this row.
            if not self.budget.room_for(len(body)):
                raise SpoolFull(self.budget.reason)
            own = self.own = create_own(
                self.directory, durability=self.durability, max_bytes=self.max_bytes
            )
            self.budget.apply(own, now, force=True)
        else:
            self.budget.apply(own, now)
        try:
            try:
                return own.append(body, n, first_seq)
            except SpoolFull:
                # Measured again at once: another process's file may have drained.
                if not self.budget.apply(own, now, force=True):
                    raise
                return own.append(body, n, first_seq)
        except SpoolFull as exc:
            if not self._at_bound(own, len(body)):
                raise SpoolFull(f"the filesystem is full ({exc})") from None
            raise SpoolFull(self.budget.reason) from None
        except SpoolCorrupt:
            # Our own file went bad under us (someone truncated it): set it aside and
            # start a new one; the rows it held are reported by whoever reads them.
            self.own = None
            own.quarantine()
            raise
        except Exception as exc:
            # EFBIG (RLIMIT_FSIZE) comes back from SQLite as a plain I/O error: the
            # spool is full, and its WAL is emptied so that deletes (and later,
            # smaller writes) go on.
            if is_io_error(exc) and self.budget.size_limited(own, len(body)):
                own.checkpoint()
                limit = file_size_limit()
                raise SpoolFull(
                    f"the process's file size limit (RLIMIT_FSIZE) {limit} reached"
                ) from None
            raise

    def _at_bound(self, own: SpoolFile, nbytes: int) -> bool:
        """Whether a refused insert of ``nbytes`` ran into our page limit (else: the
        filesystem itself is full)."""
        try:
            pages = own.page_count()
        except Exception:
            return True
        return (pages + nbytes // PAGE_SIZE + 2) > self.budget.pages

    def own_size(self) -> int:
        return self.own.size() if self.own is not None else 0

    # ------------------------------------------------------------------ adopting

    def _adopt_unlocked(self, now: float) -> tuple[int, list[bytes], list[Problem]]:
        """Take over every spool file whose owner is gone.

        Returns how many events they hold (their rows are read later, in chunks, in
        order: ``read_adopted``), the bodies salvaged from damaged files (the caller
        writes them to its own file, so they are sent like any other), and what to
        report."""
        self.next_scan = now + ADOPT_INTERVAL
        if self.closed:
            return 0, [], []
        events = 0
        salvaged: list[bytes] = []
        problems: list[Problem] = []
        for db, fd in find_orphans(self.directory, self.skip):
            try:
                file = open_orphan(db, fd, durability=self.durability)
                found, in_file = file.tally()
            except SpoolEmpty as exc:
                remove_files(db)
                os.close(fd)
                problems.append(("empty", str(exc)))
                continue
            except SpoolUnsupported as exc:
                self.skip.add(db)
                with contextlib.suppress(OSError):
                    os.close(fd)
                problems.append(("unsupported", str(exc)))
                continue
            except Exception as exc:  # SpoolCorrupt, sqlite3/OS errors: unreadable
                kept = list(salvage(db))
                salvaged.extend(body for body, _, _ in kept)
                target = quarantine(db)
                with contextlib.suppress(OSError):
                    os.close(fd)
                problems.append(
                    (
                        "corrupt",
                        f"unreadable spool file renamed to {target} ({type(exc).__name__}: "
                        f"{exc}); {len(kept)} intact batches recovered from it",
                    )
                )
                continue
            if not found:
                file.close()
                continue
            self.adopted.append(file)
            self.unread.append(_Unread(file, in_file))
            events += in_file
        return events, salvaged, problems

    def _read_adopted_unlocked(
        self, limit: int
    ) -> tuple[list[StoredBatch], list[tuple[SpoolFile, str]], int]:
        """The next (up to ``limit``) rows of the adopted files, in order; the files
        that could not be read (the caller sets them aside: ``forget_unread``); and how
        many events counted at adoption are gone from files read to their end (rows
        deleted by someone else: the caller accounts for them)."""
        rows: list[StoredBatch] = []
        broken: list[tuple[SpoolFile, str]] = []
        vanished = 0
        while self.unread and len(rows) < limit and not self.closed:
            unread = self.unread[0]
            asked = limit - len(rows)
            try:
                found = unread.file.rows_after(unread.after, asked)
            except (SpoolCorrupt, SpoolClosed) as exc:
                broken.append((unread.file, str(exc)))
                break  # the caller forgets it, then reads on
            if found:
                unread.after = found[-1].rowid
                unread.events -= sum([r.n for r in found])
                rows.extend(found)
            if len(found) < asked:  # read to its end
                self.unread.popleft()
                vanished += max(unread.events, 0)
        return rows, broken, vanished

    def forget_unread(self, file: SpoolFile) -> int:
        """``file`` is set aside: the events of its rows not read yet."""
        with self.lock:
            for unread in self.unread:
                if unread.file is file:
                    self.unread.remove(unread)
                    return max(unread.events, 0)
            return 0

    # ------------------------------------------------------------------ loading

    def _load_unlocked(self, row: StoredBatch) -> tuple[list[bytes] | None, bytes]:
        """A row's events (their exact bodies), or None if the row failed its CRC or
        does not parse (then the raw bytes, for the dead letter). ``SpoolCorrupt`` if
        its file cannot be read any more."""
        body, intact = row.file.read(row)
        if not intact:
            return None, body
        try:
            return split_batch(body), body
        except msgspec.DecodeError:
            return None, body

    # ------------------------------------------------------------------ settling

    def _settle_unlocked(self, settled: list[Pending]) -> list[Problem]:
        """These events are settled: rows all of whose events are settled are deleted,
        and adopted files left empty are removed."""
        done: dict[SpoolFile, list[StoredBatch]] = {}
        for p in settled:
            row = p.row
            if row is None:
                continue
            p.row = None  # settled once: a stale second sighting changes nothing
            row.left -= 1
            if row.left == 0:
                done.setdefault(row.file, []).append(row)
        problems: list[Problem] = []
        for file, rows in done.items():
            problems.extend(self._delete_unlocked(file, rows))
        return problems

    def _delete_unlocked(self, file: SpoolFile, rows: list[StoredBatch]) -> list[Problem]:
        problems: list[Problem] = []
        if not file.adopted:
            file.defer_delete(rows)  # with the next insert, or when the spooler idles
            return problems
        try:
            file.delete(rows)
        except SpoolClosed:
            return problems  # closed under us (shutdown): the rows are resent next time
        except Exception as exc:
            problems.append(("error", f"cannot delete delivered batches from {file.path}: {exc}"))
            return problems
        if file.rows == 0:
            file.close(remove_if_empty=True)
            with contextlib.suppress(ValueError):
                self.adopted.remove(file)
        return problems

    def deletes_deferred(self) -> bool:
        own = self.own
        return own is not None and own.has_deferred()

    def flush_deletes(self) -> list[Problem]:
        """The spooler is idle: carry out the deferred deletes of our own file; a file
        drained after growing large is compacted."""
        with self.lock:
            own = self.own
            if own is None or self.closed:
                return []
            try:
                if not own.flush_deletes():
                    return []
                if own.rows == 0 and own.size() > COMPACT_ABOVE:
                    own.compact()
            except SpoolClosed:
                return []
            except Exception as exc:
                return [("error", f"cannot delete delivered batches from {own.path}: {exc}")]
            return []

    def store_dead(self, letters: list[tuple[bytes, DropReason]]) -> tuple[int, int]:
        """Dead letters stored, and how many older ones that evicted."""
        if not letters:
            return 0, 0
        evicted = self.dead.add(letters)
        return len(letters), evicted

    # ------------------------------------------------------------------ closing

    def _close_unlocked(self) -> None:
        """Shutdown: files with rows left stay for the next tracker (our lock released)."""
        if self.closed:
            return
        self.closed = True
        for file in [*self.adopted, *([self.own] if self.own is not None else [])]:
            with contextlib.suppress(Exception):
                file.close(remove_if_empty=True)
        self.adopted = []
        self.unread.clear()
        self.own = None
        self.dead.close()

    def abandon(self) -> None:
        """A forked child's copy: never touch the parent's files (see SpoolFile.abandon)."""
        self.closed = True
        for file in [*self.adopted, *([self.own] if self.own is not None else [])]:
            file.abandon()
        self.adopted = []
        self.unread.clear()
        self.own = None
        self.dead.abandon()


def pendings_of(
    bodies: list[bytes], row: StoredBatch, first_seq: int | None, adopted_seq: Iterator[int]
) -> list[Pending]:
    """Pending events for a loaded row: their bodies as they were sent, the rest of what
    they were (entity, value…) read back from the body only if one is ever reported."""
    out = []
    for i, body in enumerate(bodies):
        seq = first_seq + i if first_seq is not None else next(adopted_seq)
        size = EVENT_OVERHEAD + PENDING_OVERHEAD + len(body)
        item = (seq, "", "", "", 0, 0, WHOLE_BODY, None, size - EVENT_OVERHEAD)
        out.append(Pending(0.0, seq, item, body, size, row=row))
    return out
