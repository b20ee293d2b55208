"""Opt-in pytest fixtures: one :class:`~enso_tracker.testing.FakeEnso` per test session.

Enable it in a ``conftest.py`` (or a test module)::

    pytest_plugins = ["enso_tracker.testing.pytest_plugin"]

It is deliberately not registered as a ``pytest11`` entry point, which would load it into
the test run of every application that merely installs ``enso-tracker``.

* ``fake_enso``: the session's fake, started once and reset before each test that asks
  for it (data, faults, hangs, issued tokens, and the settings ``response_shape``,
  ``max_body_bytes``, ``known_entities``, ``token_lifetime``, ``client_credentials``), so
  nothing one test does is seen by the next. Change settings freely inside a test.
* ``tracker``: a factory, ``tracker(**options) -> Tracker``, for trackers pointed at
  ``fake_enso`` with its api key and fast backoff; each is shut down after the test.
* ``fake_enso_session``: the same server without the per-test reset, for session-scoped
  fixtures of your own.
* ``fake_enso_env``: ``fake_enso``, with the environment pointing at it
  (``ENSO_API_KEY``, ``ENSO_BASE_URL``; ``ENSO_CLIENT_KEY``, ``ENSO_CLIENT_SECRET``,
  ``ENSO_DISABLED`` and ``ENSO_SPOOL_DIR`` unset), for applications that call
  ``enso_tracker.init()`` or ``Tracker.from_env()``. The default tracker ``init()`` made
  is shut down after the test; a tracker the application keeps itself is its to close.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import enso_tracker
from enso_tracker import Tracker

from ._enso import FakeEnso

__all__ = ["TrackerFactory", "fake_enso", "fake_enso_env", "fake_enso_session", "tracker"]

TrackerFactory = Callable[..., Tracker]

#: Defaults of the ``tracker`` factory: retries and batching in milliseconds, not seconds,
#: and a bounded teardown.
TRACKER_DEFAULTS: dict[str, Any] = {
    "backoff_base": 0.01,
    "backoff_max": 0.2,
    "flush_interval": 0.05,
    "shutdown_timeout": 2.0,
}

_CREDENTIAL_OPTIONS = ("api_key", "client_key", "client_secret", "sender")


@pytest.fixture(scope="session")
def fake_enso_session() -> Iterator[FakeEnso]:
    """The session's FakeEnso, started once; not reset between tests."""
    with FakeEnso() as fake:
        yield fake


@pytest.fixture
def fake_enso(fake_enso_session: FakeEnso) -> FakeEnso:
    """The session's FakeEnso, reset to its initial state before this test."""
    fake_enso_session.reset(tokens=True)
    return fake_enso_session


@pytest.fixture
def tracker(fake_enso: FakeEnso) -> Iterator[TrackerFactory]:
    """``tracker(**options)``: a Tracker for ``fake_enso``, shut down after the test.

    Options are those of ``Tracker(...)``; ``base_url`` defaults to the fake's URL, the
    credentials to the fake's api key (unless you pass ``client_key``/``client_secret``
    or a ``sender``), and backoff, ``flush_interval`` and ``shutdown_timeout`` to fast
    values (``TRACKER_DEFAULTS``).
    """
    made: list[Tracker] = []

    def make(**options: Any) -> Tracker:
        if not any(options.get(name) is not None for name in _CREDENTIAL_OPTIONS):
            options["api_key"] = fake_enso.api_key
        options.setdefault("base_url", fake_enso.url)
        for name, value in TRACKER_DEFAULTS.items():
            options.setdefault(name, value)
        made.append(instance := Tracker(**options))
        return instance

    yield make
    # A hang the test left would only make each shutdown wait out its deadline.
    fake_enso.release()
    for instance in made:
        instance.shutdown()


#: What ``fake_enso_env`` unsets: each would send the application elsewhere, or nowhere.
_ENV_UNSET = ("ENSO_CLIENT_KEY", "ENSO_CLIENT_SECRET", "ENSO_DISABLED", "ENSO_SPOOL_DIR")


@pytest.fixture
def fake_enso_env(fake_enso: FakeEnso, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEnso]:
    """``fake_enso``, with ``ENSO_API_KEY`` and ``ENSO_BASE_URL`` pointing at it, for code
    that calls ``enso_tracker.init()`` or ``Tracker.from_env()``; the default tracker is
    shut down after the test."""
    for name in _ENV_UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENSO_API_KEY", fake_enso.api_key)
    monkeypatch.setenv("ENSO_BASE_URL", fake_enso.url)
    yield fake_enso
    fake_enso.release()
    enso_tracker.shutdown(TRACKER_DEFAULTS["shutdown_timeout"])
