"""The opt-in pytest plugin ``enso_tracker.testing.pytest_plugin``.

tests/conftest.py enables it for this suite, so the first tests use its fixtures
directly; the pytester tests run a user's test file in a separate pytest process, which
is how the plugin meets its users.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest

from enso_tracker import Tracker
from enso_tracker.testing import DropRecorder, FakeEnso, Fault
from enso_tracker.testing.pytest_plugin import TRACKER_DEFAULTS, TrackerFactory

pytest_plugins = ["pytester"]

_first_test_state: list[object] = []


def test_fake_enso_is_a_running_fake_with_a_tracker_factory(
    fake_enso: FakeEnso, tracker: TrackerFactory
) -> None:
    fake_enso.known_entities = {"ent_1"}
    made = tracker()
    assert made.config.base_url == fake_enso.url
    assert made.config.backoff_max <= 0.2
    made.track("ent_1", "api_calls", 1, event_id="evt_ok")
    made.track("ent_unknown", "api_calls", 1, event_id="evt_2002")
    assert made.flush(5.0)
    assert fake_enso.event_ids() == ["evt_ok"]
    assert made.stats().dropped == {"rejected": 1}
    # Leave every kind of state behind for the next test to prove it is gone.
    fake_enso.script(Fault(status=500))
    fake_enso.fail_event_ids(["evt_x"])
    fake_enso.poison_event_ids(["evt_y"])
    fake_enso.response_shape = "bare"
    fake_enso.max_body_bytes = 20
    fake_enso.accept_gzip = False
    fake_enso.token_lifetime = 0.0
    fake_enso.client_credentials = {"ck_left": "cs_left"}
    fake_enso.chaos(p503=1.0)
    fake_enso.hang(None)
    _first_test_state[:] = [fake_enso.url, made]


def test_the_next_test_sees_a_clean_fake_and_the_last_tracker_shut_down(
    fake_enso: FakeEnso, tracker: TrackerFactory
) -> None:
    if not _first_test_state:  # run alone (-k): the previous test did not run
        _first_test_state[:] = [fake_enso.url, tracker()]
        _first_test_state[1].shutdown()  # type: ignore[attr-defined]
    url, previous = _first_test_state
    assert fake_enso.url == url  # one server for the session
    assert isinstance(previous, Tracker)
    assert previous.track("ent_1", "api_calls", 1) is None  # shut down at teardown
    assert (fake_enso.events, fake_enso.requests, fake_enso.pending_faults) == ({}, [], 0)
    assert fake_enso.known_entities is None
    assert (fake_enso.response_shape, fake_enso.max_body_bytes) == ("wrapped", None)
    assert (fake_enso.accept_gzip, fake_enso.token_lifetime) == (True, 3600.0)
    assert fake_enso.client_credentials == {}
    made = tracker()
    for event_id in ("evt_x", "evt_y", "evt_z"):  # not failing, not poisoned, not hung
        made.track("ent_anything", "api_calls", 1, event_id=event_id)
    assert made.flush(5.0)
    assert fake_enso.event_ids() == ["evt_x", "evt_y", "evt_z"]
    assert [r.status for r in fake_enso.batch_requests()] == [200]


def test_tracker_factory_wires_drop_recorder_and_starts_from_the_options(
    fake_enso: FakeEnso,
    tracker: TrackerFactory,
    drop_recorder: DropRecorder,
    enso_tracker_options: dict[str, Any],
) -> None:
    assert enso_tracker_options == TRACKER_DEFAULTS
    assert enso_tracker_options is not TRACKER_DEFAULTS  # a test may change its copy
    fake_enso.known_entities = {"ent_1"}
    made = tracker()
    assert made.config.on_drop is drop_recorder
    assert made.config.flush_interval == TRACKER_DEFAULTS["flush_interval"]
    rejected = made.track("ent_unknown", "api_calls", 1)
    assert made.flush(5.0)  # settled: dropped, not pending
    assert [e.event_id for e in drop_recorder.events("rejected")] == [rejected]
    silent = tracker(on_drop=None, flush_interval=0.5)
    assert silent.config.on_drop is None
    assert silent.config.flush_interval == 0.5  # the call wins over the options


def test_tracker_factory_with_client_credentials(
    fake_enso: FakeEnso, tracker: TrackerFactory
) -> None:
    fake_enso.client_credentials = {"ck_1": "cs_1"}
    made = tracker(client_key="ck_1", client_secret="cs_1")
    made.track("ent_1", "api_calls", 1)
    assert made.flush(5.0)
    assert fake_enso.login_count == 1
    assert len(fake_enso.events) == 1


def test_tracker_factory_over_the_socketless_transport(
    fake_enso: FakeEnso, tracker: TrackerFactory
) -> None:
    made = tracker(base_url="https://enso.invalid", transport=fake_enso.transport())
    made.track("ent_1", "api_calls", 1, event_id="evt_t")
    assert made.flush(5.0)
    assert fake_enso.event_ids() == ["evt_t"]


def test_the_plugin_is_not_an_entry_point() -> None:
    """A pytest11 entry point would load the plugin into every app that installs us."""
    plugins = metadata.entry_points(group="pytest11")
    assert not [ep for ep in plugins if ep.value.startswith("enso_tracker")]


USER_TEST_FILE = """
import time

