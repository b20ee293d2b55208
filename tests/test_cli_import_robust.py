"""`enso-tracker import` on the inputs users really have (issue #17, findings 4-6 and the
progress/pipe behaviour): an application's spool in the environment, damaged and hostile
files, real exports. Run as a user would: the console script in a subprocess, against a
FakeEnso on 127.0.0.1 in this process."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from enso_tracker import Spool, Tracker
from enso_tracker.testing import FakeEnso

from .conftest import accepted
from .test_cli_import import API_KEY, SCRIPT, books, cli_env, run_cli

TS = "2026-04-01T12:00:00Z"


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def api_rows(n: int, entity: str = "ent_known") -> str:
    return "".join(
        json.dumps(
            {"CustomerEntityId": entity, "metric": "api_calls", "value": i + 1, "timestamp": TS}
        )
        + "\n"
        for i in range(n)
    )


# ------------------------------------------------------- finding 4: no borrowed spool


def app_leftovers(spool_dir: Path) -> None:
    """An application's spool: 5 events for an entity Enso does not know (each would be
    rejected with 2002) and 20 good ones, left undelivered when Enso was unreachable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = Tracker(
        api_key=API_KEY,
        base_url=f"http://127.0.0.1:{port}",
        spool_dir=str(spool_dir),
        handle_sigterm=False,
        backoff_base=0.01,
        backoff_max=0.05,
    )
    for i in range(5):
        accepted(app.track("ent_nobody", "api_calls", i + 1, timestamp=TS))
    for i in range(20):
        accepted(app.track("ent_known", "gb_stored", i + 1, timestamp=TS))
    app.shutdown(1.0)
    assert app.stats().left_in_spool == 25


def test_import_never_adopts_the_spool_of_ENSO_SPOOL_DIR(tmp_path: Path) -> None:
    spool_dir = tmp_path / "app-spool"
    app_leftovers(spool_dir)
    path = tmp_path / "usage.jsonl"
    path.write_text(api_rows(10))
    errors = tmp_path / "errors.jsonl"
    with FakeEnso(known_entities={"ent_known"}) as fake:
        env = cli_env(fake.url, ENSO_SPOOL_DIR=str(spool_dir))
        proc = run_cli("import", path, "--json", "--errors-out", errors, env=env)
        received = fake.events
    assert proc.returncode == 0, proc.stderr
    b = books(proc)
    assert (b["rows_read"], b["accepted"], b["delivered"], b["adopted"]) == (10, 10, 10, 0)
    assert b["dropped"] == {} or not any(b["dropped"].values())
    assert len(received) == 10
    assert {e["metric"] for e in received.values()} == {"api_calls"}  # none of the app's
    assert errors.read_text() == ""  # the app's 2002s are not this run's errors
    status = Spool(spool_dir).status()
    assert (status.events, status.dead_letters) == (25, 0)  # the app's spool untouched


def test_an_explicit_spool_dir_holding_leftovers_is_refused(tmp_path: Path) -> None:
    spool_dir = tmp_path / "app-spool"
    app_leftovers(spool_dir)
    path = tmp_path / "usage.jsonl"
    path.write_text(api_rows(3))
    with FakeEnso(known_entities={"ent_known"}) as fake:
        proc = run_cli("import", path, "--spool-dir", spool_dir, env=cli_env(fake.url))
        refused_received = fake.received
        own = tmp_path / "own-spool"
        ok = run_cli("import", path, "--spool-dir", own, "--json", env=cli_env(fake.url))
        received = fake.received
    assert proc.returncode == 2
    assert "25 undelivered events" in proc.stderr
    assert refused_received == 0
    assert ok.returncode == 0, ok.stderr
    assert books(ok)["delivered"] == 3 == received
    assert Spool(own).status().events == 0
    assert Spool(spool_dir).status().events == 25


# ------------------------------------------------- finding 5: bad input, reported


def good_lines(n: int, start: int = 0) -> list[str]:
    return [
        json.dumps(
            {
                "CustomerEntityId": "ent_known",
                "metric": "api_calls",
                "value": start + i + 1,
                "timestamp": TS,
            }
        )
        for i in range(n)
    ]


