"""Opt-in pytest fixtures: one :class:`~enso_tracker.testing.FakeEnso` per test session.

Enable it in a ``conftest.py`` (or a test module)::

    pytest_plugins = ["enso_tracker.testing.pytest_plugin"]

It is deliberately not registered as a ``pytest11`` entry point, which would load it into
the test run of every application that merely installs ``enso-tracker``.

* ``fake_enso``: the session's fake, started once and reset before each test that asks
  for it (data, faults, hangs, issued tokens, and the settings ``response_shape``,
  ``max_body_bytes``, ``accept_gzip``, ``known_entities``, ``token_lifetime``,
  ``client_credentials``), so nothing one test does is seen by the next. Change settings
  freely inside a test. A request still in flight from the previous test (a released
  hang) is waited for before the reset; one that is still held after
  ``IN_FLIGHT_TIMEOUT`` (a long ``Fault(delay=...)``) fails the setup, since it would
  land in this test's records: a test that leaves one needs a private
  ``with FakeEnso() as fake:``, as does a test that stops, restarts or re-binds the fake.
* ``tracker``: a factory, ``tracker(**options) -> Tracker``, for trackers pointed at
  ``fake_enso`` with its api key, ``drop_recorder`` as ``on_drop`` and
  ``enso_tracker_options``; each is shut down after the test.
* ``enso_tracker_options``: the options every ``tracker(...)`` call starts from (a copy of
  ``TRACKER_DEFAULTS``: fast backoff and batching, a 2 s ``shutdown_timeout``). Override
  it in a ``conftest.py`` or a test module, as pytest-httpserver's
  ``httpserver_listen_address`` is overridden::

      @pytest.fixture
      def enso_tracker_options(enso_tracker_options):
          return {**enso_tracker_options, "max_batch_size": 10}

  Options given to the call win over these; these win over the factory's own defaults
  (``base_url``, the api key, ``on_drop``).
* ``drop_recorder``: a fresh :class:`~enso_tracker.testing.DropRecorder` per test. The
  ``tracker`` factory wires it as ``on_drop`` unless the call (or
  ``enso_tracker_options``) passes its own ``on_drop`` (``on_drop=None``: no hook), so
  a dropped event in a test is always there to be asserted on.
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

from ._drops import DropRecorder
from ._enso import FakeEnso

__all__ = [
    "IN_FLIGHT_TIMEOUT",
    "TRACKER_DEFAULTS",
    "TrackerFactory",
    "drop_recorder",
    "enso_tracker_options",
    "fake_enso",
    "fake_enso_env",
    "fake_enso_session",
    "tracker",
]

TrackerFactory = Callable[..., Tracker]

#: What ``enso_tracker_options`` returns (a copy of) unless overridden: retries and batching
#: in milliseconds, not seconds, and a bounded teardown. Override the fixture rather than
#: edit this dict.
TRACKER_DEFAULTS: dict[str, Any] = {
    "backoff_base": 0.01,
    "backoff_max": 0.2,
    "flush_interval": 0.05,
    "shutdown_timeout": 2.0,
}

_CREDENTIAL_OPTIONS = ("api_key", "client_key", "client_secret", "sender")

#: Seconds ``fake_enso`` waits for requests still in flight from the previous test.
IN_FLIGHT_TIMEOUT = 5.0


@pytest.fixture(scope="session")
def fake_enso_session() -> Iterator[FakeEnso]:
    """The session's FakeEnso, started once; not reset between tests."""
    with FakeEnso() as fake:
        yield fake


@pytest.fixture
def fake_enso(fake_enso_session: FakeEnso) -> FakeEnso:
    """The session's FakeEnso, reset to its initial state before this test."""
    fake = fake_enso_session
    fake.reset(tokens=True)  # also ends a hang, so its requests finish now
    if fake.in_flight:
        # Answered after the reset, they would be recorded (and stored) as this test's.
        if not fake.wait_for(lambda f: f.in_flight == 0, IN_FLIGHT_TIMEOUT):
            pytest.fail(
                f"{fake.in_flight} request(s) from an earlier test still held by the shared "
                f"fake_enso after {IN_FLIGHT_TIMEOUT} s (a long Fault(delay=...)?): give that "
                "test a private FakeEnso",
                pytrace=False,
            )
        fake.reset(tokens=True)
    return fake


@pytest.fixture
def enso_tracker_options() -> dict[str, Any]:
    """Options every ``tracker(...)`` starts from; override this fixture to change them."""
    return dict(TRACKER_DEFAULTS)


@pytest.fixture
def drop_recorder() -> DropRecorder:
    """A fresh ``DropRecorder``: the ``on_drop`` of every ``tracker(...)`` by default."""
    return DropRecorder()


@pytest.fixture
def tracker(
    fake_enso: FakeEnso, enso_tracker_options: dict[str, Any], drop_recorder: DropRecorder
) -> Iterator[TrackerFactory]:
    """``tracker(**options)``: a Tracker for ``fake_enso``, shut down after the test.

    Options are those of ``Tracker(...)``, over ``enso_tracker_options``; ``base_url``
    defaults to the fake's URL, ``on_drop`` to ``drop_recorder``, and the credentials to
    the fake's api key (unless you pass ``client_key``/``client_secret`` or a ``sender``).
    """
    made: list[Tracker] = []

    def make(**options: Any) -> Tracker:
        options = {**enso_tracker_options, **options}
        if not any(options.get(name) is not None for name in _CREDENTIAL_OPTIONS):
            options["api_key"] = fake_enso.api_key
        options.setdefault("base_url", fake_enso.url)
        options.setdefault("on_drop", drop_recorder)
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
