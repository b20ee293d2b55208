"""RQ's worker classes for tests/system/test_frameworks_rq.py, with one change: the
thread that polls the worker's command channel wakes every 0.5 s instead of every 60 s.

RQ starts that thread with ``PubSub.run_in_thread(sleep_time=60)`` and a burst worker
joins it when it quits, so a worker could take up to a minute to exit after its last
job (the suite measured ~60 s for two of the four RQ tests). Nothing the tests check
depends on it: jobs, forks and horses are RQ's own. Imported by ``rq worker -w`` in the
worker's main process only (never the jobs' module, so where the tracker is made does
not change).
"""

from __future__ import annotations

from typing import Any

import redis.client
from rq.worker import SpawnWorker, Worker

__all__ = ["SpawnWorker", "Worker"]

_run_in_thread = redis.client.PubSub.run_in_thread


def _quick_run_in_thread(
    self: redis.client.PubSub, sleep_time: float = 0.0, *args: Any, **kwargs: Any
) -> Any:
    return _run_in_thread(self, min(sleep_time, 0.5), *args, **kwargs)


# setattr: a patch of a library class, typed or not depending on what is installed
setattr(redis.client.PubSub, "run_in_thread", _quick_run_in_thread)  # noqa: B010
