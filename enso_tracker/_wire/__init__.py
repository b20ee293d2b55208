"""The wire format of ``POST /events/batch``, both halves (``docs/wire-contract.md``).

* ``codec``: request bodies, encoded (``EventEncoder``, ``join_batch``) and decoded
  (``split_batch``, ``event_of``, ``metadata_of``, ``body_event_id``): a wire field is
  added or renamed here (and in ``_model``, ``_validate``, ``_record`` and the fake).
* ``response``: Enso's answers, parsed (``parse_batch_answer``, ``parse_error_message``)
  and accounted (``reconcile``: which events an answer vouches for).

Bounded reading of an answer off the socket is ``_http.answer``; this package sees bytes.
"""

from .codec import (
    BODY_OVERHEAD,
    EventEncoder,
    WireEvent,
    body_event_id,
    event_of,
    join_batch,
    metadata_of,
    split_batch,
)
from .response import (
    BatchAnswer,
    FailedRecord,
    Verdict,
    parse_batch_answer,
    parse_error_message,
    printable,
    reconcile,
)

__all__ = [
    "BODY_OVERHEAD",
    "BatchAnswer",
    "EventEncoder",
    "FailedRecord",
    "Verdict",
    "WireEvent",
    "body_event_id",
    "event_of",
    "join_batch",
    "metadata_of",
    "parse_batch_answer",
    "parse_error_message",
    "printable",
    "reconcile",
    "split_batch",
]
