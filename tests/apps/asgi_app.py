"""A plain ASGI app that tracks one event per request and answers its eventId as JSON,
for tests/system/test_frameworks_asgi.py. It has no lifespan handling at all: no shutdown hook
closes the tracker, so only the tracker's own exit handling can deliver the tail.

Environment: ENSO_BASE_URL; ENSO_TEST_INTEGRATIONS ("0": integrations=False).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from enso_tracker import Tracker

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

tracker = Tracker(
    api_key="test-api-key",
    base_url=os.environ["ENSO_BASE_URL"],
    flush_interval=60.0,  # nothing leaves before the process ends
    integrations=os.environ.get("ENSO_TEST_INTEGRATIONS", "1") != "0",
)


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return  # lifespan: unsupported, as in an app that never thought of it
    body = json.dumps({"id": tracker.track("ent", "request", 1), "pid": os.getpid()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
