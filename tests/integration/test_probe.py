"""The probe (`doctor`, `import`'s preflight): an empty batch through the tracker's own
credentials and sender, its answer read into one kind. Status table on MockTransport;
retries and login against a FakeEnso on 127.0.0.1."""

from __future__ import annotations

import socket

import httpx
import pytest

from enso_tracker import Config
from enso_tracker._http.auth import make_credentials
from enso_tracker._http.probe import BLOCKING, PROBE_BODY, preflight, probe
from enso_tracker.testing import FakeEnso, Fault

BASE = "https://enso.example"
ENVELOPE = b'{"status":"error","message":"Bad Request","errors":[{"code":2003}]}'
ANSWER = b'{"status":"success","data":{"summary":{"success":0,"failed":0,"total":0}}}'


def answering(
    status: int, body: bytes = b"{}", headers: dict[str, str] | None = None
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body, headers=headers or {})

    return httpx.MockTransport(handle), seen


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, ENVELOPE, "accepted"),
        (200, ANSWER, "accepted"),
        (400, b'{"message":"something else"}', "unexpected"),
        (404, b"{}", "unexpected"),
        (401, b"{}", "unauthorized"),
        (403, b'{"message":"Forbidden"}', "forbidden"),
        (302, b"", "redirected"),
        (503, b"{}", "unavailable"),
        (429, b"{}", "unavailable"),
        (200, b"<html>", "unavailable"),  # a 2xx that is not a batch answer: not "accepted"
    ],
)
def test_each_answer_has_one_kind(status: int, body: bytes, kind: str) -> None:
    transport, seen = answering(status, body, {"Date": "Sun, 06 Dec 2026 07:00:00 GMT"})
    result = probe(
        Config(base_url=BASE), make_credentials("sk_k", None, None, BASE), 5.0, transport
    )
    assert (result.kind, result.status) == (kind, status)
    assert result.date == "Sun, 06 Dec 2026 07:00:00 GMT"
    assert result.ok is (kind == "accepted")
    assert [r.content for r in seen] == [PROBE_BODY]  # no usage, ever
    assert seen[0].headers["authorization"] == "Bearer sk_k"


def test_a_network_failure_is_unreachable_and_quotes_no_secret() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"boom {request.headers['authorization']}")

    result = probe(Config(base_url=BASE), make_credentials("sk_secret_9", None, None, BASE), 5.0,
                   httpx.MockTransport(fail))  # fmt: skip
    assert (result.kind, result.status) == ("unreachable", None)
    assert "sk_secret_9" not in repr(result)
    assert result.kind in BLOCKING


def test_client_credentials_login_refused_and_accepted() -> None:
    with FakeEnso(client_credentials={"ck_p": "cs_p"}) as fake:
        config = Config(base_url=fake.url)
        refused = probe(config, make_credentials(None, "ck_p", "nope", fake.url), 5.0)
        good = probe(config, make_credentials(None, "ck_p", "cs_p", fake.url), 5.0)
    assert (refused.kind, refused.logins) == ("login_refused", 0)
    assert refused.login_failed
    assert (good.kind, good.logins, good.status) == ("accepted", 1, 400)
    assert good.token_lifetime == pytest.approx(3600.0)


def test_preflight_retries_transient_trouble_then_says_accepted() -> None:
    with FakeEnso() as fake:
        fake.script(Fault(status=503, retry_after="0"), Fault(drop_connection=True))
        config = Config(base_url=fake.url, backoff_base=0.01)
        result = preflight(config, make_credentials("test-api-key", None, None, fake.url))
        assert (result.kind, result.attempts) == ("accepted", 3)
        assert [len(r.json()["events"]) for r in fake.batch_requests()] == [0, 0, 0]


def test_preflight_gives_up_on_an_unreachable_enso_within_its_budget() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        config = Config(base_url=url, backoff_base=0.01, backoff_max=0.05)
        result = preflight(config, make_credentials("k", None, None, url), budget=0.5)
    assert result.kind == "unreachable"
    assert result.attempts > 1  # retried within the budget, not given up on the first
    assert "Connection refused" in result.message
