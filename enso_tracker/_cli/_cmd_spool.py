"""``enso-tracker spool``: a durable spool directory, with or without a tracker running on it.

``status``, ``dead-letters``, ``redrive``, ``purge`` and ``export`` are thin layers over the
public :class:`enso_tracker.Spool`: nothing here reads the files itself, and nothing here
sends anything. A redrive moves dead letters into a spool file that the next tracker on
the directory adopts and delivers, with their eventIds, so Enso counts each once.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, Any, Final

import msgspec

from .. import DeadLetter, Event, Spool
from .._errors import ConfigurationError
from .._spool.admin import cannot_open
from .._spool.dead_letters import FILE_NAME as DEAD_LETTERS
from .._spool.errors import SpoolCorrupt
from .._spool.identity import short
from .._spool.sqlite import is_corrupt
from ._mapping import api_shape
from ._output import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    json_line,
    marks,
    print_json,
    setup_logging,
    stderr_line,
)

__all__ = ["spool_check"]

NAME = "spool"
#: No --base-url: these commands never talk to Enso. Each action has its own --json.
COMMON = False
HELP = "inspect a spool directory: status, dead letters, redrive, purge, export"

#: The drop kinds a spool stores as dead letters.
KINDS: Final = ("rejected", "too_large", "retries_exhausted", "corrupt")

#: A file the action needs cannot be read: the dead-letter store is damaged, or this user
#: cannot open it (permissions, a lock). Nothing was changed.
EXIT_UNREADABLE: Final = 3

SPOOL_EXIT_CODES: Final = """\
exit codes:
  0    done (status: no dead letters, corrupt, unreadable or unsupported files)
  1    status: the directory holds dead letters, corrupt, unreadable or unsupported files
  2    usage error: no --dir and no $ENSO_SPOOL_DIR, no such directory, bad flag, or
       purge without --yes when stdin is not a terminal; nothing was changed
  3    the dead-letter store cannot be read: damaged, or this user cannot open it
       (permission denied, locked); nothing was changed
  130  interrupted"""


def configure(parser: argparse.ArgumentParser) -> None:
    """examples:
      enso-tracker spool status --dir /var/spool/enso
      ENSO_SPOOL_DIR=/var/spool/enso enso-tracker spool dead-letters --code 2002
      enso-tracker spool export -o dead-letters.jsonl        # then fix the cause, and:
      enso-tracker spool redrive --kind rejected --code 2002  # the next tracker delivers them
      enso-tracker spool export --purge -o kept.jsonl         # keep a copy, delete just those

    Every action takes --dir DIR (default: $ENSO_SPOOL_DIR) and --json, after the action.
    Exit codes of the spool actions: 0 done; 1 `status` found dead letters, corrupt,
    unreadable or unsupported files; 2 usage error (no directory, bad flag, purge without
    --yes when stdin is not a terminal), nothing changed; 3 the dead-letter store cannot be
    read (damaged, permission denied), nothing changed; 130 interrupted. They send nothing
    to Enso."""
    sub = parser.add_subparsers(dest="spool_action", required=True, metavar="ACTION")
    for name, help_, examples, extra, action in _ACTIONS:
        child = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=examples + "\n\n" + SPOOL_EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        child.add_argument(
            "--dir",
            metavar="DIR",
            help="the spool directory (default: $ENSO_SPOOL_DIR)",
        )
        child.add_argument("--json", action="store_true", help="machine-readable output")
        extra(child)
        child.set_defaults(spool_run=action)


def run(args: argparse.Namespace) -> int:
    setup_logging()  # COMMON = False: main() leaves it to us
    path = args.dir or os.environ.get("ENSO_SPOOL_DIR") or None
    if path is None:
        return _usage(args, "no spool directory: pass --dir DIR or set ENSO_SPOOL_DIR")
    try:
        spool = Spool(path)
    except ConfigurationError as exc:
        return _usage(args, str(exc))
    except OSError as exc:
        return _usage(args, _os_error(exc))
    action: Callable[[argparse.Namespace, Spool, str], int] = args.spool_run
    try:
        return action(args, spool, path)
    except ConfigurationError as exc:
        return _usage(args, str(exc))
    except OSError as exc:
        return _usage(args, _os_error(exc))
    except (SpoolCorrupt, sqlite3.Error) as exc:
        return _unreadable(args, spool, exc)


def _unreadable(args: argparse.Namespace, spool: Spool, exc: Exception) -> int:
    """The dead-letter store could not be read: one line saying why and what to do."""
    store = os.path.join(spool.path, DEAD_LETTERS)
    if isinstance(exc, SpoolCorrupt) or is_corrupt(exc):
        why = (
            f"it is damaged ({_clean(str(exc).removeprefix(store + ': '))}); the next tracker "
            "started on this directory renames it aside (*.corrupt-*) and starts a new one"
        )
    else:
        why = f"{cannot_open(store, exc)}; run as the user that owns the directory"
    stderr_line(
        f"enso-tracker spool {args.spool_action}: cannot read the dead-letter store "
        f"{_clean(store)}: {why}; nothing was changed"
    )
    if args.json:
        print_json({"error": "unreadable", "path": store, "exit_code": EXIT_UNREADABLE})
    return EXIT_UNREADABLE


# ----------------------------------------------------------------------- status


def _status_args(parser: argparse.ArgumentParser) -> None:
    pass


def _status(args: argparse.Namespace, spool: Spool, path: str) -> int:
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
        f"spool directory: {_clean(status.path)}",
        f"spool files:     {status.files} ({status.live_files} owned by a running process)",
        f"undelivered:     {_n(status.events, 'event')}"
        + _oldest(status.oldest, ", oldest written "),
        f"disk used:       {_size(status.bytes)}",
        f"dead letters:    {status.dead_letters}",
    ]
    if status.events_by_identity:
        # Whom the undelivered events were written for (a fingerprint, never a key):
        # only a tracker with that base URL and key sends them.
        lines.insert(3, "  by identity:   " + _counts(status.events_by_identity))
    if status.dead_letters_evicted:
        lines[-1] += (
            f" ({status.dead_letters_evicted} older ones evicted: the store reached "
            "max_dead_letter_bytes)"
        )
    if status.dead_letters:
        lines.append("  by kind:       " + _counts(status.dead_letters_by_kind))
        lines.append("  by code:       " + _counts(status.dead_letters_by_code))
    for label, files in (
        ("corrupt files", status.corrupt_files),
        ("unsupported files (older format)", status.unsupported_files),
        ("files never opened (symlinks, not regular files)", status.refused_files),
    ):
        mark = bad if files else ok
        lines.append(f"{mark} {label}: {len(files)}")
        lines.extend(f"    {_clean(name)}" for name in files)
    if status.unreadable_files:
        lines.append(
            f"{bad} unreadable files: {len(status.unreadable_files)} (not damaged as far as "
            "this user can tell; they may hold undelivered events: never delete them)"
        )
        lines.extend(
            f"    {_clean(name)}: {_clean(why)}" for name, why in status.unreadable_files.items()
        )
    if status.dead_letters:
        where = f" --dir {_clean(path)}" if args.dir else ""
        lines.append(
            f"dead letters will never be delivered as they are: list them with "
            f"`enso-tracker spool dead-letters{where}`, fix the cause, then `enso-tracker "
            f"spool redrive{where}` (or keep a copy and delete them: `enso-tracker spool "
            f"export --purge -o FILE{where}`)"
        )
    print("\n".join(lines))
    return code


# ----------------------------------------------------------------- dead-letters


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=KINDS, help="only dead letters of this kind")
    parser.add_argument(
        "--code",
        metavar="CODE",
        help="only dead letters with Enso's error code CODE (compared as text: 2002)",
    )


def _dead_letters_args(parser: argparse.ArgumentParser) -> None:
    _filters(parser)
    parser.add_argument("--limit", type=_positive, metavar="N", help="at most N dead letters")


def _dead_letters(args: argparse.Namespace, spool: Spool, path: str) -> int:
    shown = 0
    for letter in spool.dead_letters(kind=args.kind, code=args.code):
        if args.limit is not None and shown >= args.limit:
            break
        shown += 1
        if args.json:
            print(json_line(_listing(letter)))
        else:
            print(_line(letter))
    if not args.json:
        more = " (--limit reached)" if args.limit is not None and shown >= args.limit else ""
        stderr_line(f"{_n(shown, 'dead letter')}{_described(args)}{more}")
    sys.stdout.flush()
    return EXIT_OK


def _listing(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as ``export`` writes it (one vocabulary with ``import``'s errors
    file: the event in the API's shape and a ``deadLetter`` member), and its size."""
    return {**_export_row(letter), "bytes": len(letter.body)}


