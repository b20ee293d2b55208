"""The eventId rule of backfills (``enso_tracker._backfill``): ids depend on the mapped
event and its occurrence number, never on how the input is split, ordered or sharded.

Regressions for issue #17 findings 1-3 run the console script against FakeEnso; the
property tests run the CLI in-process (the same code) over random splits."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dask.bag as db
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enso_tracker import ConfigurationError, InvalidEventError
from enso_tracker._backfill import Occurrences, content, content_key, event_id
from enso_tracker._cli import main
from enso_tracker.dask import with_event_ids
from enso_tracker.testing import FakeEnso
from tests.integration.test_cli_import import SCRIPT, cli_env, doc_event_id, doc_ids, run_cli

# Few distinct values, so random rows repeat: identical genuine rows are the point.
ENTITIES = ["ent_a", "ent_b"]
TIMES = ["2026-04-01T00:00:00Z", "2026-04-01T00:00:00.001Z", "2026-04-01T03:00:00Z"]
Row = tuple[str, int, int, str, str]  # entity, calls, gb, timestamp, region

rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(ENTITIES),
        st.integers(1, 2),
        st.integers(1, 3),
        st.sampled_from(TIMES),
        st.sampled_from(["eu", "us"]),
    ),
    min_size=1,
    max_size=40,
)


def csv_text(rows: list[Row]) -> str:
    return "customer,calls,gb,ts,region\n" + "".join(
        f"{e},{c},{g},{t},{r}\n" for e, c, g, t, r in rows
    )


def jsonl_text(rows: list[Row]) -> str:
    return "".join(
        json.dumps({"customer": e, "calls": c, "gb": g, "ts": t, "region": r}) + "\n"
        for e, c, g, t, r in rows
    )


def expected(rows: list[Row], metric: str = "api_calls", namespace: str = "") -> set[str]:
    return doc_ids([(e, metric, c, t) for e, c, _, t, _ in rows], namespace)


MAPPING = ["--entity", "customer", "--value", "calls", "--timestamp", "ts", "--json"]
MAPPING += ["--metric-name", "api_calls", "--metadata", "region", "--progress", "none"]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENSO_SPOOL_DIR", "ENSO_CLIENT_KEY", "ENSO_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.upper().endswith("_PROXY")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ENSO_API_KEY", "test-api-key")


def import_in_process(url: str, *args: str, stdin: bytes | None = None) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(cli_logging_restored())
        if stdin is not None:
            stream = io.TextIOWrapper(io.BufferedReader(io.BytesIO(stdin)))
            stack.enter_context(patch_stdin(stream))
        code = main(["import", *args, "--base-url", url, *MAPPING])
    books: dict[str, Any] = json.loads(out.getvalue())
    assert code == 0, books
    return books


@contextlib.contextmanager
def cli_logging_restored() -> Iterator[None]:
    """The CLI routes the library's logger to stderr (no propagation): undo it, so the
    tests after these see the logger as the library leaves it."""
    logger = logging.getLogger("enso_tracker")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


@contextlib.contextmanager
def patch_stdin(stream: io.TextIOWrapper) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, stream
    try:
        yield
    finally:
        sys.stdin = saved


# ------------------------------------------------------------------ properties


@pytest.mark.slow  # the CLI against a real server
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=rows_strategy, data=st.data())
def test_the_cli_ids_do_not_depend_on_files_order_or_shards(
    env: None, rows: list[Row], data: st.DataObject
) -> None:
    """Random rows cut into random files (CSV, JSONL, or JSONL parts concatenated on
    stdin), in a random order, imported by a random number of shards: always exactly
    the documented ids, one per row."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    parts = [rows[a:b] for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]
    order = data.draw(st.permutations(range(len(parts))))
    shards = data.draw(st.integers(1, 3))
    how = data.draw(st.sampled_from(["csv", "jsonl", "stdin"]))
    with tempfile.TemporaryDirectory() as tmp, FakeEnso() as fake:
        paths = []
        for n in order:
            path = Path(tmp) / f"part-{n}.{'csv' if how == 'csv' else 'jsonl'}"
            path.write_text(csv_text(parts[n]) if how == "csv" else jsonl_text(parts[n]))
            paths.append(str(path))
        for i in range(shards):
            args = ["--errors-out", f"{tmp}/e.jsonl"]
            args += ["--shard", f"{i}/{shards}"] if shards > 1 else []
            if how == "stdin":
                joined = b"".join(Path(p).read_bytes() for p in paths)
                import_in_process(fake.url, "-", "--format", "jsonl", *args, stdin=joined)
            else:
                import_in_process(fake.url, *paths, *args)
        assert fake.duplicates == {}  # shards are disjoint
        assert set(fake.event_ids()) == expected(rows)  # complete, and the documented ids
        assert len(fake.event_ids()) == len(rows)  # identical rows stay distinct


