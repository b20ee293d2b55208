"""``shutdown()`` delivers what is still queued before it returns (it waits for the
sender, it does not hold it off). Called from ``on_drop`` it runs on the sender thread,
which cannot wait for itself: it returns at once, and the sender thread finishes the
shutdown on its own once nothing is left (``Ledger.finish_on_worker``): the summary is
logged, later events are refused as ``closed``, and nothing is lost or sent twice.
Over FakeEnso's socketless transport. (A forked child of a shut-down tracker:
``tests/integration/test_fork_after_shutdown.py``, a fork being a process of its own.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from enso_tracker import DropReason, Event, Tracker
from enso_tracker.testing import FakeEnso, Fault
from tests.conftest import API_KEY, accepted, wait_until
from tests.unit.audit import audit

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def made() -> Iterator[list[Tracker]]:
    trackers: list[Tracker] = []
    yield trackers
    for tracker in trackers:
        tracker.shutdown(5.0)


def test_shutdown_delivers_what_is_queued_then_returns_true(
    made: list[Tracker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="enso_tracker")
    fake = FakeEnso()
    tracker = Tracker(
        api_key=API_KEY,
        base_url="https://enso.test",
        transport=fake.transport(),
        handle_sigterm=False,
        flush_interval=60.0,  # nothing would go before shutdown() asks
    )
    made.append(tracker)
    ids = [accepted(tracker.track("ent_1", "api_calls", i)) for i in range(3)]
    assert tracker.shutdown(10.0) is True
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped, stats.pending) == (3, {}, 0)
    assert sorted(fake.event_ids()) == sorted(ids)
    audit(tracker)
    # Idempotent: a second call finds it closed; nothing begins or ends again.
    assert tracker.shutdown(10.0) is True
    assert caplog.text.count("enso-tracker shut down") == 1
    assert tracker.track("ent_1", "api_calls", 1) is None
    assert tracker.stats().refused == {"closed": 1}


def test_shutdown_from_on_drop_is_finished_by_the_sender_thread(
    made: list[Tracker], caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeEnso(known_entities=["ent_1"])
    answers: list[bool] = []

    def on_drop(events: list[Event], reason: DropReason) -> None:
        answers.append(made[0].shutdown(5.0))

    tracker = Tracker(
        api_key=API_KEY,
        base_url="https://enso.test",
        transport=fake.transport(),
        handle_sigterm=False,
        on_drop=on_drop,
        flush_interval=0.05,
    )
    made.append(tracker)
    caplog.set_level(logging.INFO, logger="enso_tracker")
    ids = [accepted(tracker.track("ent_1", "api_calls", i, event_id=f"ok{i}")) for i in range(2)]
    accepted(tracker.track("ent_gone", "api_calls", 1, event_id="gone"))  # rejected: 404
    assert wait_until(lambda: "enso-tracker shut down" in caplog.text, 10.0), caplog.text
    assert answers == [False]  # from the sender thread: asked, not waited for
    assert "2 delivered, 1 dropped" in caplog.text
    assert tracker.track("ent_1", "api_calls", 9) is None
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped, stats.refused) == (2, {"rejected": 1}, {"closed": 1})
    assert sorted(fake.event_ids()) == sorted(ids)
    assert audit(tracker).events == 0


def tracker(made: list[Tracker], fake: FakeEnso, **options: Any) -> Tracker:
    options.setdefault("handle_sigterm", False)
    t = Tracker(
        api_key=API_KEY, base_url="https://enso.test", transport=fake.transport(), **options
    )
    made.append(t)
    return t


def test_shutdown_cuts_a_backoff_short_for_one_more_prompt_try(made: list[Tracker]) -> None:
    # A 503 with Retry-After: 30 shuts the request gate for 30 s; shutdown(10) must not
    # wait it out (and drop everything at its deadline): one more try, now.
    fake = FakeEnso()
    fake.script(Fault(status=503, retry_after="30"))
    t = tracker(made, fake, flush_interval=0.05)
    ids = [accepted(t.track("ent_1", "api_calls", i)) for i in range(3)]
    assert wait_until(lambda: t.stats().failed_requests == 1, 10.0)
    assert t.shutdown(10.0) is True
    stats = t.stats()
    assert (stats.delivered, stats.dropped, stats.retried) == (3, {}, 3)
    assert sorted(fake.event_ids()) == sorted(ids)


def test_track_in_on_drop_after_shutdown_there_is_refused_as_closed(made: list[Tracker]) -> None:
    fake = FakeEnso(known_entities=["ent_1"])
    late: list[str | None] = []

    def on_drop(events: list[Event], reason: DropReason) -> None:
        if reason.kind == "rejected":  # (the refusal below is reported here too)
            made[0].shutdown(5.0)
            late.append(made[0].track("ent_1", "api_calls", 7))  # intake stopped at once

    t = tracker(made, fake, on_drop=on_drop, flush_interval=0.05)
    accepted(t.track("ent_gone", "api_calls", 1))
    assert wait_until(lambda: bool(late), 10.0)
    assert late == [None]
    assert t.stats().refused == {"closed": 1}


def test_shutdown_from_on_drop_ends_at_its_deadline_with_an_event_still_failing(
    made: list[Tracker], caplog: pytest.LogCaptureFixture
) -> None:
    # "stuck" fails per record on every try (backoff up to 30 s): the sender thread
    # ends the shutdown at its deadline, dropping it as shutdown, not when it is spent.
    fake = FakeEnso(known_entities=["ent_1"])
    fake.fail_event_ids(["stuck"], status=503, times=10_000)

    def on_drop(events: list[Event], reason: DropReason) -> None:
        if reason.kind == "rejected":
            made[0].shutdown(0.5)

    caplog.set_level(logging.INFO, logger="enso_tracker")
    t = tracker(
        made, fake, on_drop=on_drop, flush_interval=0.05, backoff_base=1.0, backoff_max=30.0
    )
    accepted(t.track("ent_1", "api_calls", 1, event_id="stuck"))
    accepted(t.track("ent_gone", "api_calls", 1, event_id="gone"))
    assert wait_until(lambda: "enso-tracker shut down" in caplog.text, 10.0), caplog.text
    stats = t.stats()
    assert stats.dropped == {"rejected": 1, "shutdown": 1}
    assert stats.delivered == 0
    assert audit(t).events == 0


def test_flush_from_on_drop_sends_what_is_queued_without_waiting_flush_interval(
    made: list[Tracker],
) -> None:
    fake = FakeEnso(known_entities=["ent_1"])
    answers: list[bool] = []

    def on_drop(events: list[Event], reason: DropReason) -> None:
        accepted(made[0].track("ent_1", "api_calls", 1, event_id="late"))
        answers.append(made[0].flush(5.0))  # on the sender thread: asks, cannot wait

    # A full batch (2) goes at once; "late" alone would wait flush_interval (60 s).
    t = tracker(made, fake, on_drop=on_drop, flush_interval=60.0, max_batch_size=2)
    accepted(t.track("ent_gone", "api_calls", 1, event_id="gone"))
    accepted(t.track("ent_1", "api_calls", 1, event_id="first"))
    assert wait_until(lambda: "late" in fake.event_ids(), 10.0), fake.event_ids()
    assert answers == [False]
    assert sorted(fake.event_ids()) == ["first", "late"]
