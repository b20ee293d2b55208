"""`enso-tracker import` on the inputs users really have (issue #17, findings 4-6 and the
progress/pipe behaviour): an application's spool in the environment, damaged and hostile
files, real exports. Run as a user would: the console script in a subprocess, against a
FakeEnso on 127.0.0.1 in this process."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enso_tracker import Spool, Tracker
from enso_tracker.testing import FakeEnso, Fault
from tests.conftest import accepted

from .test_cli_import import API_KEY, SCRIPT, books, cli_env, run_cli

pytestmark = pytest.mark.slow  # subprocesses, servers or frameworks: `make test`

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


def app_leftovers(spool_dir: Path, fake: FakeEnso) -> None:
    """An application's spool, of the identity the import has too (same key, same Enso):
    5 events for an entity Enso does not know (each would be rejected with 2002) and 20
    good ones, left undelivered while Enso dropped every connection."""
    fake.script(*[Fault(drop_connection=True)] * 10_000)
    app = Tracker(
        api_key=API_KEY,
        base_url=fake.url,
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
    fake.reset()  # Enso is back, and has received nothing
    fake.known_entities = {"ent_known"}


def test_import_never_adopts_the_spool_of_ENSO_SPOOL_DIR(tmp_path: Path) -> None:
    spool_dir = tmp_path / "app-spool"
    path = tmp_path / "usage.jsonl"
    path.write_text(api_rows(10))
    errors = tmp_path / "errors.jsonl"
    with FakeEnso(known_entities={"ent_known"}) as fake:
        app_leftovers(spool_dir, fake)
        env = cli_env(fake.url, ENSO_SPOOL_DIR=str(spool_dir))
        proc = run_cli("import", path, "--json", "--errors-out", errors, env=env)
        received = fake.events
    assert proc.returncode == 0, proc.stderr
    b = books(proc)
    assert (b["rows_read"], b["accepted"], b["delivered"], b["adopted"]) == (10, 10, 10, 0)
    assert not any(b["dropped"].values())
    assert len(received) == 10
    assert {e["metric"] for e in received.values()} == {"api_calls"}  # none of the app's
    assert errors.read_text() == ""  # the app's 2002s are not this run's errors
    status = Spool(spool_dir).status()
    assert (status.events, status.dead_letters) == (25, 0)  # the app's spool untouched


def test_an_explicit_spool_dir_holding_leftovers_is_refused(tmp_path: Path) -> None:
    spool_dir = tmp_path / "app-spool"
    path = tmp_path / "usage.jsonl"
    path.write_text(api_rows(3))
    with FakeEnso(known_entities={"ent_known"}) as fake:
        app_leftovers(spool_dir, fake)
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
        # Three separate backfills whose rows look alike: a namespace each (the id rule).
        procs = {
            p.name: run_cli("import", p, "--json", "--id-namespace", p.name, env=env)
            for p in (deep, latin, long)
        }
        values = sorted(e["value"] for e in fake.events.values())
    for proc in procs.values():
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert values == sorted([1, 2, 3, 4, 5, 6, 1, 3, 1, 2])  # every good row, each once
    deep_errors = jsonl(tmp_path / "deep.jsonl.errors.jsonl")
    assert [(r["deadLetter"]["line"], r["deadLetter"]["message"]) for r in deep_errors] == [
        (4, "not valid JSON: nested too deeply"),
        (5, "not valid JSON: nested too deeply"),
    ]
    assert all(r["raw"].startswith(("[[[", '{"a":{')) for r in deep_errors)
    (latin_error,) = jsonl(tmp_path / "latin.csv.errors.jsonl")
    assert latin_error["deadLetter"]["line"] == 3
    assert latin_error["deadLetter"]["message"] == "not valid UTF-8: line 3, byte 8"
    assert latin_error["raw"] == "ent_caf\ufffd,api_calls,2,2026-04-01T12:00:00Z"
    (long_error,) = jsonl(tmp_path / "long.jsonl.gz.errors.jsonl")
    assert long_error["deadLetter"]["line"] == 2
    assert "--max-line-bytes" in long_error["deadLetter"]["message"]
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
    assert error["deadLetter"]["line"] == 2


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
    assert (error["deadLetter"]["kind"], error["deadLetter"]["line"]) == (
        "unreadable",
        b["rows_read"] + 1,
    )
    assert "truncated" in error["deadLetter"]["message"]
    human = run_cli("import", path, "--dry-run", env=cli_env("http://127.0.0.1:9"))
    assert human.returncode == 4
    assert "damaged input: " in human.stdout
    assert "exit 4: " in human.stdout
    # Damaged from its first bytes: a file is refused before anything is sent (exit 2);
    # stdin, which has no preflight, ends the run the same way as a damaged tail.
    tiny = tmp_path / "tiny.jsonl.gz"
    tiny.write_bytes(whole[:30])
    refused = run_cli("import", tiny, env=cli_env("http://127.0.0.1:9"))
    assert refused.returncode == 2
    assert "tiny.jsonl.gz: cannot read: the compressed stream ends early" in refused.stderr
    piped = subprocess.run(
        [str(SCRIPT), "import", "-", "--dry-run"],
        env=cli_env("http://127.0.0.1:9"),
        cwd=tmp_path,
        input=whole[:30],
        capture_output=True,
        timeout=60,
    )
    assert piped.returncode == 4, piped.stderr
    assert b"Traceback" not in piped.stderr
    assert b"damaged input: <stdin>: unreadable from line 1 on" in piped.stdout


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
        # The default errors file (<input>.errors.jsonl) given as a second input.
        shadow = tmp_path / "usage.jsonl.errors.jsonl"
        shadow.write_text(api_rows(1))
        both = run_cli("import", path, shadow, env=cli_env(fake.url))
        assert both.returncode == 2
        assert "would destroy the input" in both.stderr
        assert shadow.read_text() == api_rows(1)
        received = fake.received
    assert received == 0
    assert path.read_bytes() == before


# ------------------------------------------------------- finding 6: real exports


def stock_prices(path: Path, days: int = 560) -> list[tuple[str, str, str]]:
    """A stock-price export as finance sites give it: `Jan 1 2000` dates, no zone."""
    rows = []
    start = datetime(2000, 1, 1)
    for i in range(days):
        day = start + timedelta(days=i)
        text = f"{day:%b} {day.day} {day.year}"  # Jan 1 2000 (no zero padding)
        rows.append(("MSFT", text, f"{39.8 + (i % 17) * 0.25:.2f}"))
    with path.open("w") as f:
        f.write("symbol,date,price\n")
        f.writelines(f"{s},{d},{p}\n" for s, d, p in rows)
    return rows


def test_a_stock_price_csv_with_a_format_and_a_time_zone(tmp_path: Path) -> None:
    path = tmp_path / "msft.csv"
    rows = stock_prices(path)
    mapping = ["--entity", "symbol", "--metric-name", "close", "--value", "price"]
    mapping += ["--timestamp", "date"]
    with FakeEnso() as fake:
        refused = run_cli("import", path, *mapping, env=cli_env(fake.url))
        assert fake.received == 0
        proc = run_cli(
            "import",
            path,
            *mapping,
            "--timestamp-format",
            "%b %d %Y",
            "--timezone",
            "America/New_York",
            "--json",
            env=cli_env(fake.url),
        )
        events = fake.events
    # Without options: refused, counted once by reason, the message names the options.
    assert refused.returncode == 1
    assert "560 x timestamp: not an ISO 8601 / RFC 3339 date-time" in refused.stdout
    assert "--timestamp-format" in refused.stdout
    assert refused.stdout.count("x timestamp:") == 1  # one line, not 560
    assert proc.returncode == 0, proc.stderr
    assert books(proc)["delivered"] == 560 == len(events)
    by_day = {e["timestamp"]: e["value"] for e in events.values()}
    assert by_day["2000-01-01T05:00:00.000Z"] == float(rows[0][2])  # midnight in New York
    assert by_day["2000-07-01T04:00:00.000Z"] == float(rows[182][2])  # summer time: -4 h
    assert sum(by_day.values()) == pytest.approx(sum(float(r[2]) for r in rows))


def test_epoch_times_and_numbers_as_text(tmp_path: Path) -> None:
    seconds = tmp_path / "s.jsonl"
    seconds.write_text(
        json.dumps(
            {"CustomerEntityId": "ent_a", "metric": "m", "value": "12.5", "timestamp": 946684800}
        )
        + "\n"
        + json.dumps(
            {"CustomerEntityId": "ent_a", "metric": "m", "value": "7", "timestamp": "946684800.25"}
        )
        + "\n"
        + json.dumps(
            {"CustomerEntityId": "ent_a", "metric": "m", "value": "1,000", "timestamp": 946684800}
        )
        + "\n"
    )
    millis = tmp_path / "ms.csv"
    millis.write_text("CustomerEntityId,metric,value,timestamp\nent_b,m,3,946684800123\n")
    with FakeEnso() as fake:
        s = run_cli("import", seconds, "--timestamp-format", "epoch-s", env=cli_env(fake.url))
        ms = run_cli("import", millis, "--timestamp-format", "epoch-ms", env=cli_env(fake.url))
        plain = run_cli("import", millis, "--dry-run", env=cli_env(fake.url))
        events = sorted(fake.events.values(), key=lambda e: e["timestamp"])
    assert s.returncode == 1  # "1,000" is not a number
    assert "value: not a number" in s.stdout
    assert ms.returncode == 0, ms.stderr
    got = [(e["CustomerEntityId"], e["value"], e["timestamp"]) for e in events]
    assert got == [
        ("ent_a", 12.5, "2000-01-01T00:00:00.000Z"),
        ("ent_b", 3, "2000-01-01T00:00:00.123Z"),
        ("ent_a", 7, "2000-01-01T00:00:00.250Z"),
    ]
    assert type(events[1]["value"]) is int  # "3" stays an integer
    assert plain.returncode == 1
    assert "--timestamp-format epoch-s" in plain.stdout  # a number: the option is named


def test_naive_times_are_refused_unless_a_time_zone_is_given(tmp_path: Path) -> None:
    path = tmp_path / "local.csv"
    path.write_text(
        "CustomerEntityId,metric,value,timestamp\n"
        "ent_a,m,1,2026-03-29 01:30:00\n"
        "ent_a,m,2,2026-03-29 02:30:00\n"  # does not exist in Paris (clocks go forward)
        "ent_a,m,3,2026-03-29T12:00:00+00:00\n"  # has its own offset: kept
    )
    with FakeEnso() as fake:
        naive = run_cli("import", path, "--dry-run", env=cli_env(fake.url))
        paris = run_cli("import", path, "--timezone", "Europe/Paris", env=cli_env(fake.url))
        bad_zone = run_cli("import", path, "--timezone", "Mars/Olympus", env=cli_env(fake.url))
        events = sorted(fake.events.values(), key=lambda e: e["value"])
    assert naive.returncode == 1
    assert "2 x timestamp: has no time zone: pass --timezone ZONE" in naive.stdout
    assert paris.returncode == 1
    assert "does not exist in Europe/Paris" in paris.stdout
    assert [(e["value"], e["timestamp"]) for e in events] == [
        (1, "2026-03-29T00:30:00.000Z"),
        (3, "2026-03-29T12:00:00.000Z"),
    ]
    assert bad_zone.returncode == 2
    assert "not a known time zone" in bad_zone.stderr


def test_the_errors_file_is_reimported_as_it_is_and_bills_each_row_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.csv"
    path.write_text(
        "customer,calls,ts\n"
        "ent_known,1,2026-04-01 12:00:00\n"  # naive: invalid without --timezone
        "ent_known,2,2026-04-01T12:00:00Z\n"
        "ent_new,3,2026-04-01T12:00:00Z\n"  # unknown to Enso today: 2002
        "ent_known,4,2026-04-01 13:00:00\n"  # naive
    )
    mapping = ["--entity", "customer", "--metric-name", "api_calls", "--value", "calls"]
    mapping += ["--timestamp", "ts", "--timezone", "UTC"]
    errors = tmp_path / "usage.csv.errors.jsonl"
    with FakeEnso(known_entities={"ent_known"}) as fake:
        first = run_cli("import", path, *mapping[:-2], env=cli_env(fake.url))
        records = jsonl(errors)
        fake.known_entities = {"ent_known", "ent_new"}  # the customer now exists
        again = run_cli("import", errors, *mapping, "--json", env=cli_env(fake.url))
        after_errors = dict(fake.events)
        whole = run_cli("import", path, *mapping, "--json", env=cli_env(fake.url))
        final = fake.events
    assert first.returncode == 1
    kinds = sorted((r["deadLetter"]["kind"], r["deadLetter"]["line"]) for r in records)
    assert kinds == [("invalid", 2), ("invalid", 5), ("rejected", 4)]
    for r in records:
        assert set(r["deadLetter"]) == {
            "kind",
            "code",
            "status",
            "message",
            "field",
            "file",
            "line",
        }
    rejected = next(r for r in records if r["deadLetter"]["kind"] == "rejected")
    # A derived id is a function of the row's content, which an invalid row lacks: only
    # the row Enso refused carries one (the fixed rows get theirs at the re-import).
    assert rejected["eventId"].startswith("imp_")
    assert all("eventId" not in r for r in records if r is not rejected)
    assert rejected["CustomerEntityId"] == "ent_new"  # the API's shape
    assert rejected["deadLetter"]["code"] == 2002
    # As it is, with the mapping of the first run (the rejected row is in the API's shape,
    # the invalid ones in the input's own columns).
    assert again.returncode == 0, again.stdout + again.stderr
    assert books(again)["delivered"] == 3
    assert {e["value"] for e in after_errors.values()} == {1, 2, 3, 4}
    assert rejected["eventId"] in after_errors  # kept the id it had
    # The whole file again: every row has the id it had; nothing new is billed.
    assert whole.returncode == 0, whole.stderr
    assert final == after_errors
    assert len(final) == 4


# ------------------------------------------------------------- progress and pipes


def test_forced_progress_into_a_pipe_is_plain_lines_without_escape_codes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(api_rows(2000))
    with FakeEnso() as fake:
        runs = [
            run_cli("import", path, "--progress", mode, env=cli_env(fake.url))
            for mode in ("plain", "rich")
        ]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
        assert "delivered 2,000" in proc.stderr  # the last line
        assert "\x1b" not in proc.stderr
        assert "\r" not in proc.stderr
        assert all(line.startswith("rows ") for line in proc.stderr.splitlines())


def test_progress_rich_without_rich_is_a_usage_error_naming_the_install(
    tmp_path: Path,
) -> None:
    shadow = tmp_path / "shadow" / "rich"  # a `rich` that cannot be imported
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named rich')\n")
    path = tmp_path / "p.jsonl"
    path.write_text(api_rows(3))
    with FakeEnso() as fake:
        env = cli_env(fake.url)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(shadow.parent), env.get("PYTHONPATH")) if p
        )
        proc = run_cli("import", path, "--progress", "rich", env=env)
        plain = run_cli("import", path, "--progress", "plain", env=env)
        received = fake.received
    assert proc.returncode == 2
    assert "pip install 'enso-tracker[cli]'" in proc.stderr
    assert plain.returncode == 0, plain.stderr  # only rich needs rich
    assert received == 3


def test_a_closed_stdout_ends_quietly_with_the_imports_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(api_rows(3000) + "not json\n")
    with FakeEnso() as fake:
        for extra in ([], ["--json"]):
            proc = subprocess.Popen(
                [str(SCRIPT), "import", str(path), *extra],
                env=cli_env(fake.url),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stdout is not None
            proc.stdout.close()  # like `| head -0`: the reader is gone before the summary
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 1, err  # still the import's: one invalid row
            assert err == b"", err  # no traceback, no "Exception ignored"
        received, distinct = fake.received, len(fake.events)
    assert (received, distinct) == (6000, 3000)  # both runs delivered everything
