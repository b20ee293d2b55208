"""With a spool, a row on disk is released once every event in it is settled: delivered,
or dropped with its dead letter stored. A row kept after that is sent again by the next
tracker on the directory (billed twice if Enso's dedup window has passed); a row
released early loses its events in a crash. Socketless FakeEnso, a spool in tmp_path,
the public ``Spool`` to count what is on disk, and the audit of the books."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import Spool, Tracker
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, accepted, wait_until
from tests.unit.audit import audit

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def socketless_fake() -> FakeEnso:
    return FakeEnso(known_entities=["ent_1"])  # through transport() only: no socket


@pytest.fixture
def trackers(socketless_fake: FakeEnso, tmp_path: Path) -> Iterator[list[Tracker]]:
    made: list[Tracker] = []
    yield made
    for tracker in made:
        tracker.shutdown(5.0)


def spooled_tracker(fake: FakeEnso, spool: Path, made: list[Tracker], **options: Any) -> Tracker:
    tracker = Tracker(
        api_key=API_KEY,
        base_url="https://enso.test",
        transport=fake.transport(),
        spool_dir=str(spool),
        handle_sigterm=False,
        flush_interval=0.05,
        spool_interval=0.05,
        backoff_base=0.001,
        backoff_max=0.01,
        **options,
    )
    made.append(tracker)
    return tracker


@pytest.mark.parametrize("max_retries", [0, 5])
def test_rows_are_released_once_their_events_are_delivered_or_dead_lettered(
    socketless_fake: FakeEnso, tmp_path: Path, trackers: list[Tracker], max_retries: int
) -> None:
    drops = DropRecorder()
    tracker = spooled_tracker(
        socketless_fake, tmp_path, trackers, on_drop=drops, max_retries=max_retries
    )
    socketless_fake.fail_event_ids(["flaky"], status=503, times=1)
    ids = [accepted(tracker.track("ent_1", "api_calls", i, event_id=f"ok{i}")) for i in range(8)]
    flaky = accepted(tracker.track("ent_1", "api_calls", 1, event_id="flaky"))
    gone = accepted(tracker.track("ent_gone", "api_calls", 1, event_id="gone"))
    assert tracker.flush(10.0)
    spool = Spool(tmp_path)
    assert wait_until(lambda: spool.status().events == 0, 10.0), spool.status()
    exhausted = max_retries == 0  # the flaky event's one failure spends a zero budget
    delivered = [*ids, *([] if exhausted else [flaky])]
    assert sorted(socketless_fake.event_ids()) == sorted(delivered)
    kinds = {"rejected": 1, **({"retries_exhausted": 1} if exhausted else {})}
    status = spool.status()
    assert status.dead_letters_by_kind == kinds
    stats = tracker.stats()
    assert (stats.delivered, stats.dropped, stats.spooled) == (len(delivered), kinds, 0)
    assert drops.kinds() == kinds
    assert drops.reasons()[gone].code == 2002
    assert audit(tracker).events == 0
    assert tracker.shutdown(5.0) is False  # False: some events of this run were dropped
    after = tracker.stats()
    assert (after.left_in_spool, after.dropped, after.delivered) == (0, kinds, len(delivered))
    # The next tracker on the directory finds nothing to send again.
    heir = spooled_tracker(socketless_fake, tmp_path, trackers)
    assert heir.flush(5.0)
    assert heir.stats().adopted == 0
    assert socketless_fake.duplicates == {}
    assert Spool(tmp_path).status().events == 0


def test_rows_of_a_batch_in_flight_at_shutdown_stay_for_the_next_tracker(
    socketless_fake: FakeEnso, tmp_path: Path, trackers: list[Tracker]
) -> None:
    socketless_fake.hang(None)  # the request never returns before the deadline
    tracker = spooled_tracker(socketless_fake, tmp_path, trackers)
    ids = [accepted(tracker.track("ent_1", "api_calls", i)) for i in range(5)]
    assert socketless_fake.wait_for(lambda f: f.in_flight >= 1, 10.0)
    assert wait_until(lambda: tracker.stats().durable_seq == 5, 10.0)
    assert tracker.shutdown(0.5) is False
    stats = tracker.stats()
    assert (stats.left_in_spool, stats.dropped, stats.delivered) == (5, {}, 0)
    assert Spool(tmp_path).status().events == 5  # kept: not known to be delivered
    socketless_fake.reset()  # ends the hang: the stuck request is answered with an error
    heir = spooled_tracker(socketless_fake, tmp_path, trackers)
    assert heir.flush(10.0)
    assert heir.stats().adopted == 5
    assert sorted(socketless_fake.event_ids()) == sorted(ids)
    assert wait_until(lambda: Spool(tmp_path).status().events == 0, 10.0)
    assert audit(heir).events == 0
