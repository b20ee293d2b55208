"""The catalogue of what :mod:`enso_tracker.otel` exports: every instrument's name, kind,
unit and description, how each is read from a :class:`~enso_tracker.Stats` snapshot,
and the request histograms' names, attribute and buckets.

Data and pure functions only: no OpenTelemetry import (``otel.py`` is where the API is
used, and it re-exports these names), nothing that reads a tracker.

Design constraints (what must never break):

* Names and units follow OpenTelemetry's conventions (``enso.tracker.*``, ``{event}``,
  ``By``, ``s``); the reason of a drop or refusal is an attribute, not a name.
* Every figure but the request histograms and the backlog age is read from one
  ``stats()`` snapshot, so the exported numbers are the books ``stats()`` shows.
* Every outcome type of the sender has an ``OUTCOMES`` value: the histograms look a
  request's attribute up by the type of its outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from ._http.sender import Answered, Rejected, Retry, TooLarge, Unauthorized
from ._model import Stats

__all__ = [
    "DURATION_BUCKETS",
    "INSTRUMENTS",
    "OUTCOME",
    "OUTCOMES",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "SIZE_BUCKETS",
    "SPOOL_BACKLOG_AGE",
    "Read",
]

Read = Callable[[Stats], Iterable[tuple[float, dict[str, str]]]]

#: Histograms of the requests to Enso, one point per request, with the attribute
#: ``OUTCOME`` (``OUTCOMES``' values). The size is the body as encoded, before any gzip.
REQUEST_DURATION: Final = "enso.tracker.request.duration"
REQUEST_SIZE: Final = "enso.tracker.request.size"
OUTCOME: Final = "enso.tracker.request.outcome"
OUTCOMES: Final[dict[type, str]] = {
    Answered: "answered",  # a 2xx batch answer, even with failed records in it
    Retry: "retry",  # no answer, 408/425/429, 5xx: sent again
    TooLarge: "too_large",  # 413: split
    Unauthorized: "unauthorized",  # 401: credentials refused
    Rejected: "rejected",  # another 4xx/3xx: dropped
}
#: OpenTelemetry's HTTP client duration buckets (seconds), and 1 KiB to 16 MiB by 4s.
DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    2.5,
    5,
    7.5,
    10,
)
SIZE_BUCKETS: Final = tuple(1024 * 4**k for k in range(8))
#: Age of the oldest unsettled event on disk (0 without a spool or with an empty one).
SPOOL_BACKLOG_AGE: Final = "enso.tracker.spool.backlog.age"


def _one(field: str) -> Read:
    return lambda s: [(getattr(s, field), {})]


def _by(field: str, attribute: str) -> Read:
    return lambda s: [(n, {attribute: kind}) for kind, n in sorted(getattr(s, field).items())]


def _auth(s: Stats) -> list[tuple[float, dict[str, str]]]:
    return [
        (1 if s.auth_state == state else 0, {"enso.tracker.auth.state": state})
        for state in ("ok", "unauthorized")
    ]


def _errors(s: Stats) -> list[tuple[float, dict[str, str]]]:
    return [
        (s.worker_errors, {"error.type": "worker"}),
        (s.hook_errors, {"error.type": "hook"}),
    ]


def _last_success(s: Stats) -> list[tuple[float, dict[str, str]]]:
    return [] if s.last_success_at is None else [(s.last_success_at, {})]


#: (name, kind, unit, description, how to read it from Stats). Kinds: "counter"
#: (monotonic), "updown" (a level that goes up and down), "gauge" (a sampled value).
INSTRUMENTS: Final[tuple[tuple[str, str, str, str, Read], ...]] = (
    (
        "enso.tracker.events.accepted",
        "counter",
        "{event}",
        "Events track() accepted",
        _one("accepted"),
    ),
    (
        "enso.tracker.events.delivered",
        "counter",
        "{event}",
        "Events Enso acknowledged",
        _one("delivered"),
    ),
    (
        "enso.tracker.events.dropped",
        "counter",
        "{event}",
        "Accepted events that will never be delivered, by reason",
        _by("dropped", "enso.tracker.drop.reason"),
    ),
    (
        "enso.tracker.events.refused",
        "counter",
        "{event}",
        "Events track() refused, by reason",
        _by("refused", "enso.tracker.drop.reason"),
    ),
    (
        "enso.tracker.events.retried",
        "counter",
        "{event}",
        "Times an event was put back to be resent",
        _one("retried"),
    ),
    (
        "enso.tracker.events.adopted",
        "counter",
        "{event}",
        "Events taken over from dead processes' spool files",
        _one("adopted"),
    ),
    (
        "enso.tracker.events.queued",
        "updown",
        "{event}",
        "Accepted events waiting to be sent",
        _one("queued"),
    ),
    (
        "enso.tracker.events.in_flight",
        "updown",
        "{event}",
        "Events in the request being sent",
        _one("in_flight"),
    ),
    (
        "enso.tracker.queue.size",
        "updown",
        "By",
        "Estimated bytes of the queued events",
        _one("queued_bytes"),
    ),
    (
        "enso.tracker.requests",
        "counter",
        "{request}",
        "Requests to /events/batch",
        _one("requests"),
    ),
    (
        "enso.tracker.requests.failed",
        "counter",
        "{request}",
        "Requests that failed as a whole",
        _one("failed_requests"),
    ),
    (
        "enso.tracker.logins",
        "counter",
        "{login}",
        "Successful logins (client credentials)",
        _one("logins"),
    ),
    (
        "enso.tracker.errors",
        "counter",
        "{error}",
        "Errors caught in the sender loop and in user hooks",
        _errors,
    ),
    ("enso.tracker.auth.state", "updown", "1", "1 for the current credential state", _auth),
    (
        "enso.tracker.last_success",
        "gauge",
        "s",
        "Unix time of Enso's last 2xx answer",
        _last_success,
    ),
    (
        "enso.tracker.spool.events",
        "updown",
        "{event}",
        "Events on disk, not yet settled",
        _one("spooled"),
    ),
    (
        "enso.tracker.spool.size",
        "updown",
        "By",
        "Bytes of this tracker's spool file",
        _one("spool_bytes"),
    ),
    (
        "enso.tracker.spool.left",
        "counter",
        "{event}",
        "Events left on disk at shutdown",
        _one("left_in_spool"),
    ),
    (
        "enso.tracker.dead_letters",
        "counter",
        "{event}",
        "Dead letters stored",
        _one("dead_letters"),
    ),
    (
        "enso.tracker.dead_letters.evicted",
        "counter",
        "{event}",
        "Dead letters evicted",
        _one("dead_letters_evicted"),
    ),
    (
        "enso.tracker.spool.files.foreign",
        "updown",
        "{file}",
        "Spool files of another identity",
        _one("foreign_spool_files"),
    ),
    (
        "enso.tracker.spool.files.skipped",
        "updown",
        "{file}",
        "Spool files that cannot be opened now",
        _one("skipped_spool_files"),
    ),
    (
        "enso.tracker.receipts.errors",
        "counter",
        "{error}",
        "Receipt writes that failed (docs/receipts.md)",
        _one("receipt_errors"),
    ),
)
