"""An RQ settings module (``rq worker -c tests.apps.rq_settings``) that imports the jobs'
module, so the tracker is made in the worker's main process, before any horse forks."""

from __future__ import annotations

from . import rq_jobs

__all__ = ["rq_jobs"]