def _line(letter: DeadLetter) -> str:
    e = letter.event
    r = letter.reason
    if e is None:
        head = f"- (corrupt record, {len(letter.body)} bytes)"
    else:
        head = f"{_clean(e.event_id)}  {_clean(e.entity)}  {_clean(e.metric)}  {e.value}"
    code = "-" if r.code is None else _clean(str(r.code))
    status = "-" if r.status is None else str(r.status)
    return (
        f"{head}  {r.kind}  code={code}  status={status}  stored {_iso(letter.stored_at)}"
        f"  {_clean(r.message)}"
    )


# --------------------------------------------------------------- redrive, purge


def _redrive(args: argparse.Namespace, spool: Spool, path: str) -> int:
    n = spool.redrive(kind=args.kind, code=args.code)
    if args.json:
        print_json({"redriven": n, "exit_code": EXIT_OK})
    elif n:
        print(
            f"redrove {_n(n, 'dead letter')}{_described(args)} into a new "
            f"spool file in {_clean(path)}: the next tracker started on this directory "
            "(spool_dir or ENSO_SPOOL_DIR) delivers them with their eventIds, and a tracker "
            "already running on it adopts them within a minute"
        )
    else:
        print(f"no dead letters{_described(args)}: nothing redriven")
    return EXIT_OK


