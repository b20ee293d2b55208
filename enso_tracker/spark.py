"""Backfills with Apache Spark: a DataFrame (or an RDD of dicts) of usage rows into
Enso, exactly once.

``pip install "enso-tracker[spark]"`` (pyspark, on a Java runtime)::

    from pyspark.sql import SparkSession
    from enso_tracker.spark import backfill

    spark = SparkSession.builder.getOrCreate()
    rows = spark.read.json("s3://bucket/usage/*.jsonl.gz")   # any partitioning
    books = backfill(rows)   # credentials: the executors' environment

EventIds follow the rule of ``enso-tracker import`` (``docs/backfills.md``): each row's
mapped event and its occurrence number among identical rows of the whole input,
counted after a shuffle by content, so they do not depend on the partitioning; Spark,
Dask and the CLI derive the same ids for the same rows. A partition that could not
deliver everything raises, so Spark retries the task (``spark.task.maxFailures``; in
local mode a master of ``local[N,F]`` allows F attempts); a retry bills nothing twice.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Any

from pyspark import RDD
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

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
    "with_event_ids",
]

#: Spark's pattern for an RFC 3339 time with milliseconds and the offset (``Z`` in UTC).
_RFC3339: Any = "yyyy-MM-dd'T'HH:mm:ss.SSSXXX"


def _as_dict(row: Any) -> dict[str, Any]:
    if isinstance(row, Row):
        return row.asDict(recursive=True)
    return dict(row)


def _rows(data: Any, columns: Columns) -> RDD[dict[str, Any]]:
    if isinstance(data, RDD):
        return data.map(_as_dict)
    if not isinstance(data, DataFrame):
        raise TypeError(f"expected a Spark DataFrame or RDD, not {type(data).__name__}")
    kind = dict(data.dtypes).get(columns.timestamp)
    if kind == "timestamp_ntz":
        raise ValueError(
            f"column {columns.timestamp!r} is TIMESTAMP_NTZ (no time zone): convert it "
            "to a TIMESTAMP in the zone it was recorded in, e.g. with to_utc_timestamp()"
        )
    if kind == "timestamp":
        # Leave the JVM as text with its offset: Python would get a naive local time.
        data = data.withColumn(columns.timestamp, F.date_format(F.col(columns.timestamp), _RFC3339))
    result: RDD[dict[str, Any]] = data.rdd.map(_as_dict)
    return result


def _keyed(item: tuple[str, dict[str, Any]]) -> bool:
    return item[0] not in (OWN_ID, INVALID)


def _unkeyed(item: tuple[str, dict[str, Any]]) -> bool:
    return item[0] in (OWN_ID, INVALID)


def _number(
    namespace: str, group: tuple[str, Iterable[dict[str, Any]]]
) -> Iterable[dict[str, Any]]:
    return number_group(group[1], namespace)


def with_event_ids(
    data: Any,
    columns: Columns | None = None,
    *,
    num_partitions: int | None = None,
    **column_options: Any,
) -> RDD[dict[str, Any]]:
    """An RDD of events in the API's shape, each with its eventId, from a DataFrame or
    an RDD of dicts/Rows (mapped by ``columns``, or keywords of :class:`Columns`).

    Rows that cannot become events come out as ``{"field", "reason", "row"}``.
    ``num_partitions``: of the shuffle by content (default: Spark's)."""
    cols = columns_of(columns, column_options)
    prepared = _rows(data, cols).map(functools.partial(_prepare, cols))
    direct = prepared.filter(_unkeyed).map(itemgetter(1))
    # Every occurrence of one content meets in one group, numbered 0, 1, 2...: the same
    # set of ids whatever the input's partitioning.
    grouped = prepared.filter(_keyed).groupByKey(numPartitions=num_partitions)
    numbered = grouped.flatMap(functools.partial(_number, cols.namespace))
    result: RDD[dict[str, Any]] = numbered.union(direct)
    return result


def _prepare(columns: Columns, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return prepare(row, columns)


def deliver_partition(
    events: Iterable[dict[str, Any]], *, timeout: float = 120.0, **tracker_options: Any
) -> Iterator[dict[str, Any]]:
    """Deliver one partition (for ``rdd.mapPartitions``) through its own
    ``Tracker.from_env(**tracker_options)``; yields its books.

    Raises :class:`PartitionNotDelivered` unless every event was delivered or refused
    by Enso for good (listed under ``rejected``), so Spark retries the task."""
    yield deliver(events, timeout=timeout, **tracker_options)


def backfill(
    data: Any,
    columns: Columns | None = None,
    *,
    num_partitions: int | None = None,
    timeout: float = 120.0,
    tracker_options: dict[str, Any] | None = None,
    **column_options: Any,
) -> list[dict[str, Any]]:
    """Run the backfill: :func:`with_event_ids`, then :func:`deliver_partition` on every
    partition. Returns each partition's books (``rows``, ``accepted``, ``delivered``,
    ``rejected``, ``invalid``)."""
    events = with_event_ids(data, columns, num_partitions=num_partitions, **column_options)
    deliver_each = functools.partial(deliver_partition, timeout=timeout, **(tracker_options or {}))
    books: list[dict[str, Any]] = events.mapPartitions(deliver_each).collect()
    return books
