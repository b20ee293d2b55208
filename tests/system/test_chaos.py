"""The chaos suite: scripted fault schedules against a real FakeEnso, then the books.

After each schedule: every accepted event is delivered (unique on the server) or
reported to on_drop with a reason, never both and never neither; the server holds no
event that was not accepted; the tracker's own counters agree. Duplicates on the wire
are expected under faults (at-least-once) and are counted, not forbidden.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Literal

import msgspec
import pytest

from enso_tracker import Tracker
from enso_tracker.testing import DropRecorder, FakeEnso, Fault
from tests.conftest import API_KEY, TrackerFactory, accepted, wait_until

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`


def check_books(tracker: Tracker, fake: FakeEnso, ids: list[str], drops: DropRecorder) -> None:
    stats = tracker.stats()
    assert stats.pending == 0, stats
    assert stats.balanced, stats
    assert len(set(ids)) == len(ids), "an eventId was handed out twice"
    on_server = set(fake.events)
    dropped = set(drops.reasons())
    assert on_server <= set(ids), "the server holds events nobody accepted"
    assert not (on_server & dropped), "events both delivered and reported dropped"
    assert on_server | dropped == set(ids), "events silently missing"
    assert stats.delivered == len(on_server)
    assert sum(stats.dropped.values()) == len(dropped)


def track_many(tracker: Tracker, n: int, entity: str = "ent") -> list[str]:
    return [accepted(tracker.track(entity, "api_calls", i)) for i in range(n)]


def sent_ids(body: bytes) -> list[str]:
    return [e["eventId"] for e in msgspec.json.decode(body)["events"]]


def gaps(fake: FakeEnso) -> list[float]:
    times = [r.time for r in fake.batch_requests()]
    return [b - a for a, b in itertools.pairwise(times)]


def test_503_storm_then_recovery(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.script(*[Fault(status=503)] * 6)
    t = tracker()
    ids = track_many(t, 250)
    assert t.flush(20.0)
    check_books(t, fake_enso, ids, drop_recorder)
    assert set(fake_enso.events) == set(ids)
    stats = t.stats()
    assert stats.failed_requests == 6
    assert stats.retried >= 6


def test_429_retry_after_seconds_pauses_sending(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.script(Fault(status=429, retry_after="0.4"))
    t = tracker()
    ids = track_many(t, 10)
    assert t.flush(10.0)
    check_books(t, fake_enso, ids, drop_recorder)
    assert len(fake_enso.batch_requests()) == 2
    assert gaps(fake_enso)[0] >= 0.38  # the retry waited for Retry-After, not the tiny backoff


def test_429_retry_after_http_date(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    # An HTTP-date has whole seconds: the moment it names is 1-2 s from now, and the
    # first request may reach the fake late on a loaded machine. So the retry is judged
    # against that moment (on the monotonic clock the fake stamps requests with), not
    # against the gap after the first request.
    wall, mono = time.time(), time.monotonic()
    when = email.utils.formatdate(wall + 2.0, usegmt=True)
    due = mono + (email.utils.parsedate_to_datetime(when).timestamp() - wall)
    fake_enso.script(Fault(status=429, retry_after=when))
    t = tracker()
    ids = track_many(t, 10)
    assert t.flush(30.0)
    check_books(t, fake_enso, ids, drop_recorder)
    times = [r.time - mono for r in fake_enso.batch_requests()]
    assert len(times) >= 2
    assert min(times[1:]) >= due - mono - 0.05, (times, due - mono)


def test_connections_reset_mid_request(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.script(*[Fault(drop_connection=True)] * 3)
    t = tracker()
    ids = track_many(t, 120)
    assert t.flush(20.0)
    check_books(t, fake_enso, ids, drop_recorder)
    assert set(fake_enso.events) == set(ids)


def test_server_slower_than_the_client_timeout(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    # The server still stores the slow request after the client gave up on it: the
    # resend is a duplicate on the wire, absorbed by Enso's dedup, counted once here.
    fake_enso.script(Fault(delay=1.0))
    t = tracker(timeout=0.3)
    ids = track_many(t, 20)
    assert t.flush(20.0)
    assert fake_enso.wait_for(lambda f: f.in_flight == 0, 5.0)
    check_books(t, fake_enso, ids, drop_recorder)
    assert set(fake_enso.events) == set(ids)
    assert sum(fake_enso.duplicates.values()) == 20
    assert t.stats().delivered == 20


def test_per_record_5xx_mixed_with_per_record_4xx(drop_recorder: DropRecorder) -> None:
    with FakeEnso(known_entities={"ent_a", "ent_b"}) as fake:
        tracker = Tracker(
            api_key=API_KEY,
            base_url=fake.url,
            on_drop=drop_recorder,
            flush_interval=10.0,
            backoff_base=0.01,
            backoff_max=0.1,
        )
        try:
            ids = [
                accepted(tracker.track(entity, "api_calls", i))
                for i, entity in enumerate(["ent_a", "ent_x", "ent_b", "ent_a", "ent_y", "ent_b"])
            ]
            fake.script(Fault(status=200, record_status={0: 503, 2: 500, 3: 429}))
            fake.fail_event_ids([ids[5]], status=502, times=2)
            assert tracker.flush(10.0)
            check_books(tracker, fake, ids, drop_recorder)
        finally:
            tracker.shutdown(2.0)
    assert set(fake.events) == {ids[0], ids[2], ids[3], ids[5]}
    rejected = drop_recorder.reasons()
    assert set(rejected) == {ids[1], ids[4]}
    assert {(r.code, r.status) for r in rejected.values()} == {(2002, 404)}


def test_413_splits_batches_and_learns_the_limit(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.max_body_bytes = 4_000
    t = tracker(flush_interval=10.0)
    ids = track_many(t, 100)
    big = accepted(t.track("ent", "api_calls", 1, metadata={"blob": "x" * 5_000}))
    assert t.flush(20.0)
    check_books(t, fake_enso, [*ids, big], drop_recorder)
    assert set(fake_enso.events) == set(ids)
    assert [e.event_id for e in drop_recorder.events("too_large")] == [big]
    accepted_bodies = [len(r.body) for r in fake_enso.batch_requests() if r.status == 200]
    assert max(accepted_bodies) <= 4_000
    # Once learned, later batches are cut small from the start: no new 413s.
    before = len([r for r in fake_enso.batch_requests() if r.status == 413])
    more = track_many(t, 100)
    assert t.flush(20.0)
    assert len([r for r in fake_enso.batch_requests() if r.status == 413]) == before
    assert set(more) <= set(fake_enso.events)


def test_server_stopped_and_restarted_on_the_same_port(
    tracker: TrackerFactory, private_fake: FakeEnso, drop_recorder: DropRecorder
) -> None:
    t = tracker(base_url=private_fake.url)
    first = track_many(t, 50)
    assert t.flush(10.0)
    private_fake.stop()
    during = track_many(t, 50)
    # Wait until the tracker has really failed against the stopped server.
    deadline = time.monotonic() + 10.0
    while t.stats().failed_requests < 2 and time.monotonic() < deadline:
        t.flush(0.05)
    assert t.stats().failed_requests >= 2
    private_fake.start()
    after = track_many(t, 50)
    assert t.flush(20.0)
    ids = first + during + after
    check_books(t, private_fake, ids, drop_recorder)
    assert set(private_fake.events) == set(ids)


def test_permanent_403_is_reported_not_retried(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.script(
        Fault(status=403, body=b'{"status":"error","message":"Forbidden","errors":[]}')
    )
    t = tracker()
    ids = track_many(t, 5)
    assert t.flush(10.0)
    check_books(t, fake_enso, ids, drop_recorder)
    assert {e.event_id for e in drop_recorder.events("rejected")} == set(ids)
    (reason,) = {r for _, r in drop_recorder.calls}
    assert reason.status == 403
    assert "Forbidden" in reason.message
    assert len(fake_enso.batch_requests()) == 1


def test_retry_budget_runs_out(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.script(*[Fault(status=503)] * 50)
    t = tracker(max_retries=3)
    ids = track_many(t, 7)
    assert t.flush(10.0)
    check_books(t, fake_enso, ids, drop_recorder)
    assert {e.event_id for e in drop_recorder.events("retries_exhausted")} == set(ids)
    for event_id in ids:  # each event: the first try and three retries, no more
        assert sum(event_id in sent_ids(r.body) for r in fake_enso.batch_requests()) == 4


def test_event_age_budget_runs_out(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.script(*[Fault(status=503)] * 1000)
    t = tracker(max_event_age=0.3, backoff_max=0.05)
    ids = track_many(t, 3)
    assert t.flush(10.0)
    check_books(t, fake_enso, ids, drop_recorder)
    assert len(drop_recorder.events("retries_exhausted")) == 3


def test_queue_is_bounded_during_an_outage(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.hang(None)
    t = tracker(max_queue_size=50, max_batch_size=10)
    results = [t.track("ent", "api_calls", i) for i in range(80)]
    ids = [r for r in results if r is not None]
    assert len(ids) == 50
    assert results[50:] == [None] * 30
    stats = t.stats()
    assert stats.refused == {"queue_full": 30}
    assert stats.pending == 50
    assert len(drop_recorder.events("queue_full")) == 30
    fake_enso.release()
    assert t.flush(10.0)
    assert set(fake_enso.events) == set(ids)


def test_queue_bytes_bound(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.hang(None)
    t = tracker(max_queue_bytes=20_000, max_batch_size=1)
    results = [t.track("ent", "m", 1, metadata={"pad": "x" * 900}) for _ in range(40)]
    refused = results.count(None)
    assert 10 <= refused < 40
    stats = t.stats()
    assert stats.queued_bytes <= 20_000
    assert stats.refused == {"queue_full": refused}
    assert len(drop_recorder.events("queue_full")) == refused
    fake_enso.release()


def test_block_policy_waits_for_room(tracker: TrackerFactory, fake_enso: FakeEnso) -> None:
    fake_enso.hang(None)
    t = tracker(max_queue_size=5, max_batch_size=5, queue_full_policy="block", block_timeout=30.0)
    first = track_many(t, 5)
    result: list[str | None] = []
    blocked = threading.Thread(target=lambda: result.append(t.track("ent", "m", 99)))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # still waiting for room: nothing was refused
    fake_enso.release()
    blocked.join(10.0)
    assert not blocked.is_alive()
    assert result[0] is not None
    assert t.flush(10.0)
    assert set(fake_enso.events) == {*first, result[0]}


def test_block_policy_gives_up_after_block_timeout(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.hang(None)
    t = tracker(max_queue_size=2, queue_full_policy="block", block_timeout=0.2)
    track_many(t, 2)
    started = time.monotonic()
    assert t.track("ent", "m", 1) is None
    assert time.monotonic() - started >= 0.19
    assert t.stats().refused == {"queue_full": 1}
    fake_enso.release()


def test_shutdown_returns_by_its_deadline_when_the_server_is_down(
    drop_recorder: DropRecorder,
) -> None:
    with FakeEnso() as fake:
        url = fake.url
    # Nothing listens on that port now: every connection is refused.
    tracker = Tracker(api_key=API_KEY, base_url=url, on_drop=drop_recorder, backoff_base=0.5)
    ids = track_many(tracker, 30)
    started = time.monotonic()
    assert tracker.shutdown(1.0) is False
    assert time.monotonic() - started < 3.0  # 1 s deadline, slack for a loaded machine
    assert {e.event_id for e in drop_recorder.events("shutdown")} == set(ids)
    assert tracker.stats().balanced


def test_process_exits_within_its_deadline_while_the_server_is_down() -> None:
    with FakeEnso() as fake:
        url = fake.url
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from enso_tracker import Tracker
                t = Tracker(api_key="k", base_url={url!r}, shutdown_timeout=1.0)
                for i in range(500):
                    t.track("ent", "api_calls", i)
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 1.0 + 4.0
    assert "500 dropped" in result.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_in_the_middle_of_traffic(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    t = tracker(flush_interval=30.0)  # keep the parent's events queued at fork
    before = track_many(t, 40, "parent")
    stop = threading.Event()
    during: list[str] = []

    def parent_traffic() -> None:
        while not stop.is_set() and len(during) < 5_000:
            during.append(accepted(t.track("parent", "api_calls", 1)))

    traffic = threading.Thread(target=parent_traffic)
    traffic.start()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only its own events, never the parent's
        try:
            os.close(read_fd)
            ids = [t.track("child", "api_calls", i) for i in range(300)]
            ok = t.flush(10.0) and None not in ids
            s = t.stats()
            ok = ok and s.accepted == 300 and s.delivered == 300
            os.write(write_fd, ("\n".join(i or "" for i in ids) if ok else "FAIL").encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    stop.set()
    traffic.join()
    child_ids = b"".join(chunks).decode().split()
    assert child_ids != ["FAIL"]
    assert len(child_ids) == 300
    after = track_many(t, 40, "parent")
    assert t.flush(20.0)
    parent_ids = before + during + after
    assert not set(parent_ids) & set(child_ids)
    assert set(fake_enso.events) == set(parent_ids) | set(child_ids)
    assert fake_enso.duplicates == {}  # nothing the parent had queued was sent by the child
    assert drop_recorder.calls == []
    stats = t.stats()  # the parent's books hold the parent's events only
    assert stats.accepted == stats.delivered == len(parent_ids)
    assert stats.balanced
    assert stats.pending == 0


def _child_tracks(url: str, n: int) -> None:
    tracker = Tracker(api_key=API_KEY, base_url=url, flush_interval=60.0)
    for i in range(n):
        tracker.track("mp-child", "api_calls", i)
    # returns without flush(): multiprocessing then leaves through os._exit()


def _child_uses_inherited(tracker: Tracker, n: int) -> None:
    for i in range(n):
        tracker.track("mp-inherited", "api_calls", i)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_children_deliver_at_exit(
    fake_enso: FakeEnso, method: Literal["fork", "spawn"]
) -> None:
    import multiprocessing

    context: Any = multiprocessing.get_context(method)  # typeshed: BaseContext lacks Process
    child = context.Process(target=_child_tracks, args=(fake_enso.url, 250))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert len(fake_enso.events) == 250
    assert {e["CustomerEntityId"] for e in fake_enso.events.values()} == {"mp-child"}


def test_multiprocessing_fork_child_with_an_inherited_tracker(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    import multiprocessing

    t = tracker(flush_interval=60.0)
    parent_ids = track_many(t, 30, "parent")  # queued in the parent at fork time
    child = multiprocessing.get_context("fork").Process(target=_child_uses_inherited, args=(t, 40))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    children = [e for e in fake_enso.events.values() if e["CustomerEntityId"] == "mp-inherited"]
    assert len(children) == 40
    assert t.flush(10.0)
    assert set(parent_ids) <= set(fake_enso.events)
    assert fake_enso.duplicates == {}
    assert len(fake_enso.events) == 70


def test_a_poison_event_does_not_hold_up_the_others(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    # Every request that carries the poison event fails as a whole (a server bug set off
    # by one record). The others must get through around it, not queue behind it.
    t = tracker(max_retries=1_000, backoff_base=0.02, backoff_max=0.2)
    poison = accepted(t.track("ent", "api_calls", 0))
    fake_enso.poison_event_ids([poison])
    others = track_many(t, 300)
    assert fake_enso.wait_for(lambda f: set(others) <= set(f.events), 15.0)
    assert wait_until(lambda: t.stats().pending == 1)  # only the poison, retrying
    assert poison not in fake_enso.events
    fake_enso.poison_event_ids([])  # the server is fixed: the poison goes through too
    assert t.flush(10.0)
    check_books(t, fake_enso, [poison, *others], drop_recorder)
    assert set(fake_enso.events) == {poison, *others}


def test_a_poison_event_exhausts_its_own_budget(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    t = tracker(max_retries=12, backoff_base=0.01, backoff_max=0.05)
    poison = accepted(t.track("ent", "api_calls", 0))
    fake_enso.poison_event_ids([poison])
    others = track_many(t, 150)
    assert t.flush(15.0)
    check_books(t, fake_enso, [poison, *others], drop_recorder)
    assert set(fake_enso.events) == set(others)  # bisection isolated it within the budget
    assert [e.event_id for e in drop_recorder.events("retries_exhausted")] == [poison]
    sent_with_poison = [r for r in fake_enso.batch_requests() if poison in sent_ids(r.body)]
    assert len(sent_with_poison) == 13  # the first try and its twelve retries


def test_retries_are_not_starved_by_fresh_traffic_during_an_outage(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.script(*[Fault(status=503)] * 8)
    t = tracker(max_batch_size=10, backoff_base=0.005, backoff_max=0.02)
    first = track_many(t, 10)
    assert fake_enso.wait_for(lambda f: len(f.batch_requests()) >= 1, 5.0)
    later: list[str] = []
    while len(fake_enso.batch_requests()) < 8:  # fresh traffic all through the outage
        later += track_many(t, 10)
        t.flush(0.01)
    retried_first = [
        r for r in fake_enso.batch_requests()[1:8] if set(sent_ids(r.body)) & set(first)
    ]
    assert len(retried_first) >= 2  # the first batch had its turns while fresh ones came
    assert t.flush(10.0)
    check_books(t, fake_enso, first + later, drop_recorder)
    assert set(fake_enso.events) == set(first + later)


def test_unvouched_answers_and_hostile_hooks_keep_the_books(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    """2xx answers that account for nothing, mixed with outages, while a logging handler
    raises and ``on_drop`` calls back into the tracker: nothing counted delivered that
    Enso did not store, nothing lost, the books exact."""

    class Raising(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("broken handler")

    handler = Raising(logging.DEBUG)
    logging.getLogger("enso_tracker").addHandler(handler)
    fake_enso.known_entities = {"ent"}
    unvouched = [
        b'{"data":{"summary":{}}}',
        b'{"status":"error","data":{"summary":{"success":5,"failed":0,"total":5}}}',
        b'{"summary":{"success":0,"failed":0,"total":0},"failedRecords":[]}',
        b'{"data":{"summary":{"success":1,"failed":0,"total":3},"failedRecords":[]}}',
    ]
    fake_enso.script(
        *(Fault(status=200, body=body) for body in unvouched),
        Fault(status=503),
        Fault(drop_connection=True),
        Fault(status=200, body=unvouched[0]),
    )
    holder: list[Tracker] = []

    def on_drop(events: Any, reason: Any) -> None:
        drop_recorder(events, reason)
        holder[0].stats()
        holder[0].flush(0.01)  # from the sender thread: returns at once

    try:
        t = tracker(on_drop=on_drop, max_batch_size=20)
        holder.append(t)
        ids = track_many(t, 150)
        ids += track_many(t, 10, entity="ent_unknown")  # rejected 2002
        assert t.flush(20.0)
        check_books(t, fake_enso, ids, drop_recorder)
        assert {e.event_id for e in drop_recorder.events("rejected")} == set(ids[150:])
        assert set(fake_enso.events) == set(ids[:150])
        assert t.stats().hook_errors >= 1
    finally:
        logging.getLogger("enso_tracker").removeHandler(handler)
