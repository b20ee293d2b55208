"""enso-tracker: send usage events to Enso, exactly once, without slowing the caller.

::

    from enso_tracker import Tracker

    tracker = Tracker(api_key="...")
    tracker.track("ent_6CsgzAdRgTlzT_9O", "api_calls", 1)
    tracker.shutdown()

Or through the module-level default tracker::

    import enso_tracker

    enso_tracker.init(api_key="...")
    enso_tracker.track("ent_6CsgzAdRgTlzT_9O", "api_calls", 1)
"""

from ._config import DEFAULT_BASE_URL, Config, OnDrop
from ._default import flush, get_tracker, init, shutdown, stats, track
from ._direct import SendResult, send, send_events
from ._errors import (
    ConfigurationError,
    EnsoError,
    InvalidEventError,
    InvalidEventTypeError,
    NotInitializedError,
)
from ._http.sender import Answered, Outcome, Rejected, Retry, Sender, TooLarge, Unauthorized
from ._model import DeadLetter, DropKind, DropReason, Event, SpoolStatus, Stats
from ._receipts_query import EventReceipt, Receipts, ReceiptTotal
from ._spool.admin import Spool
from ._tracker import Tracker
from ._version import __version__
from ._wire import BatchAnswer, FailedRecord

__all__ = [
    "DEFAULT_BASE_URL",
    "Answered",
    "BatchAnswer",
    "Config",
    "ConfigurationError",
    "DeadLetter",
    "DropKind",
    "DropReason",
    "EnsoError",
    "Event",
    "EventReceipt",
    "FailedRecord",
    "InvalidEventError",
    "InvalidEventTypeError",
    "NotInitializedError",
    "OnDrop",
    "Outcome",
    "ReceiptTotal",
    "Receipts",
    "Rejected",
    "Retry",
    "SendResult",
    "Sender",
    "Spool",
    "SpoolStatus",
    "Stats",
    "TooLarge",
    "Tracker",
    "Unauthorized",
    "__version__",
    "flush",
    "get_tracker",
    "init",
    "send",
    "send_events",
    "shutdown",
    "stats",
    "track",
]
