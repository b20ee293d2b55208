"""Adopting orphans: taking over the spool files of processes that are gone.

``DiskSpool``'s adoption half (a mixin: the state is ``DiskSpool``'s, the lock too).

* Only files written for this tracker's identity (destination and credential) are
  adopted; others are left as they are and counted (``foreign``), like files that may
  not or cannot be opened now (``refused``: retried at every scan).
* At most ``MAX_ADOPTED_FILES`` are held open at a time: when one is drained, the next
  scan comes at once.
* An adopted file's rows are read in chunks, in order (keyset pagination): what memory
  holds for a backlog stays the same whatever its number of rows.
* Only real damage sets a file aside (its intact rows salvaged first); a damaged file
  whose identity cannot be read is left as it is and never sent.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import TYPE_CHECKING, Final

from .directory import find_orphans, quarantine, remove_files
from .errors import (
    Problem,
    SpoolClosed,
    SpoolCorrupt,
    SpoolEmpty,
    SpoolForeign,
    SpoolUnavailable,
    SpoolUnsupported,
)
from .files import SpoolFile, StoredBatch
from .format import open_orphan, salvage
from .identity import short
from .sqlite import Durability

if TYPE_CHECKING:
    from .._receipts import SpoolReceipts

__all__ = ["ADOPT_INTERVAL", "MAX_ADOPTED_FILES", "Adoption", "Unread"]

#: How often a running tracker looks for spool files left by processes that died.
ADOPT_INTERVAL: Final = 60.0
#: Adopted files held open at a time (each costs up to 4 descriptors), however many
#: orphans there are: the rest wait for the next scan, which comes as one is drained.
MAX_ADOPTED_FILES: Final = 8


class Unread:
    """Where reading an adopted file's rows got to: the last rowid handed out, and the
    events of the rows after it."""

    __slots__ = ("after", "events", "file", "warned")

    def __init__(self, file: SpoolFile, events: int) -> None:
        self.file = file
        self.after = 0
        self.events = events
        self.warned = False  # "cannot read now" reported once


class Adoption:
    """The adopting half of ``DiskSpool`` (which sets every attribute below)."""

    directory: str
    identity: str
    durability: Durability
    own: SpoolFile | None
    adopted: list[SpoolFile]
    unread: deque[Unread]
    skip: set[str]
    foreign: dict[str, str | None]
    refused: dict[str, str]
    more_orphans: bool
    next_scan: float
    closed: bool
    lock: threading.RLock
    receipts: SpoolReceipts | None

    def _adopt_locked(self, now: float) -> tuple[int, list[bytes], list[Problem]]:
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
            self.unread.append(Unread(file, in_file))
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

    def _read_adopted_locked(
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
