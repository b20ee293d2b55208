"""``enso-tracker spool status``, and ``doctor``'s one-line view of the same directory
(``spool_check``)."""

from __future__ import annotations

import argparse
import os
import sys

import msgspec

from .... import Spool
from ...._errors import ConfigurationError
from ...._spool.identity import short
from ..._output import EXIT_INCOMPLETE, EXIT_OK, marks, print_json
from ...format import byte_size, counts, oldest, plural, printable
from .common import action_parser, os_error

__all__ = ["add_status", "spool_check", "status"]


def add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    action_parser(
        sub,
        "status",
        "spool files, undelivered events, bytes, oldest event, dead letters by kind and code",
        "examples:\n  enso-tracker spool status --dir /var/spool/enso\n"
        "  ENSO_SPOOL_DIR=/var/spool/enso enso-tracker spool status --json\n\n"
        "Exit code 1 when dead letters, corrupt or unsupported files need attention.",
        status,
    )


def status(args: argparse.Namespace, spool: Spool, path: str) -> int:
    status = spool.status()
    attention = bool(
        status.dead_letters
        or status.corrupt_files
        or status.unsupported_files
        or status.unreadable_files
    )
    code = EXIT_INCOMPLETE if attention else EXIT_OK
    if args.json:
        print_json({**msgspec.structs.asdict(status), "exit_code": code})
        return code
    ok, bad = marks(sys.stdout)
    lines = [
        f"spool directory: {printable(status.path)}",
        f"spool files:     {status.files} ({status.live_files} owned by a running process)",
        f"undelivered:     {plural(status.events, 'event')}"
        + oldest(status.oldest, ", oldest written "),
        f"disk used:       {byte_size(status.bytes)}",
        f"dead letters:    {status.dead_letters}",
    ]
    if status.events_by_identity:
        # Whom the undelivered events were written for (a fingerprint, never a key):
        # only a tracker with that base URL and key sends them.
        lines.insert(3, "  by identity:   " + counts(status.events_by_identity))
    if status.dead_letters_evicted:
        lines[-1] += (
            f" ({status.dead_letters_evicted} older ones evicted: the store reached "
            "max_dead_letter_bytes)"
        )
    if status.dead_letters:
        lines.append("  by kind:       " + counts(status.dead_letters_by_kind))
        lines.append("  by code:       " + counts(status.dead_letters_by_code))
    for label, files in (
        ("corrupt files", status.corrupt_files),
        ("unsupported files (older format)", status.unsupported_files),
        ("files never opened (symlinks, not regular files)", status.refused_files),
    ):
        mark = bad if files else ok
        lines.append(f"{mark} {label}: {len(files)}")
        lines.extend(f"    {printable(name)}" for name in files)
    if status.unreadable_files:
        lines.append(
            f"{bad} unreadable files: {len(status.unreadable_files)} (not damaged as far as "
            "this user can tell; they may hold undelivered events: never delete them)"
        )
        lines.extend(
            f"    {printable(name)}: {printable(why)}"
            for name, why in status.unreadable_files.items()
        )
    if status.dead_letters:
        where = f" --dir {printable(path)}" if args.dir else ""
        lines.append(
            f"dead letters will never be delivered as they are: list them with "
            f"`enso-tracker spool dead-letters{where}`, fix the cause, then `enso-tracker "
            f"spool redrive{where}` (or keep a copy and delete them: `enso-tracker spool "
            f"export --purge -o FILE{where}`)"
        )
    print("\n".join(lines))
    return code


def spool_check(path: str, identity: str | None = None) -> tuple[bool, str, str | None]:
    """``doctor``'s spool line for ``path``: (ok, what was found, the fix when not ok).
    ``identity``: the spool identity of the configured destination and credentials
    (files of another are reported: a tracker so configured never sends them)."""
    shown = printable(path)
    if not os.path.isdir(path):
        return (
            False,
            f"ENSO_SPOOL_DIR={shown}: no such directory",
            f"fix ENSO_SPOOL_DIR, or create the directory: mkdir -m 700 {shown}",
        )
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return (
            False,
            f"ENSO_SPOOL_DIR={shown}: this user cannot read and write it",
            "give the user that runs the tracker read and write access to it",
        )
    try:
        status = Spool(path).status()
    except (ConfigurationError, OSError) as exc:
        why = str(exc) if isinstance(exc, ConfigurationError) else os_error(exc)
        return (
            False,
            f"ENSO_SPOOL_DIR={shown}: unreadable: {why}",
            "check the directory's permissions and filesystem",
        )
    detail = (
        f"{shown}: {plural(status.files, 'spool file')} ({status.live_files} live), "
        f"{plural(status.events, 'undelivered event')}{oldest(status.oldest, ', oldest ')}, "
        f"{byte_size(status.bytes)}; {plural(status.dead_letters, 'dead letter')}"
    )
    if status.dead_letters:
        detail += f" ({counts(status.dead_letters_by_kind)}), see `enso-tracker spool status`"
    problems = []
    fixes = []
    if status.corrupt_files:
        problems.append(f"{len(status.corrupt_files)} corrupt: {', '.join(status.corrupt_files)}")
        aside = [f for f in status.corrupt_files if ".corrupt-" in os.path.basename(f)]
        if len(aside) < len(status.corrupt_files):
            fixes.append(
                "a damaged file not yet set aside may still hold undelivered events: start a "
                "tracker on this directory, which recovers its intact batches and renames it "
                "*.corrupt-*; do not delete it"
            )
        if aside:
            fixes.append(
                "files renamed *.corrupt-* were set aside after their intact batches were "
                "recovered and are never read again: keep them for investigation"
            )
    if status.unsupported_files:
        problems.append(
            f"{len(status.unsupported_files)} in an older format: "
            f"{', '.join(status.unsupported_files)}"
        )
        fixes.append(
            "start the enso-tracker version that wrote the older files on this directory "
            "until they are delivered, then upgrade"
        )
    if identity is not None:
        foreign = {who: n for who, n in status.events_by_identity.items() if who != short(identity)}
        if foreign:
            problems.append(
                f"{plural(sum(foreign.values()), 'undelivered event')} written for another "
                f"destination or credential (identities {', '.join(sorted(foreign))}; "
                f"this configuration's is {short(identity)})"
            )
            fixes.append(
                "a tracker adopts only spool files written for its own base URL and key: "
                "start one with the base URL and key those files were written for until "
                "they are delivered (never delete them: they hold undelivered events)"
            )
    if status.refused_files:
        problems.append(
            f"{len(status.refused_files)} never opened (symlinks or not regular files): "
            f"{', '.join(status.refused_files)}"
        )
        fixes.append("nothing but the tracker's own files belongs in a spool directory")
    if status.unreadable_files:
        problems.append(
            f"{len(status.unreadable_files)} unreadable: "
            + ", ".join(f"{f} ({why})" for f, why in status.unreadable_files.items())
        )
        fixes.append(
            "run doctor as the user the tracker runs as (they may hold undelivered events: "
            "never delete them)"
        )
    if problems:
        return False, f"{detail}; files not read: {'; '.join(problems)}", "; ".join(fixes)
    return True, detail, None
