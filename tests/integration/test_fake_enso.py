"""Tests for the public test double ``enso_tracker.testing.FakeEnso``.

These drive the fake with plain httpx so they pin down the wire behaviour the tracker's own
tests will rely on, independently of the tracker.
"""

from __future__ import annotations

import base64
import errno
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from enso_tracker import Tracker
from enso_tracker.testing import (
    CLICKHOUSE_TIMESTAMP_ERROR,
    DropRecorder,
    FakeEnso,
    Fault,
    derive_event_id,
)
from tests.conftest import TrackerFactory, wait_until

API_KEY = "test-api-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CREDENTIALS = {"ck_test_1": "cs_test_1"}


def event(event_id: str | None = "evt_1", **overrides: Any) -> dict[str, Any]:
    """A valid event; ``overrides`` replace fields, a value of ``...`` removes the field."""
    record: dict[str, Any] = {
        "CustomerEntityId": "ent_1",
        "metric": "api_calls",
        "value": 1,
        "timestamp": "2026-04-01T12:00:00Z",
    }
    if event_id is not None:
        record["eventId"] = event_id
    for key, value in overrides.items():
        if value is ...:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def batch(*events: Any) -> dict[str, Any]:
    return {"events": list(events)}


def decode_jwt_part(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def run_in_thread(target: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``target`` in a thread; the list receives its result or the exception it raised."""
    outcome: list[Any] = []

    def wrapper() -> None:
        try:
            outcome.append(target())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wrapper, daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture
def private_fake() -> Iterator[FakeEnso]:
    """The fake under test, of each test's own: ``reset()`` must restore these constructor
    settings, and a test may leave delays (up to 30 s) that only ``stop()`` cuts short."""
    with FakeEnso(client_credentials=CREDENTIALS, known_entities={"ent_1", "ent_2"}) as server:
        yield server


@pytest.fixture
def client(private_fake: FakeEnso) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=private_fake.url, timeout=5.0) as http:
        yield http


def post_batch(client: httpx.Client, *events: Any, **kwargs: Any) -> httpx.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return client.post("/events/batch", json=batch(*events), headers=headers, **kwargs)


# --------------------------------------------------------------------------- auth


def test_batch_without_or_with_wrong_bearer_is_401_envelope(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    missing = client.post("/events/batch", json=batch(event()))
    wrong = client.post(
        "/events/batch", json=batch(event()), headers={"Authorization": "Bearer nope"}
    )
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json() == {"status": "error", "message": "Unauthorized", "errors": []}
    assert private_fake.events == {}
    assert private_fake.received == 0


def test_api_key_is_accepted(private_fake: FakeEnso, client: httpx.Client) -> None:
    response = post_batch(client, event("evt_a"))
    assert response.status_code == 200
    assert private_fake.event_ids() == ["evt_a"]


# --------------------------------------------------------------------------- response shapes


def test_wrapped_shape_by_default(client: httpx.Client) -> None:
    response = post_batch(client, event("evt_a"), event("evt_b"))
    assert response.json() == {
        "status": "success",
        "message": "Success",
        "data": {"summary": {"success": 2, "failed": 0, "total": 2}, "failedRecords": []},
    }


def test_bare_shape_is_switchable_at_runtime(private_fake: FakeEnso, client: httpx.Client) -> None:
    private_fake.response_shape = "bare"
    response = post_batch(client, event("evt_a"))
    assert response.json() == {
        "summary": {"success": 1, "failed": 0, "total": 1},
        "failedRecords": [],
    }
    with pytest.raises(ValueError, match="response_shape"):
        private_fake.response_shape = "other"  # type: ignore[assignment]


# --------------------------------------------------------------------------- validation


def test_per_record_failures_codes_and_reverse_order(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    records = [
        event("ok_0"),
        event("e_1", CustomerEntityId=...),  # 2001
        event("e_2", CustomerEntityId="ent_unknown"),  # 2002
        event("e_3", timestamp="not a time"),  # "27"
        "not an object",  # validation
        event("e_5", value=True),  # bool is not a number
        event("e_6", metric=""),  # empty metric
        event("e_7", timestamp="2026-04-01T12:00:00"),  # naive -> "27"
        event("e_8", metadata=[1]),  # metadata not an object
        event("ok_9", timestamp="2026-04-01T17:30:00.123456+05:30", value=2.5),
        event("e_10", value=None),
        event("e_11", CustomerEntityId=""),  # 2001
    ]
    response = post_batch(client, *records)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    failed = body["data"]["failedRecords"]
    indexes = [record["index"] for record in failed]
    assert indexes == sorted(indexes, reverse=True)
    by_index = {record["index"]: (record["code"], record["statusCode"]) for record in failed}
    assert by_index == {
        1: (2001, 400),
        2: (2002, 404),
        3: ("27", 400),
        4: ("validation", 400),
        5: ("validation", 400),
        6: ("validation", 400),
        7: ("27", 400),
        8: ("validation", 400),
        10: ("validation", 400),
        11: (2001, 400),
    }
    errors = {record["index"]: record["error"] for record in failed}
    assert errors[1] == "Customer entity ID required"
    assert errors[2] == "Customer entity not found"
    assert errors[3] == CLICKHOUSE_TIMESTAMP_ERROR
    assert "WaitForAsyncInsert" in errors[3]
    assert body["data"]["summary"] == {"success": 2, "failed": 10, "total": 12}
    assert private_fake.event_ids() == ["ok_0", "ok_9"]


def test_every_entity_exists_when_known_entities_is_none() -> None:
    with FakeEnso() as open_fake, httpx.Client(base_url=open_fake.url) as http:
        response = http.post(
            "/events/batch", json=batch(event(CustomerEntityId="anything")), headers=AUTH
        )
        assert response.json()["data"]["failedRecords"] == []
        assert len(open_fake.events) == 1


@pytest.mark.parametrize("payload", [{}, {"events": []}, {"events": "x"}, [1, 2]])
def test_missing_or_empty_events_is_2003(
    private_fake: FakeEnso, client: httpx.Client, payload: Any
) -> None:
    response = client.post("/events/batch", json=payload, headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {
        "status": "error",
        "message": "Bad Request",
        "errors": [{"code": 2003, "message": "events array is required"}],
    }


def test_invalid_json_is_400(client: httpx.Client) -> None:
    response = client.post("/events/batch", content=b"{nope", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["status"] == "error"


def test_body_over_limit_is_413(private_fake: FakeEnso, client: httpx.Client) -> None:
    private_fake.max_body_bytes = 200
    big = post_batch(client, *[event(f"evt_{i}") for i in range(10)])
    assert big.status_code == 413
    assert big.json()["status"] == "error"
    assert private_fake.events == {}
    small = post_batch(client, event("evt_small"))
    assert small.status_code == 200
    assert private_fake.event_ids() == ["evt_small"]


# --------------------------------------------------------------------------- dedup


def test_duplicates_are_counted_and_reported_as_success(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    first = post_batch(client, event("evt_a"), event("evt_a", value=99))
    second = post_batch(client, event("evt_a"), event("evt_b"))
    assert first.json()["data"]["summary"] == {"success": 2, "failed": 0, "total": 2}
    assert second.json()["data"]["failedRecords"] == []
    assert private_fake.event_ids() == ["evt_a", "evt_b"]
    assert private_fake.events["evt_a"]["value"] == 1  # the first copy wins
    assert private_fake.received == 4
    assert private_fake.duplicates == {"evt_a": 2}


def test_events_without_id_collapse_by_content(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    same = event(None)
    post_batch(client, same, dict(same), event(None, value=2))
    derived = derive_event_id(same)
    assert derived == derive_event_id({**same, "value": 1.0})  # JS numbers: 1 == 1.0
    assert len(private_fake.events) == 2
    assert private_fake.duplicates == {derived: 1}
    assert private_fake.events[derived] == same  # stored as received, without an added eventId


def test_returned_data_are_copies(private_fake: FakeEnso, client: httpx.Client) -> None:
    post_batch(client, event("evt_a", metadata={"k": "v"}))
    snapshot = private_fake.events
    snapshot["evt_a"]["metadata"]["k"] = "changed"
    snapshot.clear()
    assert private_fake.events["evt_a"]["metadata"] == {"k": "v"}


# --------------------------------------------------------------------------- POST /events


def test_single_event_is_201_bare_echo(private_fake: FakeEnso, client: httpx.Client) -> None:
    created = client.post("/events", json=event("evt_s"), headers=AUTH)
    assert created.status_code == 201
    assert created.json() == event("evt_s")
    duplicate = client.post("/events/", json=event("evt_s", value=5), headers=AUTH)
    assert duplicate.status_code == 201
    assert duplicate.json()["value"] == 1  # echoes the stored event
    assert private_fake.duplicates == {"evt_s": 1}


def test_single_event_validation_failure_is_http_error(client: httpx.Client) -> None:
    unknown = client.post("/events", json=event(CustomerEntityId="ent_x"), headers=AUTH)
    assert unknown.status_code == 404
    assert unknown.json()["errors"] == [{"code": 2002, "message": "Customer entity not found"}]
    bad_time = client.post("/events", json=event(timestamp="yesterday"), headers=AUTH)
    assert bad_time.status_code == 400
    assert bad_time.json()["errors"][0]["code"] == "27"
    assert client.post("/events", json=event()).status_code == 401


def test_unknown_path_404_and_wrong_method_405(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    missing = client.get("/nope", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["status"] == "error"
    wrong = client.get("/events/batch", headers=AUTH)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert [r.status for r in private_fake.requests] == [404, 405]


# --------------------------------------------------------------------------- login / JWT


def login(client: httpx.Client, key: str = "ck_test_1", secret: str = "cs_test_1") -> Any:
    return client.post("/auth/system-login", json={"clientKey": key, "clientSecret": secret})


def test_login_issues_distinct_hs256_jwts(private_fake: FakeEnso, client: httpx.Client) -> None:
    before = time.time()
    first = login(client)
    assert first.status_code == 200
    token = first.json()["data"]["accessToken"]
    header, payload, signature = token.split(".")
    assert decode_jwt_part(header) == {"alg": "HS256", "typ": "JWT"}
    claims = decode_jwt_part(payload)
    assert claims["sub"] == "ck_test_1"
    assert before - 1 <= claims["iat"] <= time.time()
    assert claims["exp"] - claims["iat"] in (3599, 3600, 3601)
    assert len(base64.urlsafe_b64decode(signature + "=")) == 32  # SHA-256 MAC
    second = login(client).json()["data"]["accessToken"]
    assert second != token
    assert private_fake.login_count == 2
    assert all("authorization" not in r.headers for r in private_fake.login_requests())
    response = client.post(
        "/events/batch", json=batch(event()), headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200


def test_login_with_wrong_or_missing_credentials_is_401(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    assert login(client, secret="wrong").status_code == 401
    assert login(client, key="ck_unknown").status_code == 401
    assert client.post("/auth/system-login", json={}).json()["message"] == "Unauthorized"
    assert private_fake.login_count == 3


def test_expired_token_is_401() -> None:
    with (
        # Long enough for the first request to arrive in time on a loaded machine.
        FakeEnso(client_credentials=CREDENTIALS, token_lifetime=1.5) as fake,
        httpx.Client(base_url=fake.url) as client,
    ):
        token = login(client).json()["data"]["accessToken"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.post("/events/batch", json=batch(event("a")), headers=bearer).is_success
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:  # waiting for a clock deadline, not for threads
            time.sleep(deadline - time.monotonic())
        expired = client.post("/events/batch", json=batch(event("b")), headers=bearer)
        assert expired.status_code == 401
        assert fake.event_ids() == ["a"]


def test_revoke_tokens_invalidates_issued_jwts_only(
    client: httpx.Client, private_fake: FakeEnso
) -> None:
    token = login(client).json()["data"]["accessToken"]
    bearer = {"Authorization": f"Bearer {token}"}
    private_fake.revoke_tokens()
    assert client.post("/events/batch", json=batch(event()), headers=bearer).status_code == 401
    fresh = login(client).json()["data"]["accessToken"]
    fresh_bearer = {"Authorization": f"Bearer {fresh}"}
    assert client.post("/events/batch", json=batch(event()), headers=fresh_bearer).is_success
    assert post_batch(client, event("evt_2")).is_success


# --------------------------------------------------------------------------- faults


def test_fault_status_with_retry_after_stores_nothing(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    private_fake.script(
        Fault(status=429, retry_after="7"), Fault(status=503, body=b"upstream down")
    )
    assert private_fake.pending_faults == 2
    limited = client.post("/events/batch", json=batch(event()))  # faults precede auth
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.json() == {"status": "error", "message": "Too Many Requests", "errors": []}
    unavailable = post_batch(client, event())
    assert (unavailable.status_code, unavailable.content) == (503, b"upstream down")
    assert private_fake.events == {}
    assert post_batch(client, event()).status_code == 200  # the script is used up
    assert private_fake.pending_faults == 0
    assert [r.status for r in private_fake.batch_requests()] == [429, 503, 200]


def test_fault_delay(private_fake: FakeEnso, client: httpx.Client) -> None:
    private_fake.script(Fault(delay=0.3))
    started = time.monotonic()
    response = post_batch(client, event())
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200
    assert private_fake.event_ids() == ["evt_1"]


def test_fault_delay_longer_than_client_timeout(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    private_fake.script(Fault(delay=5.0))
    with pytest.raises(httpx.ReadTimeout):
        post_batch(client, event(), timeout=0.2)


def test_fault_drop_connection_is_transport_error(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    private_fake.script(Fault(drop_connection=True))
    with pytest.raises(httpx.TransportError):
        post_batch(client, event())
    assert private_fake.events == {}
    assert [r.status for r in private_fake.batch_requests()] == [0]
    assert post_batch(client, event()).status_code == 200  # the client recovers


def test_fault_garbage_body(private_fake: FakeEnso, client: httpx.Client) -> None:
    private_fake.script(Fault(body=b"<html>502 bad gateway</html>"))
    response = post_batch(client, event())
    assert response.status_code == 200
    assert response.content == b"<html>502 bad gateway</html>"
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert private_fake.events == {}


def test_fault_record_status(private_fake: FakeEnso, client: httpx.Client) -> None:
    private_fake.script(Fault(record_status={1: 503, 2: 429}))
    response = post_batch(client, event("a"), event("b"), event("c"))
    failed = response.json()["data"]["failedRecords"]
    assert failed == [
        {
            "index": 2,
            "error": "Service temporarily unavailable",
            "code": "transient",
            "statusCode": 429,
        },
        {
            "index": 1,
            "error": "Service temporarily unavailable",
            "code": "transient",
            "statusCode": 503,
        },
    ]
    assert private_fake.event_ids() == ["a"]
    post_batch(client, event("b"), event("c"))
    assert private_fake.event_ids() == ["a", "b", "c"]


def test_fail_event_ids_fails_the_next_n_sightings(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    private_fake.fail_event_ids(["b"], status=500, times=2)
    for _ in range(2):
        failed = post_batch(client, event("a"), event("b")).json()["data"]["failedRecords"]
        assert [(f["index"], f["statusCode"]) for f in failed] == [(1, 500)]
    assert post_batch(client, event("b")).json()["data"]["failedRecords"] == []
    assert private_fake.event_ids() == ["a", "b"]
    assert private_fake.duplicates == {"a": 1}


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        Fault(status=42)
    with pytest.raises(ValueError, match="delay"):
        Fault(delay=-1)


def test_hang_until_release(private_fake: FakeEnso, client: httpx.Client) -> None:
    private_fake.hang(None)
    thread, outcome = run_in_thread(lambda: post_batch(client, event()))
    assert private_fake.wait_for(lambda f: f.in_flight == 1, timeout=10.0)
    assert private_fake.events == {}  # still hanging
    private_fake.release()
    thread.join(timeout=5.0)
    assert isinstance(outcome[0], httpx.Response)
    assert outcome[0].status_code == 200
    assert private_fake.event_ids() == ["evt_1"]
    started = time.monotonic()
    post_batch(client, event("after"))  # release() also ends the hang for new requests
    assert time.monotonic() - started < 3.0  # prompt, with room for a loaded machine


def test_hang_for_seconds(private_fake: FakeEnso, client: httpx.Client) -> None:
    private_fake.hang(0.2)
    started = time.monotonic()
    assert post_batch(client, event()).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_stop_is_prompt_while_a_request_hangs() -> None:
    fake = FakeEnso().start()
    client = httpx.Client(base_url=fake.url, timeout=10.0)
    try:
        fake.hang(None)
        thread, outcome = run_in_thread(lambda: post_batch(client, event()))
        assert fake.wait_for(lambda f: f.in_flight == 1, timeout=10.0)
        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 3.0  # prompt, with room for a loaded machine
        thread.join(timeout=5.0)
        assert isinstance(outcome[0], httpx.TransportError)
        assert not fake.running
        assert fake.events == {}
    finally:
        client.close()
        fake.stop()


# --------------------------------------------------------------------------- lifecycle


def test_restart_on_same_port_keeps_data() -> None:
    fake = FakeEnso().start()
    try:
        with httpx.Client(base_url=fake.url) as client:
            port = fake.port
            assert post_batch(client, event("before")).is_success
            fake.stop()
            with pytest.raises(httpx.ConnectError):  # the listener is really closed
                post_batch(client, event("while_down"))
            fake.start()
            assert fake.port == port
            assert post_batch(client, event("after")).is_success
            assert fake.event_ids() == ["before", "after"]
        fake.stop()
        with (
            FakeEnso(port=port) as replacement,
            httpx.Client(base_url=replacement.url) as client,
        ):
            assert replacement.port == port
            assert post_batch(client, event("new")).is_success
            assert replacement.event_ids() == ["new"]
    finally:
        fake.stop()


def test_keep_alive_connection_is_reused(private_fake: FakeEnso, client: httpx.Client) -> None:
    ports = set()
    for i in range(3):
        response = post_batch(client, event(f"e{i}"))
        stream = response.extensions["network_stream"]
        ports.add(stream.get_extra_info("client_addr")[1])
    assert len(ports) == 1
    assert len(private_fake.events) == 3


def test_url_requires_start() -> None:
    fake = FakeEnso()
    with pytest.raises(RuntimeError):
        _ = fake.url
    assert "stopped" in repr(fake)


def test_wait_for_and_wait_for_events(private_fake: FakeEnso, client: httpx.Client) -> None:
    assert not private_fake.wait_for_events(1, timeout=0.05)

    def send() -> None:
        for i in range(3):
            post_batch(client, event(f"bg{i}"))

    thread, _ = run_in_thread(send)
    assert private_fake.wait_for_events(3, timeout=5.0)
    assert private_fake.wait_for(lambda f: len(f.batch_requests()) == 3, timeout=5.0)
    thread.join(timeout=5.0)
    assert private_fake.event_ids() == ["bg0", "bg1", "bg2"]
    assert not private_fake.wait_for(lambda f: f.received > 3, timeout=0.05)


def test_concurrent_clients_are_all_counted(private_fake: FakeEnso, client: httpx.Client) -> None:
    def send(worker: int) -> None:
        for i in range(20):
            post_batch(client, event(f"w{worker}_{i}"), event("shared"))

    threads = [threading.Thread(target=send, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10.0)
    assert len(private_fake.events) == 121
    assert private_fake.received == 240
    assert private_fake.duplicates == {"shared": 119}
    assert len(private_fake.batch_requests()) == 120


def test_recorded_requests(private_fake: FakeEnso, client: httpx.Client) -> None:
    post_batch(client, event("r1"), headers={"X-Trace": "abc"})
    (recorded,) = private_fake.requests
    assert recorded.method == "POST"
    assert recorded.path == "/events/batch"
    assert recorded.headers["x-trace"] == "abc"
    assert recorded.headers["authorization"] == f"Bearer {API_KEY}"
    assert recorded.json() == batch(event("r1"))
    assert recorded.status == 200
    assert recorded.time <= time.monotonic()


def test_reset_clears_data_and_faults_but_keeps_tokens(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    token = login(client).json()["data"]["accessToken"]
    post_batch(client, event("a"), event("a"))
    private_fake.script(Fault(status=500))
    private_fake.fail_event_ids(["b"])
    private_fake.reset()
    assert (private_fake.events, private_fake.duplicates, private_fake.received) == ({}, {}, 0)
    assert (private_fake.requests, private_fake.login_count, private_fake.pending_faults) == (
        [],
        0,
        0,
    )
    bearer = {"Authorization": f"Bearer {token}"}
    response = client.post("/events/batch", json=batch(event("b")), headers=bearer)
    assert response.status_code == 200
    assert private_fake.event_ids() == ["b"]


def settings_of(fake: FakeEnso) -> tuple[object, ...]:
    """The run-time settings (a call, so mypy does not narrow them from assignments)."""
    return (
        fake.response_shape,
        fake.max_body_bytes,
        fake.known_entities,
        fake.token_lifetime,
        fake.client_credentials,
    )


def test_reset_restores_settings_and_clears_hangs_and_poison(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    private_fake.response_shape = "bare"
    private_fake.max_body_bytes = 10
    private_fake.known_entities = {"ent_only"}
    private_fake.token_lifetime = 0.0
    private_fake.client_credentials = {"ck_other": "cs_other"}
    private_fake.poison_event_ids(["p"])
    private_fake.hang(None)
    private_fake.reset()
    assert settings_of(private_fake) == (
        "wrapped",
        None,
        frozenset({"ent_1", "ent_2"}),  # the constructor's
        3600.0,
        CREDENTIALS,
    )
    started = time.monotonic()
    response = post_batch(client, event("p"))  # neither hung, poisoned nor 413
    assert time.monotonic() - started < 2.0
    assert response.json()["data"]["failedRecords"] == []
    assert private_fake.event_ids() == ["p"]


def test_reset_with_tokens_forgets_issued_tokens(
    private_fake: FakeEnso, client: httpx.Client
) -> None:
    bearer = {"Authorization": f"Bearer {login(client).json()['data']['accessToken']}"}
    private_fake.reset(tokens=True)
    assert client.post("/events/batch", json=batch(event()), headers=bearer).status_code == 401
    assert post_batch(client, event()).is_success  # api keys are configuration, not tokens


def test_settings_are_changeable_at_run_time(private_fake: FakeEnso, client: httpx.Client) -> None:
    assert private_fake.api_key == API_KEY
    private_fake.known_entities = None
    private_fake.client_credentials = {"ck_new": "cs_new"}
    anything = post_batch(client, event("a", CustomerEntityId="ent_anything"))
    assert anything.json()["data"]["failedRecords"] == []
    assert login(client).status_code == 401  # the old pair is gone
    assert login(client, "ck_new", "cs_new").status_code == 200
    with pytest.raises(TypeError, match="known_entities"):
        private_fake.known_entities = "ent_1"
    with pytest.raises(ValueError, match="token_lifetime"):
        private_fake.token_lifetime = -1.0
    with pytest.raises(RuntimeError, match="api key"):
        _ = FakeEnso(api_keys=()).api_key


# --------------------------------------------------------------------------- secrets in reprs

SECRET = "cs_SECRET_do_not_log_42"


def test_defect17_recorded_request_repr_redacts_bearer_and_client_secret() -> None:
    with (
        FakeEnso(client_credentials={"ck_1": SECRET}) as fake,
        httpx.Client(base_url=fake.url) as http,
    ):
        token = login(http, "ck_1", SECRET).json()["data"]["accessToken"]
        http.post(
            "/events/batch", json=batch(event()), headers={"Authorization": f"Bearer {token}"}
        )
        post_batch(http, event("evt_2"))
        http.post(  # not JSON at all: still redacted
            "/auth/system-login", content=b'{"clientSecret": "' + SECRET.encode() + b'", oops'
        )
        requests = fake.requests
        shown = repr(requests) + str(requests) + "".join(repr(r.headers) for r in requests)
        for secret in (SECRET, token, token.split(".")[2], API_KEY):
            assert secret not in shown
        assert "Bearer <redacted>" in shown
        assert '"clientSecret":"<redacted>"' in shown
        assert '"clientKey":"ck_1"' in shown  # only the secret goes
        login_request, bearer_request, key_request, _ = requests
        assert login_request.json()["clientSecret"] == SECRET  # assertions see real values
        assert bearer_request.headers["authorization"] == f"Bearer {token}"
        assert key_request.headers["authorization"] == AUTH["Authorization"]


# --------------------------------------------------------------------------- transport()


@pytest.fixture
def mock_client(private_fake: FakeEnso) -> Iterator[httpx.Client]:
    with httpx.Client(base_url="https://enso.invalid", transport=private_fake.transport()) as http:
        yield http


def test_transport_needs_no_socket_and_shares_state_with_the_server(
    private_fake: FakeEnso, mock_client: httpx.Client, client: httpx.Client
) -> None:
    unstarted = FakeEnso()
    with httpx.Client(base_url="https://x.invalid", transport=unstarted.transport()) as http:
        assert post_batch(http, event("evt_u", CustomerEntityId="ent_9")).is_success
    assert unstarted.event_ids() == ["evt_u"]
    assert not unstarted.running
    assert post_batch(mock_client, event("evt_a")).is_success
    assert post_batch(client, event("evt_a"), event("evt_b")).is_success  # over the socket
    assert private_fake.event_ids() == ["evt_a", "evt_b"]
    assert private_fake.duplicates == {"evt_a": 1}
    assert [r.path for r in private_fake.requests] == ["/events/batch", "/events/batch"]


def test_transport_status_table_matches_the_socket(mock_client: httpx.Client) -> None:
    assert mock_client.post("/events/batch", json=batch(event())).status_code == 401
    assert mock_client.get("/nope", headers=AUTH).status_code == 404
    wrong = mock_client.get("/events/batch", headers=AUTH)
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    unknown = post_batch(mock_client, event(CustomerEntityId="ent_x"))
    assert unknown.json()["data"]["failedRecords"][0]["code"] == 2002
    single = mock_client.post("/events", json=event("evt_s"), headers=AUTH)
    assert (single.status_code, single.json()) == (201, event("evt_s"))
    assert login(mock_client).status_code == 200


def test_transport_faults(private_fake: FakeEnso, mock_client: httpx.Client) -> None:
    private_fake.script(
        Fault(status=429, retry_after="3"), Fault(drop_connection=True), Fault(body=b"junk")
    )
    limited = post_batch(mock_client, event())
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    with pytest.raises(httpx.ReadError):
        post_batch(mock_client, event())
    assert post_batch(mock_client, event()).content == b"junk"
    assert private_fake.events == {}
    assert [r.status for r in private_fake.batch_requests()] == [429, 0, 200]


def test_transport_hang_past_read_timeout_is_read_timeout(
    private_fake: FakeEnso, mock_client: httpx.Client
) -> None:
    private_fake.hang(None)
    with pytest.raises(httpx.ReadTimeout):
        post_batch(mock_client, event("evt_late"), timeout=0.1)
    assert private_fake.events == {}  # not processed: the client gave up
    assert [r.status for r in private_fake.batch_requests()] == [0]
    private_fake.script(Fault(delay=30.0))
    private_fake.release()
    with pytest.raises(httpx.ReadTimeout):
        post_batch(mock_client, event("evt_late"), timeout=0.1)
    assert post_batch(mock_client, event("evt_late")).is_success


def test_transport_hang_until_release(private_fake: FakeEnso, mock_client: httpx.Client) -> None:
    private_fake.hang(None)
    thread, outcome = run_in_thread(lambda: post_batch(mock_client, event()))
    assert private_fake.wait_for(lambda f: f.in_flight == 1, timeout=10.0)
    private_fake.release()
    thread.join(timeout=5.0)
    assert isinstance(outcome[0], httpx.Response)
    assert outcome[0].status_code == 200
    assert private_fake.event_ids() == ["evt_1"]


def test_tracker_over_transport_delivers_and_dedups(
    private_fake: FakeEnso, tracker: TrackerFactory
) -> None:
    t = tracker(base_url="https://enso.invalid", transport=private_fake.transport())
    for _ in range(2):
        t.track("ent_1", "api_calls", 1, event_id="evt_twice")
        assert t.flush(5.0)
    t.track("ent_2", "gb_stored", 2.5)
    assert t.flush(5.0)
    assert len(private_fake.events) == 2
    assert private_fake.duplicates == {"evt_twice": 1}
    assert private_fake.events["evt_twice"]["metric"] == "api_calls"
    assert t.stats().delivered == 3


def test_tracker_over_transport_logs_in_with_client_credentials(private_fake: FakeEnso) -> None:
    ((key, secret),) = CREDENTIALS.items()
    tracker = Tracker(
        client_key=key,
        client_secret=secret,
        base_url="https://enso.invalid",
        transport=private_fake.transport(),
    )
    try:
        tracker.track("ent_1", "api_calls", 1, event_id="evt_jwt")
        assert tracker.flush(5.0)
    finally:
        tracker.shutdown(2.0)
    assert private_fake.event_ids() == ["evt_jwt"]
    assert private_fake.login_count == 1
    assert private_fake.batch_requests()[0].headers["authorization"].startswith("Bearer ey")


def test_tracker_over_transport_gets_2002_for_unknown_entities(
    private_fake: FakeEnso, tracker: TrackerFactory, drop_recorder: DropRecorder
) -> None:
    t = tracker(base_url="https://enso.invalid", transport=private_fake.transport())
    event_id = t.track("ent_unknown", "api_calls", 1)
    assert t.flush(5.0)
    (reason,) = drop_recorder.reasons().values()
    assert (reason.kind, reason.code) == ("rejected", 2002)
    assert list(drop_recorder.reasons()) == [event_id]
    assert private_fake.events == {}


@pytest.mark.slow
def test_tracker_over_transport_gets_401_for_a_bad_key(
    private_fake: FakeEnso, tracker: TrackerFactory
) -> None:
    t = tracker(
        api_key="wrong-key", base_url="https://enso.invalid", transport=private_fake.transport()
    )
    t.track("ent_1", "api_calls", 1)
    assert wait_until(lambda: t.stats().auth_state == "unauthorized", timeout=5.0)
    assert {r.status for r in private_fake.batch_requests()} == {401}
    assert private_fake.events == {}
    assert t.stats().queued + t.stats().in_flight == 1  # kept, not dropped


def test_tracker_over_transport_retries_after_a_read_timeout(
    private_fake: FakeEnso, tracker: TrackerFactory
) -> None:
    t = tracker(base_url="https://enso.invalid", transport=private_fake.transport(), timeout=0.1)
    private_fake.hang(None)
    t.track("ent_1", "api_calls", 1, event_id="evt_slow")
    assert private_fake.wait_for(lambda f: len(f.batch_requests()) >= 1, timeout=5.0)
    private_fake.release()
    assert t.flush(5.0)
    assert private_fake.event_ids() == ["evt_slow"]
    assert private_fake.batch_requests()[0].status == 0
    assert t.stats().retried >= 1


# ------------------------------------------- where it listens (issue #18, finding 8)


def test_a_busy_port_is_reported_as_such() -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    fake = FakeEnso(port=port)
    try:
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}") as raised:
            fake.start()
        assert raised.value.errno == errno.EADDRINUSE
        assert "port=0" in str(raised.value)
        assert not fake.running
    finally:
        holder.close()
    fake.start()  # the port is free now: the same fake starts
    try:
        assert fake.url == f"http://127.0.0.1:{port}"
    finally:
        fake.stop()


def test_an_address_this_machine_lacks_is_reported_as_such() -> None:
    with pytest.raises(OSError, match=r"cannot listen on 192\.0\.2\.1:0.*no such address"):
        FakeEnso(host="192.0.2.1").start()  # TEST-NET-1: never a local address


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_it_serves_on_ipv6(drop_recorder: DropRecorder) -> None:
    with FakeEnso(host="::1") as fake:
        assert fake.url.startswith("http://[::1]:")
        tracker = Tracker(api_key=fake.api_key, base_url=fake.url, on_drop=drop_recorder)
        ids = [tracker.track("ent", "api_calls", i) for i in range(20)]
        assert tracker.shutdown(10.0)
        assert set(fake.events) == set(ids)
    assert drop_recorder.calls == []
