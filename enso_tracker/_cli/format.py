"""Human formatting for the command line: instants, ages, byte sizes, counted nouns, and
text made printable for a terminal (a name or a message from Enso cannot move the cursor
or change colours). Pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["age", "byte_size", "counts", "iso", "oldest", "plural", "printable"]


def iso(t: float) -> str:
    stamp = datetime.fromtimestamp(t, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def oldest(oldest: float | None, prefix: str) -> str:
    if oldest is None:
        return ""
    now = datetime.now(UTC).timestamp()
    return f"{prefix}{age(now - oldest)} ago ({iso(oldest)})"


def age(seconds: float) -> str:
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


def byte_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def counts(counts: dict[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{printable(k) if k else '(none)'}: {v}" for k, v in ordered)


def printable(text: str) -> str:
    """Printable text for a terminal: an entity, a message from Enso or a file name
    cannot move the cursor or change colours."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