def _purge_args(parser: argparse.ArgumentParser) -> None:
    _filters(parser)
    parser.add_argument(
        "--through",
        type=_positive,
        metavar="ID",
        help="only dead letters up to this one (the ID `export` printed): never those "
        "stored after the export",
    )
    parser.add_argument(
        "--yes", action="store_true", help="do not ask (required when stdin is not a terminal)"
    )


def _purge(args: argparse.Namespace, spool: Spool, path: str) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            return _usage(
                args,
                "purge deletes dead letters for good: pass --yes to confirm "
                "(stdin is not a terminal, so there is no one to ask)",
            )
        count = sum(
            1
            for d in spool.dead_letters(kind=args.kind, code=args.code)
            if args.through is None or d.id <= args.through
        )
        if count == 0:
            return _purged(args, 0)
        sys.stderr.write(
            f"delete {_n(count, 'dead letter')}{_described(args)} from "
            f"{_clean(path)} for good? (`enso-tracker spool export` keeps a copy) [y/N] "
        )
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            stderr_line("nothing purged")
            return EXIT_OK
    return _purged(
        args, spool.purge_dead_letters(kind=args.kind, code=args.code, through=args.through)
    )


def _purged(args: argparse.Namespace, n: int) -> int:
    if args.json:
        print_json({"purged": n, "exit_code": EXIT_OK})
    else:
        print(f"purged {_n(n, 'dead letter')}{_described(args)}")
    return EXIT_OK


# ----------------------------------------------------------------------- export


def _export_args(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--dead-letters",
        dest="pending",
        action="store_false",
        default=False,
        help="the dead letters, each with a deadLetter member (the default)",
    )
    which.add_argument(
        "--pending",
        dest="pending",
        action="store_true",
        help="the undelivered events in the spool files, oldest first (a snapshot)",
    )
    _filters(parser)
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE (replaced only once complete) instead of stdout",
    )
    parser.add_argument(
        "--purge",
        action="store_true",
        help="then delete exactly the dead letters exported (one transaction, once the "
        "output is complete): never one stored meanwhile",
    )


class _Seen:
    """What an export wrote: its highest ``DeadLetter.id`` (the watermark ``purge
    --through`` takes)."""

    def __init__(self) -> None:
        self.through = 0

    def rows(self, letters: Iterable[DeadLetter]) -> Iterable[str]:
        for letter in letters:
            self.through = max(self.through, letter.id)
            yield json_line(_export_row(letter))


