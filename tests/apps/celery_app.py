"""A Celery app whose tasks track, for tests/system/test_frameworks_celery.py.

The worker imports this module in its main process, so the module-level tracker is
made there and forked into every prefork child (the common layout). The main process
tracks one event of its own at import, which must be delivered once, by it alone.
``python -m tests.apps.celery_app N`` queues N tasks (without making a tracker).

Environment: ENSO_TEST_DIR (broker folder and the record of returned ids),
ENSO_BASE_URL (a tracker is made only when set), ENSO_TEST_INTEGRATIONS ("0": off).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from celery import Celery

from enso_tracker import Tracker

DIR = Path(os.environ["ENSO_TEST_DIR"])
QUEUE = DIR / "queue"
QUEUE.mkdir(parents=True, exist_ok=True)
RECORD = DIR / "ids.jsonl"

app = Celery("enso_frameworks_test", broker="filesystem://")
app.conf.update(
    broker_transport_options={
        "data_folder_in": str(QUEUE),
        "data_folder_out": str(QUEUE),
        "control_folder": str(DIR / "control"),  # kombu's default is ./control
        "polling_interval": 0.05,
    },
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def _record(role: str, event_id: str | None) -> None:
    line = json.dumps({"role": role, "id": event_id, "pid": os.getpid()}) + "\n"
    with RECORD.open("a") as f:  # one short O_APPEND write: lines never interleave
        f.write(line)


tracker: Tracker | None = None
if os.environ.get("ENSO_BASE_URL"):
    tracker = Tracker(
        api_key="test-api-key",
        base_url=os.environ["ENSO_BASE_URL"],
        flush_interval=60.0,  # nothing leaves before its process ends
        integrations=os.environ.get("ENSO_TEST_INTEGRATIONS", "1") != "0",
    )
    _record("master", tracker.track("ent", "master", 1))


@app.task(name="work")  # type: ignore[untyped-decorator]
def work(i: int) -> None:
    assert tracker is not None
    _record("task", tracker.track("ent", "task", i))


if __name__ == "__main__":
    for i in range(int(sys.argv[1])):
        work.delay(i)
