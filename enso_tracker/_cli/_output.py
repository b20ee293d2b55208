"""Output shared by the commands: exit codes, JSON for scripts, marks, log lines."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, Final, TextIO

import msgspec

__all__ = [
    "EXIT_DAMAGED",
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNDELIVERED",
    "EXIT_USAGE",
    "fingerprint",
    "marks",
    "print_json",
    "setup_logging",
]

#: Every valid row was delivered (import, send); every check passed (doctor).
EXIT_OK: Final = 0
#: Finished, but some rows were invalid or refused by Enso for good (e.g. 2002); each one is
#: in the errors file. For ``doctor``: at least one check failed.
EXIT_INCOMPLETE: Final = 1
#: Usage or configuration error (bad flag, no credentials, unreadable input); nothing sent.
EXIT_USAGE: Final = 2
#: Could not deliver (Enso unreachable, credentials refused, deadline passed). Re-running the
#: same command is safe: ids are deterministic and Enso deduplicates them.
EXIT_UNDELIVERED: Final = 3
#: ``import``: an input could not be read to its end (a truncated .gz, an I/O error): what
#: came before it was imported, the rest of the run was not; the errors file names where.
EXIT_DAMAGED: Final = 4
#: Interrupted (Ctrl-C / SIGTERM); as safe to re-run as code 3.
EXIT_INTERRUPTED: Final = 130

EXIT_CODES_HELP: Final = """\
exit codes:
  0    every valid row delivered (import, send); every check passed (doctor)
  1    finished, but some rows invalid or refused by Enso (see the errors file);
       doctor: a check failed
  2    usage or configuration error (bad flag, no credentials, unreadable file)
  3    could not deliver (Enso unreachable, credentials refused, timeout): safe to re-run
  4    import: an input could not be read to its end (e.g. a truncated .gz); the rows
       before were imported, the rest of the run was not (see the errors file)
  130  interrupted: safe to re-run"""

_json = msgspec.json.Encoder(decimal_format="number")


def print_json(obj: Any, out: TextIO | None = None) -> None:
    stream = sys.stdout if out is None else out
    stream.write(_json.encode(obj).decode() + "\n")
    stream.flush()


def json_line(obj: Any) -> str:
    try:
        return _json.encode(obj).decode()
    except UnicodeEncodeError:  # a lone surrogate from input text: shown as U+FFFD
        return _json.encode(_no_surrogates(obj)).decode()


def clean(text: str) -> str:
    """Text that any UTF-8 stream can carry (a lone surrogate becomes U+FFFD)."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _no_surrogates(obj: Any) -> Any:
    if isinstance(obj, str):
        return clean(obj)
    if isinstance(obj, dict):
        return {_no_surrogates(k): _no_surrogates(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_surrogates(v) for v in obj]
    return obj


def marks(stream: TextIO) -> tuple[str, str]:
    """✔/✘, or OK/FAIL where the stream's encoding cannot carry them."""
    try:
        "✔✘".encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "OK  ", "FAIL"
    return "✔", "✘"


def fingerprint(secret: str) -> str:
    """At most the last 4 characters of a secret, and only when it is long enough that
    they give nothing useful away."""
    if len(secret) >= 16:
        return f"…{secret[-4:]} ({len(secret)} chars)"
    return f"set ({len(secret)} chars)"


class _Handler(logging.Handler):
    """The library's warnings as plain ``enso-tracker: ...`` lines, through a sink that
    may be a progress display (so a log line never tears the live line apart)."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink(f"enso-tracker: {record.levelname.lower()}: {record.getMessage()}")
        except Exception:
            self.handleError(record)


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def setup_logging() -> _Handler:
    """Route the ``enso_tracker`` logger to stderr; returns the handler so a progress
    display can take over its sink."""
    logger = logging.getLogger("enso_tracker")
    handler = _Handler(_to_stderr)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    return handler


def stderr_line(line: str) -> None:
    _to_stderr(line)


def route_logs(sink: Callable[[str], None] | None) -> None:
    """Send the library's log lines to ``sink`` (a progress display), or back to stderr."""
    for handler in logging.getLogger("enso_tracker").handlers:
        if isinstance(handler, _Handler):
            handler.sink = sink or _to_stderr
