"""The spool seam: the worker stages every batch's exact body before sending it, and
commits each event once it is settled for good (against a real FakeEnso)."""

from __future__ import annotations

import threading

from enso_tracker._items import Pending
from enso_tracker.testing import FakeEnso, Fault

from .conftest import TrackerFactory, accepted


class RecordingSpool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.staged: list[tuple[list[str], bytes]] = []
        self.committed: list[str] = []
        self.closed = False

    def stage(self, batch: list[Pending], body: bytes) -> None:
        with self.lock:
            self.staged.append(([p.item[1] for p in batch], body))

    def commit(self, settled: list[Pending]) -> None:
        with self.lock:
            self.committed.extend(p.item[1] for p in settled)

    def close(self) -> None:
        self.closed = True


def test_every_batch_is_staged_as_sent_and_committed_once_settled(
    make_tracker: TrackerFactory, fake: FakeEnso
) -> None:
    fake.known_entities = {"ent"}
    tracker = make_tracker(max_batch_size=5)
    spool = RecordingSpool()
    tracker._worker.spool = spool
    fake.script(Fault(status=503))  # the first batch is sent twice
    good = [accepted(tracker.track("ent", "m", i)) for i in range(12)]
    bad = accepted(tracker.track("ent_unknown", "m", 0))  # rejected (2002): settled too
    assert tracker.flush(10.0)
    bodies = [r.body for r in fake.batch_requests()]
    assert [body for _, body in spool.staged] == bodies  # the exact bytes, in order
    assert sorted(spool.committed) == sorted([*good, bad])  # once each, retry or not
    staged_ids = [i for ids, _ in spool.staged for i in ids]
    first = spool.staged[0][0]
    assert all(staged_ids.count(i) == 2 for i in first)  # the 503'd events: staged again
    assert tracker.shutdown(5.0) is False  # one event was rejected
    assert spool.closed