from enso_tracker.testing import Fault

pytest_plugins = ["enso_tracker.testing.pytest_plugin"]

seen = []


def test_first(fake_enso, tracker):
    seen.append(fake_enso)
    fake_enso.known_entities = {"ent_1"}
    t = tracker()
    t.track("ent_1", "api_calls", 1, event_id="evt_1")
    assert t.flush(5.0)
    assert fake_enso.event_ids() == ["evt_1"]
    fake_enso.script(Fault(status=503), Fault(status=503))
    fake_enso.hang(None)
    t.track("ent_1", "api_calls", 1, event_id="evt_stuck")


def test_second(fake_enso, tracker):
    assert seen == [fake_enso]
    assert fake_enso.events == {}
    assert fake_enso.pending_faults == 0
    t = tracker()
    t.track("ent_2", "api_calls", 1, event_id="evt_2")
    started = time.monotonic()
    assert t.flush(5.0)
    assert time.monotonic() - started < 4.0
    assert fake_enso.event_ids() == ["evt_2"]
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_users_test_file_passes_and_state_does_not_leak(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_billing=USER_TEST_FILE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=60)
    result.assert_outcomes(passed=2)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_without_the_plugin_line_the_fixtures_do_not_exist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="def test_uses_it(fake_enso):\n    assert fake_enso is not None\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'fake_enso' not found*"])


LEFT_IN_FLIGHT = """
import threading

import httpx

from enso_tracker.testing import Fault
from enso_tracker.testing import pytest_plugin

pytest_plugins = ["enso_tracker.testing.pytest_plugin"]
pytest_plugin.IN_FLIGHT_TIMEOUT = 0.5

EVENT = {"eventId": "evt_left", "CustomerEntityId": "ent_1", "metricName": "api_calls",
         "value": 1, "timestamp": "2026-01-01T00:00:00.000Z"}


def post_in_background(fake):
    def post():
        try:
            with httpx.Client(base_url=fake.url, timeout=60.0) as client:
                client.post("/events/batch", json={"events": [EVENT]},
                            headers={"Authorization": f"Bearer {fake.api_key}"})
        except httpx.HTTPError:
            pass  # the fake stopped at the end of the session

    threading.Thread(target=post, daemon=True).start()
    assert fake.wait_for(lambda f: f.in_flight == 1, timeout=5.0)


def test_leaves_a_hung_request(fake_enso):
    fake_enso.hang(None)
    post_in_background(fake_enso)


def test_sees_nothing_of_it(fake_enso):
    # Released by the reset, it was answered: before this test began, not in it.
    assert fake_enso.in_flight == 0
    assert (fake_enso.events, fake_enso.requests, fake_enso.received) == ({}, [], 0)


def test_leaves_a_long_delay(fake_enso):
    fake_enso.script(Fault(delay=60.0))
    post_in_background(fake_enso)


def test_is_refused_a_fake_still_answering_the_last_test(fake_enso):
    pass
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_request_left_in_flight_never_lands_in_the_next_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_left=LEFT_IN_FLIGHT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=60)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*1 request(s) from an earlier test still held by the shared fake_enso after 0.5 s*"]
    )


OPTIONS_CONFTEST = """
import pytest

pytest_plugins = ["enso_tracker.testing.pytest_plugin"]


@pytest.fixture
def enso_tracker_options(enso_tracker_options):
    return {**enso_tracker_options, "max_batch_size": 7, "flush_interval": 0.02}
"""

OPTIONS_TEST_FILE = """
from enso_tracker.testing.pytest_plugin import TRACKER_DEFAULTS


def test_the_override_reaches_every_tracker(tracker, drop_recorder):
    t = tracker()
    assert (t.config.max_batch_size, t.config.flush_interval) == (7, 0.02)
    assert t.config.backoff_max == TRACKER_DEFAULTS["backoff_max"]  # the rest kept
    assert t.config.on_drop is drop_recorder


def test_the_call_still_wins(tracker):
    assert tracker(max_batch_size=3).config.max_batch_size == 3
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_user_overrides_enso_tracker_options_in_conftest(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(OPTIONS_CONFTEST)
    pytester.makepyfile(test_options=OPTIONS_TEST_FILE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=60)
    result.assert_outcomes(passed=2)
