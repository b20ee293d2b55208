"""A plain gevent or eventlet program (no server framework around it) that tracks, for
tests/system/test_frameworks_green.py: ``python -m tests.apps.green_app LIBRARY MODE``.

The library's monkey-patching comes first, as its documentation asks. MODE:

* ``idle``: tracks ``ENSO_TEST_EVENTS`` events, then sleeps in a loop;
* ``busy``: tracks without end, yielding to other greenlets for 1 ms after every event, and
  records its progress every 100 events;
* ``wsgi``: the library's own WSGI server on ``ENSO_TEST_PORT``, one event per request.

Events carry the ids ``<MODE>-<n>`` (n counting from 0). Records in ENSO_TEST_DIR:
``progress.jsonl`` (``{"n": events tracked so far}``), ``drops.jsonl`` (``on_drop``).
Environment: ENSO_BASE_URL, ENSO_TEST_DIR, ENSO_TEST_INTEGRATIONS ("0": the tracker's
SIGTERM handler is not installed, the control).
"""

from __future__ import annotations

import sys

LIBRARY, MODE = sys.argv[1], sys.argv[2]
if LIBRARY == "gevent":
    from gevent import monkey

    monkey.patch_all()
else:
    import eventlet

    eventlet.monkey_patch()

import json  # noqa: E402  (after the patching, as both libraries ask)
import os  # noqa: E402
from collections.abc import Callable, Iterable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from enso_tracker import DropReason, Event, Tracker  # noqa: E402

DIR = Path(os.environ["ENSO_TEST_DIR"])


def _append(name: str, record: dict[str, Any]) -> None:
    with (DIR / name).open("a") as f:  # one short O_APPEND write: lines never interleave
        f.write(json.dumps(record) + "\n")


def _on_drop(events: Sequence[Event], reason: DropReason) -> None:
    for event in events:
        _append("drops.jsonl", {"id": event.event_id, "kind": reason.kind})


def _sleep(seconds: float) -> None:
    if LIBRARY == "gevent":
        import gevent

        gevent.sleep(seconds)
    else:
        eventlet.sleep(seconds)


tracker = Tracker(
    api_key="test-api-key",
    base_url=os.environ["ENSO_BASE_URL"],
    flush_interval=60.0,  # nothing leaves before the process ends, unless a batch fills
    on_drop=_on_drop,
    handle_sigterm=os.environ.get("ENSO_TEST_INTEGRATIONS", "1") != "0",
)
count = 0


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    global count
    event_id = tracker.track("ent", "request", 1, event_id=f"{MODE}-{count}")
    count += 1
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"id": event_id, "pid": os.getpid()}).encode()]


if MODE == "idle":
    n = int(os.environ.get("ENSO_TEST_EVENTS", "300"))
    for i in range(n):
        tracker.track("ent", "idle", 1, event_id=f"{MODE}-{i}")
    _append("progress.jsonl", {"n": n})
    while True:
        _sleep(1.0)
elif MODE == "busy":
    while True:
        tracker.track("ent", "busy", 1, event_id=f"{MODE}-{count}")
        count += 1
        if count % 100 == 0:
            _append("progress.jsonl", {"n": count})
        _sleep(0.001)  # a loaded program: every event, a short wait (I/O, a timer)
elif LIBRARY == "gevent":
    from gevent.pywsgi import WSGIServer

    WSGIServer(("127.0.0.1", int(os.environ["ENSO_TEST_PORT"])), app, log=None).serve_forever()
else:
    from eventlet import wsgi

    listener = eventlet.listen(("127.0.0.1", int(os.environ["ENSO_TEST_PORT"])))
    wsgi.server(listener, app, log_output=False)
