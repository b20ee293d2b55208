"""Recipe: importing usage files with Dask, each partition through its own tracker.

Beyond one machine, let Dask spread the files and give every partition its own
:class:`~enso_tracker.Tracker`. Ids are deterministic, with the same formula as
``enso-tracker import`` (``"imp_" + sha256(f"{source}\\n{line}\\n" + line bytes)[:32]``,
``source`` being the file name without directory and ``.gz``), so a partition that Dask
retries, a job run twice, or a file imported once by Dask and once by the CLI, bills
nothing twice: Enso deduplicates by eventId. Credentials come from each worker's
environment (``ENSO_API_KEY``, or ``ENSO_CLIENT_KEY`` + ``ENSO_CLIENT_SECRET``)::

    import dask.bag as db
    from recipe_dask_import import deliver_partition

    # blocksize=None: one partition per file, so line numbers are exact.
    bag = db.read_text(["s3://bucket/usage/2026-04-01.jsonl.gz", ...],
                       include_path=True, blocksize=None)
    books = bag.map_partitions(deliver_partition).compute()

A partition that cannot deliver everything raises, so Dask reports it (or retries it);
running it again is safe. Rows are JSONL in the API's own shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from enso_tracker import DropReason, Event, InvalidEventError, Tracker


def event_id(source: str, line: int, record: bytes) -> str:
    """The CLI's deterministic eventId (see ``enso-tracker import --help``)."""
    return "imp_" + hashlib.sha256(f"{source}\n{line}\n".encode() + record).hexdigest()[:32]


def deliver_partition(
    lines: Iterable[tuple[str, str]], base_url: str | None = None, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Deliver one partition of ``read_text(..., include_path=True, blocksize=None)``."""
    drops: list[tuple[Event, DropReason]] = []
    lock = threading.Lock()

    def on_drop(events: Sequence[Event], reason: DropReason) -> None:
        with lock:
            drops.extend((e, reason) for e in events)

    options: dict[str, Any] = {"base_url": base_url} if base_url else {}
    tracker = Tracker.from_env(
        on_drop=on_drop,
        queue_full_policy="block",  # back-pressure instead of refusing rows
        block_timeout=timeout,
        max_batch_size=1000,
        **options,
    )
    books: dict[str, Any] = {"source": None, "rows": 0, "invalid": [], "pid": os.getpid()}
    try:
        for line, (text, path) in enumerate(lines, 1):
            raw = text.encode().strip()  # bytes.strip(), exactly as the CLI does
            if not raw:
                continue
            books["source"] = source = path.rsplit("/", 1)[-1].removesuffix(".gz")
            books["rows"] += 1
            try:
                row = json.loads(raw)
                tracker.track(
                    row["CustomerEntityId"],
                    row["metric"],
                    row["value"],
                    timestamp=row["timestamp"],
                    metadata=row.get("metadata"),
                    event_id=row.get("eventId") or event_id(source, line, raw),
                    job_id=row.get("JobId") or row.get("jobId"),
                )
            except (ValueError, KeyError, TypeError, InvalidEventError) as exc:
                books["invalid"].append({"line": line, "reason": f"{type(exc).__name__}: {exc}"})
        delivered_all = tracker.flush(timeout)
    finally:
        tracker.shutdown(5.0)
    stats = tracker.stats()
    books.update(delivered=stats.delivered, dropped=dict(stats.dropped))
    if not delivered_all or stats.dropped.get("shutdown") or stats.dropped.get("retries_exhausted"):
        # Not everything is settled: fail the task. Re-running it is safe (same ids).
        raise RuntimeError(f"partition {books['source']} not fully delivered: {books}")
    books["rejected"] = [{"eventId": e.event_id, "reason": str(r)} for e, r in drops]
    return [books]
