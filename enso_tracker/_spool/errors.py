"""What can go wrong with a spool file, as exceptions the spool's callers tell apart:
full (a bound or the disk), closed (shutdown raced a write), damaged (quarantined),
empty, of another format or identity (left as they are), or unusable now (retried)."""

from __future__ import annotations

import sqlite3

from .sqlite import is_corrupt

__all__ = [
    "Problem",
    "SpoolClosed",
    "SpoolCorrupt",
    "SpoolEmpty",
    "SpoolForeign",
    "SpoolFull",
    "SpoolUnavailable",
    "SpoolUnsupported",
    "unreadable",
]

#: Something to report about a file (logged, and counted by the caller).
#: "corrupt" | "unsupported" | "empty" | "error" | "foreign" | "refused"
Problem = tuple[str, str]


class SpoolFull(Exception):
    """The spool file reached ``max_spool_bytes``, or the disk refused to grow it."""


class SpoolClosed(Exception):
    """An operation on a spool file already closed (shutdown raced a last write)."""


class SpoolCorrupt(Exception):
    """A spool file SQLite cannot read: it is renamed aside, never retried."""


class SpoolEmpty(Exception):
    """A spool file with nothing in it to deliver (removed by its adopter)."""


class SpoolUnsupported(Exception):
    """A spool file of another format version: refused, left as it is."""


class SpoolForeign(Exception):
    """A spool file written for another identity (destination or credential): never
    adopted, left as it is for a tracker of that identity."""

    def __init__(self, message: str, identity: str | None) -> None:
        super().__init__(message)
        self.identity = identity


class SpoolUnavailable(Exception):
    """A spool file that cannot be opened now (permission denied, out of descriptors,
    busy, not ours to open): left as it is, tried again at the next scan."""


def unreadable(path: str, exc: BaseException) -> Exception:
    """What an error opening or reading ``path`` means: real damage (``SpoolCorrupt``,
    quarantined) or a passing/permission problem (``SpoolUnavailable``, left alone)."""
    if isinstance(exc, sqlite3.Error) and is_corrupt(exc):
        return SpoolCorrupt(f"{path}: {exc}")
    if isinstance(exc, OSError):
        return SpoolUnavailable(f"{path}: cannot open ({exc.strerror or exc})")
    return SpoolUnavailable(f"{path}: cannot open ({exc})")
