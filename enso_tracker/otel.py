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

This module owns the hook-up (:func:`instrument`, :class:`Instrumentation`: the shared
snapshot, the request observer, the backlog query); what is exported (names, units,
readers, buckets) is catalogued in ``_otel_instruments`` and re-exported here.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ._errors import ConfigurationError
from ._http.sender import Outcome
from ._model import Stats
from ._otel_instruments import (
    DURATION_BUCKETS,
    INSTRUMENTS,
    OUTCOME,
    OUTCOMES,
    REQUEST_DURATION,
    REQUEST_SIZE,
    SIZE_BUCKETS,
    SPOOL_BACKLOG_AGE,
    Read,
)
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