@settings(max_examples=25, deadline=None)
@given(rows=rows_strategy, npartitions=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_dask_numbering_gives_the_cli_ids_whatever_the_partitioning(
    rows: list[Row], npartitions: int, seed: int
) -> None:
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    records = [{"customer": e, "calls": c, "ts": t, "region": r} for e, c, _, t, r in shuffled]
    from_sequence: Any = db.from_sequence  # dask is untyped
    bag = from_sequence(records, npartitions=min(npartitions, len(records)))
    numbered: Any = with_event_ids(
        bag, entity="customer", metric_name="api_calls", value="calls", timestamp="ts",
        metadata=["region"], npartitions=npartitions,
    )  # fmt: skip
    events = numbered.compute(scheduler="sync")
    ids = [e["eventId"] for e in events]
    assert len(ids) == len(set(ids)) == len(rows)
    assert set(ids) == expected(rows)


@settings(max_examples=50, deadline=None)
@given(rows=rows_strategy)
def test_two_mappings_or_two_namespaces_give_disjoint_ids(rows: list[Row]) -> None:
    def ids(metric: str, column: int, namespace: str = "") -> set[str]:
        seen = Occurrences(1000)
        out = set()
        for row in rows:
            data = content(row[0], metric, row[column], row[3])
            out.add(event_id(data, seen.take(content_key(data)), namespace))
        return out

    calls, gb = ids("api_calls", 1), ids("gb_stored", 2)
    assert len(calls) == len(gb) == len(rows)
    assert not calls & gb
    assert not calls & ids("api_calls", 1, "second-backfill")
    assert calls == expected(rows)


@given(
    st.lists(
        st.text(
            st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8
        ).filter(lambda s: not s.isspace()),
        min_size=2,
        max_size=2,
    )
)
def test_the_content_is_the_documented_json(names: list[str]) -> None:
    """msgspec writes what ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``
    writes, as the documented rule says."""
    data = content(names[0], names[1], Decimal("2.50"), "2026-04-01T02:00:00.0009+02:00")
    doc = json.dumps([*names, "2.5", 1775001600000], ensure_ascii=False, separators=(",", ":"))
    assert data == doc.encode()


def test_equal_values_and_instants_are_one_content() -> None:
    one = content("e", "m", 1, "2026-04-01T00:00:00Z")
    assert content("e", "m", 1.0, "2026-04-01T02:00:00+02:00") == one
    assert content("e", "m", Decimal("1.000"), "2026-04-01T00:00:00.0004Z") == one
    assert content("e", "m", 2, "2026-04-01T00:00:00Z") != one
    with pytest.raises(InvalidEventError, match="timestamp"):
        content("e", "m", 1, "2026-04-01T00:00:00")
    with pytest.raises(InvalidEventError, match="value"):
        content("e", "m", float("nan"), "2026-04-01T00:00:00Z")
    assert msgspec.json.decode(one) == ["e", "m", "1.0", 1775001600000]


def test_occurrences_are_bounded_and_a_refused_row_gives_its_number_back() -> None:
    seen = Occurrences(2)
    assert [seen.take(b"a"), seen.take(b"a"), seen.take(b"b")] == [0, 1, 0]
    seen.give_back(b"b")
    seen.give_back(b"a")
    assert [seen.take(b"a"), seen.take(b"b")] == [1, 0]
    with pytest.raises(Exception, match="--shard"):
        seen.take(b"c")
    assert seen.take(b"a") == 2  # known contents still count past the bound


def test_a_namespace_must_be_printable() -> None:
    from enso_tracker.dask import Columns

    with pytest.raises(ConfigurationError, match="printable"):
        Columns(namespace="a\nb")


# ------------------------------------------------------- regressions (console script)


def usage_csv(path: Path) -> None:
    path.write_text(
        "customer,calls,gb,ts\n"
        + "".join(f"ent_{i % 5},3,1.5,2026-04-01T00:00:00Z\n" for i in range(50))
    )


@pytest.mark.slow  # the CLI against a real server
def test_finding_1_a_second_metric_from_the_same_file_is_billed(tmp_path: Path) -> None:
    path = tmp_path / "usage.csv"
    usage_csv(path)
    with FakeEnso() as fake:
        env = cli_env(fake.url)
        for metric, column in (("api_calls", "calls"), ("gb_stored", "gb")):
            proc = run_cli(
                "import", path, "--entity", "customer", "--metric-name", metric,
                "--value", column, "--timestamp", "ts", "--json", env=env,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["delivered"] == 50
        events = fake.events
    assert fake.duplicates == {}
    assert Counter(e["metric"] for e in events.values()) == {"api_calls": 50, "gb_stored": 50}
    assert sum(e["value"] for e in events.values() if e["metric"] == "gb_stored") == 75.0
    rows = [(f"ent_{i % 5}", "gb_stored", 1.5, "2026-04-01T00:00:00Z") for i in range(50)]
    assert doc_ids(rows) <= set(events)


@pytest.mark.slow  # the CLI against a real server
def test_finding_3_stdin_rerun_with_a_part_added_in_the_middle_bills_only_it(
    tmp_path: Path,
) -> None:
    """`zcat part-*.gz | import -`: part b sorts between a and c and arrives later.
    Old line ids shifted every row of c (billed twice); content ids bill only b."""

    def part(start: int, n: int) -> str:
        # Rows repeat across parts: the same customer, metric, value and minute.
        return "".join(
            json.dumps(
                {
                    "CustomerEntityId": f"ent_{i % 4}",
                    "metric": "api_calls",
                    "value": 1,
                    "timestamp": f"2026-04-01T00:{i % 3:02d}:00Z",
                }
            )
            + "\n"
            for i in range(start, start + n)
        )

    a, b, c = part(0, 30), part(30, 20), part(50, 30)
    with FakeEnso() as fake:
        env = cli_env(fake.url)
        first = run_cli("import", "-", "--json", env=env, stdin=(a + c).encode())
        assert first.returncode == 0, first.stderr
        assert len(fake.event_ids()) == 60
        second = run_cli("import", "-", "--json", env=env, stdin=(a + b + c).encode())
        assert second.returncode == 0, second.stderr
        assert len(fake.event_ids()) == 80  # b's 20 rows billed, nothing else
        assert sum(fake.duplicates.values()) == 60  # a and c resent, all absorbed
        assert sum(e["value"] for e in fake.events.values()) == 80


@pytest.mark.slow  # the CLI against a real server
def test_a_bad_row_between_identical_rows_does_not_shift_their_ids(tmp_path: Path) -> None:
    good: dict[str, Any] = {"CustomerEntityId": "ent_1", "metric": "m", "value": 1}
    good["timestamp"] = "2026-04-01T00:00:00Z"
    bad = {**good, "metadata": {"blob": "x" * 9000}}  # refused by track(): over 8 KiB
    with_bad, without = tmp_path / "with.jsonl", tmp_path / "without.jsonl"
    with_bad.write_text("".join(json.dumps(r) + "\n" for r in (good, bad, good)))
    without.write_text("".join(json.dumps(r) + "\n" for r in (good, good)))
    with FakeEnso() as fake:
        env = cli_env(fake.url)
        assert run_cli("import", with_bad, env=env).returncode == 1  # one invalid row
        ids = set(fake.event_ids())
        assert ids == {doc_event_id("ent_1", "m", 1, good["timestamp"], k) for k in (0, 1)}
        assert run_cli("import", without, env=env).returncode == 0
        assert set(fake.event_ids()) == ids


@pytest.mark.slow  # the CLI against a real server
def test_a_namespace_separates_two_backfills_of_identical_rows(tmp_path: Path) -> None:
    path = tmp_path / "usage.csv"
    usage_csv(path)
    flags = ["--entity", "customer", "--metric-name", "m", "--value", "calls"]
    flags += ["--timestamp", "ts"]
    with FakeEnso() as fake:
        env = cli_env(fake.url)
        assert run_cli("import", path, *flags, env=env).returncode == 0
        assert run_cli("import", path, *flags, "--id-namespace", "b2", env=env).returncode == 0
        assert len(fake.event_ids()) == 100
        assert run_cli("import", path, *flags, "--id-namespace", "b2", env=env).returncode == 0
        assert len(fake.event_ids()) == 100
        rows = [(f"ent_{i % 5}", "m", 3, "2026-04-01T00:00:00Z") for i in range(50)]
        assert doc_ids(rows, "b2") <= set(fake.event_ids())
        bad = run_cli("import", path, *flags, "--id-namespace", "a\tb", env=env)
        assert bad.returncode == 2
        assert "--id-namespace" in bad.stderr


@pytest.mark.slow  # the CLI against a real server
def test_past_max_distinct_the_import_stops_and_shards_finish_it(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    rows = [
        {"CustomerEntityId": f"ent_{i}", "metric": "m", "value": 1,
         "timestamp": "2026-04-01T00:00:00Z"}
        for i in range(40)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeEnso() as fake:
        env = cli_env(fake.url)
        stopped = run_cli("import", path, "--max-distinct", "25", "--json", env=env)
        assert stopped.returncode == 3
        books = json.loads(stopped.stdout)
        assert "--shard" in books["stopped"]
        assert books["delivered"] == 25  # what was counted was delivered
        told = run_cli("import", path, "--max-distinct", "25", env=env)
        assert "Re-run it split with --shard I/N" in told.stdout
        for i in range(4):
            shard = run_cli("import", path, "--max-distinct", "25", "--shard", f"{i}/4", env=env)
            assert shard.returncode == 0, shard.stdout
        assert len(fake.event_ids()) == 40
        assert sum(fake.duplicates.values()) == 50  # twice 25: the stopped runs' rows
    assert SCRIPT.exists()
