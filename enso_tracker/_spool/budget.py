"""How large this process's spool file may grow, all bounds together.

Four bounds limit it: ``max_spool_bytes`` (this file), ``max_spool_dir_bytes`` (every
spool file in the directory, whoever wrote it), ``spool_min_free_bytes`` (what the
filesystem must keep free) and the process's file size limit (``RLIMIT_FSIZE``). The
tightest one becomes SQLite's ``PRAGMA max_page_count`` on our file: SQLite itself then
refuses (SQLITE_FULL) an insert that would grow the file past it, while inserts into
pages freed by deletes, and deletes, go on. A refused insert is ``SpoolFull``: it
follows ``queue_full_policy`` and is counted as ``spool_full``, never sent from memory
as if nothing happened.

What other processes' files hold and what the filesystem has free change under us:
they are measured again every ``REFRESH`` seconds at a write (a directory listing, two
``stat`` per file, one ``statvfs``), and at once when a write is refused, never per
write.
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
from typing import Final

from .files import SpoolFile
from .sqlite import PAGE_SIZE, WAL, disk_size

__all__ = ["REFRESH", "Budget", "file_size_limit", "free_bytes"]

#: Seconds between two measurements of the directory and the filesystem.
REFRESH: Final = 1.0


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of ``directory``."""
    found = os.statvfs(directory)
    return found.f_bavail * found.f_frsize


def file_size_limit() -> int | None:
    """The process's largest file (``RLIMIT_FSIZE``, soft), or None if unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _others_bytes(directory: str, own: str | None) -> int:
    """Bytes of every spool file in ``directory`` (with its WAL) but ``own``. Measured
    with ``lstat``: a planted symlink counts for nothing, whatever it points to."""
    total = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if not (name.startswith("spool-") and name.endswith((".db", ".db" + WAL))):
                continue
            path = os.path.join(directory, name)
            if path in (own, f"{own}{WAL}"):
                continue
            with contextlib.suppress(OSError):
                found = os.lstat(path)
                if stat.S_ISREG(found.st_mode):
                    total += found.st_size
    return total


class Budget:
    """The pages our spool file may hold, and which bound sets that figure."""

    def __init__(
        self, directory: str, *, max_file_bytes: int, max_dir_bytes: int, min_free_bytes: int
    ) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.max_dir_bytes = max_dir_bytes
        self.min_free_bytes = min_free_bytes
        self.next_refresh = 0.0  # monotonic time of the next measurement
        self.pages = max_file_bytes // PAGE_SIZE
        self.reason = f"max_spool_bytes={max_file_bytes} reached"

    def measure(self, own: SpoolFile | None) -> tuple[int, str]:
        """The pages ``own`` (None: a file not yet created) may hold, and why."""
        own_pages = own.page_count() if own is not None else 0
        bounds = [(self.max_file_bytes // PAGE_SIZE, f"max_spool_bytes={self.max_file_bytes}")]
        others = _others_bytes(self.directory, own.path if own is not None else None)
        bounds.append(
            (
                max(self.max_dir_bytes - others, 0) // PAGE_SIZE,
                f"max_spool_dir_bytes={self.max_dir_bytes} (the other spool files in the "
                f"directory hold {others} bytes)",
            )
        )
        if self.min_free_bytes:
            with contextlib.suppress(OSError):
                free = free_bytes(self.directory)
                bounds.append(
                    (
                        own_pages + max(free - self.min_free_bytes, 0) // PAGE_SIZE,
                        f"spool_min_free_bytes={self.min_free_bytes} (the filesystem has "
                        f"{free} bytes free)",
                    )
                )
        limit = file_size_limit()
        if limit is not None:
            bounds.append(
                (limit // PAGE_SIZE, f"the process's file size limit (RLIMIT_FSIZE) {limit}")
            )
        pages, why = min(bounds)
        return pages, f"{why} reached"

    def apply(self, own: SpoolFile, now: float, *, force: bool = False) -> bool:
        """Measure again if due (or ``force``) and set ``own``'s page limit. True if the
        limit grew (a write refused before may fit now)."""
        if not force and now < self.next_refresh:
            return False
        self.next_refresh = now + REFRESH
        before = self.pages
        self.pages, self.reason = self.measure(own)
        own.limit_pages(self.pages)
        return self.pages > before

    def room_for(self, nbytes: int) -> bool:
        """Whether a file not yet created could take a row of ``nbytes`` now."""
        pages, self.reason = self.measure(None)
        return pages * PAGE_SIZE >= nbytes + 4 * PAGE_SIZE

    def size_limited(self, own: SpoolFile, nbytes: int) -> bool:
        """Whether a write of ``nbytes`` failed for the file size limit (SQLite reports
        EFBIG as a plain I/O error): one of our files is that close to it."""
        limit = file_size_limit()
        if limit is None:
            return False
        wal = _wal_bytes(own.path)
        largest = max(disk_size(own.path) - wal, wal)
        return largest + nbytes + 2 * PAGE_SIZE > limit


def _wal_bytes(db: str) -> int:
    try:
        return os.stat(db + WAL).st_size
    except OSError:
        return 0
