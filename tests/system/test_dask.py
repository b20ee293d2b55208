"""``enso_tracker.dask`` on a real ``distributed`` LocalCluster (2 worker processes):
bags and dataframes, any blocksize, engine retries and a worker killed mid-partition,
each billing every row exactly once, with the ids ``enso-tracker import`` derives."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.bag as db
import dask.dataframe as dd
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from enso_tracker.dask import (
    Columns,
    PartitionNotDelivered,
    backfill,
    deliver_partition,
    with_event_ids,
)
from enso_tracker.testing import FakeEnso, Fault
from tests.integration.test_cli_import import cli_env, doc_ids, run_cli

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]  # a real cluster: `make test`
API_KEY = "test-api-key"


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """Two single-threaded worker processes, with credentials in their environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.upper().endswith("_PROXY")]:
            mp.delenv(name)
        for name in [k for k in os.environ if k.startswith("ENSO_")]:
            mp.delenv(name)
        mp.setenv("ENSO_API_KEY", API_KEY)
        cluster_class: Any = LocalCluster  # distributed is untyped
        client_class: Any = Client
        with (
            cluster_class(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            client_class(cluster) as dask_client,
        ):
            yield dask_client


def usage_rows(n: int) -> list[dict[str, Any]]:
    """Raw-export-like rows: the same customer, metric, value and minute repeat."""
    return [
        {
            "CustomerEntityId": f"ent_{i % 7}",
            "metric": "api_calls",
            "value": i % 2 + 1,
            "timestamp": f"2026-04-01T00:0{i % 3}:00Z",
        }
        for i in range(n)
    ]


def as_doc(rows: list[dict[str, Any]]) -> list[tuple[str, str, float, str]]:
    return [(r["CustomerEntityId"], r["metric"], r["value"], r["timestamp"]) for r in rows]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def jsonl_bag(path: Path, blocksize: int | None) -> Any:
    read_text: Any = db.read_text  # dask is untyped
    return read_text(str(path), blocksize=blocksize).map(json.loads)


def test_finding_2_any_blocksize_bills_every_row_once_with_the_cli_ids(
    client: Client, tmp_path: Path
) -> None:
    """The recipe under-billed by 81 % with a blocksize (line numbers restarted per
    block). Now any blocksize gives the CLI's ids: every row billed, once."""
    rows = usage_rows(3000)
    path = tmp_path / "usage.jsonl"
    write_jsonl(path, rows)
    with FakeEnso() as fake:
        bag = jsonl_bag(path, blocksize=20_000)
        assert bag.npartitions >= 5
        run: Any = backfill(bag, tracker_options={"base_url": fake.url})
        books = run.compute(retries=2)
        assert sum(b["delivered"] for b in books) == 3000
        assert len(fake.event_ids()) == 3000  # 42 distinct contents, 3000 events
        assert fake.duplicates == {}
        assert set(fake.event_ids()) == doc_ids(as_doc(rows))

        # Another blocksize, and the CLI: the same ids, so nothing new is billed.
        again: Any = backfill(jsonl_bag(path, None), tracker_options={"base_url": fake.url})
        again.compute(retries=2)
        proc = run_cli("import", path, "--json", env=cli_env(fake.url))
        assert proc.returncode == 0, proc.stderr
        assert len(fake.event_ids()) == 3000
        assert sum(fake.duplicates.values()) == 6000


def test_a_dataframe_with_typed_columns_bills_what_the_cli_bills(
    client: Client, tmp_path: Path
) -> None:
    n = 600
    frame = pd.DataFrame(
        {
            "customer": [f"ent_{i % 5}" for i in range(n)],
            "calls": [i % 3 + 1 for i in range(n)],
            "ts": pd.to_datetime([f"2026-04-01T0{i % 2}:00:00.250Z" for i in range(n)]),
            "region": ["eu" if i % 4 else "us" for i in range(n)],
        }
    )
    columns = Columns(
        entity="customer", metric_name="api_calls", value="calls", timestamp="ts",
        metadata=["region"],
    )  # fmt: skip
    with FakeEnso() as fake:
        from_pandas: Any = dd.from_pandas
        frames = from_pandas(frame, npartitions=4)
        run: Any = backfill(frames, columns, tracker_options={"base_url": fake.url})
        books = run.compute()
        assert sum(b["delivered"] for b in books) == n
        events = fake.events
        assert len(events) == n
        assert sum(e["value"] for e in events.values()) == sum(frame["calls"])
        assert {e["timestamp"] for e in events.values()} == {
            "2026-04-01T00:00:00.250Z",
            "2026-04-01T01:00:00.250Z",
        }
        assert {e["metadata"]["region"] for e in events.values()} == {"eu", "us"}

        csv = tmp_path / "usage.csv"
        frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(csv, index=False)
        proc = run_cli(
            "import", csv, "--entity", "customer", "--metric-name", "api_calls",
            "--value", "calls", "--timestamp", "ts", "--metadata", "region", "--json",
            env=cli_env(fake.url),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert len(fake.event_ids()) == n  # the CLI derived the very same ids
        assert sum(fake.duplicates.values()) == n


def test_a_partition_that_cannot_deliver_raises_and_a_retry_bills_once(
    client: Client, tmp_path: Path
) -> None:
    rows = usage_rows(400)
    from_sequence: Any = db.from_sequence
    with FakeEnso() as fake:
        options = {"base_url": fake.url, "max_retries": 0}  # give up at the first 503
        bag = from_sequence(rows, npartitions=4)
        fake.chaos(p503=1.0)
        failing: Any = backfill(bag, timeout=5.0, tracker_options=options)
        with pytest.raises(PartitionNotDelivered, match="not delivered"):
            failing.compute()
        assert fake.event_ids() == []

        fake.chaos()
        fake.script(*[Fault(status=503)] * 3)  # the first three batches fail
        # Not the failed graph again (timeout differs): the scheduler may still hold the
        # failed result under the same keys.
        retried: Any = backfill(bag, timeout=6.0, tracker_options=options)
        books = retried.compute(retries=3)
        assert fake.pending_faults == 0  # the faults were met, and retried past
        assert sum(b["delivered"] for b in books) == 400
        assert len(fake.event_ids()) == 400
        assert fake.duplicates == {}


def deliver_then_die_once(events: Any, marker: str, **options: Any) -> list[dict[str, Any]]:
    """The first partition of 20 or more events delivers half of them, then its worker
    process dies (SIGKILL: no cleanup); every other run delivers normally."""
    events = list(events)
    if len(events) >= 20:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            deliver_partition(events[: len(events) // 2], **options)
            os.kill(os.getpid(), signal.SIGKILL)
    return deliver_partition(events, **options)


def test_a_worker_killed_mid_partition_is_retried_and_bills_exactly_once(
    client: Client, tmp_path: Path
) -> None:
    rows = usage_rows(1200)
    marker = tmp_path / "killed.pid"
    with FakeEnso() as fake:
        from_sequence: Any = db.from_sequence
        events: Any = with_event_ids(from_sequence(rows, npartitions=3))
        books = events.map_partitions(
            deliver_then_die_once, str(marker), base_url=fake.url
        ).compute()
        killed = int(marker.read_text())
        assert killed != os.getpid()
        with pytest.raises(ProcessLookupError):
            os.kill(killed, 0)  # that worker process is gone
        assert len(fake.event_ids()) == 1200  # every row, once
        assert sum(e["value"] for e in fake.events.values()) == sum(r["value"] for r in rows)
        assert fake.received > 1200  # the killed half was sent again, and absorbed
        assert sum(b["delivered"] for b in books) == 1200
        assert set(fake.event_ids()) == doc_ids(as_doc(rows))
