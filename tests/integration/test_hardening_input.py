"""Issue #8, hardening of inputs: credentials, JWT renewal under clock skew, Decimal
values, base URLs and duration bounds. Each ``test_defectN_*`` failed before its fix."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from decimal import Decimal, localcontext
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from enso_tracker import (
    Config,
    ConfigurationError,
    InvalidEventError,
    Tracker,
)
from enso_tracker._http import auth as _auth
from enso_tracker._http.auth import (
    MIN_TOKEN_TTL,
    AuthFailure,
    ClientCredentials,
    jwt_lifetime,
    make_credentials,
)
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, TrackerFactory, accepted

KEY, SECRET = "ck_test_hardening", "cs_test_s3cr3t-hardening-value"
#: A distinctive core: whatever surrounds it, it must never be seen in any text.
CORE = "sk_live_Q7xZ9hardening"


def all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)


# ---------------------------------------------------------------- defect 1: credentials


@pytest.mark.parametrize("padding", ["\n", "\r\n", " ", "\t", " \t\r\n"])
def test_defect1_key_with_surrounding_whitespace_delivers(
    tracker: TrackerFactory, fake_enso: FakeEnso, caplog: pytest.LogCaptureFixture, padding: str
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: httpx, httpcore, h11 included
    t = tracker(api_key=padding + API_KEY + padding)
    event_id = accepted(t.track("ent", "api_calls", 1))
    assert t.flush(5.0)
    stats = t.stats()
    assert list(fake_enso.events) == [event_id]
    (request,) = fake_enso.batch_requests()
    assert request.headers["authorization"] == f"Bearer {API_KEY}"  # stripped
    assert stats.last_error is None
    assert stats.failed_requests == 0
    assert API_KEY not in all_log_text(caplog)


UNSENDABLE_API_KEYS = [
    CORE + "\x00",  # NUL: not whitespace, never stripped
    CORE[:6] + "\x00" + CORE[6:],
    CORE + "\n" + "more",  # an embedded newline: header injection, or h11's refusal
    CORE[:6] + "\x1b" + CORE[6:],
    CORE + "\x7f",
    CORE + "\x0b",  # vertical tab: only spaces, tabs, CR and LF are stripped
    CORE[:6] + "\t" + CORE[6:],
    CORE + "é",  # non-ASCII cannot go in a header
    CORE + "\u00a0",  # no-break space: not ASCII whitespace, not stripped
    CORE + "\udcff",  # a lone surrogate (invalid UTF-8 read with surrogateescape)
]


@pytest.mark.parametrize("key", UNSENDABLE_API_KEYS)
def test_defect1_unsendable_api_key_is_refused_without_echo(
    key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigurationError) as info:
        Tracker(api_key=key)
    message = str(info.value)
    assert "api_key" in message
    assert CORE not in message
    assert CORE[6:] not in message  # not even the part after an embedded character
    assert CORE not in repr(info.value)
    assert info.value.__context__ is None  # nothing chained that could quote it
    assert CORE not in all_log_text(caplog)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("client_key", KEY + "\x00"),
        ("client_key", KEY + "\udc80"),
        ("client_secret", SECRET[:4] + "\x01" + SECRET[4:]),
        ("client_secret", SECRET + "\udcff"),
        ("client_secret", SECRET + "\x85"),  # a C1 control character
        ("client_secret", " \n\t"),  # nothing left once stripped
    ],
)
def test_defect1_unsendable_client_credentials_are_refused(argument: str, value: str) -> None:
    arguments: dict[str, Any] = {"client_key": KEY, "client_secret": SECRET, argument: value}
    with pytest.raises(ConfigurationError) as info:
        Tracker(**arguments)
    assert argument in str(info.value)
    assert SECRET[4:] not in str(info.value)
    assert KEY not in str(info.value)


def test_defect1_client_credentials_are_stripped_and_may_be_non_ascii(
    drop_recorder: DropRecorder,
) -> None:
    secret = "cs_test_ünïcødé"  # travels in the JSON body as UTF-8: fine
    with FakeEnso(client_credentials={KEY: secret}) as fake:
        tracker = Tracker(
            client_key=KEY + "\n",
            client_secret=secret + "\r\n",
            base_url=fake.url,
            on_drop=drop_recorder,
            flush_interval=0.05,
        )
        try:
            event_id = accepted(tracker.track("ent", "m", 1))
            assert tracker.flush(5.0)
        finally:
            tracker.shutdown(2.0)
    assert list(fake.events) == [event_id]
    assert [r.json() for r in fake.login_requests()] == [{"clientKey": KEY, "clientSecret": secret}]


def test_defect1_from_env_with_invalid_utf8_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # What Python hands over for an environment variable holding bytes that are not UTF-8.
    key = os.fsdecode(CORE.encode() + b"\xff")
    assert "\udcff" in key
    monkeypatch.setenv("ENSO_API_KEY", key)
    monkeypatch.delenv("ENSO_CLIENT_KEY", raising=False)
    monkeypatch.delenv("ENSO_CLIENT_SECRET", raising=False)
    with pytest.raises(ConfigurationError) as info:
        Tracker.from_env()
    assert "api_key" in str(info.value)
    assert "surrogate" in str(info.value)
    assert CORE not in str(info.value)
    secret = os.fsdecode(SECRET.encode() + b"\x80")
    with pytest.raises(ConfigurationError) as info:
        Tracker.from_env({"ENSO_CLIENT_KEY": KEY, "ENSO_CLIENT_SECRET": secret})
    assert "client_secret" in str(info.value)
    assert SECRET not in str(info.value)
    assert CORE not in all_log_text(caplog)
    assert SECRET not in all_log_text(caplog)


def test_defect1_from_env_key_with_trailing_newline_delivers(fake_enso: FakeEnso) -> None:
    tracker = Tracker.from_env({"ENSO_API_KEY": API_KEY + "\n", "ENSO_BASE_URL": fake_enso.url})
    try:
        event_id = accepted(tracker.track("ent", "m", 1))
        assert tracker.flush(5.0)
    finally:
        tracker.shutdown(2.0)
    assert list(fake_enso.events) == [event_id]


def failing_login(exc: Exception) -> tuple[ClientCredentials, httpx.Client]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client = httpx.Client(transport=httpx.MockTransport(handler))
    credentials = make_credentials(None, KEY, SECRET, "https://enso.test")
    assert isinstance(credentials, ClientCredentials)
    return credentials, client


@pytest.mark.parametrize(
    "exc",
    [
        # What h11 says of a header it refuses, as httpx re-raises it.
        httpx.LocalProtocolError(f"Illegal header value b'{SECRET}\\n'"),
        httpx.ConnectError(f"failed while sending {SECRET}"),
        # Not an httpx error at all: it escaped the old `except httpx.HTTPError`.
        UnicodeEncodeError("utf-8", json.dumps({"clientSecret": SECRET}), 0, 1, "bad"),
    ],
)
def test_defect1_login_failure_texts_do_not_quote_the_secret(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    credentials, client = failing_login(exc)
    with client, pytest.raises(AuthFailure) as info:
        credentials.authorization(client, 1.0)
    assert info.value.retryable
    assert type(exc).__name__ in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in all_log_text(caplog)


@pytest.mark.parametrize("token", [f"{CORE}\nX-Injected: 1", f"{CORE}é", f"{CORE}\x00"])
def test_defect1_login_answer_token_that_cannot_be_a_header_is_refused(token: str) -> None:
    body = json.dumps({"data": {"accessToken": token}}).encode()
    client = httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    )
    credentials = ClientCredentials(KEY, SECRET, "https://enso.test")
    with client, pytest.raises(AuthFailure) as info:
        credentials.authorization(client, 1.0)
    assert info.value.retryable
    assert CORE not in str(info.value)
    assert credentials.logins == 0


# ---------------------------------------------------------------- defect 13: clock skew


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def clock_ahead(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Only the client's wall clock moves: ``_http.auth`` gets its own ``time``, so FakeEnso
    (which stamps ``iat``/``exp`` with the real ``time.time``) keeps Enso's clock."""
    real_time = time.time
    monkeypatch.setattr(
        _auth, "time", SimpleNamespace(time=lambda: real_time() + seconds, monotonic=time.monotonic)
    )


