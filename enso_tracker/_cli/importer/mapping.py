"""From a record's fields to ``track()``'s arguments, and the dry-run's checks.

Rows in the API's own shape (``CustomerEntityId``, ``metric``, ``value``, ``timestamp``,
``eventId``, ``metadata``, ``JobId``/``jobId``) need no flags; ``--entity`` and friends
name other columns. Values are handed to ``track()`` as they are (CSV numbers parsed
first), so the library's own validation decides, and names the field.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, NoReturn

import msgspec

from ..._config import Config
from ..._validate import check_id, check_name, coerce_value, encode_metadata, timestamp_ns
from .timestamps import RepeatCache, TimestampError, make_parser, zone

__all__ = ["Mapper", "RowError", "TrackArgs", "is_event", "parse_number", "validate"]

#: ``deadLetter.kind`` of errors-file rows that are not events (the row as it was read).
_ROW_KINDS: Final = frozenset({"invalid", "unreadable"})


def is_event(fields: dict[str, Any]) -> bool:
    """Whether a row is an event in the API's shape with a ``deadLetter`` member (from an
    errors file or ``spool export``): read with the API's names whatever the mapping flags,
    since it was mapped (and its timestamp normalised) when first imported."""
    letter = fields.get("deadLetter")
    return type(letter) is dict and letter.get("kind") not in _ROW_KINDS


_NUMBER: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_INT: Final = re.compile(r"[+-]?\d+\Z")


class RowError(Exception):
    """A row that cannot become an event: ``field`` (a ``track()`` argument), why (without
    the value, so that reasons can be counted), and the value when there is one."""

    def __init__(self, field: str, reason: str, value: Any = None) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.value = value


@dataclass(slots=True)
class TrackArgs:
    entity: Any
    metric: Any
    value: Any
    timestamp: Any
    metadata: Any
    event_id: str | None
    job_id: Any


def parse_number(text: str) -> int | float:
    """A number written as text (CSV, or JSONL from a warehouse): an int when it is one,
    else a float, exactly as the same digits would be as a JSON number. Only plain decimal
    notation: no thousands separators, no ``nan``/``inf``, no hex."""
    if text.isdigit() and text.isascii():  # the common case: plain ASCII digits
        return int(text)
    stripped = text.strip()
    if _INT.match(stripped):
        return int(stripped)
    if _NUMBER.match(stripped):
        return float(stripped)
    raise RowError("value", "not a number", text)


class Mapper:
    """The column mapping of one ``import`` run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.entity: str = args.entity or "CustomerEntityId"
        self.metric: str = args.metric or "metric"
        self.metric_name: str | None = args.metric_name
        self.value: str = args.value or "value"
        self.timestamp: str = args.timestamp or "timestamp"
        self.metadata: list[str] = list(args.metadata or [])
        self.id_column: str | None = args.id_column
        self.job_id: str | None = args.job_id
        fmt: str | None = getattr(args, "timestamp_format", None)
        tz_name: str | None = getattr(args, "timezone", None)
        self.parse_timestamp = make_parser(fmt, zone(tz_name) if tz_name else None)
        self._repeats = RepeatCache()

    @classmethod
    def api(cls) -> Mapper:
        """The API's own names, no options: for events already in the API's shape."""
        names = ("entity", "metric", "metric_name", "value", "timestamp", "metadata")
        empty = dict.fromkeys((*names, "id_column", "job_id"))
        return cls(argparse.Namespace(**empty))

    def required_columns(self) -> list[str]:
        """Columns a CSV header must have (checked before anything is sent)."""
        cols = [self.entity, self.value, self.timestamp, *self.metadata]
        if self.metric_name is None:
            cols.append(self.metric)
        if self.id_column is not None:
            cols.append(self.id_column)
        return cols

    def explicit_id(self, fields: dict[str, Any]) -> Any:
        """The row's own eventId (``--id-column``, else an ``eventId`` field), or None."""
        if self.id_column is not None:
            value = fields.get(self.id_column)
            if value is None or value == "":
                raise RowError("event_id", f"no value in column {self.id_column!r}")
            return value
        value = fields.get("eventId")
        return None if value is None or value == "" else value

    def map(self, fields: dict[str, Any], event_id: str | None) -> TrackArgs:
        # The hot path of an import: plain lookups; a missing column is found by the
        # KeyError and explained by _get.
        try:
            entity = fields[self.entity]
            metric = self.metric_name
            if metric is None:
                metric = fields[self.metric]
            value = fields[self.value]
        except KeyError:
            self._missing(fields)
        if type(value) is str:  # CSV, and numbers as text in JSONL exports
            value = parse_number(value)
        timestamp = fields.get(self.timestamp)
        if timestamp is None or timestamp == "":
            raise RowError(
                "timestamp",
                f"missing (column {self.timestamp!r}): an import needs each row's time, "
                "RFC 3339 with an offset, e.g. 2026-04-01T12:00:00Z",
            )
        if self.parse_timestamp is not None:
            try:
                timestamp = self.parse_timestamp(timestamp)
            except TimestampError as exc:
                raise RowError("timestamp", str(exc), timestamp) from None
        elif type(timestamp) is str and self._repeats.active:
            timestamp = self._repeats(timestamp)  # InvalidEventError as track() raises it
        metadata = self._metadata(fields) if self.metadata or "metadata" in fields else None
        job_id = self.job_id
        if job_id is None:
            job_id = fields.get("JobId") or fields.get("jobId") or None
        return TrackArgs(entity, metric, value, timestamp, metadata, event_id, job_id)

    def _missing(self, fields: dict[str, Any]) -> NoReturn:
        """The RowError for the first mapped column the row lacks."""
        self._get(fields, self.entity, "entity", "--entity")
        if self.metric_name is None:
            self._get(fields, self.metric, "metric", "--metric or --metric-name")
        self._get(fields, self.value, "value", "--value")
        raise AssertionError("unreachable: only called when a column is missing")

    def _get(self, fields: dict[str, Any], column: str, field: str, flag: str) -> Any:
        if column not in fields:
            raise RowError(field, f"missing: no {column!r} in the row (map one with {flag})")
        return fields[column]

    def _metadata(self, fields: dict[str, Any]) -> Any:
        base = fields.get("metadata")
        if isinstance(base, str):  # a CSV column (or a CSV row re-imported from JSONL)
            if not base.strip():
                base = None
            else:
                try:
                    base = msgspec.json.decode(base)
                except msgspec.DecodeError:
                    raise RowError("metadata", "the 'metadata' column is not JSON", base) from None
        if not self.metadata:
            return base
        merged: dict[str, Any] = {}
        if base is not None:
            if not isinstance(base, dict):
                raise RowError("metadata", "the 'metadata' field is not a JSON object")
            merged.update(base)
        for column in self.metadata:
            if column not in fields:
                raise RowError("metadata", f"missing: no {column!r} in the row")
            merged[column] = fields[column]
        return merged


