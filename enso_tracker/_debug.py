"""The debug switch: one DEBUG line per request to Enso, and ``ENSO_DEBUG=1``.

The ``enso_tracker`` logger at DEBUG shows, for each ``POST /events/batch``: the events
and bytes in it, the attempt, what came back (status, failed records, Retry-After) and
how long it took. Nothing else of the request: no header, no body, no event, so no
secret and no customer data. The line is queued on the tracker's deferred log
(``_log``), so handlers run with no tracker lock held, like every other record.

``ENSO_DEBUG=1`` in the environment sets that level when a tracker is made, and adds a
stderr handler to the logger if neither it nor the root logger has one (else the lines
would go nowhere); with logging configured, set the level yourself instead.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence

from ._config import env_flag
from ._http.sender import Answered, Outcome, Rejected, Retry, TooLarge, Unauthorized
from ._log import DeferredLog, log
from ._record import Pending

__all__ = ["debug_from_env", "log_request"]

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
_switched = threading.Lock()
_handler: logging.Handler | None = None


def debug_from_env() -> None:
    """Honour ``ENSO_DEBUG=1`` (idempotent; a ConfigurationError for a garbled value)."""
    global _handler
    if not env_flag(os.environ, "ENSO_DEBUG"):
        return
    with _switched:
        log.setLevel(logging.DEBUG)
        if _handler is None and not log.handlers and not logging.getLogger().handlers:
            _handler = logging.StreamHandler(sys.stderr)
            _handler.setFormatter(logging.Formatter(FORMAT))
            log.addHandler(_handler)


def _outcome(outcome: Outcome) -> str:
    if isinstance(outcome, Answered):
        failed = len(outcome.answer.failed)
        return f"2xx, {failed} failed record(s)"
    if isinstance(outcome, Retry):
        status = f"HTTP {outcome.status}" if outcome.status is not None else "no answer"
        wait = f", Retry-After {outcome.retry_after:g} s" if outcome.retry_after is not None else ""
        return f"{status}, will retry{wait} ({outcome.message})"
    if isinstance(outcome, TooLarge):
        return "HTTP 413, the batch will be split"
    if isinstance(outcome, Unauthorized):
        return f"HTTP {outcome.status}, credentials refused ({outcome.message})"
    if isinstance(outcome, Rejected):
        return f"HTTP {outcome.status}, rejected for good ({outcome.message})"
    return type(outcome).__name__


def log_request(
    deferred: DeferredLog,
    batch: Sequence[Pending] | int,
    size: int,
    outcome: Outcome,
    took: float,
) -> None:
    """Queue the DEBUG line of one request (``batch``: its events, or how many on a first
    try). Without DEBUG it costs one level check: the attempt (the highest of the
    batch's events: 1 is a first try) is read only with it."""
    if log.isEnabledFor(logging.DEBUG):
        if isinstance(batch, int):
            n, attempt = batch, 1
        else:
            n, attempt = len(batch), max([p.attempts for p in batch])
        deferred.always(
            logging.DEBUG,
            "POST /events/batch: %d event(s), %d bytes, attempt %d: %s in %.3f s",
            n,
            size,
            attempt,
            _outcome(outcome),
            took,
        )