def _export(args: argparse.Namespace, spool: Spool, path: str) -> int:
    if args.pending and (args.kind or args.code is not None):
        return _usage(args, "--kind and --code filter dead letters, not --pending")
    if args.pending and args.purge:
        return _usage(args, "--purge deletes exported dead letters, not --pending events")
    lines: Iterable[str]
    seen = _Seen()
    # Letters stored (or stored again) from now on are never purged by this export.
    started = time.time()
    if args.pending:
        lines = (json_line(_event_row(e)) for e in spool.pending())
        what = "undelivered event"
    else:
        lines = seen.rows(spool.dead_letters(kind=args.kind, code=args.code))
        what = "dead letter"
    to_stdout = args.output in (None, "-")
    if to_stdout:
        n = _write(lines, sys.stdout)
        sys.stdout.flush()
    else:
        target: str = args.output
        temp = f"{target}.tmp-{os.getpid()}"
        try:
            out = open(temp, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            return _usage(args, f"cannot write {target}: {_os_error(exc)}")
        try:
            with out:
                n = _write(lines, out)
                out.flush()
                os.fsync(out.fileno())  # on disk before anything is deleted
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temp)
            raise
    purged: int | None = None
    if args.purge:
        # Only what was written above: numbered up to the last one exported, and stored
        # before the export began (a letter stored again since then is new information).
        purged = (
            spool.purge_dead_letters(
                kind=args.kind, code=args.code, through=seen.through, stored_before=started
            )
            if n
            else 0
        )
    through = seen.through if not args.pending and n else None
    if args.json:
        report: dict[str, Any] = {"exported": n, "pending": args.pending, "through": through}
        if not to_stdout:
            report["path"] = os.path.abspath(args.output)
        if purged is not None:
            report["purged"] = purged
        report["exit_code"] = EXIT_OK
        if not to_stdout:  # (on stdout, the lines alone: a JSONL stream)
            print_json(report)
        return EXIT_OK
    where = "" if to_stdout else f" to {_clean(args.output)}"
    message = f"exported {_n(n, what)}{where}"
    if purged is not None:
        message += f", then purged {_n(purged, 'dead letter')} (exactly those exported)"
    elif through is not None:
        filters = "".join(
            f" --{k} {_clean(str(v))}"
            for k, v in (("kind", args.kind), ("code", args.code))
            if v is not None
        )
        message += (
            f" (through #{through}); to delete exactly these and none stored since: "
            f"enso-tracker spool purge{filters} --through {through} --yes"
        )
    if to_stdout:
        stderr_line(message)
    else:
        print(message)
    return EXIT_OK


def _write(lines: Iterable[str], out: IO[str]) -> int:
    n = 0
    for line in lines:
        out.write(line + "\n")
        n += 1
    return n


def _event_row(e: Event) -> dict[str, Any]:
    """The API's own shape: what ``enso-tracker import`` reads with no mapping, eventId
    included, so a re-import bills nothing twice."""
    return api_shape(e.entity, e.metric, e.value, e.timestamp, e.event_id, e.metadata, e.job_id)


def _export_row(letter: DeadLetter) -> dict[str, Any]:
    r = letter.reason
    info = {
        "kind": r.kind,
        "code": r.code,
        "status": r.status,
        "message": r.message,
        "storedAt": _iso(letter.stored_at),
    }
    if letter.event is None:
        return {"deadLetter": info, "corruptBodyBase64": base64.b64encode(letter.body).decode()}
    return {**_event_row(letter.event), "deadLetter": info}


# --------------------------------------------------------------------- doctor


def spool_check(path: str, identity: str | None = None) -> tuple[bool, str, str | None]:
    """``doctor``'s spool line for ``path``: (ok, what was found, the fix when not ok).
    ``identity``: the spool identity of the configured destination and credentials
    (files of another are reported: a tracker so configured never sends them)."""
    shown = _clean(path)
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
        why = str(exc) if isinstance(exc, ConfigurationError) else _os_error(exc)
        return (
            False,
            f"ENSO_SPOOL_DIR={shown}: unreadable: {why}",
            "check the directory's permissions and filesystem",
        )
    detail = (
        f"{shown}: {_n(status.files, 'spool file')} ({status.live_files} live), "
        f"{_n(status.events, 'undelivered event')}{_oldest(status.oldest, ', oldest ')}, "
        f"{_size(status.bytes)}; {_n(status.dead_letters, 'dead letter')}"
    )
    if status.dead_letters:
        detail += f" ({_counts(status.dead_letters_by_kind)}), see `enso-tracker spool status`"
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
                f"{_n(sum(foreign.values()), 'undelivered event')} written for another "
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