def test_defect13_client_clock_ahead_does_not_log_in_per_batch(
    monkeypatch: pytest.MonkeyPatch, drop_recorder: DropRecorder
) -> None:
    clock_ahead(monkeypatch, 2 * 3600.0)  # tokens live 1 h: by our clock, born expired
    with FakeEnso(client_credentials={KEY: SECRET}, token_lifetime=3600.0) as fake:
        tracker = Tracker(
            client_key=KEY, client_secret=SECRET, base_url=fake.url, on_drop=drop_recorder
        )
        try:
            ids = []
            for i in range(20):
                ids.append(accepted(tracker.track("ent", "m", i)))
                assert tracker.flush(5.0)
            stats = tracker.stats()
        finally:
            tracker.shutdown(2.0)
    assert len(fake.batch_requests()) >= 20  # one batch per flush
    assert set(fake.events) == set(ids)
    assert fake.login_count <= 2
    assert stats.logins == fake.login_count


def login_answering(token: str) -> tuple[ClientCredentials, httpx.Client]:
    body = json.dumps({"data": {"accessToken": token}}).encode()
    client = httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    )
    return ClientCredentials(KEY, SECRET, "https://enso.test"), client


def test_defect13_token_without_iat_that_looks_expired_gets_the_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = _jwt({"exp": time.time() + 600})  # Enso's clock; no iat to tell the lifetime
    clock_ahead(monkeypatch, 3600.0)
    credentials, client = login_answering(token)
    with client:
        before = time.monotonic()
        for _ in range(20):
            assert credentials.authorization(client, 1.0) == f"Bearer {token}"
    assert credentials.logins == 1
    remaining = credentials._renew_at - before
    assert MIN_TOKEN_TTL * 3 / 4 - 5 <= remaining <= MIN_TOKEN_TTL


