"""Engine-neutral steps of a distributed backfill (``enso_tracker.dask``,
``enso_tracker.spark``): map a row, number identical rows, deliver a partition.

A backfill on an engine runs in three steps:

1. :func:`prepare` maps each row (a dict) to an event in the API's shape and, unless the
   row brings its own eventId, the key of its billing content (``_backfill``).
2. The engine groups the rows by that key (a shuffle), so that every occurrence of one
   content meets in one group, and :func:`number_group` gives them eventIds with
   ``k = 0, 1, 2...``. Identical rows are interchangeable, so however the engine orders
   a group, the *set* of ids is the same: no partitioning, blocksize or machine enters.
3. :func:`deliver` sends one partition through its own public :class:`Tracker` and
   raises :class:`PartitionNotDelivered` unless every event was delivered or refused by
   Enso for good, so the engine retries the partition; resending is safe (same ids).
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from ._backfill import check_namespace, content, content_key, event_id
from ._errors import InvalidEventError
from ._model import DropReason, Event
from ._tracker import Tracker
from ._validate import timestamp_ns

__all__ = [
    "INVALID",
    "OWN_ID",
    "Columns",
    "PartitionNotDelivered",
    "columns_of",
    "deliver",
    "number_group",
    "prepare",
]

#: Keys of prepared rows that need no numbering: a row with its own eventId, a bad row.
OWN_ID: Final = "id"
INVALID: Final = "invalid"
#: Drops Enso decided for good (the data must change); anything else: not delivered.
_FINAL_DROPS: Final = frozenset({"rejected", "too_large"})


@dataclass(frozen=True)
class Columns:
    """Which field of a row is which part of the event (defaults: the API's names).

    ``metric_name`` gives every row one metric; ``metadata`` lists fields to copy into
    the event's metadata (merged over a ``metadata`` field holding an object);
    ``id_column`` takes each eventId from a field (default: an ``eventId`` field when a
    row has one); ``job_id`` gives every row one JobId (else ``JobId``/``jobId``);
    ``namespace`` is part of every derived id (see ``docs/backfills.md``)."""

    entity: str = "CustomerEntityId"
    metric: str = "metric"
    metric_name: str | None = None
    value: str = "value"
    timestamp: str = "timestamp"
    metadata: Sequence[str] = field(default_factory=tuple)
    id_column: str | None = None
    job_id: str | None = None
    namespace: str = ""

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        object.__setattr__(self, "metadata", tuple(self.metadata))


class PartitionNotDelivered(RuntimeError):
    """A partition whose events were not all delivered: the engine should retry it
    (its events keep their eventIds, so nothing is billed twice)."""


def _missing(value: Any) -> bool:
    """A dataframe's empty cell: None, "", NaN, or pandas' NA/NaT."""
    if value is None or (isinstance(value, str) and not value):
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def _native(value: Any, *, empty_is_null: bool = True) -> Any:
    """numpy/pandas scalars as plain Python; an empty cell (NaN, NA, NaT) as None
    unless ``empty_is_null`` is false (a NaN value must stay one, to be refused)."""
    if empty_is_null and value is not None and not isinstance(value, str) and _missing(value):
        return None
    if value is None or isinstance(value, str | bool | int | float | Decimal):
        return value
    if isinstance(value, Mapping):
        return {k: _native(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_native(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            return value
    isoformat = getattr(value, "isoformat", None)  # datetimes, dates, pandas Timestamps
    if callable(isoformat):
        return isoformat()
    return value


def _timestamp(value: Any) -> Any:
    """A datetime-like (pandas Timestamp, numpy datetime64 made aware upstream) as an
    RFC 3339 string with milliseconds, so events pickle and print plainly."""
    if isinstance(value, str) or value is None:
        return value
    try:
        ms = timestamp_ns(value) // 1_000_000
    except InvalidEventError:
        return value  # track() says what is wrong with it
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def _invalid(row: Mapping[str, Any], field_name: str, reason: str) -> tuple[str, dict[str, Any]]:
    return INVALID, {"field": field_name, "reason": reason, "row": _native(dict(row))}


def _why(message: str | None) -> str:
    """A delivery problem, short enough for an engine's task report."""
    text = message or "no answer"
    return text if len(text) <= 300 else text[:297] + "..."


def prepare(row: Mapping[str, Any], columns: Columns) -> tuple[str, dict[str, Any]]:
    """``(key, event)``: the hex content key and the event in the API's shape (without
    an eventId yet); ``(OWN_ID, event)`` for a row with its own eventId;
    ``(INVALID, {"field", "reason", "row"})`` for a row that cannot become an event."""
    try:
        entity = row[columns.entity]
        metric = columns.metric_name if columns.metric_name is not None else row[columns.metric]
        value = row[columns.value]
        timestamp = _timestamp(row[columns.timestamp])
    except KeyError as exc:
        return _invalid(row, "row", f"missing field {exc.args[0]!r}")
    metadata = row.get("metadata")
    if _missing(metadata):
        metadata = None
    elif isinstance(metadata, str):  # a CSV column holds JSON text, as for the CLI
        try:
            metadata = json.loads(metadata)
        except ValueError:
            return _invalid(row, "metadata", "the 'metadata' field is not JSON")
    if columns.metadata:
        if metadata is not None and not isinstance(metadata, Mapping):
            return _invalid(row, "metadata", "the 'metadata' field is not a JSON object")
        merged = dict(metadata) if metadata is not None else {}
        for name in columns.metadata:
            if name not in row:
                return _invalid(row, "metadata", f"missing field {name!r}")
            merged[name] = row[name]
        metadata = merged
    job_id = columns.job_id
    if job_id is None:
        job_id = next((v for v in (row.get("JobId"), row.get("jobId")) if not _missing(v)), None)
    event: dict[str, Any] = {
        "CustomerEntityId": _native(entity),
        "metric": _native(metric),
        "value": _native(value, empty_is_null=False),
        "timestamp": timestamp,
        "metadata": _native(metadata),
        "JobId": None if _missing(job_id) else _native(job_id),
    }
    own = row.get(columns.id_column or "eventId")
    if not _missing(own):
        event["eventId"] = _native(own)
        return OWN_ID, event
    if columns.id_column is not None:
        return _invalid(row, "event_id", f"no value in field {columns.id_column!r}")
    try:
        data = content(event["CustomerEntityId"], event["metric"], event["value"], timestamp)
    except InvalidEventError as exc:
        return _invalid(row, exc.field, str(exc))
    return content_key(data).hex(), event


def number_group(events: Iterable[dict[str, Any]], namespace: str = "") -> Iterable[dict[str, Any]]:
    """Give every event of one content group its eventId, ``k = 0, 1, 2...``.

    All events of a group share one content (entity, metric, value, time), so which
    gets which ``k`` changes nothing that is billed."""
    for k, event in enumerate(events):
        data = content(
            event["CustomerEntityId"], event["metric"], event["value"], event["timestamp"]
        )
        yield {**event, "eventId": event_id(data, k, namespace)}


def deliver(
    items: Iterable[dict[str, Any]], *, timeout: float = 120.0, **tracker_options: Any
) -> dict[str, Any]:
    """Deliver one partition of events (dicts in the API's shape, with an ``eventId``;
    items with a ``reason`` are invalid rows, reported in the books) and return its books.

    The partition gets its own :class:`Tracker` (``Tracker.from_env``: credentials from
    the worker's environment; ``tracker_options`` override, e.g. ``base_url``), never
    a spool: a partition that cannot deliver raises :class:`PartitionNotDelivered` and
    the engine retries it instead."""
    drops: list[dict[str, Any]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def on_drop(events: Sequence[Event], reason: DropReason) -> None:
        if reason.kind not in _FINAL_DROPS:
            failures.append(reason.message)  # (list.append is atomic) the first says why
        else:
            with lock:
                drops.extend(
                    {"eventId": e.event_id, "reason": str(reason), "code": reason.code}
                    for e in events
                )

    options: dict[str, Any] = {
        "on_drop": on_drop,
        "queue_full_policy": "block",  # back-pressure instead of refusing rows
        "block_timeout": timeout,
        "max_batch_size": 1000,
        **tracker_options,
        "spool_dir": None,  # the engine's retry is this partition's durability
    }
    invalid: list[dict[str, Any]] = []
    rows = 0
    iterator = iter(items)
    for item in iterator:  # bad rows before the first event need no tracker
        rows += 1
        if "reason" not in item:
            iterator = itertools.chain([item], iterator)
            rows -= 1
            break
        invalid.append(item)
    else:
        return {"rows": rows, "accepted": 0, "delivered": 0, "rejected": [], "invalid": invalid}
    tracker = Tracker.from_env(**options)
    delivered_all = False
    try:
        for item in iterator:
            rows += 1
            if "reason" in item:
                invalid.append(item)
                continue
            if "eventId" not in item:
                # A raw row: without its backfill id a retry would bill it twice.
                raise TypeError(
                    "deliver takes events from with_event_ids() (each with an eventId), "
                    f"not raw rows: got one with fields {sorted(item)}"
                )
            try:
                accepted = tracker.track(
                    item["CustomerEntityId"],
                    item["metric"],
                    item["value"],
                    timestamp=item["timestamp"],
                    metadata=item.get("metadata"),
                    event_id=item["eventId"],
                    job_id=item.get("JobId"),
                )
            except InvalidEventError as exc:
                invalid.append({"field": exc.field, "reason": str(exc), "row": item})
                continue
            if accepted is None:  # the queue stayed full for `timeout`: Enso is stuck
                raise PartitionNotDelivered(
                    f"the queue stayed full for {timeout:g} s: {_why(tracker.stats().last_error)}"
                )
        delivered_all = tracker.flush(timeout)
    finally:
        # Settled: shutdown is instant. Not: the partition fails and is retried whole, so
        # a long last try would only delay the retry.
        tracker.shutdown(5.0 if delivered_all else 0.5)
    stats = tracker.stats()
    undelivered = {k: n for k, n in stats.dropped.items() if n and k not in _FINAL_DROPS}
    if not delivered_all or undelivered:
        raise PartitionNotDelivered(
            f"{stats.accepted - stats.delivered - len(drops)} of {stats.accepted} events "
            f"not delivered ({undelivered or 'flush timed out'}: "
            f"{_why(failures[0] if failures else stats.last_error)}); retrying the "
            "partition bills nothing twice"
        )
    return {
        "rows": rows,
        "accepted": stats.accepted,
        "delivered": stats.delivered,
        "rejected": drops,
        "invalid": invalid,
    }


def columns_of(columns: Columns | None, options: dict[str, Any]) -> Columns:
    """The ``Columns`` a helper was given, or built from its column keywords (both: an
    error)."""
    if columns is not None and options:
        raise TypeError("pass a Columns or column keywords, not both")
    return columns if columns is not None else Columns(**options)
