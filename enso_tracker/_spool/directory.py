"""The spool directory: checked before use, its file names, finding orphans, cleaning up.

A spool directory holds::

    spool-<pid>-<random>.db       (+ -wal, -shm) batches not yet accounted for by Enso;
                                  flock(LOCK_EX) on the db itself, held by its owner for life
    spool-redrive-<random>.db     redriven dead letters: no owner, adopted like an orphan
    dead-letters.db               events that will never be delivered (``dead_letters``)
    <name>.corrupt-<unix time>    an unreadable file, renamed aside and reported

* Never on a network filesystem (its locks cannot keep two processes off one file), and
  only a directory the current user owns and nobody else may write in (``trust``).
* A file whose flock can be taken has no owner (:func:`find_orphans`); what a killed
  process left half made or half removed is cleaned up after every scan.
* Removing a drained file takes -wal, -shm, then the db, with the flock still held, so
  nobody adopts a half-removed file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from collections.abc import Generator
from typing import Final

from .._errors import ConfigurationError
from .sqlite import JOURNAL, SHM, WAL, side_files
from .trust import (
    UntrustedFile,
    check_trusted_dir,
    lock_db,
    open_nofollow,
    try_flock,
    untrusted,
)

__all__ = [
    "check_directory",
    "find_orphans",
    "lock_path",
    "quarantine",
    "remove_files",
    "spool_files",
]

#: Filesystems where flock and SQLite's locking are unreliable or local-only.
_NETWORK_FS: Final = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "9p",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.rclone",
        "fuse.glusterfs",
        "fuse.cephfs",
        "davfs",
        "fuse.davfs2",
    }
)


def _mount_type(path: str) -> str | None:
    """The filesystem type ``path`` lives on (Linux: from /proc/self/mounts), or None."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def check_directory(path: str, *, create: bool) -> str:
    """The spool directory, absolute; created 0700 if ``create``. ``ConfigurationError``
    for one that cannot hold a spool: missing, not a directory, unwritable, on a network
    filesystem (whose locks cannot keep two processes off one file), or not to be
    trusted (owned by another user, writable by group or others: ``trust``)."""
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise ConfigurationError(f"spool_dir={path!r}: must be a directory path")
    full = os.path.abspath(os.fspath(path))
    if create and not os.path.lexists(full):
        try:
            os.makedirs(full, mode=0o700)
            os.chmod(full, 0o700)  # whatever the umask: ours alone
        except FileExistsError:
            pass  # another process made it meanwhile: checked below like any other
        except OSError as exc:
            raise ConfigurationError(
                f"spool_dir={full!r}: cannot create it ({exc.strerror})"
            ) from None
    if not os.path.isdir(full):
        raise ConfigurationError(f"spool_dir={full!r}: no such directory")
    check_trusted_dir(full)
    kind = _mount_type(os.path.realpath(full))
    if kind in _NETWORK_FS:
        raise ConfigurationError(
            f"spool_dir={full!r} is on a network filesystem ({kind}): its locks cannot keep "
            "two processes off one spool file; use a local disk"
        )
    if create:
        probe = os.path.join(full, f".probe-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigurationError(
                f"spool_dir={full!r}: cannot write there ({exc.strerror})"
            ) from None
    return full


def spool_files(directory: str) -> list[str]:
    """Paths of the spool databases in ``directory``, least recently written first."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith("spool-") and n.endswith(".db")]
    except OSError:
        return []
    paths = [os.path.join(directory, n) for n in names]

    def age(p: str) -> tuple[float, str]:
        try:
            return (os.stat(p).st_mtime, p)
        except OSError:
            return (0.0, p)

    return sorted(paths, key=age)


def lock_path(db: str) -> str:
    """The lock file format 1 kept beside a db (now only cleaned up: the flock is on the db)."""
    return db[: -len(".db")] + ".lock"


def remove_files(db: str) -> None:
    """Remove a drained spool file: -wal, -shm, then the db (its flock is still held by
    the caller, so nobody adopts a half-removed file)."""
    for path in (*side_files(db), db, lock_path(db)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def quarantine(db: str) -> str:
    """Rename an unreadable file (and its -wal/-shm) aside as ``*.corrupt-<time>``."""
    stamp = f"corrupt-{int(time.time())}"
    target = f"{db}.{stamp}"
    for suffix in (WAL, SHM, ""):
        with contextlib.suppress(FileNotFoundError):
            os.replace(db + suffix, target + suffix)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path(db))
    return target


def find_orphans(
    directory: str, skip: set[str], refused: dict[str, str]
) -> Generator[tuple[str, int], None, None]:
    """Spool files whose owner is gone, each with the flock fd we now hold on it. Paths
    in ``skip`` (known unusable, or held by this process) are passed over; files we may
    not open (symlinks, another owner, permission denied, out of descriptors) are put in
    ``refused`` with why, and left as they are; leftovers of killed processes are
    removed once every file was looked at."""
    for db in spool_files(directory):
        if db in skip:
            continue
        why = untrusted(db)  # before any open: another user's file is not even locked
        if why is not None:
            refused[db] = f"{db}: {why}"
            continue
        try:
            fd = lock_db(db)
        except UntrustedFile as exc:
            refused[db] = str(exc)
            continue
        except OSError as exc:
            refused[db] = f"{db}: cannot open ({exc.strerror or exc}); tried again later"
            continue
        if fd is None:
            continue  # a live owner (or an adopter) holds it
        refused.pop(db, None)
        yield db, fd
    _remove_stale(directory)


#: A temp redrive file older than this was left by a process killed while writing it.
_STALE_TEMP = 3600.0


def _remove_stale(directory: str) -> None:
    """What killed processes left half made or half removed: a -wal/-shm whose db is
    gone, lock files of format 1 with no db, temp locks, an abandoned temp redrive file.
    (Unlinking never follows a symlink: it removes the name.)"""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith("spool-") and name.endswith((".db" + WAL, ".db" + SHM)):
            # An owner removes -wal and -shm before its db: without the db, they are
            # what a process killed while removing them left.
            if not os.path.lexists(path[: -len(WAL)]):  # (-shm: as long)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            continue
        if name.startswith(".tmp-spool-redrive-") and name.endswith((".db", ".db" + JOURNAL)):
            with contextlib.suppress(OSError):
                if time.time() - os.lstat(path).st_mtime > _STALE_TEMP:
                    os.unlink(path)
            continue
        stale = (name.startswith("spool-") and name.endswith(".lock")) and not os.path.lexists(
            path[: -len(".lock")] + ".db"
        )
        if not (stale or (name.startswith(".tmp-spool-") and name.endswith(".lock"))):
            continue
        try:
            fd = open_nofollow(path, os.O_RDONLY)
        except (OSError, UntrustedFile):
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.lstat(path).st_mode):
                    os.unlink(path)  # a planted symlink: the name goes, never its target
            continue
        try:
            if try_flock(fd) and (not stale or not os.path.lexists(path[: -len(".lock")] + ".db")):
                os.unlink(path)
        except OSError:
            pass  # held by a live process of format 1, or gone meanwhile
        finally:
            os.close(fd)
