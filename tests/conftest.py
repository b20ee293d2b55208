"""Shared fixtures: a real FakeEnso on loopback and trackers that are always shut down."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from enso_tracker import Tracker
from enso_tracker.testing import DropRecorder, FakeEnso

pytest_plugins = ["enso_tracker.testing.pytest_plugin"]

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


#: The suite's name for the public recorder (``enso_tracker.testing.DropRecorder``).
DropLog = DropRecorder


@pytest.fixture
def fake() -> Iterator[FakeEnso]:
    with FakeEnso() as server:
        yield server


@pytest.fixture
def drops() -> DropLog:
    return DropLog()


TrackerFactory = Callable[..., Tracker]


@pytest.fixture
def make_tracker(fake: FakeEnso, drops: DropLog) -> Iterator[TrackerFactory]:
    """Trackers pointed at the fake, with fast backoff, shut down after the test."""
    made: list[Tracker] = []

    def make(**options: Any) -> Tracker:
        options.setdefault("api_key", API_KEY)
        options.setdefault("base_url", fake.url)
        options.setdefault("on_drop", drops)
        options.setdefault("backoff_base", 0.01)
        options.setdefault("backoff_max", 0.2)
        options.setdefault("flush_interval", 0.05)
        tracker = Tracker(**options)
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.shutdown(2.0)


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
