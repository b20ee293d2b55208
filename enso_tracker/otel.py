"""The tracker's own health as OpenTelemetry metrics (``pip install 'enso-tracker[otel]'``).

::

    from enso_tracker import Tracker
    from enso_tracker.otel import instrument

    tracker = Tracker(api_key="...")
    instrument(tracker)  # the global MeterProvider, or meter_provider=...

Every figure is an observable instrument read from ``tracker.stats()`` at collection
time, so the exported numbers are the books ``stats()`` shows (one snapshot per
collection, shared by every instrument). Nothing runs on ``track()``'s path. Names and
units follow OpenTelemetry's conventions (``enso.tracker.*``, ``{event}``, ``By``); the
reason of a drop or refusal is an attribute. ``opentelemetry-api`` is needed only here:
importing ``enso_tracker`` never imports it.

Two figures are not in ``stats()``: the request histograms (``REQUEST_DURATION``,
``REQUEST_SIZE``), recorded by the sender thread after each request to Enso (outside the
tracker's lock; nothing is called when not instrumented), and the spool's backlog age
(``SPOOL_BACKLOG_AGE``), read from the spool files at collection time.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from ._errors import ConfigurationError
from ._http.sender import Answered, Outcome, Rejected, Retry, TooLarge, Unauthorized
from ._model import Stats
from ._spool.errors import SpoolClosed
from ._version import __version__

if TYPE_CHECKING:
    from ._tracker import Tracker

__all__ = [
    "INSTRUMENTS",
    "OUTCOME",
    "OUTCOMES",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "SPOOL_BACKLOG_AGE",
    "Instrumentation",
    "instrument",
]

#: How long one ``stats()`` snapshot serves the instruments of a collection.
SNAPSHOT_AGE: Final = 0.5

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


class Instrumentation:
    """The instruments of one tracker; ``close()`` stops reporting (OpenTelemetry has no
    way to remove an instrument: its callbacks then observe nothing)."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = weakref.ref(tracker)  # never keeps a dropped tracker alive
        self._lock = threading.Lock()
        self._snapshot: tuple[float, Stats] | None = None
        self._observer: Callable[[float, int, Outcome], None] | None = None
        self.closed = False

    def stats(self) -> Stats | None:
        """One snapshot for the instruments of a collection (refreshed when older than
        ``SNAPSHOT_AGE``), None once closed or the tracker is gone."""
        tracker = self._tracker()
        if self.closed or tracker is None:
            return None
        now = time.monotonic()
        with self._lock:
            if self._snapshot is None or now - self._snapshot[0] > SNAPSHOT_AGE:
                self._snapshot = (now, tracker.stats())
            return self._snapshot[1]

    def refresh(self) -> None:
        with self._lock:
            self._snapshot = None

    def observe_requests(self, observer: Callable[[float, int, Outcome], None]) -> None:
        """Have the tracker's sender call ``observer`` after each request (the last
        ``instrument()`` of a tracker records the histograms)."""
        tracker = self._tracker()
        if tracker is not None:
            self._observer = observer
            tracker._worker.request_observer = observer

    def backlog_age(self) -> float | None:
        """Seconds since the oldest unsettled event on disk was written (0 without a
        spool, with an empty or a closed one); None once closed or the tracker is gone.
        One small query per file held open, under that file's own lock only."""
        tracker = self._tracker()
        if self.closed or tracker is None:
            return None
        disk = tracker._worker.disk
        if disk is None or disk.closed:
            return 0.0
        oldest: float | None = None
        for file in disk.files():
            try:
                created = file.oldest()
            except (SpoolClosed, sqlite3.Error):  # closed under us (shutdown), disk trouble
                continue
            if created is not None and (oldest is None or created < oldest):
                oldest = created
        return 0.0 if oldest is None else max(time.time() - oldest, 0.0)

    def close(self) -> None:
        self.closed = True
        tracker = self._tracker()
        if tracker is not None and tracker._worker.request_observer is self._observer:
            tracker._worker.request_observer = None  # the sender calls nothing any more
        self._observer = None


def instrument(tracker: Tracker, meter_provider: Any = None) -> Instrumentation:
    """Export ``tracker``'s health through OpenTelemetry: ``meter_provider`` (an
    ``opentelemetry.metrics.MeterProvider``), or the global one. ``ConfigurationError``
    if ``opentelemetry-api`` is not installed."""
    try:
        from opentelemetry import metrics
        from opentelemetry.metrics import CallbackOptions, Observation
    except ImportError:
        raise ConfigurationError(
            "enso_tracker.otel needs opentelemetry-api: pip install 'enso-tracker[otel]'"
        ) from None
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("enso_tracker", __version__)
    handle = Instrumentation(tracker)
    makers = {
        "counter": meter.create_observable_counter,
        "updown": meter.create_observable_up_down_counter,
        "gauge": meter.create_observable_gauge,
    }

    def callback(read: Read, first: bool) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(options: CallbackOptions) -> list[Observation]:
            if first:
                handle.refresh()  # a new collection: a fresh snapshot
            stats = handle.stats()
            if stats is None:
                return []
            return [Observation(value, attributes) for value, attributes in read(stats)]

        return observe

    for i, (name, kind, unit, description, read) in enumerate(INSTRUMENTS):
        makers[kind](name, callbacks=[callback(read, i == 0)], unit=unit, description=description)

    def backlog(options: CallbackOptions) -> list[Observation]:
        age = handle.backlog_age()
        return [] if age is None else [Observation(age, {})]

    meter.create_observable_gauge(
        SPOOL_BACKLOG_AGE,
        callbacks=[backlog],
        unit="s",
        description="Age of the oldest event on disk not yet settled",
    )
    duration = _histogram(meter, REQUEST_DURATION, "s", "Requests to Enso", DURATION_BUCKETS)
    size = _histogram(meter, REQUEST_SIZE, "By", "Bodies sent to Enso", SIZE_BUCKETS)
    attributes = {kind: {OUTCOME: name} for kind, name in OUTCOMES.items()}

    def record(seconds: float, nbytes: int, outcome: Outcome) -> None:
        where = attributes[type(outcome)]
        duration.record(seconds, where)
        size.record(nbytes, where)

    handle.observe_requests(record)
    return handle


def _histogram(
    meter: Any, name: str, unit: str, description: str, buckets: tuple[float, ...]
) -> Any:
    try:  # bucket advice: opentelemetry-api >= 1.23
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:
        return meter.create_histogram(name, unit=unit, description=description)
