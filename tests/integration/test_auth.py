"""Authentication: API tokens and client credentials with JWT refresh, against FakeEnso."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any

import httpx
import pytest

from enso_tracker import ConfigurationError, Tracker
from enso_tracker._http.auth import FALLBACK_TOKEN_TTL, AuthFailure, ClientCredentials, jwt_lifetime
from enso_tracker.testing import DropRecorder, FakeEnso, Fault
from tests.conftest import accepted

KEY, SECRET = "ck_test_abc", "cs_test_very-secret-value"


def credential_tracker(fake: FakeEnso, drops: DropRecorder, **options: Any) -> Tracker:
    options.setdefault("flush_interval", 0.05)
    options.setdefault("backoff_base", 0.02)
    options.setdefault("backoff_max", 0.2)
    return Tracker(
        client_key=options.pop("client_key", KEY),
        client_secret=options.pop("client_secret", SECRET),
        base_url=fake.url,
        on_drop=drops,
        **options,
    )


@pytest.mark.slow
def test_short_lived_tokens_are_renewed_without_losing_or_doubling(
    drop_recorder: DropRecorder,
) -> None:
    with FakeEnso(client_credentials={KEY: SECRET}, token_lifetime=2.0) as fake:
        tracker = credential_tracker(fake, drop_recorder)
        try:
            ids: list[str] = []
            started = time.monotonic()
            pace = threading.Event()
            for i in range(5_000):  # 5,000 events spread over 6 seconds
                ids.append(accepted(tracker.track("ent", "api_calls", i)))
                if i % 50 == 49:
                    pace.wait(max(0.0, started + 6.0 * (i + 1) / 5_000 - time.monotonic()))
            assert tracker.flush(10.0)
            stats = tracker.stats()
        finally:
            tracker.shutdown(2.0)
    assert set(fake.events) == set(ids)
    assert fake.duplicates == {}
    assert stats.delivered == 5_000
    assert stats.dropped == {}
    assert fake.login_count >= 2
    assert stats.logins == fake.login_count
    for login in fake.login_requests():
        assert "authorization" not in login.headers  # the login call carries no bearer
        assert login.json() == {"clientKey": KEY, "clientSecret": SECRET}


def test_revoked_token_means_one_relogin_and_a_replay(drop_recorder: DropRecorder) -> None:
    with FakeEnso(client_credentials={KEY: SECRET}) as fake:
        tracker = credential_tracker(fake, drop_recorder)
        try:
            first = [accepted(tracker.track("ent", "m", i)) for i in range(10)]
            assert tracker.flush(5.0)
            fake.revoke_tokens()
            second = [accepted(tracker.track("ent", "m", i)) for i in range(10)]
            assert tracker.flush(5.0)
            stats = tracker.stats()
        finally:
            tracker.shutdown(2.0)
    assert fake.login_count == 2
    assert set(fake.events) == set(first + second)
    refused, replayed = [r for r in fake.batch_requests() if r.status == 401], None
    assert len(refused) == 1
    after = fake.batch_requests()[-1]
    replayed = after.body
    assert replayed == refused[0].body  # the very same body, so the same eventIds
    assert after.headers["authorization"] != refused[0].headers["authorization"]
    assert stats.auth_state == "ok"
    assert stats.failed_requests == 0


@pytest.mark.slow
def test_wrong_credentials_keep_events_and_do_not_storm(drop_recorder: DropRecorder) -> None:
    with FakeEnso(client_credentials={KEY: SECRET}) as fake:
        tracker = credential_tracker(
            fake, drop_recorder, client_secret="cs_test_wrong", backoff_base=0.05, backoff_max=0.5
        )
        try:
            ids = [accepted(tracker.track("ent", "m", i)) for i in range(20)]
            assert not tracker.flush(2.0)  # cannot deliver; the timeout is honoured
            stats = tracker.stats()
            logins = fake.login_count
        finally:
            tracker.shutdown(0.5)
    assert stats.auth_state == "unauthorized"
    assert stats.pending == 20
    assert stats.dropped == {}
    assert fake.events == {}
    assert 1 <= logins <= 25  # backoff, not a login storm
    assert stats.last_error is not None
    assert "refused the client credentials" in stats.last_error
    assert {e.event_id for e in drop_recorder.events("shutdown")} == set(ids)


def test_unknown_api_key_is_unauthorized_and_events_stay_queued(
    drop_recorder: DropRecorder,
) -> None:
    with FakeEnso() as fake:
        tracker = Tracker(
            api_key="not-a-key", base_url=fake.url, on_drop=drop_recorder, backoff_base=0.05
        )
        try:
            accepted(tracker.track("ent", "m", 1))
            assert not tracker.flush(0.5)
            stats = tracker.stats()
        finally:
            tracker.shutdown(0.2)
    assert stats.auth_state == "unauthorized"
    assert stats.pending == 1
    assert fake.login_count == 0


def test_second_401_right_after_a_fresh_login_is_unauthorized_then_recovers(
    drop_recorder: DropRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeEnso(client_credentials={KEY: SECRET}) as fake:
        fake.script(Fault(status=401), Fault(status=401))
        tracker = credential_tracker(fake, drop_recorder)
        try:
            event_id = accepted(tracker.track("ent", "m", 1))
            assert fake.wait_for(lambda f: len(f.batch_requests()) >= 2, 5.0)
            assert tracker.flush(5.0)
            stats = tracker.stats()
        finally:
            tracker.shutdown(2.0)
    assert list(fake.events) == [event_id]
    assert stats.auth_state == "ok"  # the next success clears the state
    # First login, one re-login after the first 401; the second 401 came with a fresh
    # token, so logging in again would not help: back off and retry with it.
    assert fake.login_count == 2
    assert [r.status for r in fake.batch_requests()] == [401, 401, 200]
    refusals = [r for r in caplog.records if "refuses the credentials" in r.getMessage()]
    assert len(refusals) == 1


def test_secrets_never_reach_logs_reprs_or_stats(
    caplog: pytest.LogCaptureFixture, drop_recorder: DropRecorder
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    with FakeEnso(client_credentials={KEY: SECRET}, token_lifetime=1.0) as fake:
        fake.script(Fault(status=401))
        tracker = credential_tracker(fake, drop_recorder)
        try:
            for i in range(30):
                accepted(tracker.track("ent", "m", i))
            assert tracker.flush(5.0)
            fake.revoke_tokens()  # force the 401 → re-login → replay path
            accepted(tracker.track("ent", "m", 99))
            assert tracker.flush(5.0)
            deadline = time.monotonic() + 1.2  # past the 1 s lifetime: a proactive renewal
            while time.monotonic() < deadline:
                accepted(tracker.track("ent", "m", 1))
                tracker.flush(0.2)
            texts = [repr(tracker), repr(tracker.config), repr(tracker.stats())]
            with pytest.raises(ConfigurationError) as info:
                Tracker(api_key=SECRET, client_key=KEY, client_secret=SECRET)
            texts.append(str(info.value))
        finally:
            tracker.shutdown(2.0)
    tokens = {
        r.headers["authorization"].removeprefix("Bearer ")
        for r in fake.batch_requests()
        if "authorization" in r.headers
    }
    assert len(tokens) >= 3
    assert fake.login_count >= 3
    logged = "\n".join(r.getMessage() for r in caplog.records)
    logged += "\n".join(str(r.args) for r in caplog.records)
    assert any(r.name.startswith(("httpx", "httpcore")) for r in caplog.records)
    everything = logged + "\n".join(texts)
    assert SECRET not in everything
    for token in tokens:
        assert token not in everything
        assert token.split(".")[2] not in everything  # not even the signature


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def test_jwt_lifetime_is_read_without_verification() -> None:
    now = 1_000_000.0
    assert jwt_lifetime(_jwt({"exp": now + 120}), now) == 120.0
    assert jwt_lifetime(_jwt({"sub": "x"}), now) is None
    assert jwt_lifetime("not-a-jwt", now) is None
    assert jwt_lifetime("a.!!!.c", now) is None


def login_with(body: bytes, status: int = 200) -> tuple[ClientCredentials, httpx.Client]:
    client = httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    )
    return ClientCredentials(KEY, SECRET, "https://enso.test"), client


@pytest.mark.parametrize(
    "body",
    [
        b'{"status":"success","message":"Success","data":{"accessToken":"TOKEN"}}',
        b'{"accessToken":"TOKEN"}',
    ],
)
def test_login_answer_in_both_shapes(body: bytes) -> None:
    creds, client = login_with(body.replace(b"TOKEN", _jwt({"exp": time.time() + 600}).encode()))
    assert creds.authorization(client, 5.0).startswith("Bearer eyJ")
    assert creds.logins == 1
    creds.authorization(client, 5.0)
    assert creds.logins == 1  # cached until close to exp


def test_token_without_exp_gets_the_fallback_lifetime() -> None:
    creds, client = login_with(b'{"data":{"accessToken":"opaque-token"}}')
    assert creds.authorization(client, 5.0) == "Bearer opaque-token"
    remaining = creds._renew_at - time.monotonic()
    assert FALLBACK_TOKEN_TTL - 61 <= remaining <= FALLBACK_TOKEN_TTL


def test_lifetime_is_the_last_tokens_own() -> None:
    answers = iter(
        [
            httpx.Response(200, json={"accessToken": _jwt({"iat": 1_000, "exp": 1_900})}),
            httpx.Response(200, json={"accessToken": "opaque-token"}),
        ]
    )
    client = httpx.Client(transport=httpx.MockTransport(lambda request: next(answers)))
    creds = ClientCredentials(KEY, SECRET, "https://enso.test")
    assert creds.lifetime is None  # no login yet
    first = creds.authorization(client, 5.0)
    assert creds.lifetime == 900.0  # exp - iat, what doctor shows
    creds.invalidate(first)
    creds.authorization(client, 5.0)
    assert creds.lifetime is None  # no readable exp: not the previous token's


@pytest.mark.parametrize(
    ("body", "status", "retryable", "text"),
    [
        (b'{"status":"success","data":{}}', 200, True, "holds no data.accessToken"),
        (b"<html>", 200, True, "not the documented JSON"),
        (b'{"status":"error","message":"Unauthorized"}', 401, False, "refused the client"),
        (b'{"status":"error","message":"Forbidden"}', 403, False, "refused the client"),
        (b"", 503, True, "HTTP 503"),
    ],
)
def test_login_failures_are_clear(body: bytes, status: int, retryable: bool, text: str) -> None:
    creds, client = login_with(body, status)
    with pytest.raises(AuthFailure) as info:
        creds.authorization(client, 5.0)
    assert info.value.retryable is retryable
    assert text in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"api_key": "k", "client_key": "c", "client_secret": "s"},
        {"client_key": "c"},
        {"client_secret": "s"},
        {"api_key": ""},
        {"api_key": 5},
    ],
)
def test_credential_modes_are_exclusive(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Tracker(**kwargs)


def test_from_env_reads_client_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeEnso(client_credentials={KEY: SECRET}) as fake:
        env = {"ENSO_CLIENT_KEY": KEY, "ENSO_CLIENT_SECRET": SECRET, "ENSO_BASE_URL": fake.url}
        tracker = Tracker.from_env(env)
        try:
            event_id = accepted(tracker.track("ent", "m", 1))
            assert tracker.flush(5.0)
        finally:
            tracker.shutdown(2.0)
    assert list(fake.events) == [event_id]
    assert fake.login_count == 1


@pytest.mark.parametrize(
    "url",
    ["http://api.getenso.ai", "http://10.0.0.8:8080", "ftp://x.test", "https://u:p@x.test", "x"],
)
def test_insecure_or_odd_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        Tracker(api_key="k", base_url=url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9", "https://x.test"]
)
def test_loopback_http_and_https_are_accepted(url: str) -> None:
    Tracker(api_key="k", base_url=url).shutdown(0.1)


def test_plain_http_needs_an_explicit_opt_in() -> None:
    tracker = Tracker(api_key="k", base_url="http://enso.internal", allow_insecure_http=True)
    assert tracker.config.allow_insecure_http
    tracker.shutdown(0.1)


def test_tls_options_reach_httpx(tmp_path: Any) -> None:
    import ssl

    with pytest.raises(ConfigurationError, match="CA bundle"):
        Tracker(api_key="k", verify=str(tmp_path / "missing.pem"))
    context = ssl.create_default_context()
    tracker = Tracker(api_key="k", verify=context, trust_env=False)
    try:
        sender: Any = tracker._sender
        client = sender._http()
        assert client._transport._pool._ssl_context is context  # login path
        assert sender._direct._pool._ssl_context is context  # batch path
        assert client.trust_env is False
    finally:
        tracker.shutdown(0.1)


@pytest.mark.parametrize(
    ("env", "direct"),
    [
        ({}, True),
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, False),
        ({"ALL_PROXY": "http://proxy.internal:3128"}, False),
        ({"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "api.getenso.ai"}, True),
        ({"HTTP_PROXY": "http://proxy.internal:3128"}, True),  # not for https URLs
    ],
)
def test_environment_proxies_route_batches_through_the_client(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], direct: bool
) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracker = Tracker(api_key="k")
    try:
        sender: Any = tracker._sender
        sender._http()
        assert (sender._direct is not None) is direct
    finally:
        tracker.shutdown(0.1)


def test_batches_reach_enso_through_an_environment_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # FakeEnso serves absolute-form requests too, so it can stand in for a forward proxy.
    with FakeEnso() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        tracker = Tracker(
            api_key="test-api-key", base_url="http://enso.invalid", allow_insecure_http=True
        )
        try:
            event_id = accepted(tracker.track("ent", "m", 1))
            assert tracker.flush(5.0)
        finally:
            tracker.shutdown(1.0)
    assert list(proxy.events) == [event_id]
    assert [r.path for r in proxy.batch_requests()] == ["http://enso.invalid/events/batch"]