_metadata_encoder = msgspec.json.Encoder()


def validate(config: Config, a: TrackArgs) -> None:
    """The checks ``track()`` makes, in its order, with its helpers: raises the same
    ``InvalidEventError`` (naming the field) that ``track()`` would, sends nothing."""
    check_name("entity", a.entity, config.max_name_length)
    check_name("metric", a.metric, config.max_name_length)
    coerce_value(a.value)
    timestamp_ns(a.timestamp)
    if a.metadata is not None:
        encode_metadata(a.metadata, _metadata_encoder, config.max_metadata_bytes)
    if a.event_id is not None:
        check_id("event_id", a.event_id, config.max_id_length)
    if a.job_id is not None:
        check_id("job_id", a.job_id, config.max_id_length)


def api_shape(
    entity: str,
    metric: str,
    value: int | float | Decimal,
    timestamp: str,
    event_id: str,
    metadata: Any,
    job_id: str | None,
) -> dict[str, Any]:
    """An event as an API-shaped JSONL row: re-importable as is, with the same eventId."""
    row: dict[str, Any] = {
        "CustomerEntityId": entity,
        "metric": metric,
        "value": value,
        "timestamp": timestamp,
        "eventId": event_id,
    }
    if metadata is not None:
        row["metadata"] = metadata
    if job_id is not None:
        row["JobId"] = job_id
    return row
