"""The spool directory as a trust boundary: who owns it, what may be opened in it.

A spool directory is trusted only if the current user owns it and nobody else can write
in it (``docs/spool.md``); everything in it is opened without following symlinks,
created with mode 0600, and a file owned by another user is never read. SQLite gives
its ``-wal``/``-shm``/``-journal`` files the mode of their database, so a database
created 0600 here keeps them 0600 too.

SQLite opens files by name and cannot be told not to follow symlinks from Python; a
database is therefore checked before (``lstat``: a regular file of ours) and after
SQLite opened it (the same inode under that name). In a directory nobody else can write
in, nobody can swap the file between the two checks.

Descriptors of a database SQLite has open in this process are never opened and closed
beside it (closing any descriptor of a file drops every POSIX lock the process holds on
it, SQLite's included): the spool files this process holds are registered here and
recognized by inode.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
import threading
from typing import Final
from urllib.parse import quote

from .._errors import ConfigurationError

__all__ = [
    "UntrustedFile",
    "check_trusted_dir",
    "create_private",
    "held_here",
    "hold",
    "lock_db",
    "open_nofollow",
    "open_sqlite",
    "release",
    "same_file",
    "try_flock",
    "untrusted",
]

#: Flags of every descriptor opened in a spool directory.
_NOFOLLOW: Final = os.O_NOFOLLOW | os.O_CLOEXEC


class UntrustedFile(Exception):
    """A file in the spool that is not ours to open: a symlink, not a regular file,
    owned by another user, or replaced while being opened. Left as it is, reported."""


def check_trusted_dir(full: str) -> None:
    """``ConfigurationError`` (saying how to fix it) unless the directory is owned by the
    current user and not writable by group or others."""
    try:
        st = os.stat(full)
    except OSError as exc:
        raise ConfigurationError(
            f"spool_dir={full!r}: cannot inspect it ({exc.strerror})"
        ) from None
    me = os.geteuid()
    if st.st_uid != me:
        raise ConfigurationError(
            f"spool_dir={full!r} is owned by uid {st.st_uid}, not by this user (uid {me}): "
            "another user could plant or read spool files there. Use a directory of your "
            f"own (the tracker creates a missing one with mode 0700), or `chown {me} {full}`"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigurationError(
            f"spool_dir={full!r} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):#o}): another user could plant files there "
            f"that would be billed with this tracker's key. `chmod 700 {full}`"
        )


def untrusted(path: str, st: os.stat_result | None = None) -> str | None:
    """Why ``path`` may not be opened (a symlink, not a regular file, another owner), or
    None. A missing file is None: the caller's open finds out."""
    if st is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
    if stat.S_ISLNK(st.st_mode):
        return "a symlink (never followed)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by another user (uid {st.st_uid})"
    return None


def open_nofollow(path: str, flags: int) -> int:
    """``os.open`` that refuses a symlink (``UntrustedFile``) and a file not ours."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise UntrustedFile(f"{path}: a symlink (never followed)") from None
        raise
    why = untrusted(path, os.fstat(fd))
    if why is not None:
        os.close(fd)
        raise UntrustedFile(f"{path}: {why}")
    return fd


def create_private(path: str) -> int:
    """A new file, mode 0600, never through a symlink (``FileExistsError`` if the name
    is taken, whatever it is)."""
    return open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)


def same_file(path: str, before: os.stat_result) -> bool:
    """Whether ``path`` is still the regular file ``before`` was taken of."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino)


# ------------------------------------------------------------------ spool databases


def try_flock(fd: int, *, shared: bool = False) -> bool:
    """The one lock probe: ``flock`` on ``fd`` without waiting (exclusive, or ``shared``
    to only ask whether an owner holds it). False if another descriptor holds a
    conflicting lock; other errors are raised. Whole-file ``flock``, never ``fcntl``
    record locks, which any stray ``close()`` of the file in the process drops."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_db(db: str) -> int | None:
    """An fd holding ``flock`` on the database ``db`` itself, or None if a live owner (or
    an adopter) holds it or the file went away. ``UntrustedFile`` for a symlink or a
    file not ours; ``OSError`` if it cannot be opened (permissions, descriptors)."""
    try:
        fd = open_nofollow(db, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # The file we locked must still be the one under that name (an owner removes
        # its drained file while holding the flock; we may have opened it just before).
        if not try_flock(fd) or not same_file(db, os.fstat(fd)):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_sqlite(
    path: str, mode: str, *, ours: bool, first: str | None = None
) -> sqlite3.Connection:
    """SQLite on ``path`` (which must exist), never through a symlink: checked with
    ``lstat`` before, and the same inode after SQLite opened it. ``ours``: refuse a
    file owned by another user too (a reader may look at another user's files).
    ``first``: a statement to run before anything reads the schema."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise sqlite3.OperationalError(f"{path}: no such file") from None
    why = untrusted(path, before)
    if why is not None and (ours or "owned by" not in why):
        raise UntrustedFile(f"{path}: {why}")
    uri = f"file:{quote(path)}?mode={mode}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5)
    try:
        if first is not None:
            conn.execute(first)
        # SQLite opens lazily: the first statement opens the file, then we look again.
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        if not same_file(path, before):
            raise UntrustedFile(f"{path}: replaced while it was being opened")
    except BaseException:
        conn.close()
        raise
    return conn


# ------------------------------------------------------------------ files held here

_HELD: set[tuple[int, int]] = set()
_HELD_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child holds none of its parent's files (it lets go of them, and adopts
    them if the parent dies); a lock held at the fork by another thread is made anew."""
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()
    _HELD.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def hold(fd: int) -> None:
    """This process holds the spool database ``fd`` is open on (own or adopted)."""
    st = os.fstat(fd)
    with _HELD_LOCK:
        _HELD.add((st.st_dev, st.st_ino))


def release(fd: int) -> None:
    st = os.fstat(fd)
    with _HELD_LOCK:
        _HELD.discard((st.st_dev, st.st_ino))


def held_here(path: str) -> bool:
    """Whether this process holds ``path`` (then: live, and never opened beside SQLite)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    with _HELD_LOCK:
        return (st.st_dev, st.st_ino) in _HELD
