"""The spool's byte bounds (issue #16, findings 5 and 7), against a real FakeEnso: rows
are cut at ``max_batch_bytes`` so an empty spool always takes one; a ``max_spool_bytes``
that cannot hold one row is refused; the directory-wide bound, the free-space guard and
the file size limit (EFBIG) make the spool full, which follows ``queue_full_policy`` and
is counted as ``spool_full`` (never sent from memory as if durable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enso_tracker import ConfigurationError, Tracker
from enso_tracker._spool import budget
from enso_tracker._spool.directory import spool_files
from enso_tracker._spool.sqlite import disk_size
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, TrackerFactory, accepted, wait_until

MiB = 1024 * 1024
#: ~4 KB of metadata: 600 such events are ~2.5 MB, more than a 1 MiB spool holds.
META = {"pad": "m" * 4000}


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_rows_are_cut_at_max_batch_bytes_so_a_small_spool_delivers_everything(
    tracker: TrackerFactory,
    fake_enso: FakeEnso,
    tmp_path: Path,
    drop_recorder: DropRecorder,
    policy: str,
) -> None:
    """Finding 5: with a 1 MiB spool, 500-event batches and 4 KB of metadata, the whole
    500-event batch was one row larger than the spool: ``spool_full`` on an empty spool
    (``drop`` lost 500 of 600, ``block`` delivered 0 of 600)."""
    spool = tmp_path / "spool"
    t = tracker(
        spool_dir=spool,
        max_spool_bytes=MiB,
        max_batch_bytes=256 * 1024,
        max_batch_size=500,
        queue_full_policy=policy,
        # A batch held back for a full spool waits for rows to be deleted (the sender
        # frees them as it delivers), not for this backoff.
        backoff_base=30.0,
        backoff_max=60.0,
    )
    ids = [accepted(t.track("ent", "m", i, metadata=META)) for i in range(600)]
    assert t.flush(30.0), t.stats()
    assert drop_recorder.calls == []
    stats = t.stats()
    assert stats.dropped == {}
    assert stats.delivered == 600
    assert sorted(fake_enso.event_ids()) == sorted(ids)
    assert fake_enso.duplicates == {}
    assert stats.balanced
    # Every request (and so every row) within max_batch_bytes.
    assert all(len(r.body) <= 256 * 1024 for r in fake_enso.batch_requests())


def test_a_max_spool_bytes_that_cannot_hold_one_row_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Tracker(
            API_KEY,
            base_url="http://127.0.0.1:9",
            handle_sigterm=False,
            spool_dir=tmp_path / "spool",
            max_spool_bytes=MiB,
            max_batch_bytes=MiB,
        )
    message = str(caught.value)
    assert "max_spool_bytes=1048576" in message
    assert "max_batch_bytes=1048576" in message
    assert str(MiB + 256 * 1024) in message  # the least that would do
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_spool_dir_bytes": MiB, "max_spool_bytes": 2 * MiB}, "max_spool_dir_bytes"),
        ({"max_spool_dir_bytes": 10}, "max_spool_dir_bytes"),
        ({"spool_min_free_bytes": -1}, "spool_min_free_bytes"),
        ({"spool_min_free_bytes": 1.5}, "spool_min_free_bytes"),
    ],
)
def test_directory_bounds_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Tracker(API_KEY, base_url="http://127.0.0.1:9", handle_sigterm=False, **options)


def test_directory_bounds_from_the_environment(tmp_path: Path) -> None:
    environ = {
        "ENSO_API_KEY": API_KEY,
        "ENSO_BASE_URL": "http://127.0.0.1:9",
        "ENSO_MAX_SPOOL_DIR_BYTES": "3221225472",
        "ENSO_SPOOL_MIN_FREE_BYTES": "0",
    }
    with Tracker.from_env(environ, handle_sigterm=False) as tracker:
        assert tracker.config.max_spool_dir_bytes == 3 * 1024 * MiB
        assert tracker.config.spool_min_free_bytes == 0
    with pytest.raises(ConfigurationError, match="ENSO_SPOOL_MIN_FREE_BYTES"):
        Tracker.from_env({**environ, "ENSO_SPOOL_MIN_FREE_BYTES": "1G"}, handle_sigterm=False)


def _dir_bytes(spool: Path) -> int:
    return sum(disk_size(p) for p in spool_files(str(spool)))


def _tracker(spool: Path, fake: FakeEnso, drops: DropRecorder, **options: Any) -> Tracker:
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.2)
    return Tracker(
        API_KEY,
        base_url=fake.url,
        spool_dir=spool,
        handle_sigterm=False,
        timeout=0.3,
        on_drop=drops,
        max_batch_size=100,
        max_batch_bytes=256 * 1024,
        **options,
    )


def test_the_directory_bound_holds_for_all_trackers_together(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    """Finding 7: ``max_spool_bytes`` is per file, so N processes could fill N times it.
    Two trackers each well under their own 16 MiB cap, together over the 16 MiB
    directory bound: the second one's newest batches are dropped as ``spool_full``,
    counted. (The files are measured as they are on disk, WAL included.)"""
    spool = tmp_path / "spool"
    fake_enso.hang(None)  # Enso down: everything stays on disk
    bounds = {"max_spool_bytes": 16 * MiB, "max_spool_dir_bytes": 16 * MiB}
    first_drops, second_drops = DropRecorder(), DropRecorder()
    first = _tracker(spool, fake_enso, first_drops, **bounds)
    second: Tracker | None = None
    try:
        for i in range(1500):  # ~6 MiB
            accepted(first.track("ent", "a", i, metadata=META))
        assert wait_until(lambda: first.stats().durable_seq == 1500, 20.0)
        assert first_drops.calls == []
        second = _tracker(spool, fake_enso, second_drops, **bounds)
        ids = [accepted(second.track("ent", "b", i, metadata=META)) for i in range(3000)]
        assert wait_until(lambda: second is not None and second.stats().durable_seq == 3000, 20.0)
        # Drops are counted under the lock and handed to on_drop just after: wait for both.
        assert wait_until(
            lambda: (
                second is not None
                and second.stats().dropped.get("spool_full", 0)
                == len(second_drops.events("spool_full"))
            ),
            20.0,
        )
        refused = second_drops.events("spool_full")
        assert refused, second.stats()
        stats = second.stats()
        assert stats.dropped == {"spool_full": len(refused)}
        assert all("max_spool_dir_bytes=16777216" in r.message for _, r in second_drops.calls)
        assert stats.balanced
        # The second file is under its own cap: the directory's bound refused them.
        assert stats.spool_bytes < 12 * MiB
        # The newest were refused; what was taken is on disk.
        kept = ids[: 3000 - len(refused)]
        assert len(kept) > 500
        assert {e.event_id for e in refused} == set(ids) - set(kept)
        assert stats.spooled == len(kept)
        fake_enso.release()
        assert first.flush(30.0)
        assert second.flush(30.0)
        assert set(kept) <= set(fake_enso.event_ids())
        assert first.stats().dropped == {}
    finally:
        fake_enso.release()
        first.shutdown(5.0)
        if second is not None:
            second.shutdown(5.0)


def test_block_holds_a_batch_refused_by_the_directory_bound_until_room_is_made(
    fake_enso: FakeEnso, tmp_path: Path, drop_recorder: DropRecorder
) -> None:
    spool = tmp_path / "spool"
    fake_enso.hang(None)
    bounds = {"max_spool_bytes": 8 * MiB, "max_spool_dir_bytes": 8 * MiB}
    first = _tracker(spool, fake_enso, drop_recorder, **bounds)
    second: Tracker | None = None
    try:
        for i in range(1500):  # ~6 MiB (and its WAL): the directory is full
            accepted(first.track("ent", "a", i, metadata=META))
        assert wait_until(lambda: first.stats().durable_seq == 1500, 20.0)
        second = _tracker(spool, fake_enso, drop_recorder, queue_full_policy="block", **bounds)
        ids = [accepted(second.track("ent", "b", i, metadata=META)) for i in range(1000)]
        # Held in memory: not durable, not dropped, not sent.
        assert wait_until(lambda: second is not None and second.stats().queued > 0, 10.0)
        assert second.stats().durable_seq < 1000
        assert drop_recorder.calls == []
        fake_enso.release()
        assert first.flush(30.0)
        assert first.shutdown(5.0)  # its drained file is removed: room again
        assert second.flush(30.0), second.stats()
        assert set(ids) <= set(fake_enso.event_ids())
        assert drop_recorder.calls == []
        assert second.stats().durable_seq == 1000
        assert second.stats().balanced
    finally:
        fake_enso.release()
        first.shutdown(5.0)
        if second is not None:
            second.shutdown(5.0)


def test_the_free_space_guard_makes_the_spool_full(
    fake_enso: FakeEnso,
    tmp_path: Path,
    drop_recorder: DropRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A filesystem with 8 MiB above ``spool_min_free_bytes``: the spool takes at most
    that much, then refuses the newest batches as ``spool_full``, counted."""
    spool = tmp_path / "spool"
    reserve = 100 * MiB
    # A small filesystem: what the spool files use is what it no longer has free.
    monkeypatch.setattr(budget, "free_bytes", lambda _: reserve + 8 * MiB - _dir_bytes(spool))
    fake_enso.hang(None)
    tracker = _tracker(spool, fake_enso, drop_recorder, spool_min_free_bytes=reserve)
    try:
        ids = [accepted(tracker.track("ent", "m", i, metadata=META)) for i in range(4000)]
        assert wait_until(lambda: tracker.stats().durable_seq == 4000, 20.0)
        # Drops are counted under the lock and handed to on_drop just after: wait for both.
        assert wait_until(
            lambda: (
                tracker.stats().dropped.get("spool_full", 0)
                == len(drop_recorder.events("spool_full"))
            ),
            20.0,
        )
        refused = drop_recorder.events("spool_full")
        assert refused
        assert all("spool_min_free_bytes=104857600" in r.message for _, r in drop_recorder.calls)
        kept = ids[: 4000 - len(refused)]
        assert 250 < len(kept) < 2000  # at most 8 MiB of ~4.1 KB events
        # Its database within the guard; its WAL (checkpointed every 4 MiB) on top.
        assert _dir_bytes(spool) <= 8 * MiB + 4 * MiB + 256 * 1024
        assert tracker.stats().dropped == {"spool_full": len(refused)}
        assert tracker.stats().balanced
        fake_enso.release()
        assert tracker.flush(30.0)
        assert sorted(fake_enso.event_ids()) == sorted(kept)
    finally:
        fake_enso.release()
        tracker.shutdown(5.0)


def test_a_planted_symlink_does_not_count_toward_the_directory_bound(
    fake_enso: FakeEnso, tmp_path: Path, drop_recorder: DropRecorder
) -> None:
    """Measured with lstat: a link named like a spool file, pointing at a large file,
    cannot make the spool full (nor is it ever opened)."""
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    large = tmp_path / "large"
    with large.open("wb") as fh:
        fh.truncate(64 * MiB)  # sparse: no disk used
    (spool / "spool-1-aaaaaaaaaaaa.db").symlink_to(large)
    tracker = _tracker(
        spool, fake_enso, drop_recorder, max_spool_bytes=16 * MiB, max_spool_dir_bytes=16 * MiB
    )
    try:
        ids = [accepted(tracker.track("ent", "m", i, metadata=META)) for i in range(500)]
        assert tracker.flush(30.0), tracker.stats()
        assert drop_recorder.calls == []
        assert set(ids) <= set(fake_enso.event_ids())
    finally:
        tracker.shutdown(5.0)
    assert large.stat().st_size == 64 * MiB
