"""RQ jobs that track, for tests/system/test_frameworks_rq.py.

The tracker is made at import, wherever this module is first imported: in each work
horse when RQ resolves the job's function (the usual layout: the worker's main process
never imports it), or in the worker's main process when its settings module
(:mod:`tests.apps.rq_settings`, ``rq worker -c``) imports it before any horse forks.
Every tracked id is recorded in ENSO_TEST_DIR/ids.jsonl, every import in
imports.jsonl, every dropped event in drops.jsonl (``on_drop``).

Environment: ENSO_BASE_URL, ENSO_TEST_DIR, ENSO_TEST_INTEGRATIONS ("0": off).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enso_tracker import DropReason, Event, Tracker

DIR = Path(os.environ["ENSO_TEST_DIR"])


def _append(name: str, record: dict[str, Any]) -> None:
    with (DIR / name).open("a") as f:  # one short O_APPEND write: lines never interleave
        f.write(json.dumps(record) + "\n")


def _on_drop(events: Sequence[Event], reason: DropReason) -> None:
    for event in events:
        _append("drops.jsonl", {"id": event.event_id, "kind": reason.kind, "pid": os.getpid()})


tracker = Tracker(
    api_key="test-api-key",
    base_url=os.environ["ENSO_BASE_URL"],
    flush_interval=60.0,  # nothing leaves before its process ends
    on_drop=_on_drop,
    integrations=os.environ.get("ENSO_TEST_INTEGRATIONS", "1") != "0",
)
_append("imports.jsonl", {"pid": os.getpid()})


def work(i: int) -> str | None:
    """Track one event; every odd job then fails (RQ's failure path ends the horse too)."""
    event_id = tracker.track("ent", "job", 1, event_id=f"job-{i}")
    _append("ids.jsonl", {"id": event_id, "pid": os.getpid()})
    if i % 2:
        raise RuntimeError(f"job {i} failed after tracking")
    return event_id
