"""`enso-tracker import`, run as a user would (the console script in a subprocess), against
a FakeEnso on 127.0.0.1 in this process."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from enso_tracker.testing import FakeEnso, Fault

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

API_KEY = "test-api-key"
SCRIPT = Path(sys.executable).with_name("enso-tracker")
N = 100_000


def cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY") and not k.startswith("ENSO_")
    }
    env.update({"ENSO_API_KEY": API_KEY, "ENSO_BASE_URL": url, **extra})
    return env


def run_cli(
    *args: str | Path,
    env: dict[str, str],
    cwd: Path | None = None,
    stdin: bytes | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), "the console script comes with `pip install -e .` (make check)"
    return subprocess.run(
        [str(SCRIPT), *map(str, args)],
        env=env,
        cwd=cwd,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def books(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def doc_event_id(
    entity: str, metric: str, value: float, timestamp: str, k: int, namespace: str = ""
) -> str:
    """The rule as docs/backfills.md documents it, written out independently of the CLI."""
    at = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    ms = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    content = json.dumps(
        [entity, metric, repr(float(value)), ms], ensure_ascii=False, separators=(",", ":")
    ).encode()
    return "imp_" + hashlib.sha256(f"{namespace}\n{k}\n".encode() + content).hexdigest()[:32]


def doc_ids(rows: Sequence[tuple[str, str, float, str]], namespace: str = "") -> set[str]:
    """The ids of these rows (entity, metric, value, timestamp): the k-th of identical
    rows gets occurrence number k."""
    seen: Counter[tuple[str, str, float, str]] = Counter()
    ids = set()
    for row in rows:
        ids.add(doc_event_id(*row, seen[row], namespace))
        seen[row] += 1
    return ids


def doc_line_event_id(source: str, line: int, record: bytes) -> str:
    """`--id-rule line`: the formula of enso-tracker 0.x, by file name and line."""
    return "imp_" + hashlib.sha256(f"{source}\n{line}\n".encode() + record).hexdigest()[:32]


def api_row(i: int) -> dict[str, Any]:
    return {
        "CustomerEntityId": f"ent_{i % 97}",
        "metric": "api_calls",
        "value": i % 7 + 1,
        "timestamp": "2026-04-01T12:00:00Z",
    }


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "usage.jsonl"
    with path.open("w") as f:
        for i in range(N):
            f.write(json.dumps(api_row(i)) + "\n")
    return path


def test_100k_rows_delivered_exactly_once_and_a_rerun_bills_nothing(
    fake_enso: FakeEnso, big_jsonl: Path
) -> None:
    env = cli_env(fake_enso.url)
    first = run_cli("import", big_jsonl, "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert books(first)["delivered"] == N
    assert books(first)["rows_read"] == N
    events = fake_enso.events
    assert len(events) == N
    assert fake_enso.duplicates == {}
    assert sum(e["value"] for e in events.values()) == sum(i % 7 + 1 for i in range(N))
    rows = [
        (r["CustomerEntityId"], r["metric"], r["value"], r["timestamp"])
        for r in map(api_row, range(N))
    ]
    assert set(events) == doc_ids(rows)  # the documented rule, duplicates numbered

    again = run_cli("import", big_jsonl, "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert len(fake_enso.event_ids()) == N  # nothing new on the server
    assert sum(fake_enso.duplicates.values()) == N  # every row resent, every copy absorbed


def test_a_rerun_from_another_directory_compressed_gets_the_same_ids(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    plain = first_dir / "daily.csv"
    plain.write_text(
        "customer,calls,ts\n" + "".join(f"ent_{i % 5},1,2026-04-01T00:00:00Z\n" for i in range(300))
    )
    (second_dir / "daily.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
    mapping = ["--entity", "customer", "--metric-name", "calls", "--value", "calls"]
    mapping += ["--timestamp", "ts", "--json"]
    env = cli_env(fake_enso.url)
    first = run_cli("import", "daily.csv", *mapping, env=env, cwd=first_dir)
    assert first.returncode == 0, first.stderr
    assert len(fake_enso.event_ids()) == 300  # identical rows stay distinct (occurrence numbers)
    second = run_cli("import", second_dir / "daily.csv.gz", *mapping, env=env)
    assert second.returncode == 0, second.stderr
    assert books(second)["delivered"] == 300
    assert len(fake_enso.event_ids()) == 300
    assert sum(fake_enso.duplicates.values()) == 300
    assert doc_event_id("ent_0", "calls", 1, "2026-04-01T00:00:00Z", 59) in fake_enso.events


def test_killed_half_way_then_rerun_delivers_every_row_exactly_once(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    path = tmp_path / "usage.csv.gz"
    header = "customer,metric,amount,at\n"
    rows = [f"ent_{i % 31},tokens,{i},2026-04-02T08:00:00.{i % 1000:03d}Z\n" for i in range(N)]
    path.write_bytes(gzip.compress((header + "".join(rows)).encode()))
    mapping = ["--entity", "customer", "--value", "amount", "--timestamp", "at"]
    env = cli_env(fake_enso.url)

    def some_delivered(server: FakeEnso) -> bool:
        if server.received < 10_000:
            return False
        server.hang(None)  # later batches hang: the import cannot finish before the kill
        return True

    proc = subprocess.Popen(
        [str(SCRIPT), "import", str(path), *mapping],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert fake_enso.wait_for(some_delivered, timeout=30.0)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10.0) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    fake_enso.release()
    partial = len(fake_enso.event_ids())
    assert 10_000 <= partial < N

    rerun = run_cli("import", path, *mapping, "--json", env=env)
    assert rerun.returncode == 0, rerun.stderr
    events = fake_enso.events
    assert len(events) == N
    expected = doc_ids(
        [(f"ent_{i % 31}", "tokens", i, f"2026-04-02T08:00:00.{i % 1000:03d}Z") for i in range(N)]
    )
    assert set(events) == expected
    assert sorted(e["value"] for e in events.values()) == list(range(N))


def test_bad_rows_are_reported_with_their_line_and_the_good_ones_delivered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "customer,calls,ts,region\n"  # line 1
        "ent_known,3,2026-04-01T12:00:00Z,eu\n"  # 2: good
        "ent_known,abc,2026-04-01T12:00:00Z,eu\n"  # 3: value not a number
        "ent_known,4,2026-04-01T12:00:00,eu\n"  # 4: naive timestamp
        ",4,2026-04-01T12:00:00Z,eu\n"  # 5: empty entity
        "ent_known,nan,2026-04-01T12:00:00Z\n"  # 6: short row
        "\n"  # 7: blank, skipped
        "ent_unknown,5,2026-04-01T12:00:00Z,us\n"  # 8: Enso answers 2002
        "ent_known,6,2026-04-01T12:00:00Z,us\n"  # 9: good
    )
    mapping = ["--entity", "customer", "--metric-name", "api_calls", "--value", "calls"]
    mapping += ["--timestamp", "ts", "--metadata", "region"]
    with FakeEnso(known_entities={"ent_known"}) as fake:
        proc = run_cli("import", path, *mapping, env=cli_env(fake.url))
        delivered = fake.events
    assert proc.returncode == 1, proc.stderr
    assert sorted(e["value"] for e in delivered.values()) == [3, 6]
    assert all(e["metadata"] == {"region": e["metadata"]["region"]} for e in delivered.values())
    errors_file = tmp_path / "mixed.csv.errors.jsonl"
    assert str(errors_file) in proc.stdout  # named in the summary
    records = [json.loads(line) for line in errors_file.read_text().splitlines()]
    by_line = {r["deadLetter"]["line"]: r for r in records}
    assert sorted(by_line) == [3, 4, 5, 6, 8]
    fields = [by_line[n]["deadLetter"]["field"] for n in (3, 4, 5, 6)]
    assert fields == ["value", "timestamp", "entity", "row"]
    assert all(r["deadLetter"]["file"] == str(path) for r in records)
    rejected = by_line[8]
    assert rejected["deadLetter"]["kind"] == "rejected"
    assert rejected["deadLetter"]["code"] == 2002
    assert rejected["CustomerEntityId"] == "ent_unknown"
    assert rejected["eventId"].startswith("imp_")  # re-importable, same id
    assert "value: not a number (first: " in proc.stdout
    assert "mixed.csv:3)" in proc.stdout


def test_dry_run_sends_nothing_and_finds_what_the_real_run_finds(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    path = tmp_path / "rows.jsonl"
    good = json.dumps(api_row(1))
    path.write_text(
        "\n".join(
            [
                good,
                json.dumps({**api_row(2), "value": True}),  # bool is not a number
                "{not json",
                json.dumps({**api_row(3), "metadata": {"blob": "x" * 9000}}),  # over 8 KiB
                json.dumps({**api_row(4), "eventId": "has space"}),
                json.dumps({**api_row(5), "timestamp": "yesterday"}),
                json.dumps({k: v for k, v in api_row(6).items() if k != "metric"}),
                good,
            ]
        )
        + "\n"
    )
    env = cli_env(fake_enso.url)
    del env["ENSO_API_KEY"]  # a dry run needs no credentials
    dry = run_cli("import", path, "--dry-run", "--errors-out", tmp_path / "dry.jsonl", env=env)
    assert dry.returncode == 1, dry.stderr
    assert fake_enso.requests == []
    dry_errors = [json.loads(x) for x in (tmp_path / "dry.jsonl").read_text().splitlines()]
    found = sorted((e["deadLetter"]["line"], e["deadLetter"]["field"]) for e in dry_errors)
    assert found == [
        (2, "value"),
        (3, "row"),
        (4, "metadata"),
        (5, "event_id"),
        (6, "timestamp"),
        (7, "metric"),
    ]
    assert "event_id: " in dry.stdout
    assert "rows.jsonl:5)" in dry.stdout

    real = run_cli(
        "import", path, "--errors-out", tmp_path / "real.jsonl", env=cli_env(fake_enso.url)
    )
    assert real.returncode == 1, real.stderr
    real_errors = [json.loads(x) for x in (tmp_path / "real.jsonl").read_text().splitlines()]
    assert sorted(json.dumps(e, sort_keys=True) for e in real_errors) == sorted(
        json.dumps(e, sort_keys=True) for e in dry_errors
    )
    assert len(fake_enso.event_ids()) == 2  # the two good rows (same content, two lines)


def test_shards_are_disjoint_and_complete(fake_enso: FakeEnso, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    lines = [json.dumps(api_row(i)) for i in range(3000)]
    lines[100] = lines[2000] = "[1, 2]"  # two bad rows: each must be reported by one shard
    path.write_text("\n".join(lines) + "\n")
    env = cli_env(fake_enso.url)
    procs = [
        subprocess.Popen(
            [str(SCRIPT), "import", str(path), "--shard", f"{i}/3", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60.0)
        results.append(json.loads(out))
        assert proc.returncode == (1 if results[-1]["invalid"] else 0), err
    assert fake_enso.duplicates == {}
    assert len(fake_enso.event_ids()) == 2998
    assert sum(r["delivered"] for r in results) == 2998
    assert all(r["rows_read"] == 3000 for r in results)
    assert sum(r["rows_read"] - r["other_shards"] for r in results) == 3000
    assert sum(r["invalid"] for r in results) == 2
    assert all(r["delivered"] > 700 for r in results)  # the hash spreads rows across shards
    reported = []
    for i in range(3):
        errors = tmp_path / f"big.jsonl.shard-{i}-of-3.errors.jsonl"
        if errors.exists():
            reported += [
                json.loads(x)["deadLetter"]["line"] for x in errors.read_text().splitlines()
            ]
    assert sorted(reported) == [101, 2001]


def test_stdin_gzip_needs_no_source_id_and_line_ids_still_can_be_had(fake_enso: FakeEnso) -> None:
    lines = [json.dumps(api_row(i)) for i in range(50)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    env = cli_env(fake_enso.url)
    proc = subprocess.run(
        [str(SCRIPT), "import", "-", "--json"], env=env, input=data, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    rows = [
        (r["CustomerEntityId"], r["metric"], r["value"], r["timestamp"])
        for r in map(api_row, range(50))
    ]
    assert set(fake_enso.event_ids()) == doc_ids(rows)

    # --source-id belongs to the 0.x rule: alone it is a usage error, not a silent switch.
    refused = subprocess.run(
        [str(SCRIPT), "import", "-", "--source-id", "usage-2026-04"],
        env=env,
        input=data,
        capture_output=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert b"--id-rule line" in refused.stderr
    # --id-rule line finishes an import begun by 0.x: its ids, by source and line.
    legacy = subprocess.run(
        [str(SCRIPT), "import", "-", "--id-rule", "line", "--source-id", "usage-2026-04"],
        env=env,
        input=data,
        capture_output=True,
        timeout=30,
    )
    assert legacy.returncode == 0, legacy.stderr
    assert set(fake_enso.event_ids()) == doc_ids(rows) | {
        doc_line_event_id("usage-2026-04", i + 1, line.encode()) for i, line in enumerate(lines)
    }


def test_usage_errors_exit_2_before_anything_is_sent(fake_enso: FakeEnso, tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_text("customer,calls,ts\nent_1,1,2026-04-01T00:00:00Z\n")
    env = cli_env(fake_enso.url)
    no_column = run_cli("import", path, env=env)
    assert no_column.returncode == 2
    assert "no column 'CustomerEntityId'" in no_column.stderr
    no_file = run_cli("import", tmp_path / "missing.csv", env=env)
    assert no_file.returncode == 2
    bad_shard = run_cli("import", path, "--shard", "3/3", env=env)
    assert bad_shard.returncode == 2
    no_creds = run_cli(
        "import", path, "--entity", "customer", "--metric-name", "m", "--value", "calls",
        "--timestamp", "ts", env={k: v for k, v in env.items() if k != "ENSO_API_KEY"},
    )  # fmt: skip
    assert no_creds.returncode == 2
    assert "ENSO_API_KEY" in no_creds.stderr
    assert fake_enso.requests == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_enso_exits_3_and_says_a_rerun_is_safe(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(api_row(i)) + "\n" for i in range(20)))
    # Reachable for the preflight probe, then every connection drops: Enso went away
    # mid-run (unreachable from the start is test_cli_preflight.py's).
    fake_enso.script(Fault(), *[Fault(drop_connection=True)] * 200)
    proc = run_cli("import", path, "--stall-timeout", "1", env=cli_env(fake_enso.url))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Re-run the same command" in proc.stdout
    records = [json.loads(x) for x in (tmp_path / "r.jsonl.errors.jsonl").read_text().splitlines()]
    assert len(records) == 20  # nothing vanishes: each undelivered row, with its line
    assert {r["deadLetter"]["kind"] for r in records} == {"shutdown"}
    assert sorted(r["deadLetter"]["line"] for r in records) == list(range(1, 21))


def test_sigterm_stops_the_import_and_reports_what_was_not_delivered(
    private_fake: FakeEnso, tmp_path: Path
) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(api_row(i)) + "\n" for i in range(3000)))
    # The preflight probe is answered; then Enso accepts connections and never answers
    # (delays that outlast the test; stop() at the fixture's end cuts them short).
    private_fake.script(Fault(), *[Fault(delay=600.0)] * 50)
    proc = subprocess.Popen(
        [str(SCRIPT), "import", str(path), "--json"],
        env=cli_env(private_fake.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The probe is recorded once answered: what is in flight after it is a batch.
        assert private_fake.wait_for(
            lambda server: server.in_flight >= 1 and len(server.batch_requests()) >= 1, 30.0
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        private_fake.release()
    assert proc.returncode == 130, err
    assert books_of(out)["stopped"] == "interrupted"
    errors = (tmp_path / "t.jsonl.errors.jsonl").read_text().splitlines()
    assert len(errors) == books_of(out)["accepted"] > 0
    assert {json.loads(x)["deadLetter"]["kind"] for x in errors} == {"shutdown"}


def books_of(stdout: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stdout)
    return result


def test_refused_credentials_stop_the_import_with_exit_3(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(api_row(i)) + "\n" for i in range(20)))
    proc = run_cli("import", path, "--json", env=cli_env(fake_enso.url, ENSO_API_KEY="wrong-key"))
    assert proc.returncode == 3
    assert "refuses the credentials" in books(proc)["stopped"]
    assert fake_enso.event_ids() == []


def test_progress_is_shown_when_asked_and_never_into_a_pipe(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(api_row(i)) + "\n" for i in range(2000)))
    env = cli_env(fake_enso.url)
    quiet = run_cli("import", path, env=env)  # stderr is a pipe: no progress
    assert quiet.returncode == 0
    assert "rows/s" not in quiet.stderr
    plain = run_cli("import", path, "--progress", "plain", env=env)
    assert plain.returncode == 0
    assert "rows/s" in plain.stderr
    assert "delivered 2,000" in plain.stderr  # the final redraw
    assert "ETA" in plain.stderr
    fancy = run_cli("import", path, "--progress", "rich", env=env)
    assert fancy.returncode == 0, fancy.stderr
    assert "delivered 2,000" in fancy.stderr


def test_help_has_examples_and_the_exit_codes(tmp_path: Path) -> None:
    env = cli_env("http://127.0.0.1:9")
    top = run_cli("--help", env=env)
    assert top.returncode == 0
    assert "examples:" in top.stdout
    assert "exit codes:" in top.stdout
    sub = run_cli("import", "--help", env=env)
    assert "--source-id" in sub.stdout
    assert 'sha256(f"{namespace}' in sub.stdout
    module = subprocess.run(
        [sys.executable, "-m", "enso_tracker", "send", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert module.returncode == 0
    assert "--event-id" in module.stdout


def test_demo_still_runs_from_the_command_line() -> None:
    proc = subprocess.run(
        [str(SCRIPT), "demo", "--seconds", "0.5", "--threads", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Books balance" in proc.stdout


def test_two_inputs_with_one_file_name_are_one_backfill(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    """Content ids need no file name: two inputs named alike are imported together, and
    their identical rows stay two events. The 0.x line rule still refuses them."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    src = tmp_path / "x" / "same.jsonl"
    src.write_text(json.dumps(api_row(1)) + "\n")
    shutil.copy(src, tmp_path / "y" / "same.jsonl")
    legacy = run_cli(
        "import",
        src,
        tmp_path / "y" / "same.jsonl",
        "--id-rule",
        "line",
        env=cli_env(fake_enso.url),
    )
    assert legacy.returncode == 2
    assert "same file name" in legacy.stderr
    assert fake_enso.requests == []
    proc = run_cli("import", src, tmp_path / "y" / "same.jsonl", env=cli_env(fake_enso.url))
    assert proc.returncode == 0, proc.stderr
    row = api_row(1)
    assert set(fake_enso.event_ids()) == {
        doc_event_id(row["CustomerEntityId"], row["metric"], row["value"], row["timestamp"], k)
        for k in (0, 1)
    }


