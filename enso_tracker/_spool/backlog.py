"""The spooler's rounds that bring events back from disk: adopting orphan files,
reading their rows in chunks, loading backlog rows into memory when it has room, and
losing a file that became unreadable.

A mixin of :class:`~.spooler.Spooler` (its state and lock discipline are the
spooler's): every ledger write is under the ledger's lock, through ``SpoolBooks``;
every disk read with that lock released. A row that fails its CRC is dropped as
``corrupt`` and kept as a dead letter; a damaged file's rows are all dropped, counted,
and the file set aside.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Final

from .._ledger import Ledger, State
from .._reporting import Reports
from .._wire import split_batch
from .books import SpoolBooks
from .disk import DiskSpool, pendings_of
from .errors import SpoolClosed, SpoolCorrupt, SpoolUnavailable
from .files import SpoolFile

if TYPE_CHECKING:
    from .spooler import SenderSide

__all__ = ["ADOPT_CHUNK", "BacklogRounds"]

#: Rows of adopted files read from disk at a time (their place and size, not bodies).
ADOPT_CHUNK: Final = 1024


class BacklogRounds:
    """The reading half of ``Spooler`` (which sets every attribute below)."""

    ledger: Ledger
    books: SpoolBooks
    disk: DiskSpool
    host: SenderSide
    wake: threading.Event
    _adopted_seqs: itertools.count[int]

    if TYPE_CHECKING:  # the spooler's own

        def hand_over(self, reports: Reports) -> None: ...

        def commit(self) -> None: ...

    def adopt(self, now: float) -> bool:
        """Take over the spool files of processes that are gone (at construction, then
        every ``ADOPT_INTERVAL`` on the spooler). True if it found anything."""
        ledger, books, disk = self.ledger, self.books, self.disk
        try:
            events, salvaged, problems = disk.adopt(now)
        except OSError as exc:  # the directory went away, or unreadable: try again later
            self.host.report_problems([("error", f"cannot look for spool files: {exc}")])
            return False
        self.host.report_problems(problems)
        with ledger.lock:
            books.foreign_files = len(disk.foreign)
            books.skipped_files = len(disk.refused)
            if ledger.closed:
                return False
            books.adopt_locked([], events)  # rows read later, a chunk at a time
        for body in salvaged:
            self.adopt_salvaged(body)
        if events or salvaged:
            self.wake.set()
        return bool(events or salvaged)

    def read_adopted(self) -> bool:
        """The next chunk of adopted rows, once those read before are all loaded: what
        memory holds for a backlog stays the same whatever its number of rows."""
        ledger, books, disk = self.ledger, self.books, self.disk
        rows, broken, vanished, problems = disk.read_adopted(ADOPT_CHUNK)
        self.host.report_problems(problems)
        reports: Reports = []
        try:
            with ledger.lock:
                if ledger.closed:
                    return False
                books.refill_locked(rows)
                if vanished:
                    books.lose_unread_locked(
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
        ledger, books, disk = self.ledger, self.books, self.disk
        if now >= disk.next_scan and ledger.state is State.OPEN:
            return self.adopt(now)
        with ledger.lock:
            refill = not books.backlog_adopted and books.unread_adopted > 0
        if refill and self.read_adopted():
            return True
        with ledger.lock:
            if books.backlog_adopted:
                row, own = books.backlog_adopted[0], False
            elif books.backlog_own:
                row, own = books.backlog_own[0], True
            else:
                return False
            if not books.window_locked():
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
            self.host.report_problems([("error", f"cannot read a spool record now: {exc}")])
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
                    books.corrupt_locked(row, own, raw, f"{why} ({row.file.path})", reports)
                    ledger.left_disk_locked()
                    disk_rows = [row]
                else:
                    first = row.first_seq if own else None
                    books.load_locked(pendings_of(bodies, row, first, self._adopted_seqs), own=own)
                    disk_rows = []
        finally:
            self.hand_over(reports)
        for gone in disk_rows:
            self.host.report_problems(disk.delete(gone.file, [gone]))
        self.host.wake.set()  # the sender: events to send
        return True

    def adopt_salvaged(self, body: bytes) -> None:
        """A batch recovered from a damaged file: written to our own file, then adopted."""
        disk = self.disk
        try:
            n = len(split_batch(body))
            row = disk.write(body, n, 0)
        except Exception as exc:
            self.host.report_problems([("error", f"cannot keep a recovered batch: {exc}")])
            return
        with self.ledger.lock:
            self.books.adopt_locked([row])

    def lose_file(self, file: SpoolFile, why: str) -> None:
        """A file became unreadable: set it aside; every backlog row of it is lost (read
        or not yet)."""
        ledger, books, disk = self.ledger, self.books, self.disk
        target = file.quarantine()
        unread = disk.forget_unread(file)
        reports: Reports = []
        try:
            with ledger.lock:
                books.lose_unread_locked(unread, f"spool file unreadable ({why})", reports)
                for backlog, own in ((books.backlog_adopted, False), (books.backlog_own, True)):
                    while backlog and backlog[0].file is file:
                        books.corrupt_locked(
                            backlog[0], own, b"", f"spool file unreadable ({why})", reports
                        )
        finally:
            self.hand_over(reports)
        self.host.report_problems(
            [("corrupt", f"unreadable spool file renamed to {target}: {why}")]
        )
        self.commit()
