"""The live progress of an import on stderr: rich when installed, else one plain line.

Nothing is shown when stderr is not a terminal (unless forced with ``--progress``), so
logs and pipes stay clean. A background ticker redraws a few times a second; the
importing thread only bumps counters.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

__all__ = ["Display", "Snapshot", "Ticker", "make_display"]


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


class PlainDisplay:
    """One line, redrawn in place with ``\\r``; log lines are printed above it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._last = ""

    def update(self, snap: Snapshot) -> None:
        with self._lock:
            self._last = snap.text()
            self._stream.write("\r\033[K" + self._last)
            self._stream.flush()

    def log(self, line: str) -> None:
        with self._lock:
            self._stream.write("\r\033[K" + line + "\n" + self._last)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._last:
                self._stream.write("\n")
                self._stream.flush()


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
    """``auto``: rich on a terminal if installed, else plain on a terminal, else nothing."""
    out = sys.stderr if stream is None else stream
    if mode == "none" or (mode == "auto" and not out.isatty()):
        return NoDisplay(out)
    if mode in ("auto", "rich"):
        try:
            import rich.console
            import rich.progress
        except ImportError:
            if mode == "rich":
                raise
        else:
            return RichDisplay(out, rich.progress, rich.console)
    return PlainDisplay(out)


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