# -------------------------------------------------------------------- helpers


def _usage(args: argparse.Namespace, message: str) -> int:
    stderr_line(f"enso-tracker spool {args.spool_action}: {message}")
    return EXIT_USAGE


def _described(args: argparse.Namespace) -> str:
    parts = []
    if getattr(args, "kind", None):
        parts.append(f"kind={args.kind}")
    if getattr(args, "code", None) is not None:
        parts.append(f"code={_clean(args.code)}")
    return f" ({', '.join(parts)})" if parts else ""


def _os_error(exc: OSError) -> str:
    what = exc.strerror or type(exc).__name__
    return f"{what}: {exc.filename}" if exc.filename else what


def _iso(t: float) -> str:
    stamp = datetime.fromtimestamp(t, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _oldest(oldest: float | None, prefix: str) -> str:
    if oldest is None:
        return ""
    now = datetime.now(UTC).timestamp()
    return f"{prefix}{_age(now - oldest)} ago ({_iso(oldest)})"


def _age(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m} min"
    d, h = divmod(h, 24)
    return f"{d} d {h} h"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _counts(counts: dict[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{_clean(k) if k else '(none)'}: {v}" for k, v in ordered)


def _clean(text: str) -> str:
    """Printable text for a terminal: an entity, a message from Enso or a file name
    cannot move the cursor or change colours."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_ACTIONS: Final[
    tuple[
        tuple[
            str,
            str,
            str,
            Callable[[argparse.ArgumentParser], None],
            Callable[[argparse.Namespace, Spool, str], int],
        ],
        ...,
    ]
] = (
    (
        "status",
        "spool files, undelivered events, bytes, oldest event, dead letters by kind and code",
        "examples:\n  enso-tracker spool status --dir /var/spool/enso\n"
        "  ENSO_SPOOL_DIR=/var/spool/enso enso-tracker spool status --json\n\n"
        "Exit code 1 when dead letters, corrupt or unsupported files need attention.",
        _status_args,
        _status,
    ),
    (
        "dead-letters",
        "list the dead letters: one line each (or JSONL with --json)",
        "examples:\n  enso-tracker spool dead-letters --kind rejected --code 2002\n"
        "  enso-tracker spool dead-letters --json --limit 100 | jq .eventId",
        _dead_letters_args,
        _dead_letters,
    ),
    (
        "redrive",
        "move dead letters back to be delivered by the next tracker on the directory",
        "examples:\n  enso-tracker spool redrive --kind rejected --code 2002\n"
        "  enso-tracker spool redrive --kind retries_exhausted\n\n"
        "The events keep their eventIds, so Enso counts each once even if it had one. A\n"
        "tracker already running on the directory adopts them within a minute.",
        _filters,
        _redrive,
    ),
    (
        "purge",
        "delete dead letters for good",
        "examples:\n  enso-tracker spool purge --kind too_large --yes\n"
        "  enso-tracker spool export --purge -o kept.jsonl   # a copy, then exactly those\n"
        "  enso-tracker spool purge --through 418 --yes       # the ID `export` printed\n\n"
        "Trackers may store dead letters at any time: `purge` without --through deletes\n"
        "those stored after you looked too. Without --yes it asks on a terminal, and\n"
        "refuses (exit 2) when stdin is not one.",
        _purge_args,
        _purge,
    ),
    (
        "export",
        "write dead letters (default) or undelivered events as JSONL in the API's shape",
        "examples:\n  enso-tracker spool export -o dead-letters.jsonl\n"
        "  enso-tracker spool export --pending | gzip > pending.jsonl.gz\n"
        "  enso-tracker import dead-letters.jsonl   # once fixed: same eventIds, billed once\n\n"
        "One JSON object per line in the API's shape (CustomerEntityId, metric, value,\n"
        "timestamp, eventId, metadata, JobId) that `enso-tracker import` reads as is; a dead\n"
        'letter adds "deadLetter": {kind, code, status, message, storedAt}. A corrupt record\n'
        'is {"deadLetter": {...}, "corruptBodyBase64": "..."}.',
        _export_args,
        _export,
    ),
)
