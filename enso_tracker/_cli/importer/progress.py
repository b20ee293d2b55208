"""The live progress of an import on stderr: rich when installed, else one plain line.

Nothing is shown when stderr is not a terminal (unless forced with ``--progress``), so
logs and pipes stay clean; forced into a file or pipe, progress is plain lines (one every
``LINE_INTERVAL`` seconds, and the last), never terminal escape codes. A background
ticker redraws a few times a second; the importing thread only bumps counters. A stderr
that fails (a closed pipe) ends the display, never the import.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

__all__ = ["LINE_INTERVAL", "Display", "RichMissing", "Snapshot", "Ticker", "make_display"]

#: Seconds between progress lines when stderr is not a terminal.
LINE_INTERVAL = 5.0
#: What to run for ``--progress rich``.
RICH_INSTALL = "pip install 'enso-tracker[cli]'"


class RichMissing(Exception):
    """``--progress rich`` without ``rich`` installed (a usage error)."""

    def __init__(self) -> None:
        super().__init__(f"--progress rich needs the rich package: {RICH_INSTALL}")


@dataclass(frozen=True, slots=True)
class Snapshot:
    rows: int
    elapsed: float
    delivered: int
    invalid: int
    refused: int  # dropped by Enso or refused by the tracker
    #: Part of the input read so far (0..1), when the input sizes are known.
    fraction: float | None
    note: str | None = None  # e.g. "waiting: Enso unreachable"

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if not self.fraction or self.fraction <= 0 or self.elapsed <= 0:
            return None
        return max(self.elapsed * (1 - self.fraction) / self.fraction, 0.0)

    def text(self) -> str:
        eta = self.eta
        parts = [
            f"rows {self.rows:,}",
            f"{self.rate:,.0f} rows/s",
            f"delivered {self.delivered:,}",
            f"invalid {self.invalid:,}",
            f"refused {self.refused:,}",
            f"ETA {_clock(eta)}" if eta is not None else "ETA --:--",
        ]
        if self.note:
            parts.append(self.note)
        return " | ".join(parts)


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Display(Protocol):
    def update(self, snap: Snapshot) -> None: ...

    def log(self, line: str) -> None: ...

    def close(self) -> None: ...


class NoDisplay:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def update(self, snap: Snapshot) -> None:
        pass

    def log(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        pass


class LineDisplay:
    """For a stderr that is not a terminal: whole lines, no escape codes, every
    ``LINE_INTERVAL`` seconds (and the last one at the end)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._next = 0.0
        self._broken = False
        self._last: Snapshot | None = None
        self._written: Snapshot | None = None

    def update(self, snap: Snapshot) -> None:
        with self._lock:
            self._last = snap
            now = time.monotonic()
            if now >= self._next:
                self._next = now + LINE_INTERVAL
                self._written = snap
                self._write(snap.text() + "\n")

    def log(self, line: str) -> None:
        with self._lock:
            self._write(line + "\n")

    def close(self) -> None:
        with self._lock:
            if self._last is not None and self._last is not self._written:
                self._write(self._last.text() + "\n")

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed pipe: the import goes on without it
            self._broken = True


class PlainDisplay:
    """One line, redrawn in place with ``\\r``; log lines are printed above it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._last = ""

        self._broken = False

    def update(self, snap: Snapshot) -> None:
        with self._lock:
            self._last = snap.text()
            self._write("\r\033[K" + self._last)

    def log(self, line: str) -> None:
        with self._lock:
            self._write("\r\033[K" + line + "\n" + self._last)

    def close(self) -> None:
        with self._lock:
            if self._last:
                self._write("\n")

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed terminal: the import goes on without it
            self._broken = True


class RichDisplay:
    def __init__(self, stream: TextIO, rich_progress: Any, rich_console: Any) -> None:
        console = rich_console.Console(file=stream, force_terminal=True)
        columns = (
            rich_progress.BarColumn(),
            rich_progress.TaskProgressColumn(),
            rich_progress.TextColumn("{task.description}"),
        )
        self._progress = rich_progress.Progress(*columns, console=console, auto_refresh=False)
        self._task = self._progress.add_task("starting", total=1.0)
        self._progress.start()

    def update(self, snap: Snapshot) -> None:
        self._progress.update(
            self._task, completed=snap.fraction or 0.0, description=snap.text(), refresh=True
        )

    def log(self, line: str) -> None:
        self._progress.console.print(line, markup=False, highlight=False)

    def close(self) -> None:
        self._progress.stop()


def make_display(mode: str, stream: TextIO | None = None) -> Display:
    """``auto``: rich on a terminal if installed, else plain on a terminal, else nothing.
    ``plain`` or ``rich`` forced where stderr is not a terminal: plain lines. ``rich``
    without rich installed: ``RichMissing`` (checked first, wherever stderr goes)."""
    out = sys.stderr if stream is None else stream
    if mode == "rich":
        try:
            import rich.console
            import rich.progress
        except ImportError:
            raise RichMissing from None
    tty = _isatty(out)
    if mode == "none" or (mode == "auto" and not tty):
        return NoDisplay(out)
    if not tty:
        return LineDisplay(out)
    if mode in ("auto", "rich"):
        try:
            import rich.console
            import rich.progress
        except ImportError:
            if mode == "rich":
                raise RichMissing from None
        else:
            return RichDisplay(out, rich.progress, rich.console)
    return PlainDisplay(out)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


class Ticker:
    """Redraws ``display`` from ``snapshot()`` every ``interval`` seconds until closed."""

    def __init__(
        self, display: Display, snapshot: Callable[[], Snapshot], interval: float = 0.25
    ) -> None:
        self._display = display
        self._snapshot = snapshot
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="enso-cli-progress", daemon=True)
        if not isinstance(display, NoDisplay):
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._display.update(self._snapshot())

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            self._display.update(self._snapshot())
        self._display.close()
