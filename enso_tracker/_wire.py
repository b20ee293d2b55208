"""The wire format of ``POST /events/batch``: request encoding and response parsing.

See ``shared/enso-api.md`` §3. Two response shapes are documented (wrapped in
``data`` and bare); ``code`` is an int *or* a string; ``failedRecords`` is unsorted;
a top-level ``"status": "success"`` says nothing about the records.
"""

from __future__ import annotations

import time
from decimal import Decimal

import msgspec

__all__ = [
    "BODY_OVERHEAD",
    "BatchAnswer",
    "EventEncoder",
    "FailedRecord",
    "join_batch",
    "parse_batch_answer",
    "parse_error_message",
]


class WireEvent(msgspec.Struct, omit_defaults=True):
    """One element of ``events``; names exactly as Enso spells them."""

    CustomerEntityId: str
    metric: str
    value: int | float | Decimal
    timestamp: str
    eventId: str
    metadata: msgspec.Raw | None = None
    # The API page documents both spellings with one meaning; the issue asks for both.
    JobId: str | None = None
    jobId: str | None = None


_PREFIX = b'{"events":['
_SUFFIX = b"]}"
#: Bytes of the body that are not events: prefix, suffix (commas are counted per event).
BODY_OVERHEAD = len(_PREFIX) + len(_SUFFIX)


def join_batch(encoded: list[bytes]) -> bytes:
    return _PREFIX + b",".join(encoded) + _SUFFIX


class EventEncoder:
    """Encodes events one by one, so batches can be cut at an exact byte size.

    Built once per tracker: the msgspec encoder is reused, and the RFC 3339 text of the
    current millisecond (and second) is cached, since the events of a burst share it.
    """

    __slots__ = ("_encoder", "_ms", "_ms_text", "_second", "_second_text")

    def __init__(self) -> None:
        # Decimal goes out as an exact JSON number, never a string or a rounded float.
        self._encoder = msgspec.json.Encoder(decimal_format="number")
        self._second = -1
        self._second_text = ""
        self._ms = -1
        self._ms_text = ""

    def timestamp(self, ns: int) -> str:
        ms = ns // 1_000_000
        if ms == self._ms:  # events of a burst share their millisecond
            return self._ms_text
        seconds, millis = divmod(ms, 1000)
        if seconds != self._second:
            t = time.gmtime(seconds)
            self._second_text = (
                f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}."
            )
            self._second = seconds
        self._ms = ms
        self._ms_text = f"{self._second_text}{millis:03d}Z"
        return self._ms_text

    def encode(
        self,
        event_id: str,
        entity: str,
        metric: str,
        value: int | float | Decimal,
        ts_ns: int,
        metadata: bytes | None,
        job_id: str | None,
    ) -> bytes:
        return self._encoder.encode(
            WireEvent(
                CustomerEntityId=entity,
                metric=metric,
                value=value,
                timestamp=self.timestamp(ts_ns),
                eventId=event_id,
                metadata=None if metadata is None else msgspec.Raw(metadata),
                JobId=job_id,
                jobId=job_id,
            )
        )


class FailedRecord(msgspec.Struct, frozen=True):
    index: int
    error: str | None = None
    code: int | str | None = None
    statusCode: int | str | None = None

    @property
    def status(self) -> int | None:
        """``statusCode`` as an int; some servers send it as a string."""
        if isinstance(self.statusCode, int):
            return self.statusCode
        if isinstance(self.statusCode, str) and self.statusCode.isdigit():
            return int(self.statusCode)
        return None


class _Summary(msgspec.Struct):
    success: int | None = None
    failed: int | None = None
    total: int | None = None


class _Result(msgspec.Struct):
    summary: _Summary | None = None
    failedRecords: list[FailedRecord] | None = None


class _Body(msgspec.Struct):
    # Wrapped shape: {"status","message","data":{summary, failedRecords}}.
    data: _Result | None = None
    # Bare shape: {summary, failedRecords} at the top level.
    summary: _Summary | None = None
    failedRecords: list[FailedRecord] | None = None


class BatchAnswer(msgspec.Struct, frozen=True):
    failed: list[FailedRecord]
    summary_total: int | None
    summary_failed: int | None


_decode_body = msgspec.json.Decoder(_Body).decode


def parse_batch_answer(content: bytes) -> BatchAnswer | None:
    """The per-record result of a 2xx answer, or ``None`` when it cannot be trusted.

    ``None`` means "do not count these events as delivered": the caller retries them.
    """
    try:
        body = _decode_body(content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    result: _Result | None = None
    if body.data is not None and (
        body.data.summary is not None or body.data.failedRecords is not None
    ):
        result = body.data
    elif body.summary is not None or body.failedRecords is not None:
        result = _Result(summary=body.summary, failedRecords=body.failedRecords)
    if result is None or result.summary is None:
        # Neither shape: an answer we cannot account events from is not a success.
        return None
    return BatchAnswer(
        failed=result.failedRecords or [],
        summary_total=result.summary.total,
        summary_failed=result.summary.failed,
    )


class _ErrorBody(msgspec.Struct):
    message: str | None = None
    error: str | None = None


_decode_error = msgspec.json.Decoder(_ErrorBody).decode


def parse_error_message(content: bytes, limit: int = 300) -> str:
    """A short human-readable message from an error answer, whatever its shape."""
    try:
        body = _decode_error(content)
        text = body.message or body.error
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = None
    if not text:
        text = content[:limit].decode("utf-8", "replace").strip()
    return text[:limit] if text else "(empty body)"