def test_defect13_lifetime_comes_from_the_token_when_it_says_so() -> None:
    issued = 1_700_000_000.0
    token = _jwt({"iat": issued, "exp": issued + 3600})
    # Whatever the client's clock says, ahead, behind or right:
    for now in (issued + 7200, issued - 7200, issued):
        assert jwt_lifetime(token, now) == 3600.0
    # Without iat: the client's clock, floored so a skewed clock cannot mean zero.
    assert jwt_lifetime(_jwt({"exp": issued + 120}), issued) == 120.0
    assert jwt_lifetime(_jwt({"exp": issued}), issued + 7200) == MIN_TOKEN_TTL
    # An iat that is not before exp is no lifetime: back to the clock.
    assert jwt_lifetime(_jwt({"iat": issued, "exp": issued}), issued - 300) == 300.0
    # Claims of the wrong type are ignored, never trusted.
    assert jwt_lifetime(_jwt({"iat": "x", "exp": issued + 90}), issued) == 90.0
    assert jwt_lifetime(_jwt({"exp": True}), issued) is None
    assert jwt_lifetime(_jwt({"exp": 10**400}), issued) is None


@pytest.mark.parametrize(("lifetime", "renew_after"), [(600, 540.0), (2, 1.5), (100, 75.0)])
def test_defect13_well_formed_tokens_keep_the_renewal_margin(
    lifetime: int, renew_after: float
) -> None:
    now = time.time()
    credentials, client = login_answering(_jwt({"iat": int(now), "exp": int(now) + lifetime}))
    with client:
        before = time.monotonic()
        credentials.authorization(client, 1.0)
        after = time.monotonic()
    # 60 s before exp, or at three quarters of the lifetime when that comes first.
    assert before + renew_after <= credentials._renew_at <= after + renew_after


# ---------------------------------------------------------------- defect 14: Decimal


REFUSED_DECIMALS = [
    Decimal(2**53 + 1),
    Decimal(2**53),
    Decimal("1" * 100),
    Decimal("1E-400"),  # underflows to 0
    Decimal("1E-310"),  # a subnormal: digits lost
    Decimal("-1E-400"),
    Decimal("1E+400"),
    Decimal("1.8E+308"),
    Decimal("0.1234567890123456"),  # 16 significant digits
    Decimal("12.500000000000000001"),
    Decimal("2.2250738585072014E-308"),
    Decimal("9007199254740991.5"),  # 17 digits, not an integer
    Decimal("1." + "0" * 60),  # one significant digit, but a 62-character number
]


@pytest.mark.parametrize("value", REFUSED_DECIMALS, ids=lambda d: str(d)[:24])
def test_defect14_decimal_a_double_cannot_carry_is_refused(
    tracker: TrackerFactory, fake_enso: FakeEnso, value: Decimal
) -> None:
    t = tracker()
    with pytest.raises(InvalidEventError) as info:
        t.track("ent", "m", value)
    assert info.value.field == "value"
    assert info.value.value is value
    assert t.stats().accepted == 0
    assert fake_enso.received == 0


ACCEPTED_DECIMALS = [
    "0.1",
    "12.50",
    "0",
    "-0",
    "-3.25",
    "1E+20",
    "100000000000000000000.0",
    "123456789012345",
    "0.000123456789012345",
    "9007199254740991",  # 16 digits, but an integer a double holds exactly (like an int)
    "-9007199254740991.000",
    "1.79769313486231E+308",
    "2.23E-308",
]


