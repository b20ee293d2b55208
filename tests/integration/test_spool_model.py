"""``DiskSpool`` against a plain model (after Vector's ``tests/model/``): Hypothesis runs
random sequences of writes, loads, row releases, whole-row deletes, deferred-delete
flushes and close-then-reopen (the next tracker adopting the files) on a real spool
directory, and checks every step against a plain model of what should be there (the
rows each file holds, their bodies, which of their events were released).

What must hold:

* Every event written and not released is loadable with its exact bytes; after a
  reopen, every row still holding one is adopted and read back exactly once.
* Nothing released comes back: a row all of whose events were released is gone from
  the disk after a reopen (and a drained adopted file with it). The spool deletes whole
  rows, so the released events of a row that still holds others come back with it (the
  next tracker resends them; Enso dedups by eventId): the model says so too.
* The counts match: each row's events left, each file's rows and events, the events the
  adoption counts and those ``Spool(path).status()`` reads from the disk.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from enso_tracker import Spool
from enso_tracker._record import Pending
from enso_tracker._spool.directory import spool_files
from enso_tracker._spool.disk import DiskSpool, pendings_of
from enso_tracker._spool.files import StoredBatch
from enso_tracker._wire import EventEncoder, join_batch

IDENTITY = "5e" * 16
#: Each reopen leaves at most one more file; MAX_ADOPTED_FILES (8) are adopted per scan,
#: so every file is adopted at the first scan and the model stays exact.
MAX_REOPENS = 6
_T0 = 1_764_000_000 * 10**9


class _Row:
    """The model of one row on disk: its events' bodies, their ``Pending``s (as the
    pipeline holds them) and which of them were released."""

    def __init__(self, handle: StoredBatch, bodies: list[bytes], pendings: list[Pending]) -> None:
        self.handle = handle
        self.bodies = bodies
        self.pendings = pendings
        self.released: set[int] = set()
        self.deleted = False  # deleted whole (``DiskSpool.delete``)

    def __repr__(self) -> str:  # what a shrunk failing case prints
        ids = [b[b.rindex(b'"eventId":"') + 11 : -2].decode() for b in self.bodies]
        return f"<row {ids} released={sorted(self.released)} deleted={self.deleted}>"

    @property
    def live(self) -> bool:
        return not self.deleted and len(self.released) < len(self.bodies)


class SpoolModel(RuleBasedStateMachine):
    #: Where each run makes its spool directory (the test's ``tmp_path``).
    base: Path

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(dir=self.base)  # 0700, as the spool wants
        self.disk = self._open()
        #: Rows still in a file: live, or all released and their delete deferred (our
        #: own file deletes them with the next write, a flush, or at close).
        self.rows: list[_Row] = []
        #: Pendings of released events, for stale second sightings.
        self.released: list[Pending] = []
        self.encoder = EventEncoder()
        self.next_event = 0
        self.next_seq = 1
        self.adopted_seqs = itertools.count(1 << 40)
        self.reopens = 0

    def _open(self) -> DiskSpool:
        return DiskSpool(
            self.directory,
            durability="process",
            max_bytes=64 * 1024 * 1024,
            max_dead_letter_bytes=1024 * 1024,
            identity=IDENTITY,
        )

    def teardown(self) -> None:
        self.disk.close()

    # ------------------------------------------------------------------ helpers

    def _live(self) -> list[_Row]:
        return [r for r in self.rows if r.live]

    def _in_file(self, row: _Row) -> bool:
        return row.handle.file is self.disk.own

    def _forget_deferred(self) -> None:
        """Our own file carried out its deferred deletes."""
        self.rows = [r for r in self.rows if r.live or not self._in_file(r)]

    def _fully_released(self, row: _Row) -> None:
        if not self._in_file(row):  # adopted: deleted at once
            self.rows.remove(row)

    # ------------------------------------------------------------------ rules

    @rule(n=st.integers(1, 4), entity=st.text(max_size=24))
    def write(self, n: int, entity: str) -> None:
        bodies = []
        for _ in range(n):
            k = self.next_event
            self.next_event += 1
            bodies.append(
                bytes(self.encoder.encode(f"ev-{k}", entity or "e", "m", k, _T0 + k, None, None))
            )
        first = self.next_seq
        self.next_seq += n
        handle = self.disk.write(join_batch(bodies), n, first)
        self._forget_deferred()  # the insert carried them out
        pendings = pendings_of(bodies, handle, first, self.adopted_seqs)
        assert [p.seq for p in pendings] == list(range(first, first + n))
        self.rows.append(_Row(handle, bodies, pendings))

    @precondition(lambda self: any(r.live for r in self.rows))
    @rule(data=st.data())
    def load(self, data: st.DataObject) -> None:
        row = data.draw(st.sampled_from(self._live()))
        bodies, raw = self.disk.load(row.handle)
        assert bodies == row.bodies
        assert raw == join_batch(row.bodies)

    @precondition(lambda self: any(r.live for r in self.rows))
    @rule(data=st.data(), stale=st.integers(0, 2))
    def release(self, data: st.DataObject, stale: int) -> None:
        candidates = [
            (r, i) for r in self._live() for i in range(len(r.bodies)) if i not in r.released
        ]
        chosen = data.draw(
            st.lists(st.sampled_from(candidates), min_size=1, max_size=6, unique=True)
        )
        again = self.released[:stale]  # settled before: must change nothing
        assert self.disk.release_rows([*again, *(r.pendings[i] for r, i in chosen)]) == []
        for row, i in chosen:
            row.released.add(i)
            self.released.append(row.pendings[i])
        for row in {id(r): r for r, _ in chosen}.values():
            if not row.live:
                self._fully_released(row)

    @precondition(lambda self: any(r.live and not r.released for r in self.rows))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        """A row deleted whole (as one that failed its CRC is, once dead-lettered)."""
        row = data.draw(st.sampled_from([r for r in self.rows if r.live and not r.released]))
        assert self.disk.delete(row.handle.file, [row.handle]) == []
        row.deleted = True  # gone: nothing of it to release
        self._fully_released(row)

    @rule()
    def flush_deletes(self) -> None:
        assert self.disk.flush_deletes() == []
        self._forget_deferred()

    @precondition(lambda self: self.reopens < MAX_REOPENS)
    @rule(chunk=st.integers(1, 4))
    def reopen(self, chunk: int) -> None:
        """The tracker shuts down; the next one on the directory adopts what is left and
        reads it back ``chunk`` rows at a time (as the backlog does, ``ADOPT_CHUNK``)."""
        self.reopens += 1
        self.disk.close()
        live = self._live()  # close carried out the deferred deletes
        assert sorted(spool_files(self.directory)) == sorted({r.handle.file.path for r in live})
        expected = sum(len(r.bodies) for r in live)
        assert Spool(self.directory).status().events == expected
        self.disk = self._open()
        events, salvaged, problems = self.disk.adopt(time.monotonic())
        assert (events, salvaged, problems) == (expected, [], [])
        handles: list[StoredBatch] = []
        for _ in range(len(live) + 1):  # bounded: each round reads at least one row
            found, broken, vanished, problems = self.disk.read_adopted(chunk)
            assert (broken, vanished, problems) == ([], 0, [])
            assert len(found) <= chunk
            if not found:
                break
            handles.extend(found)
        assert not self.disk.unread  # every adopted file read to its end
        by_bodies = {tuple(r.bodies): r for r in live}
        assert len(by_bodies) == len(live)  # eventIds are unique: so are rows
        loaded = []
        for handle in handles:
            bodies, _ = self.disk.load(handle)
            assert bodies is not None
            loaded.append(tuple(bodies))
        # Every row with an event left, read back exactly once, whole.
        assert Counter(loaded) == Counter(by_bodies.keys())
        self.rows = [
            _Row(h, list(b), pendings_of(list(b), h, None, self.adopted_seqs))
            for h, b in zip(handles, loaded, strict=True)
        ]

    # ------------------------------------------------------------------ invariants

    @invariant()
    def counts_match(self) -> None:
        for row in self.rows:
            if not row.deleted:
                assert row.handle.left == len(row.bodies) - len(row.released)
        files = self.disk.files()
        for file in files:
            mine = [r for r in self.rows if r.handle.file is file]
            assert (file.rows, file.events) == (len(mine), sum(len(r.bodies) for r in mine))
        assert all(any(r.handle.file is f for f in files) for r in self.rows)


def test_disk_spool_matches_a_dict_model(tmp_path: Path) -> None:
    class Run(SpoolModel):
        base = tmp_path

    run_state_machine_as_test(
        Run,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
