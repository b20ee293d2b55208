"""The sender's outcome table, exactly, over httpx.MockTransport."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import httpx
import pytest

from enso_tracker import Config
from enso_tracker._http.auth import ApiKey
from enso_tracker._http.sender import (
    Answered,
    HttpSender,
    Outcome,
    Rejected,
    Retry,
    TooLarge,
    Unauthorized,
)

OK_BODY = (
    b'{"status":"success","message":"Success",'
    b'"data":{"summary":{"success":1,"failed":0,"total":1},"failedRecords":[]}}'
)
BODY = b'{"events":[{"eventId":"e1"}]}'


def send_with(handler: httpx.MockTransport) -> Outcome:
    config = Config(base_url="https://enso.test", max_retry_after=60.0)
    sender = HttpSender(config, ApiKey("k"), transport=handler)
    try:
        return sender.send(BODY, 5.0)
    finally:
        sender.close()


def answering(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> httpx.MockTransport:
    return httpx.MockTransport(
        lambda request: httpx.Response(status, content=body, headers=headers)
    )


@pytest.mark.parametrize("status", [200, 201, 202])
def test_2xx_with_a_batch_result_is_answered(status: int) -> None:
    outcome = send_with(answering(status, OK_BODY))
    assert isinstance(outcome, Answered)
    assert outcome.answer.failed == []


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{}", b'{"status":"success"}', b'{"data":null}', b'{"data":{}}', b"[1,2]"],
)
def test_2xx_that_is_not_a_batch_result_is_retried(body: bytes) -> None:
    assert isinstance(send_with(answering(200, body)), Retry)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 507, 599])
def test_retryable_statuses(status: int) -> None:
    outcome = send_with(answering(status, b'{"status":"error","message":"busy","errors":[]}'))
    assert isinstance(outcome, Retry)
    assert outcome.status == status
    assert outcome.retry_after is None
    assert "busy" in outcome.message


def test_retry_after_seconds_is_read_and_clamped() -> None:
    outcome = send_with(answering(429, headers={"Retry-After": "7"}))
    assert isinstance(outcome, Retry)
    assert outcome.retry_after == 7.0
    outcome = send_with(answering(503, headers={"Retry-After": "100000"}))
    assert isinstance(outcome, Retry)
    assert outcome.retry_after == 60.0  # max_retry_after


def test_413_asks_for_a_split() -> None:
    assert isinstance(send_with(answering(413)), TooLarge)


def test_401_with_a_static_key_is_unauthorized_without_a_second_request() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401)

    assert isinstance(send_with(httpx.MockTransport(handler)), Unauthorized)
    assert len(calls) == 1


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_permanent_4xx_is_rejected_with_the_body(status: int) -> None:
    outcome = send_with(
        answering(status, b'{"status":"error","message":"Forbidden","errors":[{}]}')
    )
    assert isinstance(outcome, Rejected)
    assert outcome.status == status
    assert "Forbidden" in outcome.message


def test_redirect_is_not_followed_and_names_the_target() -> None:
    outcome = send_with(answering(301, headers={"Location": "https://elsewhere.test/"}))
    assert isinstance(outcome, Rejected)
    assert "elsewhere.test" in outcome.message


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.WriteTimeout("slow"),
        httpx.PoolTimeout("busy"),
        httpx.RemoteProtocolError("peer closed"),
        httpx.ReadError("reset"),
    ],
)
def test_transport_errors_are_retried(error: httpx.HTTPError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    outcome = send_with(httpx.MockTransport(handler))
    assert isinstance(outcome, Retry)
    # The type only: an exception text from the HTTP stack can quote our headers.
    assert outcome.message == type(error).__name__


def test_retry_after_http_date_is_read_by_the_senders_policy() -> None:
    # Every form is tested exactly in test_retry.py; here: the sender asks the policy,
    # built from its Config (max_retry_after=60 clamps a date 10 minutes away).
    now = time.time()
    soon = email.utils.formatdate(now + 30, usegmt=True)  # whole seconds: 29-30 s away
    outcome = send_with(answering(503, headers={"Retry-After": soon}))
    assert isinstance(outcome, Retry)
    assert outcome.retry_after is not None
    assert 28.0 <= outcome.retry_after <= 30.0
    late = email.utils.formatdate(now + 600, usegmt=True)
    outcome = send_with(answering(429, headers={"Retry-After": late}))
    assert isinstance(outcome, Retry)
    assert outcome.retry_after == 60.0
    outcome = send_with(answering(429, headers={"Retry-After": "soon"}))
    assert isinstance(outcome, Retry)
    assert outcome.retry_after is None


def test_on_answer_sees_every_answer_with_what_was_read_of_it() -> None:
    # doctor's probe reads status, Date and the error code through this seam only.
    answers = iter(
        [
            httpx.Response(415, content=b'{"message":"no gzip"}'),
            httpx.Response(400, content=b'{"errors":[{"code":2003}]}', headers={"Date": "d"}),
        ]
    )
    config = Config(base_url="https://enso.test", compression="gzip")
    sender = HttpSender(config, ApiKey("k"), transport=httpx.MockTransport(lambda r: next(answers)))
    seen: list[tuple[int, str | None, bytes]] = []
    sender.on_answer = lambda response, content: seen.append(
        (response.status_code, response.headers.get("Date"), content)
    )
    try:
        outcome = sender.send(BODY, 5.0)
    finally:
        sender.close()
    assert isinstance(outcome, Rejected)
    assert seen == [
        (415, None, b'{"message":"no gzip"}'),  # the gzip body, refused: resent plain
        (400, "d", b'{"errors":[{"code":2003}]}'),
    ]


def test_on_answer_sees_the_status_of_an_answer_whose_body_broke_off() -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b'{"sta'
            raise httpx.ReadError("reset")

    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Broken()))
    sender = HttpSender(Config(base_url="https://enso.test"), ApiKey("k"), transport=transport)
    seen: list[tuple[int, bytes]] = []
    sender.on_answer = lambda response, content: seen.append((response.status_code, content))
    try:
        outcome = sender.send(BODY, 5.0)
    finally:
        sender.close()
    assert isinstance(outcome, Retry)
    assert outcome.status is None  # no answer to judge: a network failure
    assert seen == [(200, b"")]
