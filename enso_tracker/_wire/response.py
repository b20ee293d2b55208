"""The answer side of ``POST /events/batch``: what a 2xx answer says and proves.

Owns the parsing of Enso's answers (:func:`parse_batch_answer`, :func:`parse_error_message`)
and the accounting of a batch from one (:func:`reconcile`: which events it vouches for).
See ``docs/wire-contract.md`` (The batch endpoint). Two response shapes are documented
(wrapped in ``data`` and bare); ``code`` is an int *or* a string; ``failedRecords`` is
unsorted; a top-level ``"status": "success"`` says nothing about the records. Answers are
read, bounded, by ``_http.answer.read_answer`` before they reach this module; request
bodies are ``_wire.codec``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._errors import short_repr

__all__ = [
    "BatchAnswer",
    "FailedRecord",
    "Verdict",
    "parse_batch_answer",
    "parse_error_message",
    "printable",
    "reconcile",
]


class FailedRecord(msgspec.Struct, frozen=True):
    """One entry of ``failedRecords``: the batch index, Enso's message, code and status."""

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
    # Any type: a status we cannot read must not turn a readable answer into garbage.
    status: Any = None
    # Wrapped shape: {"status","message","data":{summary, failedRecords}}.
    data: _Result | None = None
    # Bare shape: {summary, failedRecords} at the top level.
    summary: _Summary | None = None
    failedRecords: list[FailedRecord] | None = None


class BatchAnswer(msgspec.Struct, frozen=True):
    """A 2xx answer as Enso wrote it; what it proves is for :func:`reconcile` to say."""

    failed: list[FailedRecord]
    summary_total: int | None
    summary_failed: int | None
    summary_success: int | None = None
    #: The top-level ``status`` (``None`` when absent, as in the bare shape).
    status: Any = None


_decode_body = msgspec.json.Decoder(_Body).decode


def parse_batch_answer(content: bytes) -> BatchAnswer | None:
    """The per-record result of a 2xx answer, or ``None`` when it is not one at all.

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
        summary_success=result.summary.success,
        status=body.status,
    )


class Verdict(msgspec.Struct, frozen=True):
    """What a 2xx answer proves about a batch of ``n`` events (wire contract, Accounting).

    * ``vouched`` and no ``problem``: every event not in ``failures`` is delivered.
    * not ``vouched``: the events not in ``failures`` are *not* known to be delivered;
      they are resent (same eventIds, so Enso's dedup makes that safe).
    * ``failures`` (by batch index) are trusted only when the counts reconcile
      (``reconciled``); an answer whose counts do not add up has no ``failures``:
      everything is resent, and the request counts as failed.

    Made by one of its three constructors, one per case: ``untrusted(problem)``,
    ``partial(failures, problem)``, ``full(failures)``.
    """

    vouched: bool
    #: The counts add up, so the listed ``failures`` are trusted (implied by ``vouched``).
    reconciled: bool
    failures: dict[int, FailedRecord]
    #: What did not add up, for humans (numbers and Enso's status only: no body text).
    problem: str | None = None

    @classmethod
    def untrusted(cls, problem: str) -> Verdict:
        """The answer proves nothing: no failure trusted, the whole batch resent."""
        return cls(vouched=False, reconciled=False, failures={}, problem=problem)

    @classmethod
    def partial(cls, failures: dict[int, FailedRecord], problem: str) -> Verdict:
        """The counts add up but fewer failures are listed than counted: the listed
        ``failures`` are trusted, the other events resent."""
        return cls(vouched=False, reconciled=True, failures=failures, problem=problem)

    @classmethod
    def full(cls, failures: dict[int, FailedRecord]) -> Verdict:
        """The answer accounts for every event: those not in ``failures`` are delivered."""
        return cls(vouched=True, reconciled=True, failures=failures)


def reconcile(answer: BatchAnswer, n: int) -> Verdict:
    """Which of the ``n`` events sent an answer vouches for; pure, no I/O.

    An event is delivered only when the answer accounts for it: the top-level
    ``status``, if present, is ``"success"``; ``summary.total == n``;
    ``summary.success + summary.failed == summary.total``, all three present and
    non-negative; every listed failure index is in ``range(n)`` and listed once; and
    no more failures are listed than ``summary.failed`` counts. When fewer are listed
    than counted, the answer still reconciles, so the listed failures are trusted
    (rejected or retried by their ``statusCode``), but it cannot say which of the
    others failed: they are all resent. Any other mismatch trusts nothing.
    """
    status = answer.status
    if status is not None and not (isinstance(status, str) and status.lower() == "success"):
        return Verdict.untrusted(f"the answer's status is {short_repr(status)}")
    success, failed, total = answer.summary_success, answer.summary_failed, answer.summary_total
    if success is None or failed is None or total is None:
        return Verdict.untrusted("the summary lacks success, failed or total")
    if success < 0 or failed < 0 or total < 0:
        return Verdict.untrusted("the summary holds a negative count")
    if total != n:
        return Verdict.untrusted(f"the summary counts {total} events for a batch of {n}")
    if success + failed != total:
        return Verdict.untrusted(
            f"the summary's success ({success}) + failed ({failed}) != total ({total})"
        )
    failures: dict[int, FailedRecord] = {}
    for record in answer.failed:
        if not 0 <= record.index < n:
            return Verdict.untrusted(
                f"a failure is listed at index {record.index} of a {n}-event batch"
            )
        if record.index in failures:
            return Verdict.untrusted(f"index {record.index} is listed twice as failed")
        failures[record.index] = record
    if len(failures) > failed:
        return Verdict.untrusted(
            f"{len(failures)} failures are listed but the summary counts {failed}"
        )
    if len(failures) < failed:
        return Verdict.partial(
            failures, f"the summary counts {failed} failures but lists {len(failures)}"
        )
    return Verdict.full(failures)


class _ErrorBody(msgspec.Struct):
    message: str | None = None
    error: str | None = None


_decode_error = msgspec.json.Decoder(_ErrorBody).decode
# Control characters (newlines, terminal escapes) from a server must not reach a log line.
_PRINTABLE = {c: " " for c in range(32)} | {127: " "}


def parse_error_message(content: bytes, limit: int = 300) -> str:
    """A short human-readable message from an error answer, whatever its shape.

    Quoted from Enso's own body (never from our request or an exception), truncated
    to ``limit`` characters, with control characters blanked out.
    """
    try:
        body = _decode_error(content)
        text = body.message or body.error
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = None
    if not text:
        text = content[:limit].decode("utf-8", "replace")
    text = printable(text, limit)
    return text if text else "(empty body)"


def printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, control characters blanked, stripped."""
    return text[:limit].translate(_PRINTABLE).strip()