def _receipt_rows(i: int) -> dict[str, Any]:
    """20 rows: three known entities, two metrics (one with fractions), one unknown."""
    entity = "ent_unknown" if i == 19 else f"ent_{i % 3}"
    if i % 2:
        return {**api_row(i), "CustomerEntityId": entity, "metric": "gb", "value": 0.1 * (i % 4)}
    return {**api_row(i), "CustomerEntityId": entity}


def _stored_totals(fake: FakeEnso) -> dict[tuple[str, str], tuple[int, Decimal]]:
    out: dict[tuple[str, str], tuple[int, Decimal]] = {}
    for e in fake.events.values():
        key = (e["CustomerEntityId"], e["metric"])
        n, total = out.get(key, (0, Decimal(0)))
        out[key] = (n + 1, total + Decimal(repr(e["value"])))
    return out


def test_receipts_dir_shows_the_runs_delivered_totals_and_a_rerun_counts_them_again(
    tmp_path: Path,
) -> None:
    from enso_tracker import Receipts

    path = tmp_path / "usage.jsonl"
    path.write_text("".join(json.dumps(_receipt_rows(i)) + "\n" for i in range(20)))
    receipts_dir = tmp_path / "receipts"
    with FakeEnso(known_entities={"ent_0", "ent_1", "ent_2"}) as fake:
        env = cli_env(fake.url)
        first = run_cli("import", path, "--receipts-dir", receipts_dir, "--json", env=env)
        assert first.returncode == 1, first.stderr  # ent_unknown: refused by Enso
        # Sums are exact decimal numbers in the JSON: read them as Decimals, not floats.
        got = json.loads(first.stdout, parse_float=Decimal)["receipts"]
        stored = _stored_totals(fake)
        assert len(fake.events) == 19
        assert {
            (r["entity"], r["metric"]): (r["count"], r["sum"]) for r in got["delivered"]
        } == stored  # every (entity, metric): count and exact sum as Enso stored them
        assert sum(r["count"] for r in got["delivered"]) == books(first)["delivered"] == 19
        assert got["other"] == [
            {
                "entity": "ent_unknown",
                "metric": "gb",
                "count": 1,
                "sum": Decimal("0.30000000000000004"),
                "outcome": "rejected:2002",
            }
        ]
        assert got["matches_stats"] is True
        assert Path(got["store"]).parent == receipts_dir

        # The same run again: Enso stores nothing new, but answers every event as
        # accepted, so the receipts count them as delivered again (docs/receipts.md).
        again = run_cli("import", path, "--receipts-dir", receipts_dir, env=env)
        assert again.returncode == 1, again.stderr
        assert len(fake.events) == 19
        assert sum(fake.duplicates.values()) == 19
        assert "receipts of this run" in again.stdout
        for (entity, metric), (n, total) in stored.items():
            line = next(
                x
                for x in again.stdout.splitlines()
                if x.split()[:3] == [entity, metric, "delivered"]
            )
            assert line.split()[3:] == [f"{n:,}", "sum", str(total)], line
        with Receipts(receipts_dir) as store:
            delivered = store.totals(outcome="delivered", by="month")
        assert sum(t.count for t in delivered) == 2 * 19