def test_unparseable_rows_go_to_the_errors_file_and_the_run_goes_on(tmp_path: Path) -> None:
    deep = tmp_path / "deep.jsonl"
    lines = [*good_lines(3), "[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000]
    deep.write_text("\n".join(lines + good_lines(3, 3)) + "\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(
        b"CustomerEntityId,metric,value,timestamp\n"
        b"ent_known,api_calls,1,2026-04-01T12:00:00Z\n"
        b"ent_caf\xe9,api_calls,2,2026-04-01T12:00:00Z\n"  # line 3: Latin-1, not UTF-8
        b"ent_known,api_calls,3,2026-04-01T12:00:00Z\n"
    )
    long = tmp_path / "long.jsonl.gz"
    big = b'{"x": "' + b"a" * 3_000_000 + b'"}'
    with gzip.open(long, "wb") as f:
        f.write("\n".join(good_lines(1)).encode() + b"\n" + big + b"\n")
        f.write("\n".join(good_lines(1, 1)).encode() + b"\n")
    with FakeEnso(known_entities={"ent_known"}) as fake:
        env = cli_env(fake.url)
        procs = {p.name: run_cli("import", p, "--json", env=env) for p in (deep, latin, long)}
        values = sorted(e["value"] for e in fake.events.values())
    for proc in procs.values():
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert values == sorted([1, 2, 3, 4, 5, 6, 1, 3, 1, 2])  # every good row, each once
    deep_errors = jsonl(tmp_path / "deep.jsonl.errors.jsonl")
    assert [(r["line"], r["reason"]) for r in deep_errors] == [
        (4, "not valid JSON: nested too deeply"),
        (5, "not valid JSON: nested too deeply"),
    ]
    (latin_error,) = jsonl(tmp_path / "latin.csv.errors.jsonl")
    assert latin_error["line"] == 3
    assert "not valid UTF-8" in latin_error["reason"]
    (long_error,) = jsonl(tmp_path / "long.jsonl.gz.errors.jsonl")
    assert long_error["line"] == 2
    assert "--max-line-bytes" in long_error["reason"]
    assert books(procs["long.jsonl.gz"])["invalid"] == 1


def test_a_line_over_the_bound_is_skipped_in_flat_memory(tmp_path: Path) -> None:
    # 300 MB of one line, gzipped to ~300 KB: read in chunks, never held.
    path = tmp_path / "huge.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(good_lines(1)[0].encode() + b"\n" + b'{"x": "')
        chunk = b"a" * (1 << 20)
        for _ in range(300):
            f.write(chunk)
        f.write(b'"}\n' + good_lines(1, 1)[0].encode() + b"\n")
    measure = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=False); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", measure, str(SCRIPT), "import", str(path), "--dry-run"],
        env=cli_env("http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    peak_kib = int(proc.stdout.splitlines()[-1])
    assert "exit 1" in proc.stdout, proc.stderr
    assert peak_kib < 150 * 1024, peak_kib  # the line alone is 300 MB
    (error,) = jsonl(tmp_path / "huge.jsonl.gz.errors.jsonl")
    assert error["line"] == 2


def test_a_truncated_gzip_ends_the_run_with_the_summary_and_exit_4(tmp_path: Path) -> None:
    whole = gzip.compress(("\n".join(good_lines(5000)) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    later = tmp_path / "later.jsonl"
    later.write_text(api_rows(3))
    with FakeEnso(known_entities={"ent_known"}) as fake:
        proc = run_cli("import", path, later, "--json", env=cli_env(fake.url))
        received = fake.received
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    b = books(proc)
    assert 0 < b["rows_read"] < 5000
    assert b["delivered"] == b["rows_read"] == received  # what was read is delivered
    assert "cut.jsonl.gz: unreadable from line" in b["damaged"]
    (error,) = jsonl(tmp_path / "cut.jsonl.gz.errors.jsonl")
    assert (error["kind"], error["line"]) == ("unreadable", b["rows_read"] + 1)
    assert "truncated" in error["reason"]
    human = run_cli("import", path, "--dry-run", env=cli_env("http://127.0.0.1:9"))
    assert human.returncode == 4
    assert "damaged input: " in human.stdout
    assert "exit 4: " in human.stdout


def test_an_errors_file_that_is_an_input_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text(api_rows(3))
    before = path.read_bytes()
    (tmp_path / "alias.jsonl").symlink_to(path)
    with FakeEnso(known_entities={"ent_known"}) as fake:
        for target in (path, tmp_path / "alias.jsonl"):
            proc = run_cli("import", path, "--errors-out", target, env=cli_env(fake.url))
            assert proc.returncode == 2
            assert "would destroy the input" in proc.stderr
        received = fake.received
    assert received == 0
    assert path.read_bytes() == before
