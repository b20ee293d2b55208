"""The suite's shared helpers. Its fixtures are the plugin's (``fake_enso``, ``tracker``,
``drop_recorder``, ``enso_tracker_options``: ``enso_tracker.testing.pytest_plugin``), so
the plugin users rely on is exercised by every test; ``private_fake`` is the one fixture
added here, for tests the shared server cannot host."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from enso_tracker import Tracker
from enso_tracker.testing import FakeEnso

pytest_plugins = ["enso_tracker.testing.pytest_plugin"]

__all__ = ["API_KEY", "Socketless", "TrackerFactory", "accepted", "wait_until"]

API_KEY = "test-api-key"

# A developer's ENSO_DISABLED=1 or ENSO_DEBUG=1 (docs/configuration.md) would switch every
# tracker of this suite off, or flood its output; the tests of those switches set them.
for _switch in ("ENSO_DISABLED", "ENSO_DEBUG"):
    os.environ.pop(_switch, None)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition the test cannot be notified of, with a deadline (no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(0.005)
    return True


#: ``enso_tracker.testing.pytest_plugin.TrackerFactory``, spelt out: importing the plugin
#: here, before pytest loads it, would keep pytest from rewriting its asserts.
TrackerFactory = Callable[..., Tracker]


@pytest.fixture
def private_fake() -> Iterator[FakeEnso]:
    """A FakeEnso of the test's own, for what the plugin's shared ``fake_enso`` cannot
    host: a test that stops, restarts or re-binds the server, or leaves requests held
    past its end (``stop()`` cuts them short). Point trackers at it:
    ``tracker(base_url=private_fake.url)``."""
    with FakeEnso() as server:
        yield server


def accepted(event_id: str | None) -> str:
    """The id ``track()`` returned, asserting the event was accepted."""
    assert event_id is not None, "track() refused the event"
    return event_id


#: ``socketless(fake, **options)``: see the fixture.
Socketless = Callable[..., Tracker]


@pytest.fixture
def socketless() -> Iterator[Socketless]:
    """``socketless(fake, **options) -> Tracker``: a tracker for ``fake`` through its
    ``transport()`` (no socket, for the unit tier), without a SIGTERM handler and with
    ``Tracker``'s own defaults otherwise; each is shut down after the test."""
    made: list[Tracker] = []

    def make(fake: FakeEnso, **options: Any) -> Tracker:
        options.setdefault("handle_sigterm", False)
        made.append(
            t := Tracker(
                api_key=API_KEY, base_url="https://enso.test", transport=fake.transport(), **options
            )
        )
        return t

    yield make
    for t in made:
        t.shutdown(5.0)
