"""uvicorn: a server that re-raises SIGTERM after its graceful stop delivers the tail.

uvicorn swaps in its own SIGTERM handler while it serves, and afterwards restores the
handler it found and raises the signal again. A tracker made before that (``uvicorn
app:app`` imports the app before serving) installs the tracker's handler first, which
uvicorn restores and so runs: nothing to do. A tracker made while uvicorn serves
(``--workers N`` imports the app inside each worker's server, as does
``uvicorn.Server(config).serve()`` with an import string, or a tracker made lazily in a
request) finds uvicorn's handler in place, so the tracker's is never installed and the
re-raised SIGTERM kills the process with the default action, losing the queue.

For that server only (found through the SIGTERM handler in place, its bound
``handle_exit``), the live trackers are shut down once its ``shutdown()`` has finished
(connections closed, lifespan shutdown run) when it stopped because of SIGTERM, on a
helper thread so the loop is not blocked. A server that stops for any other reason
(SIGINT, ``should_exit`` set by a test) leaves the trackers alone.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from typing import Any

from .. import _lifecycle

__all__ = ["enable"]

_MARK = "_enso_tracker_hook"


def enable() -> bool:
    """Hook the server whose handler holds SIGTERM, if any; False while there is none
    (a later tracker, made while a server serves, tries again)."""
    server_module: Any = sys.modules.get("uvicorn.server")
    if server_module is None or threading.current_thread() is not threading.main_thread():
        return False
    handler: Any = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    if not isinstance(server, server_module.Server) or getattr(handler, "__name__", "") != (
        "handle_exit"
    ):
        return False
    original = server.shutdown
    if getattr(original, _MARK, False):
        return True

    async def shutdown(*args: Any, **kwargs: Any) -> None:
        try:
            await original(*args, **kwargs)
        finally:
            if signal.SIGTERM in getattr(server, "_captured_signals", ()):
                await asyncio.get_running_loop().run_in_executor(None, _lifecycle.shutdown_all)

    setattr(shutdown, _MARK, True)
    server.shutdown = shutdown  # this server only; the class is left alone
    return True
