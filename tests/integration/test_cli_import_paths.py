"""The import's fast path (``FastPath.row``, JSONL chunks decoded in one pass) against
its general path (``Importer._row``, which ``--shard 0/1`` takes for every row): the same
events reach Enso with the same eventIds, the errors file says the same thing about the
same lines, and the books agree, whatever the rows hold. And CSV records, handed over in
batches, are all imported up to a damaged tail."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enso_tracker._cli import main
from enso_tracker.testing import FakeEnso
from tests.integration.test_backfill_ids import cli_logging_restored

ENTITIES = ["ent_a", "ent_b", "ént_ü", " ", "", 7]
TIMES = [
    "2026-04-01T00:00:00Z",
    "2026-04-01T02:00:00+02:00",  # the same instant as the first
    "2026-04-01T00:00:00.0015Z",
    "2026-04-01 00:00:00z",
    "2026-04-01T00:00:00",  # no offset: refused
    "Jan 1 2000",
    "",
    1_775_000_000,
]
VALUES = [1, 2, 1.0, -0.0, 0.0, 2.5, "3", " 4 ", "1e3", "x", True, 2**60, float("1e308")]

row_strategy = st.fixed_dictionaries(
    {
        "CustomerEntityId": st.sampled_from(ENTITIES),
        "metric": st.sampled_from(["api_calls", "gb", "ünits"]),
        "value": st.sampled_from(VALUES),
        "timestamp": st.sampled_from(TIMES),
    },
    optional={
        "metadata": st.sampled_from([{"region": "eu"}, {"n": 1.5}, "not an object", {}]),
        "JobId": st.sampled_from(["job-1", "bad id", ""]),
        "eventId": st.sampled_from(["own-1", "own-2", ""]),
        "deadLetter": st.sampled_from([{"kind": "invalid"}, {"kind": "rejected"}]),
    },
)
line_strategy = st.one_of(
    row_strategy.map(lambda row: json.dumps(row, ensure_ascii=False)),
    st.sampled_from(["", "   ", "{not json", "[1, 2]", '{"a": 1} {"b": 2}', "\x0c{}\x0c"]),
)


def import_rows(url: str, path: Path, errors: Path, *extra: str) -> dict[str, Any]:
    """One in-process run of the console script's code; its books (--json)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), cli_logging_restored():
        main(["import", str(path), "--base-url", url, "--json", "--progress", "none",
              "--errors-out", str(errors), *extra])  # fmt: skip
    books: dict[str, Any] = json.loads(out.getvalue())
    return books


def errors_of(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENSO_SPOOL_DIR", "ENSO_RECEIPTS_DIR", "ENSO_CLIENT_KEY", "ENSO_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENSO_API_KEY", "test-api-key")


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=st.lists(line_strategy, min_size=1, max_size=30), crlf=st.booleans())
def test_the_fast_path_bills_and_reports_exactly_as_the_general_path(
    env: None, lines: list[str], crlf: bool
) -> None:
    text = ("\r\n" if crlf else "\n").join(lines) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_text(text, encoding="utf-8")
        outcomes = []
        for extra in ((), ("--shard", "0/1")):
            with FakeEnso() as fake:
                errors_path = Path(tmp) / f"errors{len(extra)}.jsonl"
                books = import_rows(fake.url, path, errors_path, *extra)
                outcomes.append((fake.events, errors_of(errors_path), books))
    (events, errors, books), (events_general, errors_general, books_general) = outcomes
    assert events == events_general
    assert errors == errors_general
    for key in ("rows_read", "invalid", "valid", "accepted", "delivered", "dropped"):
        assert books[key] == books_general[key], key
    assert books["invalid_reasons"] == books_general["invalid_reasons"]
    assert books["exit_code"] == books_general["exit_code"]


def test_every_kind_of_row_in_one_file(env: None, tmp_path: Path) -> None:
    """Each entity, value and timestamp above with each other, twice (occurrence 1 as
    well as 0), with and without metadata, JobId, an own eventId or a deadLetter, and the
    lines that are not rows: the two paths agree on every one."""
    lines = []
    for n, (entity, value, when) in enumerate(
        (e, v, t) for e in ENTITIES for v in VALUES for t in TIMES
    ):
        row: dict[str, Any] = {"CustomerEntityId": entity, "metric": "api_calls"}
        row.update(value=value, timestamp=when)
        extra: list[dict[str, Any]] = [{}, {"metadata": {"region": "eu"}}, {"JobId": "job-1"}]
        extra.append({"JobId": "bad id"})
        extra += [{"eventId": f"own-{n}"}, {"deadLetter": {"kind": "invalid"}}]
        row.update(extra[n % len(extra)])
        lines += [json.dumps(row, ensure_ascii=False)] * 2
    lines += ["", "{not json", "[1, 2]", '{"a": 1} {"b": 2}', "\x0c{}\x0c"]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    outcomes = []
    for extra_args in ((), ("--shard", "0/1")):
        with FakeEnso() as fake:
            errors_path = tmp_path / f"errors{len(extra_args)}.jsonl"
            books = import_rows(fake.url, path, errors_path, *extra_args)
            outcomes.append((fake.events, errors_of(errors_path), books))
    (events, errors, books), (events_general, errors_general, books_general) = outcomes
    assert len(events) >= 100  # many rows are valid, many are not: both paths taken
    assert events == events_general
    assert errors == errors_general
    assert books["invalid_reasons"] == books_general["invalid_reasons"]
    assert books["delivered"] == books_general["delivered"]


def test_identical_rows_count_across_both_paths(env: None, tmp_path: Path) -> None:
    """A row of an errors file (general path) and the same content in a plain row (fast
    path) are the 0th and 1st occurrence: two events, not one id twice."""
    row = {"CustomerEntityId": "ent_a", "metric": "m", "value": 1}
    row["timestamp"] = "2026-04-01T00:00:00Z"
    fixed = dict(row, deadLetter={"kind": "invalid", "message": "was bad"})
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{json.dumps(fixed)}\n{json.dumps(row)}\n{json.dumps(row)}\n")
    with FakeEnso() as fake:
        books = import_rows(fake.url, path, tmp_path / "e.jsonl")
        assert books["delivered"] == 3
        assert len(set(fake.event_ids())) == 3


def test_a_truncated_gzipped_csv_imports_every_record_before_the_damage(
    env: None, tmp_path: Path
) -> None:
    """CSV records reach the importer in batches: those read before the damage still
    come (and are delivered), then the damage is reported with its line."""
    rows = "".join(f"ent_{i % 7},api_calls,{i},2026-04-01T00:00:00Z\n" for i in range(5000))
    whole = gzip.compress(("CustomerEntityId,metric,value,timestamp\n" + rows).encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    errors = tmp_path / "e.jsonl"
    with FakeEnso() as fake:
        books = import_rows(fake.url, path, errors)
        received = fake.received
    assert books["exit_code"] == 4
    assert 0 < books["rows_read"] < 5000
    assert books["delivered"] == books["rows_read"] == received
    (error,) = errors_of(errors)
    assert error["deadLetter"]["kind"] == "unreadable"
    assert error["deadLetter"]["line"] == books["rows_read"] + 2  # after the header
