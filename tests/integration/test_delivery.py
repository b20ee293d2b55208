"""End-to-end delivery against a real FakeEnso on loopback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import msgspec
import pytest

from enso_tracker import Tracker
from enso_tracker._http.sender import HttpSender, Outcome
from enso_tracker.testing import DropRecorder, FakeEnso, Fault
from tests.conftest import API_KEY, TrackerFactory, accepted


def test_many_threads_every_event_delivered_exactly_once(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker(max_queue_size=100_000)
    threads, per_thread = 8, 5_000
    ids: list[list[str | None]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def work(slot: int) -> None:
        barrier.wait()
        out = ids[slot]
        for i in range(per_thread):
            out.append(t.track(f"ent_{slot}", "api_calls", i))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert t.flush(60.0)
    flat = [i for group in ids for i in group]
    assert None not in flat
    assert len(set(flat)) == threads * per_thread
    assert set(fake_enso.events) == set(flat)
    assert fake_enso.duplicates == {}
    stats = t.stats()
    assert stats.accepted == stats.delivered == threads * per_thread
    assert stats.dropped == {}
    assert stats.pending == 0
    assert stats.balanced
    # Batches respect max_backlog_batch_size (max_batch_size but for a backlog: #21)
    # and max_batch_bytes, and every event went in exactly one batch.
    sizes = [len(r.json()["events"]) for r in fake_enso.batch_requests()]
    assert max(sizes) <= t.config.max_backlog_batch_size == 5_000
    assert max(len(r.body) for r in fake_enso.batch_requests()) <= t.config.max_batch_bytes
    assert sum(sizes) == threads * per_thread
    # Per-thread order is kept for the values each thread tracked.
    by_id = fake_enso.events
    for slot in range(threads):
        values = [by_id[i]["value"] for i in ids[slot] if i is not None]
        assert values == list(range(per_thread))


def test_wire_format_and_headers(tracker: TrackerFactory, fake_enso: FakeEnso) -> None:
    from decimal import Decimal

    t = tracker()
    event_id = t.track(
        "ent_6CsgzAdRgTlzT_9O",
        "gb_stored",
        Decimal("12.50"),
        timestamp="2026-04-01T12:00:00Z",
        metadata={"region": "eu"},
        event_id="evt_custom_1",
        job_id="job_nightly",
    )
    plain_id = t.track("ent_2", "api_calls", 1)
    assert event_id == "evt_custom_1"
    assert plain_id is not None
    assert t.flush(5.0)
    (request,) = fake_enso.batch_requests()
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("enso-tracker-python/")
    assert b'"value":12.50' in request.body  # exact, not a float
    first, second = request.json()["events"]
    assert first == {
        "CustomerEntityId": "ent_6CsgzAdRgTlzT_9O",
        "metric": "gb_stored",
        "value": 12.5,  # msgspec reads it back as a float; the bytes above are exact
        "timestamp": "2026-04-01T12:00:00.000Z",
        "eventId": "evt_custom_1",
        "metadata": {"region": "eu"},
        "JobId": "job_nightly",
        "jobId": "job_nightly",
    }
    assert set(second) == {"CustomerEntityId", "metric", "value", "timestamp", "eventId"}


class CorruptingSender(HttpSender):
    """A raw-send path: breaks one event's timestamp after validation, as a bug might."""

    def send(self, body: bytes, timeout: float) -> Outcome:
        doc = msgspec.json.decode(body)
        doc["events"][1]["timestamp"] = "NaN-NaN-NaN NaN:NaN:NaN.NaN"
        return super().send(msgspec.json.encode(doc), timeout)


@pytest.mark.parametrize("shape", ["wrapped", "bare"])
def test_per_record_failures_reach_on_drop_with_codes(
    shape: str, drop_recorder: DropRecorder
) -> None:
    from enso_tracker import Config
    from enso_tracker._http.auth import ApiKey

    with FakeEnso(known_entities={"ent_known"}, response_shape=shape) as fake:  # type: ignore[arg-type]
        config = Config(base_url=fake.url, on_drop=drop_recorder, flush_interval=10.0)
        tracker = Tracker(sender=CorruptingSender(config, ApiKey(API_KEY)), config=config)
        try:
            ok = accepted(tracker.track("ent_known", "api_calls", 1))
            bad_ts = accepted(tracker.track("ent_known", "api_calls", 2))
            unknown = accepted(tracker.track("ent_unknown", "api_calls", 3))
            ok2 = accepted(tracker.track("ent_known", "api_calls", 4))
            assert tracker.flush(5.0)
        finally:
            tracker.shutdown(2.0)
    assert set(fake.events) == {ok, ok2}
    reasons = drop_recorder.reasons()
    assert set(reasons) == {bad_ts, unknown}
    assert reasons[unknown].kind == "rejected"
    assert (reasons[unknown].code, reasons[unknown].status) == (2002, 404)
    assert reasons[unknown].message == "Customer entity not found"
    assert (reasons[bad_ts].code, reasons[bad_ts].status) == ("27", 400)
    assert "Cannot parse input" in reasons[bad_ts].message
    dropped_values = {e.event_id: e.value for e in drop_recorder.events()}
    assert dropped_values == {bad_ts: 2, unknown: 3}
    stats = tracker.stats()
    assert stats.delivered == 2
    assert stats.dropped == {"rejected": 2}
    assert stats.balanced