def test_defect14_decimals_a_double_carries_are_sent_as_written(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    made = tracker()
    with localcontext() as context:
        context.prec = 3  # the caller's context must not round anything
        ids = {accepted(made.track("ent", "m", Decimal(t))): t for t in ACCEPTED_DECIMALS}
    assert made.flush(5.0)
    body = b"".join(r.body for r in fake_enso.batch_requests())
    for text in ACCEPTED_DECIMALS:
        assert f'"value":{Decimal(text)}'.encode() in body  # exactly the Decimal's text
    assert set(fake_enso.events) == set(ids)
    for event_id, text in ids.items():
        assert fake_enso.events[event_id]["value"] == float(Decimal(text))


# ---------------------------------------------------------------- defect 18: base_url


BAD_URLS = [
    "https://exa mple.com",
    "https://[::1",
    "https://[::zz]:8080",
    "https://x.test:99999",
    "https://x.test:65536",
    "https://x.test:abc",
    "https://x.test:+80",
    "https://x.test:0",
    "ftp://x.test",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "https://x.test\n",  # an env var's trailing newline
    " https://x.test",
    "https://ex\tample.com",  # urlsplit would silently drop the tab
    "https://x.test/\x00",
    "https://x.test/\x7f",
    "https://x.test/\udc80",
    "https://",
    "https:///events",
    "https://:443",
    "https:x.test",
    "https://a..b",
    "https://exa%20mple.com",
    "https://x\\y.test",
    "https://1.2.3.4.5",
    "https://☃.com",
    "https://xn--zz.com",
    "https://" + "a" * 64 + ".com",
    "https://x.test?",
    "https://x.test#frag",
    "https://@x.test",
    "",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_defect18_malformed_base_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Config(base_url=url)
    assert type(info.value) is ConfigurationError
    assert "base_url" in str(info.value)
    with pytest.raises(ConfigurationError):
        Tracker(api_key="k", base_url=url)


@pytest.mark.parametrize(
    "url",
    ["https://user:hunter2@exa mple.com", "https://u:hunter2/x@x.test", "https://u:hunter2@[::1"],
)
def test_defect18_refusals_never_echo_a_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Config(base_url=url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]:8080",
        "https://host/api/",
        "https://x.test:8443/prefix/v1",
        "HTTPS://API.GETENSO.AI",
        "https://bücher.example",
        "https://x.test.",
        "https://10.0.0.1",
        "http://localhost:1",
    ],
)
def test_defect18_well_formed_base_urls_are_accepted(url: str) -> None:
    assert Config(base_url=url).base_url == url
    tracker = Tracker(api_key="k", base_url=url)
    try:
        assert tracker.config.base_url == url
    finally:
        tracker.shutdown(0.1)


def test_defect18_a_path_prefix_reaches_the_server(drop_recorder: DropRecorder) -> None:
    with FakeEnso() as fake:
        tracker = Tracker(
            api_key=API_KEY, base_url=fake.url + "/api/", on_drop=drop_recorder, backoff_base=0.01
        )
        try:
            accepted(tracker.track("ent", "m", 1))
            assert fake.wait_for(lambda f: len(f.requests) >= 1, 5.0)
        finally:
            tracker.shutdown(0.5)
        assert fake.requests[0].path == "/api/events/batch"


# ---------------------------------------------------------------- defect 6: duration bounds


SECONDS_MAXIMA = {
    "flush_interval": 86_400.0,
    "timeout": 86_400.0,
    "backoff_base": 86_400.0,
    "backoff_max": 86_400.0,
    "block_timeout": 86_400.0,
    "shutdown_timeout": 86_400.0,
    "max_retry_after": 86_400.0,
    "max_event_age": 604_800.0,
}


@pytest.mark.parametrize(("option", "maximum"), sorted(SECONDS_MAXIMA.items()))
def test_defect6_every_duration_has_a_documented_maximum(option: str, maximum: float) -> None:
    at_most: dict[str, Any] = {option: maximum}
    assert getattr(Config(**at_most), option) == maximum
    for absurd in (maximum + 1, 1e10, 10**400, float("inf"), float("nan")):
        too_long: dict[str, Any] = {option: absurd}
        with pytest.raises(ConfigurationError) as info:
            Config(**too_long)
        assert option in str(info.value)
        assert f"{maximum:,.0f}" in str(info.value)  # the message says the bound


@pytest.mark.parametrize("option", ["shutdown_timeout", "block_timeout"])
def test_defect6_huge_timeouts_are_refused_by_tracker(option: str) -> None:
    options: dict[str, Any] = {option: 1e10}
    with pytest.raises(ConfigurationError):
        Tracker(api_key="k", **options)
