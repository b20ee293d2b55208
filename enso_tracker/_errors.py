"""Exceptions raised by enso-tracker.

Only *programming* errors are raised, and only at the call site: bad arguments to
``Tracker(...)`` or ``track()``. Delivery trouble (network, HTTP status, rejected
records) is never raised into the caller's thread; it is counted in ``stats()`` and
reported through the ``on_drop`` hook and the ``enso_tracker`` logger.

::

    EnsoError
    ├── ConfigurationError(ValueError)     Tracker(...) / init() / from_env() arguments
    ├── NotInitializedError(RuntimeError)  module-level track() before init()
    └── InvalidEventError(ValueError)      track() argument with a bad value
        └── InvalidEventTypeError(TypeError)   track() argument of the wrong type

``InvalidEventError`` carries ``field`` (the argument name) and ``value`` (what was
passed), so a caller can log or count rejections without parsing the message.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigurationError",
    "EnsoError",
    "InvalidEventError",
    "InvalidEventTypeError",
    "NotInitializedError",
    "describe_exception",
    "short_repr",
]

_MAX_REPR = 80


def short_repr(value: Any) -> str:
    """``repr(value)`` for a message: at most 80 characters, and never raising."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not hide the real error
        text = f"<{type(value).__name__} with failing repr>"
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return text


class EnsoError(Exception):
    """Base class of every exception enso-tracker raises."""


class ConfigurationError(EnsoError, ValueError):
    """The tracker was configured with an invalid or contradictory option."""


class NotInitializedError(EnsoError, RuntimeError):
    """A module-level function was called before ``enso_tracker.init()``."""


class InvalidEventError(EnsoError, ValueError):
    """``track()`` got a value it will not send; nothing reached the queue."""

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field}={short_repr(value)}: {problem}")


class InvalidEventTypeError(InvalidEventError, TypeError):
    """``track()`` got an argument of the wrong type."""


#: Exact built-in types whose text names code, not data (a UnicodeError, an OSError or
#: any library subclass may quote a header or body, so none of those is listed).
_PLAIN_BUGS = frozenset(
    {
        RuntimeError,
        AssertionError,
        AttributeError,
        IndexError,
        NameError,
        NotImplementedError,
        RecursionError,
        ZeroDivisionError,
    }
)


def describe_exception(exc: BaseException) -> str:
    """A text for logs, ``stats().last_error`` and drop reasons that cannot leak a secret.

    The text of an exception from the HTTP stack can quote request headers (h11's
    ``Illegal header value b'Bearer ...'``) or bodies (a ``UnicodeEncodeError`` holding
    the login JSON), so it is never used. What is kept: the exception's type, and the
    operating system's own words for the first ``OSError`` in its chain (``Connection
    refused``), or the verification message of a TLS certificate error; and the text of
    a few plain built-in errors that only our own bugs raise (``RuntimeError``…).
    """
    name = type(exc).__name__
    if type(exc) in _PLAIN_BUGS and str(exc):  # our own bugs: the text is the diagnosis
        return f"{name}: {str(exc)[:200]}"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        verify_message = getattr(current, "verify_message", None)
        if isinstance(verify_message, str) and verify_message:
            return f"{name} ({verify_message})"
        if isinstance(current, OSError) and isinstance(current.strerror, str) and current.strerror:
            return f"{name} ({current.strerror})"
        current = current.__cause__ or current.__context__
    return name
