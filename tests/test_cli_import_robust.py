"""`enso-tracker import` on the inputs users really have (issue #17, findings 4-6 and the
progress/pipe behaviour): an application's spool in the environment, damaged and hostile
files, real exports. Run as a user would: the console script in a subprocess, against a
FakeEnso on 127.0.0.1 in this process."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from enso_tracker import Spool, Tracker
from enso_tracker.testing import FakeEnso

from .conftest import accepted
from .test_cli_import import API_KEY, books, cli_env, run_cli

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
