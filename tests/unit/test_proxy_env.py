"""Issue #18, finding 8: an environment proxy that cannot work is a ConfigurationError
at construction (not ``retries_exhausted`` for every event later), and its message never
shows the credentials in the proxy URL."""

from __future__ import annotations

import pytest

from enso_tracker import ConfigurationError, Tracker
from enso_tracker.testing import FakeEnso
from tests.conftest import API_KEY

SECRET = "s3cr3t-pw"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("HTTPS_PROXY", f"socks5://alice:{SECRET}@proxy.internal:1080", "socksio"),
        ("ALL_PROXY", f"socks5h://alice:{SECRET}@proxy.internal:1080", "socksio"),
        ("ALL_PROXY", f"http://alice:{SECRET}@proxy.internal:31x8", "not a valid URL"),
        ("HTTPS_PROXY", f"http://alice:{SECRET}@proxy.internal:99999", "not a valid URL"),
        ("HTTPS_PROXY", "http://pro xy.internal:3128", "whitespace"),
        ("HTTPS_PROXY", "http://proxy.internal:3128\n", "whitespace"),
        ("HTTP_PROXY", f"socks4://alice:{SECRET}@proxy.internal:1080", "'socks4'"),
        ("HTTPS_PROXY", "http://:3128", "has no host"),
        ("HTTPS_PROXY", "http://[bad:3128", "not a valid URL"),
        ("HTTPS_PROXY", "http://proxy.internal:0", "port"),
    ],
)
def test_a_proxy_that_cannot_work_fails_construction(
    env: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    env.setattr("enso_tracker._http.proxy._socks_installed", lambda: False)
    env.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        Tracker(api_key=API_KEY)
    message = str(raised.value)
    assert variable in message
    assert says in message
    assert SECRET not in message
    assert "alice" not in message
    assert "trust_env=False" in message


@pytest.mark.parametrize(
    "value",
    [
        "proxy.internal:3128",  # a bare host:port, as curl and httpx read it
        f"http://alice:{SECRET}@proxy.internal:3128",
        "https://10.0.0.7:3128",
        "http://[::1]:3128",
        "socks5://proxy.internal:1080",  # with the socks extra installed
    ],
)
def test_a_workable_proxy_is_accepted(env: pytest.MonkeyPatch, value: str) -> None:
    env.setattr("enso_tracker._http.proxy._socks_installed", lambda: True)
    env.setenv("HTTPS_PROXY", value)
    Tracker(api_key=API_KEY, handle_sigterm=False).shutdown(0.0)


def test_a_broken_proxy_is_ignored_when_the_environment_is(env: pytest.MonkeyPatch) -> None:
    env.setenv("HTTPS_PROXY", "socks4://proxy.internal:1080")
    Tracker(api_key=API_KEY, trust_env=False).shutdown(0.0)
    env.setenv("NO_PROXY", "*")
    Tracker(api_key=API_KEY).shutdown(0.0)


def test_the_real_socks_check_matches_what_httpx_needs(env: pytest.MonkeyPatch) -> None:
    # Without the patch: whatever is installed here, the check agrees with httpx itself.
    import httpx

    env.setenv("ALL_PROXY", "socks5://proxy.internal:1080")
    try:
        httpx.Client().close()
    except ImportError:
        with pytest.raises(ConfigurationError, match="socksio"):
            Tracker(api_key=API_KEY)
    else:
        Tracker(api_key=API_KEY).shutdown(0.0)


def test_an_unused_proxy_setting_does_not_stop_delivery(
    env: pytest.MonkeyPatch, fake_enso: FakeEnso
) -> None:
    # A valid proxy bypassed by NO_PROXY: the tracker builds and delivers directly.
    env.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    env.setenv("NO_PROXY", "127.0.0.1")
    tracker = Tracker(api_key=API_KEY, base_url=fake_enso.url)
    assert tracker.track("ent", "api_calls", 1) is not None
    assert tracker.shutdown(10.0)
    assert len(fake_enso.events) == 1
