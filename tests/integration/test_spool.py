"""The durable spool end to end, against a real FakeEnso on loopback: events reach disk
within ``spool_interval``, survive a shutdown with Enso down and a ``kill -9``, are
delivered by the next tracker with the same eventIds exactly once, memory stays bounded
while the disk absorbs an outage, and dead letters are stored, listed and redriven.

(The kill -9 harness is ``test_spool_kill.py``; damaged files, full disks, fork and two
trackers on one directory are ``test_spool_faults.py``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import ConfigurationError, Spool, Tracker
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, TrackerFactory, accepted, wait_until


def spool_names(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("spool-"))


def test_delivers_through_the_spool_exactly_once_and_leaves_nothing(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    t = tracker(spool_dir=spool, max_batch_size=100)
    ids = [accepted(t.track("ent", "m", i)) for i in range(1_000)]
    assert t.flush(10.0)
    assert sorted(fake_enso.events) == sorted(ids)
    assert fake_enso.duplicates == {}
    stats = t.stats()
    assert stats.durable_seq == 1_000
    assert stats.delivered == 1_000
    assert stats.balanced
    assert oct(os.stat(spool).st_mode & 0o777) == "0o700"
    assert t.shutdown(5.0) is True
    assert spool_names(spool) == []  # drained: db, wal, shm and lock removed


def test_events_reach_disk_within_spool_interval_whatever_flush_interval(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    t = tracker(spool_dir=spool, flush_interval=3600.0, spool_interval=0.05)
    ids = [accepted(t.track("ent", "m", i)) for i in range(50)]
    assert wait_until(lambda: t.stats().durable_seq == 50, 10.0)
    assert fake_enso.batch_requests() == []  # not sent yet: flush_interval is an hour
    assert Spool(spool).status().events == 50  # an outside reader sees them on disk
    assert sorted(e.event_id for e in Spool(spool).pending()) == sorted(ids)
    assert t.flush(10.0)
    assert sorted(fake_enso.events) == sorted(ids)


def test_shutdown_with_enso_down_leaves_events_on_disk_for_the_next_start(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path, drop_recorder: DropRecorder
) -> None:
    spool = tmp_path / "spool"
    fake_enso.hang(None)
    first = tracker(spool_dir=spool, timeout=0.5)
    ids = [accepted(first.track("ent", "m", i)) for i in range(300)]
    assert first.shutdown(1.0) is False  # not delivered...
    stats = first.stats()
    assert stats.left_in_spool == 300
    assert stats.dropped == {}
    assert stats.balanced
    assert drop_recorder.calls == []
    assert Spool(spool).status().events == 300
    fake_enso.release()
    fake_enso.reset()
    second = tracker(spool_dir=spool)
    assert fake_enso.wait_for_events(300, 10.0)
    assert sorted(fake_enso.events) == sorted(ids)  # the same eventIds
    assert wait_until(lambda: second.stats().delivered == 300, 10.0), (
        second.stats(),
        fake_enso.batch_requests(),
    )
    assert second.stats().adopted == 300
    assert second.stats().accepted == 0
    assert second.shutdown(5.0) is True
    assert spool_names(spool) == []


@pytest.mark.slow
def test_kill_9_after_durable_seq_loses_nothing(fake_enso: FakeEnso, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    fake_enso.hang(None)  # nothing gets delivered before the kill
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from enso_tracker import Tracker
        t = Tracker({API_KEY!r}, base_url={fake_enso.url!r}, spool_dir={str(spool)!r},
                    handle_sigterm=False, flush_interval=3600.0)
        ids = [t.track("ent", "m", i) for i in range(2000)]
        deadline = time.monotonic() + 20
        while t.stats().durable_seq < 2000 and time.monotonic() < deadline:
            time.sleep(0.005)
        print(json.dumps({{"durable": t.stats().durable_seq, "ids": ids}}), flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        report = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait(10)
    assert report["durable"] == 2000
    fake_enso.release()
    fake_enso.reset()
    with Tracker(API_KEY, base_url=fake_enso.url, spool_dir=spool, handle_sigterm=False) as heir:
        assert fake_enso.wait_for_events(2000, 15.0)
        assert wait_until(lambda: heir.stats().adopted == 2000, 5.0)
    assert sorted(fake_enso.events) == sorted(report["ids"])
    assert fake_enso.duplicates == {}
    assert spool_names(spool) == []


@pytest.mark.slow
def test_outage_longer_than_memory_goes_to_disk_and_memory_stays_bounded(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    fake_enso.hang(None)
    bound = 256 * 1024
    t = tracker(
        spool_dir=spool,
        max_queue_bytes=bound,
        queue_full_policy="block",
        block_timeout=10.0,
        timeout=0.5,
        max_batch_size=200,
    )
    peak = 0
    ids = []
    for i in range(20_000):  # ~20x what memory may hold
        ids.append(accepted(t.track("ent", "m", i, metadata={"i": i})))
        if i % 500 == 0:
            peak = max(peak, t.stats().queued_bytes)
    stats = t.stats()
    assert stats.refused == {}
    assert stats.accepted == 20_000
    assert peak <= bound
    assert stats.queued_bytes <= bound
    assert wait_until(lambda: t.stats().durable_seq == 20_000, 20.0)
    assert t.stats().spooled > 15_000  # most of it is on disk only
    fake_enso.release()
    assert t.flush(60.0)
    assert sorted(fake_enso.events) == sorted(ids)
    assert t.stats().balanced


def test_dead_letters_are_stored_listed_redriven_and_delivered_once(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path, drop_recorder: DropRecorder
) -> None:
    spool = tmp_path / "spool"
    fake_enso.known_entities = {"ent"}
    t = tracker(spool_dir=spool)
    good = [accepted(t.track("ent", "m", i)) for i in range(10)]
    bad = [accepted(t.track("ent_new", "m", i, metadata={"n": i})) for i in range(3)]
    assert t.flush(10.0)
    assert sorted(e.event_id for e in drop_recorder.events("rejected")) == sorted(bad)
    letters = list(t.dead_letters(code=2002))
    assert sorted(letter.event.event_id for letter in letters if letter.event) == sorted(bad)
    first = letters[0]
    assert first.reason.kind == "rejected"
    assert first.reason.code == 2002
    assert first.event is not None
    assert first.event.entity == "ent_new"
    assert first.event.metadata is not None
    assert list(t.dead_letters(kind="too_large")) == []
    assert t.stats().dead_letters == 3
    status = Spool(spool).status()
    assert status.dead_letters_by_code == {"2002": 3}
    assert status.dead_letters_by_kind == {"rejected": 3}

    fake_enso.known_entities = {"ent", "ent_new"}  # the customer now exists in Enso
    assert t.redrive(code="2002") == 3
    assert fake_enso.wait_for_events(13, 10.0)
    assert sorted(fake_enso.events) == sorted(good + bad)
    assert fake_enso.duplicates == {}
    assert list(t.dead_letters()) == []
    assert wait_until(lambda: t.stats().adopted == 3, 5.0)
    assert t.stats().balanced


def test_purge_and_errors_without_a_spool(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    fake_enso.known_entities = {"ent"}
    t = tracker(spool_dir=spool)
    accepted(t.track("nobody", "m", 1))
    accepted(t.track("nobody", "m", 2))
    assert t.flush(10.0)
    assert t.purge_dead_letters(kind="too_large") == 0
    assert t.purge_dead_letters(code="2002") == 2
    assert list(Spool(spool).dead_letters()) == []
    plain = tracker()
    with pytest.raises(ConfigurationError, match="spool_dir"):
        plain.dead_letters()
    with pytest.raises(ConfigurationError, match="no such directory"):
        Spool(tmp_path / "missing")


def test_spool_dir_from_the_environment(fake_enso: FakeEnso, tmp_path: Path) -> None:
    spool = tmp_path / "from-env"
    environ = {
        "ENSO_API_KEY": API_KEY,
        "ENSO_BASE_URL": fake_enso.url,
        "ENSO_SPOOL_DIR": str(spool),
    }
    with Tracker.from_env(environ, handle_sigterm=False) as tracker:
        assert tracker.config.spool_dir == str(spool)
        accepted(tracker.track("ent", "m", 1))
        assert tracker.flush(10.0)
    assert spool.is_dir()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"spool_interval": 0}, "spool_interval"),
        ({"durability": "disk"}, "durability"),
        ({"max_spool_bytes": 10}, "max_spool_bytes"),
        ({"max_dead_letter_bytes": 10}, "max_dead_letter_bytes"),
    ],
)
def test_spool_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Tracker(API_KEY, base_url="http://127.0.0.1:9", handle_sigterm=False, **options)


def test_spool_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigurationError, match="file"):
        Tracker(API_KEY, base_url="http://127.0.0.1:9", handle_sigterm=False, spool_dir=target)


def test_dead_letters_are_bounded_oldest_evicted_and_counted(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    fake_enso.known_entities = {"ent"}
    cap = 64 * 1024
    t = tracker(spool_dir=spool, max_dead_letter_bytes=cap)
    meta = {"pad": "p" * 1000}
    refused = [accepted(t.track("nobody", "m", i, metadata=meta)) for i in range(300)]
    assert t.flush(20.0)
    stats = t.stats()
    assert stats.dropped == {"rejected": 300}
    assert stats.dead_letters == 300
    assert stats.dead_letters_evicted > 0
    kept = [letter.event.event_id for letter in t.dead_letters() if letter.event]
    assert 0 < len(kept) < 300
    assert kept == refused[-len(kept) :]  # the newest stay, the oldest went
    assert sum(len(letter.body) for letter in t.dead_letters()) <= cap
    assert Spool(spool).status().dead_letters_evicted == stats.dead_letters_evicted


def test_durability_sets_sqlite_synchronous(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path
) -> None:
    for durability, level in (("process", 1), ("power", 2)):  # NORMAL, FULL
        t = tracker(spool_dir=tmp_path / durability, durability=durability)
        accepted(t.track("ent", "m", 1))
        assert t.flush(10.0)
        disk = t._worker.disk
        assert disk is not None
        assert disk.own is not None
        assert disk.own._db().execute("PRAGMA synchronous").fetchone()[0] == level


def test_a_drained_spool_that_grew_large_is_compacted(
    tracker: TrackerFactory, fake_enso: FakeEnso, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from enso_tracker._spool import disk as _spool

    monkeypatch.setattr(_spool, "COMPACT_ABOVE", 256 * 1024)
    spool = tmp_path / "spool"
    fake_enso.hang(None)
    t = tracker(spool_dir=spool, timeout=0.3, max_batch_size=100)
    meta = {"pad": "q" * 500}
    [accepted(t.track("ent", "m", i, metadata=meta)) for i in range(4000)]
    assert wait_until(lambda: t.stats().durable_seq == 4000, 20.0)
    disk = t._worker.disk
    assert disk is not None
    assert disk.own is not None
    grown = disk.own.size()
    assert grown > 1024 * 1024
    fake_enso.release()
    assert t.flush(30.0)
    assert wait_until(lambda: disk.own is not None and disk.own.size() < grown // 4, 10.0)
