"""A program that runs as PID 1 (``unshare --pid --fork --mount-proc``, as in a container
without an init), for tests/system/test_frameworks_pid1.py: it tracks ``ENSO_TEST_EVENTS``
events with ids ``pid1-<n>``, records ``{"pid": 1, "outer": ...}`` in
ENSO_TEST_DIR/ready.jsonl, then sleeps until it is stopped.

Environment: ENSO_BASE_URL, ENSO_TEST_DIR, ENSO_TEST_EVENTS, ENSO_TEST_INTEGRATIONS
("0": the tracker's SIGTERM handler is not installed, the control).
"""

from __future__ import annotations

import json
import os
import time
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
        _append("drops.jsonl", {"id": event.event_id, "kind": reason.kind})


tracker = Tracker(
    api_key="test-api-key",
    base_url=os.environ["ENSO_BASE_URL"],
    flush_interval=60.0,  # nothing leaves before the process ends
    on_drop=_on_drop,
    handle_sigterm=os.environ.get("ENSO_TEST_INTEGRATIONS", "1") != "0",
)
for i in range(int(os.environ["ENSO_TEST_EVENTS"])):
    tracker.track("ent", "pid1", 1, event_id=f"pid1-{i}")
_append("ready.jsonl", {"pid": os.getpid()})
while True:
    time.sleep(0.5)
