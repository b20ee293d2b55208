"""Backfills with Dask: bags and dataframes of usage rows into Enso, exactly once.

``pip install "enso-tracker[dask]"``. Works on any Dask scheduler; with ``distributed``
a partition that raises is retried (``.compute(retries=2)``) and a lost worker's
partitions are run again elsewhere. Either way nothing is billed twice::

    import dask.bag as db
    import json
    from enso_tracker.dask import backfill

    rows = db.read_text("usage-*.jsonl.gz").map(json.loads)   # any blocksize
    books = backfill(rows).compute(retries=2)   # credentials: the workers' environment

EventIds follow the rule of ``enso-tracker import`` (``docs/backfills.md``): they come
from each row's mapped event and its occurrence number among identical rows of the
whole input, counted after a shuffle by content, so they do not depend on the
partitioning; the CLI and Dask derive the same ids for the same rows.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import dask.bag as db

from ._partition import (
    INVALID,
    OWN_ID,
    Columns,
    PartitionNotDelivered,
    columns_of,
    deliver,
    number_group,
    prepare,
)

__all__ = [
    "Columns",
    "PartitionNotDelivered",
    "backfill",
    "deliver_partition",
    "deliver_partitions",
    "with_event_ids",
]


def _as_bag(data: Any) -> db.Bag:
    if isinstance(data, db.Bag):
        return data
    to_bag = getattr(data, "to_bag", None)  # a dask DataFrame
    if to_bag is None:
        raise TypeError(f"expected a dask Bag or DataFrame, not {type(data).__name__}")
    bag: db.Bag = to_bag(index=False, format="dict")
    return bag


def _keyed(item: tuple[str, dict[str, Any]]) -> bool:
    return item[0] not in (OWN_ID, INVALID)


def _unkeyed(item: tuple[str, dict[str, Any]]) -> bool:
    return item[0] in (OWN_ID, INVALID)


def _number(
    groups: list[tuple[str, list[tuple[str, dict[str, Any]]]]], namespace: str
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _, members in groups:
        out.extend(number_group((event for _, event in members), namespace))
    return out


def with_event_ids(
    data: Any,
    columns: Columns | None = None,
    *,
    npartitions: int | None = None,
    **column_options: Any,
) -> db.Bag:
    """A bag of events in the API's shape, each with its eventId, from a bag of dicts
    or a dask DataFrame (mapped by ``columns``, or keywords of :class:`Columns`).

    Rows that cannot become events come out as ``{"field", "reason", "row"}`` and are
    reported in the books by :func:`deliver_partitions`. ``npartitions``: of the
    shuffle by content (default: as many as the input)."""
    cols = columns_of(columns, column_options)
    bag: Any = _as_bag(data)  # dask is untyped
    prepared = bag.map(prepare, cols)
    direct = prepared.filter(_unkeyed).map(itemgetter(1))
    # The shuffle brings every occurrence of one content into one group, where they are
    # numbered 0, 1, 2...: the same set of ids whatever the input's partitioning.
    groups = prepared.filter(_keyed).groupby(
        itemgetter(0), npartitions=npartitions or bag.npartitions, shuffle="tasks"
    )
    numbered = groups.map_partitions(_number, cols.namespace)
    concat: Any = db.concat
    result: db.Bag = concat([numbered, direct])
    return result


def deliver_partition(
    events: Any, *, timeout: float = 120.0, **tracker_options: Any
) -> list[dict[str, Any]]:
    """Deliver one partition (an iterable of events from :func:`with_event_ids`) through
    its own ``Tracker.from_env(**tracker_options)``; its books as a one-item list.

    Raises :class:`PartitionNotDelivered` unless every event was delivered or refused
    by Enso for good (those are listed under ``rejected``), so the engine retries it."""
    return [deliver(events, timeout=timeout, **tracker_options)]


def deliver_partitions(events: db.Bag, *, timeout: float = 120.0, **tracker_options: Any) -> db.Bag:
    """A bag of books, one per partition, delivering ``events`` when computed."""
    bag: Any = events
    result: db.Bag = bag.map_partitions(deliver_partition, timeout=timeout, **tracker_options)
    return result


def backfill(
    data: Any,
    columns: Columns | None = None,
    *,
    npartitions: int | None = None,
    timeout: float = 120.0,
    tracker_options: dict[str, Any] | None = None,
    **column_options: Any,
) -> db.Bag:
    """:func:`with_event_ids` then :func:`deliver_partitions`: compute the result (with
    ``retries=`` on a distributed cluster) to run the backfill; each item is one
    partition's books (``rows``, ``accepted``, ``delivered``, ``rejected``, ``invalid``)."""
    events = with_event_ids(data, columns, npartitions=npartitions, **column_options)
    return deliver_partitions(events, timeout=timeout, **(tracker_options or {}))