def test_per_record_5xx_is_retried_with_the_same_event_id(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    t = tracker(flush_interval=10.0)
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(4)]

    fake_enso.script(Fault(status=200, record_status={1: 503, 3: 429}))
    assert t.flush(10.0)
    assert set(fake_enso.events) == set(ids)
    batches = [[e["eventId"] for e in r.json()["events"]] for r in fake_enso.batch_requests()]
    assert batches[0] == ids
    assert sorted(x for b in batches[1:] for x in b) == sorted([ids[1], ids[3]])
    stats = t.stats()
    assert stats.retried == 2
    assert stats.delivered == 4
    assert drop_recorder.calls == []


def test_unparseable_2xx_is_retried_never_counted(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker()
    fake_enso.script(Fault(status=200, body=b"<html>gateway says hi</html>"))
    fake_enso.script(
        Fault(status=200, body=b'{"status":"success","message":"Success","data":null}')
    )
    event_id = t.track("ent", "api_calls", 1)
    assert t.flush(10.0)
    assert list(fake_enso.events) == [event_id]
    sent = [r.json()["events"][0]["eventId"] for r in fake_enso.batch_requests()]
    assert sent == [event_id] * 3
    stats = t.stats()
    assert stats.delivered == 1
    assert stats.failed_requests == 2


def _run(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_process_that_exits_without_calling_anything_delivers_at_exit(fake_enso: FakeEnso) -> None:
    result = _run(
        f"""
        from enso_tracker import Tracker
        t = Tracker(api_key={API_KEY!r}, base_url={fake_enso.url!r}, flush_interval=60.0)
        ids = [t.track("ent", "api_calls", i) for i in range(1234)]
        print("\\n".join(ids))
        """
    )
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 1234
    assert set(fake_enso.events) == set(ids)
    assert "1234 delivered, 0 dropped" in result.stderr or result.stderr == ""


def test_module_level_default_tracker_delivers_at_exit(fake_enso: FakeEnso) -> None:
    result = _run(
        f"""
        import enso_tracker
        enso_tracker.init(api_key={API_KEY!r}, base_url={fake_enso.url!r}, flush_interval=60.0)
        print(enso_tracker.track("ent", "api_calls", 1))
        """
    )
    assert result.returncode == 0, result.stderr
    assert list(fake_enso.events) == [result.stdout.strip()]


def test_flush_and_shutdown_honour_their_timeout_when_the_server_hangs(
    tracker: TrackerFactory, fake_enso: FakeEnso, drop_recorder: DropRecorder
) -> None:
    fake_enso.hang(None)
    t = tracker(timeout=30.0)
    ids = [t.track("ent", "api_calls", i) for i in range(10)]
    assert fake_enso.wait_for(lambda f: f.in_flight >= 1, 5.0)  # the request is stuck
    started = time.monotonic()
    assert t.flush(0.5) is False
    flush_took = time.monotonic() - started
    started = time.monotonic()
    assert t.shutdown(0.5) is False
    shutdown_took = time.monotonic() - started
    # The request would hang for 30 s: returning within a few seconds is the deadline
    # at work (the slack is for a loaded machine).
    assert 0.5 <= flush_took < 3.0
    assert shutdown_took < 3.0
    assert {e.event_id for e in drop_recorder.events("shutdown")} == set(ids)
    stats = t.stats()
    assert stats.dropped == {"shutdown": 10}
    assert stats.balanced
    assert t.track("ent", "api_calls", 1) is None
    assert t.stats().refused == {"closed": 1}


@pytest.mark.slow
def test_process_exit_is_bounded_when_the_server_hangs(fake_enso: FakeEnso) -> None:
    fake_enso.hang(None)
    started = time.monotonic()
    result = _run(
        f"""
        from enso_tracker import Tracker
        t = Tracker(api_key={API_KEY!r}, base_url={fake_enso.url!r}, shutdown_timeout=1.0,
                    flush_interval=0.01, timeout=30.0)
        for i in range(100):
            t.track("ent", "api_calls", i)
        """
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert took < 1.0 + 4.0  # shutdown_timeout plus interpreter start-up and teardown
    assert "0 delivered, 100 dropped" in result.stderr


def test_redrive_dropped_events_with_their_ids(drop_recorder: DropRecorder) -> None:
    # Enso answers 2002 until the customer entity exists; once it does, the README's
    # redrive recipe re-tracks the dropped events with their original eventIds.
    with FakeEnso(known_entities={"ent_old"}) as before:
        tracker = Tracker(api_key=API_KEY, base_url=before.url, on_drop=drop_recorder)
        try:
            ids = [accepted(tracker.track("ent_new", "api_calls", i)) for i in range(3)]
            assert tracker.flush(5.0)
        finally:
            tracker.shutdown(2.0)
    assert before.events == {}
    dead_letters = drop_recorder.events("rejected")
    assert [e.event_id for e in dead_letters] == ids
    with FakeEnso(known_entities={"ent_old", "ent_new"}) as after:
        tracker = Tracker(api_key=API_KEY, base_url=after.url)
        try:
            for e in dead_letters:  # the recipe
                tracker.track(
                    e.entity,
                    e.metric,
                    e.value,
                    timestamp=e.timestamp,
                    metadata=e.metadata,
                    event_id=e.event_id,
                    job_id=e.job_id,
                )
            assert tracker.flush(5.0)
        finally:
            tracker.shutdown(2.0)
    assert list(after.events) == ids
    assert [after.events[i]["value"] for i in ids] == [0, 1, 2]
