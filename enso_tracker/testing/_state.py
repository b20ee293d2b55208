"""The state of :class:`~enso_tracker.testing.FakeEnso`, declared once for the base
classes that read and write it (``_serving.Serving``, the request path;
``_inspection.Inspection``, what a test reads). ``FakeEnso.__init__`` (``_enso``) sets
every attribute. What requests change (events, duplicates, requests, counters, tokens,
the fault plan) is read and written under its one re-entrant lock, ``_lock``.
"""

from __future__ import annotations

import threading
from typing import Any

from ._api import IssuedToken
from ._faults import FaultPlan
from ._recorded import RecordedRequest

__all__ = ["FakeState"]


class FakeState:
    """Declarations only: no state, no behaviour."""

    accept_gzip: bool
    max_body_bytes: int | None
    _api_keys: tuple[str, ...]
    _secret: bytes
    _lock: threading.RLock
    _cond: threading.Condition
    _plan: FaultPlan
    _response_shape: Any
    _known_entities: frozenset[str] | None
    _token_lifetime: float
    _client_credentials: dict[str, str]
    _events: dict[str, dict[str, Any]]
    _duplicates: dict[str, int]
    _received: int
    _requests: list[RecordedRequest]
    _login_count: int
    _in_flight: int
    _tokens: dict[str, IssuedToken]
