"""Which events an answer vouches for (docs/wire-contract.md, Accounting), to the letter:
``parse_batch_answer`` reads both documented shapes (wrapped in ``data`` and bare) and
nothing else, and ``reconcile`` gives the exact verdict, including the ``problem`` text a
person reads in ``stats().last_error`` and the log. Pure functions: no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from enso_tracker._wire import BatchAnswer, FailedRecord, Verdict, parse_batch_answer, reconcile

# ------------------------------------------------------------------ parse_batch_answer

SUMMARY = b'"summary":{"success":2,"failed":1,"total":3}'
RECORDS = b'"failedRecords":[{"index":1,"error":"bad","code":2002,"statusCode":404}]'
RECORD = FailedRecord(index=1, error="bad", code=2002, statusCode=404)


def wrapped(inner: bytes, status: bytes = b'"success"') -> bytes:
    return b'{"status":' + status + b',"message":"Success","data":{' + inner + b"}}"


PARSED: list[tuple[bytes, BatchAnswer]] = [
    (
        wrapped(SUMMARY + b"," + RECORDS),
        BatchAnswer(
            [RECORD], summary_total=3, summary_failed=1, summary_success=2, status="success"
        ),
    ),
    (  # a summary without failedRecords: none listed
        wrapped(SUMMARY),
        BatchAnswer([], summary_total=3, summary_failed=1, summary_success=2, status="success"),
    ),
    (
        b'{"data":{' + SUMMARY + b',"failedRecords":null}}',
        BatchAnswer([], summary_total=3, summary_failed=1, summary_success=2),
    ),
    (  # bare: no status at all
        b"{" + SUMMARY + b"," + RECORDS + b"}",
        BatchAnswer([RECORD], summary_total=3, summary_failed=1, summary_success=2),
    ),
    (  # bare, a summary and no failedRecords (issue #22)
        b"{" + SUMMARY + b"}",
        BatchAnswer([], summary_total=3, summary_failed=1, summary_success=2),
    ),
    (  # bare beside a data that is null or holds neither: the bare shape is read
        b'{"data":null,' + SUMMARY + b"}",
        BatchAnswer([], summary_total=3, summary_failed=1, summary_success=2),
    ),
    (
        b'{"data":{"other":1},' + SUMMARY + b"," + RECORDS + b"}",
        BatchAnswer([RECORD], summary_total=3, summary_failed=1, summary_success=2),
    ),
    (  # both shapes: the wrapped one is Enso's documented answer
        b'{"status":"success","data":{' + SUMMARY + b'},"summary":{"success":3,"failed":0,'
        b'"total":3},"failedRecords":[{"index":0}]}',
        BatchAnswer([], summary_total=3, summary_failed=1, summary_success=2, status="success"),
    ),
    (  # a summary missing counts is parsed as it is; reconcile refuses it
        wrapped(b'"summary":{"total":3}'),
        BatchAnswer([], summary_total=3, summary_failed=None, status="success"),
    ),
    (  # the status as sent, whatever its type: reconcile judges it
        wrapped(SUMMARY, status=b'{"code":5}'),
        BatchAnswer([], summary_total=3, summary_failed=1, summary_success=2, status={"code": 5}),
    ),
    (
        wrapped(SUMMARY, status=b'"error"'),
        BatchAnswer([], summary_total=3, summary_failed=1, summary_success=2, status="error"),
    ),
]


@pytest.mark.parametrize(("body", "expected"), PARSED)
def test_both_documented_shapes_are_read_field_by_field(body: bytes, expected: BatchAnswer) -> None:
    assert parse_batch_answer(body) == expected


NOT_AN_ANSWER: list[bytes] = [
    b"",
    b"not json",
    b"[1,2]",
    b"null",
    b"{}",
    b'{"status":"success"}',
    b'{"status":"success","data":null}',
    b'{"status":"success","data":{}}',
    wrapped(RECORDS),  # failedRecords without a summary: nothing to count from
    b"{" + RECORDS + b"}",
    b'{"data":{' + RECORDS + b"}," + SUMMARY + b"}",  # data's shape wins, and has no summary
    wrapped(b'"summary":null'),
    wrapped(b'"summary":{"success":"2","failed":1,"total":3}'),  # counts are numbers
    wrapped(SUMMARY + b',"failedRecords":[{"error":"no index"}]'),
    wrapped(SUMMARY + b',"failedRecords":{"index":1}'),
]


@pytest.mark.parametrize("body", NOT_AN_ANSWER)
def test_anything_else_is_no_answer_to_count_from(body: bytes) -> None:
    assert parse_batch_answer(body) is None


@pytest.mark.parametrize(
    ("status_code", "status"),
    [(404, 404), ("503", 503), ("n/a", None), (None, None), ("", None), ("-5", None)],
)
def test_a_records_status_is_read_as_an_int_when_it_is_one(
    status_code: object, status: int | None
) -> None:
    record: dict[str, Any] = {"index": 0, "statusCode": status_code}
    body = wrapped(SUMMARY + b',"failedRecords":[' + _json(record) + b"]")
    answer = parse_batch_answer(body)
    assert answer is not None
    assert answer.failed[0].status == status


def _json(value: object) -> bytes:
    import json

    return json.dumps(value).encode()


# --------------------------------------------------------------------------- reconcile


def rec(index: int, status: int | None = 400) -> FailedRecord:
    return FailedRecord(index=index, error="bad", code=2003, statusCode=status)


def answer(
    success: int | None,
    failed: int | None,
    total: int | None,
    records: list[FailedRecord] | None = None,
    status: Any = None,
) -> BatchAnswer:
    return BatchAnswer(
        records or [],
        summary_total=total,
        summary_failed=failed,
        summary_success=success,
        status=status,
    )


def refused(problem: str) -> Verdict:
    """Nothing trusted: the whole batch resent, the request counted as failed."""
    return Verdict(False, False, {}, problem)


VERDICTS: list[tuple[BatchAnswer, int, Verdict]] = [
    # Everything delivered.
    (answer(3, 0, 3), 3, Verdict(True, True, {})),
    (answer(3, 0, 3, status="success"), 3, Verdict(True, True, {})),
    (answer(3, 0, 3, status="SUCCESS"), 3, Verdict(True, True, {})),
    (answer(1, 0, 1, status="Success"), 1, Verdict(True, True, {})),
    # Every failure listed: trusted, the others delivered.
    (
        answer(1, 2, 3, [rec(2), rec(0, 503)]),
        3,
        Verdict(True, True, {0: rec(0, 503), 2: rec(2)}),
    ),
    (
        answer(0, 3, 3, [rec(0), rec(1), rec(2)]),
        3,
        Verdict(True, True, {i: rec(i) for i in (0, 1, 2)}),
    ),
    (answer(0, 1, 1, [rec(0)]), 1, Verdict(True, True, {0: rec(0)})),
    # Fewer listed than counted: the listed ones trusted, the others resent.
    (
        answer(1, 2, 3, [rec(1)]),
        3,
        Verdict(False, True, {1: rec(1)}, "the summary counts 2 failures but lists 1"),
    ),
    (answer(2, 1, 3), 3, Verdict(False, True, {}, "the summary counts 1 failures but lists 0")),
    # The status says something else.
    (answer(3, 0, 3, status="error"), 3, refused("the answer's status is 'error'")),
    (answer(3, 0, 3, status="successful"), 3, refused("the answer's status is 'successful'")),
    (answer(3, 0, 3, status=1), 3, refused("the answer's status is 1")),
    (answer(3, 0, 3, status=True), 3, refused("the answer's status is True")),
    (answer(3, 0, 3, status=""), 3, refused("the answer's status is ''")),
    # Counts missing or negative.
    (answer(None, 0, 3), 3, refused("the summary lacks success, failed or total")),
    (answer(3, None, 3), 3, refused("the summary lacks success, failed or total")),
    (answer(3, 0, None), 3, refused("the summary lacks success, failed or total")),
    # Negative counts that add up, with every failure listed: only the sign betrays them.
    (
        answer(-1, 4, 3, [rec(0), rec(1), rec(2)]),
        3,
        refused("the summary holds a negative count"),
    ),
    (answer(4, -1, 3), 3, refused("the summary holds a negative count")),
    # Counts that do not add up.
    (answer(4, 0, 4), 3, refused("the summary counts 4 events for a batch of 3")),
    (answer(2, 0, 2), 3, refused("the summary counts 2 events for a batch of 3")),
    (answer(0, 0, 0), 3, refused("the summary counts 0 events for a batch of 3")),  # not negative
    (answer(2, 0, 3), 3, refused("the summary's success (2) + failed (0) != total (3)")),
    (answer(3, 1, 3, [rec(0)]), 3, refused("the summary's success (3) + failed (1) != total (3)")),
    # Failures listed where no event is, twice, or more than counted.
    (answer(2, 1, 3, [rec(3)]), 3, refused("a failure is listed at index 3 of a 3-event batch")),
    (answer(2, 1, 3, [rec(-1)]), 3, refused("a failure is listed at index -1 of a 3-event batch")),
    (
        answer(1, 2, 3, [rec(1), rec(1)]),
        3,
        refused("index 1 is listed twice as failed"),
    ),
    (
        answer(2, 1, 3, [rec(0), rec(2)]),
        3,
        refused("2 failures are listed but the summary counts 1"),
    ),
    (answer(3, 0, 3, [rec(0)]), 3, refused("1 failures are listed but the summary counts 0")),
]


@pytest.mark.parametrize(("given", "n", "verdict"), VERDICTS)
def test_the_verdict_on_an_answer_is_exact(given: BatchAnswer, n: int, verdict: Verdict) -> None:
    assert reconcile(given, n) == verdict


def test_a_verdict_holds_its_failures_by_batch_index_whatever_their_order() -> None:
    records = [rec(4), rec(0, 503), rec(2, 429)]
    verdict = reconcile(answer(2, 3, 5, records), 5)
    assert verdict == Verdict(True, True, {0: rec(0, 503), 2: rec(2, 429), 4: rec(4)})
    assert sorted(verdict.failures) == [0, 2, 4]
