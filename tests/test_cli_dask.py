"""The Dask recipe (tests/recipe_dask_import.py) on the local multiprocessing scheduler:
every partition delivers through its own tracker, with the CLI's deterministic ids."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dask.bag as db
import pytest

from enso_tracker.testing import FakeEnso
from tests.recipe_dask_import import deliver_partition

pytestmark = pytest.mark.slow  # subprocesses or real servers: `make test`, not `make check`

ROWS = 1500


def _write(path: Path, start: int) -> None:
    text = "".join(
        json.dumps(
            {
                "CustomerEntityId": f"ent_{i % 13}",
                "metric": "api_calls",
                "value": 1,
                "timestamp": "2026-04-03T00:00:00Z",
            }
        )
        + "\n"
        for i in range(start, start + ROWS)
    )
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def test_dask_partitions_deliver_once_and_a_rerun_bills_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl"]
    for n, path in enumerate(files):
        _write(path, n * ROWS)
    for name in [k for k in os.environ if k.upper().endswith("_PROXY")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ENSO_API_KEY", "test-api-key")  # the workers' environment
    with FakeEnso() as fake:

        def run(paths: list[Path]) -> list[dict[str, Any]]:
            read_text: Any = db.read_text  # untyped in dask
            bag = read_text([str(p) for p in paths], include_path=True, blocksize=None)
            result: list[dict[str, Any]] = bag.map_partitions(
                deliver_partition, base_url=fake.url
            ).compute(scheduler="processes", num_workers=2)
            return result

        books = run(files)
        assert sorted(b["source"] for b in books) == ["a.jsonl", "b.jsonl", "c.jsonl"]
        assert [b["delivered"] for b in books] == [ROWS] * 3
        assert os.getpid() not in {b["pid"] for b in books}  # really other processes
        assert len(fake.event_ids()) == 3 * ROWS  # identical rows stayed distinct
        assert fake.duplicates == {}

        rerun = run([files[1]])  # one partition again, as a retried task would
        assert rerun[0]["delivered"] == ROWS
        assert len(fake.event_ids()) == 3 * ROWS
        assert sum(fake.duplicates.values()) == ROWS

        # The CLI derives the very same ids: importing a file Dask delivered adds nothing.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENSO_")}
        env.update(ENSO_API_KEY="test-api-key", ENSO_BASE_URL=fake.url)
        script = Path(sys.executable).with_name("enso-tracker")
        proc = subprocess.run(
            [str(script), "import", str(files[0])], env=env, capture_output=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert len(fake.event_ids()) == 3 * ROWS
        assert sum(fake.duplicates.values()) == 2 * ROWS