def test_import_never_borrows_enso_receipts_dir(fake_enso: FakeEnso, tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text("".join(json.dumps(api_row(i)) + "\n" for i in range(5)))
    app_receipts = tmp_path / "app-receipts"
    env = cli_env(fake_enso.url, ENSO_RECEIPTS_DIR=str(app_receipts))
    proc = run_cli("import", path, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert books(proc)["delivered"] == 5
    assert books(proc)["receipts"] is None
    assert not app_receipts.exists()  # an application's store: never written by a backfill


def test_run_receipts_say_when_another_writer_shared_the_store(
    fake_enso: FakeEnso, tmp_path: Path
) -> None:
    from enso_tracker import Tracker
    from enso_tracker._cli.importer.receipts import RunReceipts

    def tracker() -> Tracker:
        return Tracker(API_KEY, base_url=fake_enso.url, receipts_dir=tmp_path, handle_sigterm=False)

    ours, other = tracker(), tracker()  # one identity: one store
    for _ in range(3):
        other.track("ent_a", "api_calls", 2)
    assert other.flush(10)  # before the run: not the run's
    run = RunReceipts(ours)
    for _ in range(4):
        ours.track("ent_a", "api_calls", 5)
    assert ours.flush(10)
    ours.shutdown()
    alone = run.result(ours)
    assert alone["delivered"] == [{"entity": "ent_a", "metric": "api_calls", "count": 4, "sum": 20}]
    assert alone["matches_stats"] is True

    other.track("ent_b", "api_calls", 1)  # another writer during a run
    assert other.flush(10)
    shared = run.result(ours)
    assert [(r["entity"], r["count"]) for r in shared["delivered"]] == [("ent_a", 4), ("ent_b", 1)]
    assert shared["matches_stats"] is False
    other.shutdown()
