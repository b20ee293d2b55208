"""``Spool(path)``: a spool directory seen from outside any tracker (the CLI's view).

Reads spool files read-only and never takes a file over: a live owner keeps writing
while ``status()`` counts. Redriving writes dead letters into a new, ownerless spool
file (built under a temp name, renamed in complete), which the next tracker on the
directory adopts and delivers like any orphan, with the same eventIds: one file per
identity the dead letters were stored for, so only a tracker with that destination and
credential takes them (letters stored before identities existed are left in place).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import zlib
from collections.abc import Iterator
from typing import Final

import msgspec

from .._errors import ConfigurationError
from .._model import DeadLetter, Event, SpoolStatus
from .._wire import BODY_OVERHEAD, event_of, join_batch, split_batch
from .dead_letters import DeadLetterStore
from .directory import check_directory, lock_path, spool_files
from .errors import SpoolCorrupt
from .format import read_identity, supported, write_unowned
from .identity import short
from .sqlite import SHM, WAL, is_corrupt, open_db
from .trust import UntrustedFile, held_here, try_flock, untrusted

__all__ = ["Spool", "cannot_open"]

#: A redriven batch is cut like the sender cuts one (events and bytes).
_REDRIVE_EVENTS: Final = 500
_REDRIVE_BYTES: Final = 512 * 1024


def _live(db: str) -> bool:
    """Whether a running process owns ``db`` (holds the exclusive flock on the db, or on
    the lock file of format 1). Probed with a shared lock, released at once: never
    mistaken for an owner. A file this process holds is not probed (closing a second
    descriptor of it would drop SQLite's own locks on it)."""
    if held_here(db):
        return True
    for path in (db, lock_path(db)):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if not try_flock(fd, shared=True):
                return True
        except OSError:
            continue
        finally:
            os.close(fd)
    return False


def cannot_open(path: str, exc: BaseException) -> str:
    """Why ``path`` could not be read, when it is not damaged: in words an operator
    acts on (permission denied: run as the owner; busy: try again)."""
    errno_ = getattr(exc, "errno", None)
    text = str(exc).lower()
    if errno_ == errno.EACCES or errno_ == errno.EPERM or not os.access(path, os.R_OK):
        return "cannot open: permission denied"
    if "readonly" in text or "read-only" in text or "attempt to write" in text:
        return "cannot open: permission denied (read-only)"
    if "locked" in text or "busy" in text:
        return "cannot open: busy (locked by another process); try again"
    return f"cannot open: {exc}"


def _classify(
    path: str, exc: BaseException, corrupt: list[str], unreadable: dict[str, str]
) -> None:
    """A file that failed to open or read: damaged (SQLite says so), or only unreadable
    to us (permissions, a lock): never reported as corrupt then."""
    if is_corrupt(exc):
        corrupt.append(path)
    else:
        unreadable[path] = cannot_open(path, exc)


class Spool:
    """A spool directory: status, undelivered events and dead letters, without a tracker.

    ``Spool(path)`` needs the directory to exist (``ConfigurationError`` otherwise) and
    creates nothing in it but what ``redrive()`` writes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        full = os.path.abspath(os.fspath(path))
        if not os.path.isdir(full):
            what = "not a directory" if os.path.exists(full) else "no such directory"
            raise ConfigurationError(f"spool directory {full!r}: {what}")
        self.path = full

    def __repr__(self) -> str:
        return f"Spool({self.path!r})"

    def _store(self) -> DeadLetterStore:
        return DeadLetterStore(self.path, create=False)

    # ------------------------------------------------------------------ status

    def status(self) -> SpoolStatus:
        files = live = events = size = 0
        oldest: float | None = None
        corrupt: list[str] = []
        unsupported: list[str] = []
        refused: list[str] = []
        by_identity: dict[str, int] = {}
        unreadable: dict[str, str] = {}
        for db in spool_files(self.path):
            files += 1
            why = untrusted(db)
            if why is not None and "owned by" not in why:  # a symlink: never followed
                refused.append(db)
                continue
            live += _live(db)
            for suffix in ("", WAL, SHM):
                with contextlib.suppress(OSError):
                    size += os.stat(db + suffix).st_size
            try:
                conn = open_db(db, "ro", ours=False)
            except UntrustedFile:  # replaced by a symlink since the check above
                refused.append(db)
                continue
            except (sqlite3.Error, OSError) as exc:
                _classify(db, exc, corrupt, unreadable)
                continue
            try:
                if not supported(conn):
                    unsupported.append(db)
                    continue
                n, first = conn.execute("SELECT sum(n), min(created) FROM batches").fetchone()
                who = short(read_identity(conn))
            except sqlite3.Error as exc:
                _classify(db, exc, corrupt, unreadable)
                continue
            finally:
                conn.close()
            events += n or 0
            by_identity[who] = by_identity.get(who, 0) + (n or 0)
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        with contextlib.suppress(OSError):
            corrupt.extend(
                os.path.join(self.path, name)
                for name in sorted(os.listdir(self.path))
                if ".corrupt-" in name and not name.endswith((WAL, SHM))
            )
        store = self._store()
        kinds: dict[str, int] = {}
        codes: dict[str, int] = {}
        evicted = 0
        try:
            kinds, codes, evicted = store.counts()
            size += store.size()
        except SpoolCorrupt:
            corrupt.append(store.path)  # the next tracker on the directory sets it aside
        except (sqlite3.Error, OSError) as exc:
            _classify(store.path, exc, corrupt, unreadable)
        finally:
            store.close()
        return SpoolStatus(
            path=self.path,
            files=files,
            live_files=live,
            events=events,
            bytes=size,
            oldest=oldest,
            dead_letters=sum(kinds.values()),
            dead_letters_by_kind=kinds,
            dead_letters_by_code=codes,
            dead_letters_evicted=evicted,
            corrupt_files=corrupt,
            unsupported_files=unsupported,
            events_by_identity=by_identity,
            refused_files=refused,
            unreadable_files=unreadable,
        )

    def pending(self) -> Iterator[Event]:
        """Undelivered events of every spool file, oldest file first, read-only (a
        record that fails its CRC is skipped: ``status()`` and the tracker report it)."""
        for db in spool_files(self.path):
            try:
                conn = open_db(db, "ro", ours=False)
            except (sqlite3.Error, UntrustedFile):  # a symlink is never followed
                continue
            try:
                if not supported(conn):
                    continue
                last = 0
                while True:
                    page = conn.execute(
                        "SELECT id, crc, body FROM batches WHERE id > ? ORDER BY id LIMIT 64",
                        (last,),
                    ).fetchall()
                    if not page:
                        break
                    for rowid, crc, body in page:
                        last = rowid
                        if zlib.crc32(body) != crc:
                            continue
                        with contextlib.suppress(msgspec.DecodeError, ValueError):
                            for one in split_batch(bytes(body)):
                                yield event_of(one)
            except sqlite3.Error:
                continue
            finally:
                conn.close()

    # ------------------------------------------------------------------ dead letters

    def dead_letters(
        self, kind: str | None = None, code: int | str | None = None
    ) -> Iterator[DeadLetter]:
        """Dead letters, oldest first, filtered by kind and Enso's code (as text)."""
        store = self._store()
        try:
            for _, letter in store.iterate(kind, code):
                yield letter
        finally:
            store.close()

    def redrive(self, kind: str | None = None, code: int | str | None = None) -> int:
        """Move matching dead letters into spool files the next tracker on this
        directory with the identity they were stored for adopts and delivers (same
        eventIds). Corrupt records cannot be sent and stay; so do letters stored before
        identities existed (no tracker can tell whose they are). Returns how many were
        moved."""
        return self._redrive(kind, code, None)

    def _redrive(self, kind: str | None, code: int | str | None, only: str | None) -> int:
        """``redrive()``, restricted to the letters of identity ``only`` if given."""
        check_directory(self.path, create=False)  # writes here: a trusted directory only
        store = self._store()
        try:
            chosen: dict[str, tuple[list[int], list[bytes]]] = {}
            for rowid, letter, origin in store.iterate_origins(kind, code):
                if letter.event is None or origin is None or only not in (None, origin):
                    continue
                rowids, bodies = chosen.setdefault(origin, ([], []))
                rowids.append(rowid)
                bodies.append(letter.body)
            moved = 0
            for origin, (rowids, bodies) in chosen.items():
                # Written (and renamed in) before the letters are deleted: a crash between
                # the two leaves them twice, never nowhere (Enso dedups by eventId).
                write_unowned(self.path, _batches(bodies), origin)
                store.delete(rowids)
                moved += len(rowids)
            return moved
        finally:
            store.close()

    def purge_dead_letters(
        self,
        kind: str | None = None,
        code: int | str | None = None,
        *,
        through: int | None = None,
        stored_before: float | None = None,
    ) -> int:
        """Delete matching dead letters for good, in one transaction; returns how many.

        On a directory trackers keep writing to, purge only what was looked at:
        ``through`` (a ``DeadLetter.id``, e.g. the highest one exported) leaves every
        letter stored after it; ``stored_before`` (a ``time.time()``) also leaves those
        stored again (same eventId) or numbered anew since then."""
        store = self._store()
        try:
            return store.purge(kind, code, through=through, stored_before=stored_before)
        finally:
            store.close()


def _batches(bodies: list[bytes]) -> list[tuple[bytes, int]]:
    """Events cut into batches like the sender cuts them (events and bytes)."""
    batches: list[tuple[bytes, int]] = []
    current: list[bytes] = []
    size = BODY_OVERHEAD
    for body in bodies:
        if current and (len(current) >= _REDRIVE_EVENTS or size + len(body) + 1 > _REDRIVE_BYTES):
            batches.append((join_batch(current), len(current)))
            current, size = [], BODY_OVERHEAD
        current.append(body)
        size += len(body) + 1
    if current:
        batches.append((join_batch(current), len(current)))
    return batches
