"""Drops are decoded for ``on_drop`` by the Reporter, outside the lock, and only when a
hook is set: the ledger hands over the ``Pending``s as it held them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from enso_tracker import DropReason, Event
from enso_tracker._record import Pending, QueuedEvent, pending_of, spooled
from enso_tracker._reporting import Reporter
from enso_tracker._wire import EventEncoder

SECOND_NS = 1_764_000_000 * 10**9
REASON = DropReason(kind="rejected", message="Customer entity not found", status=404, code=2002)


def _encoded(seq: int, event_id: str | None, metadata: bytes | None) -> Pending:
    """As the sender keeps it: its metadata only in the body (``_record.pending_of``)."""
    item: QueuedEvent = (seq, event_id, "cust_1", "api_calls", 3, SECOND_NS, metadata, "job", 0)
    body = EventEncoder().encode(
        event_id or f"pre{seq:x}", "cust_1", "api_calls", 3, SECOND_NS, metadata, "job"
    )
    return pending_of(item, bytes(body))


def test_metadata_kept_only_in_the_body_and_generated_ids_are_rebuilt_for_the_hook() -> None:
    seen: list[tuple[Sequence[Event], DropReason]] = []
    reporter = Reporter(lambda events, reason: seen.append((events, reason)), "pre")
    in_body = _encoded(7, None, b'{"plan":"pro"}')
    plain = _encoded(8, "given-id", None)
    reporter.report([([in_body, plain], REASON)])
    [(events, reason)] = seen
    assert reason is REASON
    assert [(e.event_id, e.entity, e.metric, e.value, e.metadata, e.job_id) for e in events] == [
        ("pre0x7", "cust_1", "api_calls", 3, {"plan": "pro"}, "job"),
        ("given-id", "cust_1", "api_calls", 3, None, "job"),
    ]
    assert events[0].timestamp == "2025-11-24T16:00:00.000Z"


def test_a_spooled_event_is_read_back_whole_from_its_body() -> None:
    seen: list[Sequence[Event]] = []
    reporter = Reporter(lambda events, reason: seen.append(events), "pre")
    [adopted] = spooled([_encoded(9, "spooled-id", b'{"a":1}').body], [9], None)
    assert adopted.item is None  # as adopted from a spool file: its body only
    reporter.report([([adopted], REASON)])
    [[event]] = seen
    assert (event.event_id, event.entity, event.value, event.metadata, event.job_id) == (
        "spooled-id",
        "cust_1",
        3,
        {"a": 1},
        "job",
    )


def test_without_a_hook_nothing_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: Any) -> Any:
        raise AssertionError("decoded without an on_drop hook")

    monkeypatch.setattr("enso_tracker._record.metadata_of", must_not_run)
    monkeypatch.setattr("enso_tracker._record.event_of", must_not_run)
    reporter = Reporter(None, "pre")
    in_body = _encoded(1, None, b'{"x":1}')
    [adopted] = spooled([in_body.body], [1], None)
    reporter.report([([in_body, adopted], REASON)])
    assert reporter.hook_errors.count == 0


def test_hand_over_tells_the_ledger_once_the_drops_reached_the_hook_even_if_it_raised() -> None:
    handed: list[int] = []

    def interrupted(events: Sequence[Event], reason: DropReason) -> None:
        raise KeyboardInterrupt  # not an Exception: report() lets it through

    reporter = Reporter(interrupted, "pre")
    with pytest.raises(KeyboardInterrupt):
        reporter.hand_over([([_encoded(1, None, None)], REASON)], handed.append)
    assert handed == [1]  # a flush() waiting on these drops is released all the same
    reporter.hand_over([], handed.append)
    assert handed == [1]  # nothing reported: nothing handed over
