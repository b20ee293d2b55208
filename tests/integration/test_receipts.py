"""Receipts (issue #20): exact totals, outcomes, lookups, the CLI and reconcile."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import ConfigurationError, Receipts, Tracker
from enso_tracker._cli import main
from enso_tracker.testing import FakeEnso
from tests.conftest import API_KEY, accepted

TS = "2026-11-03T10:15:00Z"


def tracker(fake: FakeEnso, tmp_path: Path, **options: Any) -> Tracker:
    return Tracker(API_KEY, base_url=fake.url, handle_sigterm=False, **options)


def test_sums_are_exact_for_ints_decimals_and_floats(fake_enso: FakeEnso, tmp_path: Path) -> None:
    t = tracker(fake_enso, tmp_path, spool_dir=tmp_path)
    for _ in range(1000):
        t.track("ent", "dec", Decimal("0.1"), timestamp=TS)
        t.track("ent", "int", 2**53 - 1, timestamp=TS)
        t.track("ent", "flt", 0.1, timestamp=TS)
    assert t.flush(20)
    with Receipts(tmp_path) as r:
        got = {x.metric: (x.count, x.sum) for x in r.totals(by="hour")}
    t.shutdown()
    assert got == {
        "dec": (1000, Decimal("100.0")),  # float addition would give 99.9999999999986
        "int": (1000, 1000 * (2**53 - 1)),  # beyond a float's 53 bits
        "flt": (1000, Decimal("100.0")),  # the shortest text each float was sent as
    }
    assert [x.period for x in Receipts(tmp_path).totals(by="day")] == ["2026-11-03"] * 3


def test_rejected_events_carry_enso_code_and_lookup_finds_them(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    fake_enso.known_entities = ["ent_ok"]
    t = tracker(fake_enso, tmp_path, spool_dir=tmp_path, receipts="events")
    ok = t.track("ent_ok", "m", 3, timestamp=TS)
    bad = t.track("ent_gone", "m", 5, timestamp=TS)
    assert ok is not None
    assert bad is not None
    t.flush(20)
    with Receipts(tmp_path) as r:
        rows = {(x.entity, x.outcome): (x.count, x.sum) for x in r.totals()}
        found, delivered = r.lookup(bad), r.lookup(ok)
        missing = r.lookup("never-tracked")
    t.shutdown()
    assert rows == {("ent_ok", "delivered"): (1, 3), ("ent_gone", "rejected:2002"): (1, 5)}
    assert found is not None
    assert (found.outcome, found.code, found.status) == ("rejected:2002", "2002", 404)
    assert found.value == 5
    assert delivered is not None
    assert (delivered.outcome, delivered.hour) == ("delivered", "2026-11-03T10")
    assert missing is None


def test_receipts_without_a_spool_need_a_directory(fake_enso: FakeEnso, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="receipts_dir"):
        Tracker(API_KEY, base_url=fake_enso.url, receipts=True, handle_sigterm=False)
    with pytest.raises(ConfigurationError, match="receipts="):
        Tracker(API_KEY, base_url=fake_enso.url, receipts="yes", handle_sigterm=False)
    t = tracker(fake_enso, tmp_path, receipts=True, receipts_dir=tmp_path)
    for _ in range(10):
        t.track("ent", "m", Decimal("1.25"), timestamp=TS)
    assert t.flush(20)  # flush() returns once the receipts are written
    with Receipts(tmp_path) as r:
        totals = r.totals()
    t.shutdown()
    assert [(x.outcome, x.count, x.sum) for x in totals] == [("delivered", 10, Decimal("12.50"))]


def test_per_event_receipts_without_a_spool_find_generated_event_ids(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    # Generated eventIds are not stored with queued events (they are rebuilt from the
    # tracker's prefix): the receipt of each must still be found by the id track() gave.
    t = tracker(fake_enso, tmp_path, receipts="events", receipts_dir=tmp_path)
    ids = [accepted(t.track("ent", "m", 2, timestamp=TS)) for _ in range(5)]
    assert t.flush(20)
    t.shutdown()
    with Receipts(tmp_path) as r:
        found = [r.lookup(event_id) for event_id in ids]
    assert [(x.outcome, x.value) for x in found if x is not None] == [("delivered", 2)] * 5
    assert set(ids) == set(fake_enso.event_ids())


def test_receipts_default_on_with_a_receipts_dir_and_off_without(
    fake_enso: FakeEnso, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = tracker(fake_enso, tmp_path, receipts=False, receipts_dir=tmp_path)
    off.track("ent", "m", 1)
    assert off.flush(20)
    off.shutdown()
    assert list(tmp_path.glob("receipts-*.db")) == []
    # ENSO_RECEIPTS_DIR alone turns them on for from_env trackers: the import CLI's too.
    monkeypatch.setenv("ENSO_RECEIPTS_DIR", str(tmp_path))
    monkeypatch.setenv("ENSO_API_KEY", API_KEY)
    on = Tracker.from_env(base_url=fake_enso.url, handle_sigterm=False)
    on.track("ent", "m", 4, timestamp=TS)
    assert on.flush(20)
    on.shutdown()
    with Receipts(tmp_path) as r:
        assert [(x.count, x.sum) for x in r.totals()] == [(1, 4)]


def test_receipts_refuses_a_directory_without_a_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no receipts store"):
        Receipts(tmp_path)


@pytest.fixture
def store(fake_enso: FakeEnso, tmp_path: Path) -> Path:
    """A receipts store with two entities over two days, and a rejected event."""
    fake_enso.known_entities = ["ent_a", "ent_b"]
    d = tmp_path / "spool"
    t = tracker(fake_enso, tmp_path, spool_dir=d, receipts="events")
    for day, entity, value in [("03", "ent_a", 2), ("03", "ent_b", 1), ("04", "ent_a", 7)]:
        for _ in range(3):
            t.track(entity, "api_calls", value, timestamp=f"2026-11-{day}T10:00:00Z")
    t.track("ent_x", "api_calls", 1, timestamp=TS, event_id="evt-rejected")
    t.flush(20)
    t.shutdown()
    return d


def test_cli_receipts_table_json_csv_and_lookup(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["receipts", "--dir", str(store), "--outcome", "delivered", "--csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [(r["period"], r["entity"], r["count"], r["sum"]) for r in rows] == [
        ("2026-11-03", "ent_a", "3", "6"),
        ("2026-11-03", "ent_b", "3", "3"),
        ("2026-11-04", "ent_a", "3", "21"),
    ]
    assert main(["receipts", "--dir", str(store), "--by", "month", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {(x["entity"], x["outcome"], x["count"], x["sum"]) for x in lines} == {
        ("ent_a", "delivered", 6, 27),
        ("ent_b", "delivered", 3, 3),
        ("ent_x", "rejected:2002", 1, 1),
    }
    assert main(["receipts", "--dir", str(store), "--since", "2026-11-04"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["PERIOD", "ENTITY", "METRIC", "OUTCOME", "COUNT", "SUM"]
    assert [line.split() for line in table[1:]] == [
        ["2026-11-04", "ent_a", "api_calls", "delivered", "3", "21"]
    ]
    assert main(["receipts", "lookup", "evt-rejected", "--dir", str(store), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["outcome"], found["code"], found["entity"]) == ("rejected:2002", "2002", "ent_x")
    assert main(["receipts", "lookup", "nope", "--dir", str(store)]) == 1
    assert main(["receipts", "lookup", "--dir", str(store)]) == 2


def export(path: Path, rows: list[tuple[str, str, str, str, str]], header: str) -> Path:
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


ENSO = [
    ("ent_a", "api_calls", "2026-11-03", "3", "6.00"),
    ("ent_b", "api_calls", "2026-11-03", "3", "3"),
    ("ent_a", "api_calls", "2026-11-04", "3", "21"),
]


def test_reconcile_passes_on_matching_data_and_lists_every_difference(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    same = export(tmp_path / "same.csv", ENSO, "entity,metric,period,count,sum")
    assert main(["reconcile", str(same), "--dir", str(store)]) == 0
    assert "0 of 3 (entity, metric, day) differ" in capsys.readouterr().out

    changed = [*ENSO[:2], ("ent_a", "api_calls", "2026-11-04", "3", "20")]
    wrong = export(tmp_path / "wrong.csv", changed, "entity,metric,period,count,sum")
    assert main(["reconcile", str(wrong), "--dir", str(store), "--json"]) == 1
    (diff,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert diff == {
        "entity": "ent_a",
        "metric": "api_calls",
        "period": "2026-11-04",
        "receipts": {"count": 3, "sum": 21},
        "enso": {"count": 3, "sum": 20},
    }
    # Enso lacking a row we delivered is a difference too; columns named with --map.
    mapped = export(
        tmp_path / "mapped.csv",
        [(e, m, p, s, c) for e, m, p, c, s in ENSO[:2]],
        "Customer,Meter,Day,Usage,Events",
    )
    spec = "entity=Customer,metric=Meter,period=Day,sum=Usage,count=Events"
    assert main(["reconcile", str(mapped), "--dir", str(store), "--map", spec]) == 0
    assert "0 of 2" in capsys.readouterr().out  # the 4th is outside the file's periods
    short = export(tmp_path / "short.csv", ENSO[:1] + ENSO[2:], "entity,metric,period,count,sum")
    assert main(["reconcile", str(short), "--dir", str(store)]) == 1
    out = capsys.readouterr().out
    assert "2026-11-03  ent_b  api_calls  receipts: sum 3, count 3  enso: nothing" in out
    bad = export(tmp_path / "bad.csv", ENSO, "customer,metric,period,count,sum")
    assert main(["reconcile", str(bad), "--dir", str(store)]) == 2


def test_a_move_repeated_after_a_crash_counts_once(tmp_path: Path) -> None:
    """The kill between the store's commit and the spool file's delete: the next move of
    the same pending rows (same file key, same seqs) adds nothing; newer rows add."""
    from enso_tracker._receipts_store import ReceiptStore

    store = ReceiptStore(
        str(tmp_path / "receipts-x.db"), level="totals", retention=60.0, identity="x"
    )
    rows = [(1, "ent", "m", "2026-11-03T10", "delivered", 2, "0.30")]
    store.apply(rows, source="file-key")
    store.apply(rows, source="file-key")  # moved again: the delete never committed
    store.apply([*rows, (2, "ent", "m", "2026-11-03T10", "delivered", 1, "0.05")], "file-key")
    store.apply(rows, source="another-file")  # another file's row 1 is its own
    store.close()
    with Receipts(tmp_path) as r:
        assert [(x.count, x.sum) for x in r.totals()] == [(5, Decimal("0.65"))]


def test_a_store_that_cannot_be_written_never_stops_delivery_and_is_counted(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    first = tracker(fake_enso, tmp_path, receipts_dir=tmp_path)
    first.track("ent", "m", 1)
    assert first.flush(20)
    first.shutdown()
    (store,) = tmp_path.glob("receipts-*.db")
    for leftover in tmp_path.glob("receipts-*"):
        leftover.unlink()
    store.mkdir()  # the store's name is taken by something SQLite cannot open
    t = tracker(fake_enso, tmp_path, receipts_dir=tmp_path)
    t.track("ent", "m", 2)
    assert t.flush(20)
    stats = t.stats()
    t.shutdown()
    assert (stats.delivered, stats.receipt_errors) == (1, 1)
    assert len(fake_enso.events) == 2
