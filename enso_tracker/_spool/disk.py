"""``DiskSpool``: the durable spool as the pipeline sees it: write, load, release rows,
close.

This process's spool file (created at the first write), the files it adopted
(``adoption``) and the dead-letter store. The spooler thread writes, adopts and loads;
either thread releases the rows of settled events (``Spooler.commit``); both with the
ledger's lock released, one at a time (``lock``). The invariants are listed in
``enso_tracker._spool``.

* A write commits one batch as one row (``SpoolFull`` past a bound, our file set aside
  and a new one started if it goes bad under us).
* A settled event counts down its row (``release_rows``); a row with nothing left is
  deleted (our own file: deferred to the next insert or idle moment; an adopted one: at
  once, and the file removed once drained).
* At shutdown, files with rows left stay for the next tracker on the directory.

Lock suffix (the house convention, as ``Ledger``'s and ``SpoolFile``'s): a method named
``_..._locked`` expects its caller to hold ``DiskSpool.lock`` (the entry points take it,
then call their ``_locked`` twin; ``Adoption``'s are named alike).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Final

import msgspec

from .._model import DropReason
from .._receipts import SpoolReceipts
from .._record import Pending, spooled
from .._wire import split_batch
from .adoption import ADOPT_INTERVAL, Adoption, Unread
from .budget import Budget, file_size_limit
from .dead_letters import DeadLetterStore
from .errors import Problem, SpoolClosed, SpoolCorrupt, SpoolFull
from .files import SpoolFile, StoredBatch
from .format import create_own
from .sqlite import PAGE_SIZE, Durability, is_io_error

__all__ = ["ADOPT_INTERVAL", "DiskSpool", "Problem", "SpoolClosed", "pendings_of"]

#: A drained file larger than this is rebuilt small (VACUUM; ~0.1 s per 200 MB).
COMPACT_ABOVE: Final = 64 * 1024 * 1024


class DiskSpool(Adoption):
    """This process's spool file, the files it adopted, and the dead-letter store."""

    def __init__(
        self,
        directory: str,
        *,
        durability: Durability,
        max_bytes: int,
        max_dead_letter_bytes: int,
        identity: str,
        max_dir_bytes: int | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        self.directory = directory
        #: Whom this tracker sends for (``identity``): its files carry it, and only
        #: files that carry it are adopted.
        self.identity = identity
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
        self.unread: deque[Unread] = deque()
        self.dead = DeadLetterStore(directory, max_bytes=max_dead_letter_bytes, origin=identity)
        self.skip: set[str] = set()  # files refused once (another format): not again
        #: Files of another identity (path: identity), left untouched; not reopened.
        self.foreign: dict[str, str | None] = {}
        #: Files that may not or cannot be opened now (path: why); tried at every scan.
        self.refused: dict[str, str] = {}
        self.more_orphans = False  # the last scan stopped at MAX_ADOPTED_FILES
        self.next_scan = 0.0  # monotonic time of the next look for orphans
        self.closed = False
        #: Both threads call in (the spooler writes, either commits): one at a time.
        self.lock = threading.RLock()
        #: Receipts (``_receipts``), None when off: folded at settlement, written with
        #: the deletes of the rows they account for.
        self.receipts: SpoolReceipts | None = None

    # ------------------------------------------------------------------ entry points
    # Every entry point takes ``lock``: the spooler and the sender both call in.

    def write(self, body: bytes, n: int, first_seq: int) -> StoredBatch:
        with self.lock:
            return self._write_locked(body, n, first_seq)

    def adopt(self, now: float) -> tuple[int, list[bytes], list[Problem]]:
        with self.lock:
            return self._adopt_locked(now)

    def read_adopted(
        self, limit: int
    ) -> tuple[list[StoredBatch], list[tuple[SpoolFile, str]], int, list[Problem]]:
        with self.lock:
            return self._read_adopted_locked(limit)

    def load(self, row: StoredBatch) -> tuple[list[bytes] | None, bytes]:
        with self.lock:
            return self._load_locked(row)

    def release_rows(self, settled: list[Pending]) -> list[Problem]:
        with self.lock:
            return self._release_rows_locked(settled)

    def delete(self, file: SpoolFile, rows: list[StoredBatch]) -> list[Problem]:
        with self.lock:
            return self._delete_locked(file, rows)

    def close(self) -> None:
        with self.lock:
            self._close_locked()

    # ------------------------------------------------------------------ writing

    def _write_locked(self, body: bytes, n: int, first_seq: int) -> StoredBatch:
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
                self.directory,
                durability=self.durability,
                max_bytes=self.max_bytes,
                identity=self.identity,
            )
            own.receipts = self.receipts
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

    # ------------------------------------------------------------------ loading

    def _load_locked(self, row: StoredBatch) -> tuple[list[bytes] | None, bytes]:
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

    def _release_rows_locked(self, settled: list[Pending]) -> list[Problem]:
        """These events are settled: rows all of whose events are settled are deleted,
        and adopted files left empty are removed."""
        done: dict[SpoolFile, list[StoredBatch]] = {}
        receipts = self.receipts
        if receipts is not None:
            receipts.note_all(settled)  # before the rows are let go of below
        for p in settled:
            row = p.row
            if row is None:
                continue
            p.row = None  # settled once: a stale second sighting changes nothing
            row.left -= 1
            if row.left == 0:
                done.setdefault(row.file, []).append(row)
        problems: list[Problem] = []
        if receipts is not None:
            problems.extend(receipts.commit())  # per-event rows before their rows go
        for file, rows in done.items():
            problems.extend(self._delete_locked(file, rows))
        if receipts is not None and not self.closed:
            receipts.move_due(self.files(), now=time.monotonic())
        return problems

    def files(self) -> list[SpoolFile]:
        """The files held open: our own, then the adopted ones."""
        return [*([self.own] if self.own is not None else []), *self.adopted]

    def _delete_locked(self, file: SpoolFile, rows: list[StoredBatch]) -> list[Problem]:
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
            if self.more_orphans:
                self.next_scan = 0.0  # room for the next orphans: look now
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
                flushed = own.flush_deletes()
                if self.receipts is not None:  # a flush() waits: receipts visible after it
                    self.receipts.move_due(self.files(), now=time.monotonic(), force=True)
                if not flushed:
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

    def _close_locked(self) -> None:
        """Shutdown: files with rows left stay for the next tracker (their flocks released)."""
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
        if self.receipts is not None:
            self.receipts.store.close()

    def abandon(self) -> None:
        """A forked child's copy: never touch the parent's files (see SpoolFile.abandon)."""
        self.closed = True
        for file in [*self.adopted, *([self.own] if self.own is not None else [])]:
            file.abandon()
        self.adopted = []
        self.unread.clear()
        self.own = None
        self.dead.abandon()
        if self.receipts is not None:
            self.receipts.store.abandon()


def pendings_of(
    bodies: list[bytes], row: StoredBatch, first_seq: int | None, adopted_seq: Iterator[int]
) -> list[Pending]:
    """Pending events for a loaded row: their bodies as they were sent, the rest of what
    they were (entity, value…) read back from the body only if one is ever reported."""
    seqs = adopted_seq if first_seq is None else range(first_seq, first_seq + len(bodies))
    return spooled(bodies, seqs, row)
