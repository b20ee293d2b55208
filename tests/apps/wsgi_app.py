"""A WSGI app that tracks one event per request and answers its eventId as JSON, for
tests/system/test_frameworks_gunicorn.py and tests/system/test_frameworks_uwsgi.py.

The tracker is made at import, wherever the server imports the app: in the master
(``--preload``, uWSGI without ``lazy-apps``) or in each worker. The importing process
tracks one event of its own at import; every id is recorded in ENSO_TEST_DIR/ids.jsonl
and every dropped event in ENSO_TEST_DIR/drops.jsonl (written by ``on_drop``).
``/quiet`` answers without tracking; ``/flush`` flushes and answers ``stats().accepted``.

Environment: ENSO_BASE_URL, ENSO_TEST_DIR, ENSO_TEST_SHUTDOWN_TIMEOUT (seconds),
ENSO_TEST_INTEGRATIONS ("0": off), ENSO_TEST_FLUSH_AT_IMPORT ("1": flush after the
import event), ENSO_TEST_TRACKING_WORKER (under uWSGI, only that worker id tracks; the
others answer as ``/quiet``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
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
    shutdown_timeout=float(os.environ.get("ENSO_TEST_SHUTDOWN_TIMEOUT", "5")),
    on_drop=_on_drop,
    integrations=os.environ.get("ENSO_TEST_INTEGRATIONS", "1") != "0",
)
_append(
    "ids.jsonl", {"role": "import", "id": tracker.track("ent", "import", 1), "pid": os.getpid()}
)
if os.environ.get("ENSO_TEST_FLUSH_AT_IMPORT") == "1":
    # The recipe for a uWSGI master, which runs no exit hook at all: deliver at import.
    assert tracker.flush(5.0)


def _worker_id() -> int:
    uwsgi: Any = sys.modules.get("uwsgi")  # present only under uWSGI
    return int(uwsgi.worker_id()) if uwsgi is not None else 0


_TRACKING_WORKER = int(os.environ.get("ENSO_TEST_TRACKING_WORKER", "0"))


def app(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    answer: dict[str, Any] = {"pid": os.getpid(), "worker": _worker_id()}
    path = environ.get("PATH_INFO")
    if path == "/flush":  # a worker's flush() waits for its own events only
        answer["flushed"] = tracker.flush(5.0)
        answer["accepted"] = tracker.stats().accepted
    elif path != "/quiet" and _TRACKING_WORKER in (0, answer["worker"]):
        answer["id"] = tracker.track("ent", "req", 1)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(answer).encode()]
