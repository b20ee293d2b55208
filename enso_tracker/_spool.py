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
  removed once drained. Only files written for this tracker's identity (destination and
  credential) are adopted; others are left as they are and counted (``foreign``), like
  files that may not or cannot be opened now (``refused``: retried at every scan). At
  most ``MAX_ADOPTED_FILES`` are held open at a time: when one is drained, the next
  scan comes at once.

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
from ._receipts import SpoolReceipts
from ._spool_budget import Budget, file_size_limit, is_io_error
from ._spool_identity import short
from ._spool_store import (
    PAGE_SIZE,
    Durability,
    SpoolClosed,
    SpoolCorrupt,
    SpoolEmpty,
    SpoolFile,
    SpoolForeign,
    SpoolFull,
    SpoolUnavailable,
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
#: Adopted files held open at a time (each costs up to 4 descriptors), however many
#: orphans there are: the rest wait for the next scan, which comes as one is drained.
MAX_ADOPTED_FILES: Final = 8
#: A drained file larger than this is rebuilt small (VACUUM; ~0.1 s per 200 MB).
COMPACT_ABOVE: Final = 64 * 1024 * 1024

#: Something to report about a file (logged, and counted by the caller).
#: "corrupt" | "unsupported" | "empty" | "error" | "foreign" | "refused"
Problem = tuple[str, str]


class _Unread:
    """Where reading an adopted file's rows got to: the last rowid handed out, and the
    events of the rows after it."""

    __slots__ = ("after", "events", "file", "warned")

    def __init__(self, file: SpoolFile, events: int) -> None:
        self.file = file
        self.after = 0
        self.events = events
        self.warned = False  # "cannot read now" reported once


class DiskSpool:
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
        #: Whom this tracker sends for (``_spool_identity``): its files carry it, and only
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
        self.unread: deque[_Unread] = deque()
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
            return self._write_unlocked(body, n, first_seq)

    def adopt(self, now: float) -> tuple[int, list[bytes], list[Problem]]:
        with self.lock:
            return self._adopt_unlocked(now)

    def read_adopted(
        self, limit: int
    ) -> tuple[list[StoredBatch], list[tuple[SpoolFile, str]], int, list[Problem]]:
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

    # ------------------------------------------------------------------ adopting

    def _adopt_unlocked(self, now: float) -> tuple[int, list[bytes], list[Problem]]:
        """Take over spool files whose owner is gone and that were written for this
        tracker's identity, at most ``MAX_ADOPTED_FILES`` held at a time.

        Returns how many events they hold (their rows are read later, in chunks, in
        order: ``read_adopted``), the bodies salvaged from damaged files (the caller
        writes them to its own file, so they are sent like any other), and what to
        report: news only (a file already reported is not reported again)."""
        self.next_scan = now + ADOPT_INTERVAL
        if self.closed:
            return 0, [], []
        events = 0
        salvaged: list[bytes] = []
        problems: list[Problem] = []
        # Gone since the last scan: no longer counted.
        self.foreign = {p: i for p, i in self.foreign.items() if os.path.lexists(p)}
        self.refused = {p: w for p, w in self.refused.items() if os.path.lexists(p)}
        known_refused = dict(self.refused)
        known_foreign = set(self.foreign)
        # A file set aside as unreadable while being sent holds no slot any more.
        self.adopted = [f for f in self.adopted if f.is_open]
        mine = {f.path for f in self.adopted}
        if self.own is not None:
            mine.add(self.own.path)  # never opened beside our own connection
        skip = self.skip | self.foreign.keys() | mine
        self.more_orphans = False
        orphans = find_orphans(self.directory, skip, self.refused)
        try:
            for db, fd in orphans:
                if len(self.adopted) >= MAX_ADOPTED_FILES:
                    os.close(fd)
                    self.more_orphans = True
                    break
                events += self._open_one(db, fd, salvaged, problems)
        finally:
            orphans.close()
        for db, why in self.refused.items():
            if known_refused.get(db) != why:
                problems.append(("refused", f"spool file left as it is: {why}"))
        problems.extend(self._foreign_news(known_foreign))
        return events, salvaged, problems

    def _foreign_news(self, known: set[str]) -> list[Problem]:
        """One report per identity for the files of another identity found this scan."""
        by_identity: dict[str | None, list[str]] = {}
        for db, who in self.foreign.items():
            if db not in known:
                by_identity.setdefault(who, []).append(db)
        return [
            (
                "foreign",
                f"{len(paths)} spool file(s) written for another destination or credential "
                f"(identity {short(who)}; this tracker's is {short(self.identity)}) left "
                f"untouched for a tracker of theirs, e.g. {paths[0]}",
            )
            for who, paths in by_identity.items()
        ]

    def _open_one(self, db: str, fd: int, salvaged: list[bytes], problems: list[Problem]) -> int:
        """Adopt one orphan we hold the flock of; how many events it holds (0 if it was
        not adopted). Its rows are read later, a chunk at a time (``read_adopted``)."""
        try:
            file = open_orphan(db, fd, durability=self.durability, identity=self.identity)
        except SpoolEmpty as exc:
            remove_files(db)  # under our flock, released below
            problems.append(("empty", str(exc)))
        except SpoolForeign as exc:
            self.foreign[db] = exc.identity  # reported per identity by the caller
        except SpoolUnsupported as exc:
            self.skip.add(db)
            problems.append(("unsupported", str(exc)))
        except SpoolUnavailable as exc:
            # Permission denied, out of descriptors, busy: not damage. Left as it is,
            # tried again at the next scan.
            self.refused[db] = f"{exc}; tried again later"
        except SpoolCorrupt as exc:  # real damage only (SQLite's codes, quick_check)
            problems.append(self._set_aside(db, None, exc, salvaged))
        except Exception as exc:  # anything else is no proof of damage: left, retried
            self.refused[db] = f"{db}: cannot open ({type(exc).__name__}: {exc}); tried again later"
        else:
            file.receipts = self.receipts  # its pending receipts move to our store
            try:
                found, in_file = file.tally()
            except SpoolUnavailable as exc:
                file.close(remove_if_empty=False)
                self.refused[db] = f"{exc}; tried again later"
                return 0
            except SpoolCorrupt as exc:
                problems.append(self._set_aside(db, file, exc, salvaged))
                return 0
            if not found:
                file.close()
                return 0
            self.adopted.append(file)
            self.unread.append(_Unread(file, in_file))
            return in_file
        os.close(fd)
        return 0

    def _set_aside(
        self, db: str, file: SpoolFile | None, exc: Exception, salvaged: list[bytes]
    ) -> Problem:
        """A damaged orphan: its intact rows recovered, the file renamed aside; or, when
        it is not provably this tracker's (its identity is another's or unreadable),
        left as it is and never sent (``Spool(path).status()`` lists it)."""
        try:
            kept = list(salvage(db, self.identity))
        except SpoolForeign as foreign:
            if file is not None:
                file.close(remove_if_empty=False)
            self.skip.add(db)
            who = "another destination or credential" if foreign.identity else "no readable one"
            return (
                "corrupt",
                f"damaged spool file {db} left as it is and not sent: its identity is "
                f"{who} ({exc})",
            )
        salvaged.extend(body for body, _, _ in kept)
        target = file.quarantine() if file is not None else quarantine(db)
        return (
            "corrupt",
            f"unreadable spool file renamed to {target} ({exc}); "
            f"{len(kept)} intact batches recovered from it",
        )

    def _read_adopted_unlocked(
        self, limit: int
    ) -> tuple[list[StoredBatch], list[tuple[SpoolFile, str]], int, list[Problem]]:
        """The next (up to ``limit``) rows of the adopted files, in order; the files
        found damaged (the caller sets them aside: ``forget_unread``); how many events
        counted at adoption are gone from files read to their end (rows deleted by
        someone else: the caller accounts for them); and what to report (a file that
        cannot be read now, busy: tried again at the next round)."""
        rows: list[StoredBatch] = []
        broken: list[tuple[SpoolFile, str]] = []
        vanished = 0
        problems: list[Problem] = []
        while self.unread and len(rows) < limit and not self.closed:
            unread = self.unread[0]
            asked = limit - len(rows)
            try:
                found = unread.file.rows_after(unread.after, asked)
            except (SpoolCorrupt, SpoolClosed) as exc:
                broken.append((unread.file, str(exc)))
                break  # the caller forgets it, then reads on
            except SpoolUnavailable as exc:  # busy: not damage, tried again later
                if not unread.warned:
                    unread.warned = True
                    problems.append(("error", f"cannot read spool records now: {exc}"))
                break
            if found:
                unread.after = found[-1].rowid
                unread.events -= sum([r.n for r in found])
                rows.extend(found)
            if len(found) < asked:  # read to its end
                self.unread.popleft()
                vanished += max(unread.events, 0)
        return rows, broken, vanished, problems

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
            problems.extend(self._delete_unlocked(file, rows))
        if receipts is not None and not self.closed:
            receipts.move_due(self.files(), now=time.monotonic())
        return problems

    def files(self) -> list[SpoolFile]:
        """The files held open: our own, then the adopted ones."""
        return [*([self.own] if self.own is not None else []), *self.adopted]

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
    out = []
    for i, body in enumerate(bodies):
        seq = first_seq + i if first_seq is not None else next(adopted_seq)
        size = EVENT_OVERHEAD + PENDING_OVERHEAD + len(body)
        item = (seq, "", "", "", 0, 0, WHOLE_BODY, None, size - EVENT_OVERHEAD)
        out.append(Pending(0.0, seq, item, body, size, row=row))
    return out
