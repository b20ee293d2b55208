"""``enso_tracker.spark`` on a local Spark session (the machine's Java, 2 executor
threads, each task allowed 3 attempts): any partitioning bills every row once with the
CLI's ids, typed timestamps keep their instant, a task that cannot deliver is retried,
and a Python worker killed mid-partition is retried and bills exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enso_tracker.testing import FakeEnso, Fault
from tests.integration.test_cli_import import cli_env, doc_ids, run_cli

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # a JVM: `make test`
API_KEY = "test-api-key"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime on this machine: Spark needs one")
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.upper().endswith("_PROXY")]:
            mp.delenv(name)
        for name in [k for k in os.environ if k.startswith("ENSO_")]:
            mp.delenv(name)
        mp.setenv("ENSO_API_KEY", API_KEY)  # the executors' environment
        mp.setenv("PYSPARK_PYTHON", sys.executable)
        mp.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        # Python workers import this checkout (and this module's functions).
        mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        session = (
            SparkSession.builder.master("local[2,3]")  # 2 threads, 3 attempts per task
            .appName("enso-tracker-test")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.memory", "512m")
            .config("spark.sql.shuffle.partitions", "4")
            # Not UTC, so that a timestamp read back as local time would show.
            .config("spark.sql.session.timeZone", "America/New_York")
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        try:
            yield session
        finally:
            session.stop()


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


def test_any_partitioning_bills_every_row_once_with_the_cli_ids(spark: Any, tmp_path: Path) -> None:
    from enso_tracker.spark import backfill

    rows = usage_rows(2000)
    path = tmp_path / "usage.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeEnso() as fake:
        frame = spark.read.json(str(path)).repartition(5)
        books = backfill(frame, tracker_options={"base_url": fake.url})
        assert sum(b["delivered"] for b in books) == 2000
        assert len(fake.event_ids()) == 2000
        assert fake.duplicates == {}
        assert set(fake.event_ids()) == doc_ids(as_doc(rows))

        backfill(frame.coalesce(1), tracker_options={"base_url": fake.url})
        proc = run_cli("import", path, "--json", env=cli_env(fake.url))
        assert proc.returncode == 0, proc.stderr
        assert len(fake.event_ids()) == 2000  # Spark, again, and the CLI: the same ids
        assert sum(fake.duplicates.values()) == 4000


def test_typed_timestamps_keep_their_instant(spark: Any) -> None:
    from pyspark.sql import functions as F

    from enso_tracker.spark import backfill

    rows: list[dict[str, Any]] = [
        {"customer": f"ent_{i % 3}", "calls": i % 2 + 1, "at": f"2026-07-01T1{i % 4}:30:00Z"}
        for i in range(60)
    ]
    frame = spark.createDataFrame(rows).withColumn("at", F.to_timestamp("at"))
    assert dict(frame.dtypes)["at"] == "timestamp"
    with FakeEnso() as fake:
        books = backfill(
            frame, entity="customer", metric_name="api_calls", value="calls",
            timestamp="at", tracker_options={"base_url": fake.url},
        )  # fmt: skip
        assert sum(b["delivered"] for b in books) == 60
        times = {e["timestamp"] for e in fake.events.values()}
        # The session's zone is New York: the instants are kept, whatever the offset.
        assert times == {f"2026-07-01T{h}:30:00.000Z" for h in (10, 11, 12, 13)}
        assert set(fake.event_ids()) == doc_ids(
            [(r["customer"], "api_calls", r["calls"], r["at"]) for r in rows]
        )


def deliver_then_die_once(marker: str, url: str, events: Any) -> Iterator[dict[str, Any]]:
    """The first partition of 20 or more events delivers half of them, then its Python
    worker dies (SIGKILL: no cleanup); every other run delivers normally."""
    from enso_tracker.spark import deliver_partition

    events = list(events)
    if len(events) >= 20:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            list(deliver_partition(events[: len(events) // 2], base_url=url))
            os.kill(os.getpid(), signal.SIGKILL)
    return deliver_partition(events, base_url=url)


def test_a_worker_killed_mid_partition_is_retried_and_bills_exactly_once(
    spark: Any, tmp_path: Path
) -> None:
    import functools

    from enso_tracker.spark import with_event_ids

    rows = usage_rows(900)
    marker = tmp_path / "killed.pid"
    with FakeEnso() as fake:
        events = with_event_ids(spark.sparkContext.parallelize(rows, 3), num_partitions=3)
        task = functools.partial(deliver_then_die_once, str(marker), fake.url)
        books = events.mapPartitions(task).collect()
        killed = int(marker.read_text())
        assert killed != os.getpid()
        with pytest.raises(ProcessLookupError):
            os.kill(killed, 0)  # that worker process is gone
        assert len(fake.event_ids()) == 900
        assert fake.received > 900  # the killed half was sent again, and absorbed
        assert sum(b["delivered"] for b in books) == 900
        assert set(fake.event_ids()) == doc_ids(as_doc(rows))


def test_a_task_that_cannot_deliver_fails_and_a_retried_task_bills_once(spark: Any) -> None:
    from enso_tracker.spark import backfill

    rows = usage_rows(300)
    with FakeEnso() as fake:
        options = {"base_url": fake.url, "max_retries": 0}  # give up at the first 503
        data = spark.sparkContext.parallelize(rows, 3)
        fake.chaos(p503=1.0)
        with pytest.raises(Exception, match="PartitionNotDelivered"):
            backfill(data, timeout=5.0, tracker_options=options)
        assert fake.event_ids() == []

        fake.chaos()
        fake.script(Fault(status=503), Fault(status=503))  # two attempts fail
        books = backfill(data, timeout=5.0, tracker_options=options)
        assert fake.pending_faults == 0
        assert sum(b["delivered"] for b in books) == 300
        assert len(fake.event_ids()) == 300
        assert fake.duplicates == {}
