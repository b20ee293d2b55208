"""A request still running when ``shutdown()`` reaches its deadline: the ledger closes
and drops its events as ``shutdown`` (they may still reach Enso; resending them is safe).
Its outcome, when it comes back, must then change nothing: applied, it would count the
events twice (delivered on top of dropped, or put back in line after the books closed)
and leave bytes counted that nothing holds.

Driven on the ledger as the sender drives it (no thread or socket), with the audit of
the books after each step.
"""

from __future__ import annotations

import pytest

from enso_tracker import Retry
from enso_tracker._ledger import State
from enso_tracker._log import DeferredLog, ErrorCounter
from enso_tracker._record import SEQ, Pending, held
from enso_tracker._reporting import Reports
from tests.unit.audit import audit
from tests.unit.test_ledger import accept, answer, ledger, take


@pytest.mark.parametrize("outcome", [answer(3), Retry("HTTP 503", 503)], ids=["2xx", "503"])
def test_the_outcome_of_a_request_running_at_close_is_ignored(outcome: object) -> None:
    led = ledger()
    accept(led, 3)
    batch = take(led)
    closing: Reports = []
    with led.lock:
        assert len(led.close_locked(closing)) == 3
    assert led.counters.dropped == {"shutdown": 3}
    assert audit(led).events == 0  # no longer in flight: dropped
    reports: Reports = []
    with led.lock:
        led.finish_send_locked(batch, outcome, 101.0, reports, DeferredLog(ErrorCounter()))  # type: ignore[arg-type]
    assert reports == []
    counters = led.counters
    assert (counters.delivered, counters.dropped, counters.retried) == (0, {"shutdown": 3}, 0)
    assert (counters.requests, counters.failed_requests) == (0, 0)
    assert (led.schedule.retry, list(led.schedule.ready)) == ([], [])
    assert (led.outstanding, led.outstanding_bytes) == (0, 0)
    assert led.state is State.CLOSED
    audit(led)


def test_a_fresh_batch_whose_unsure_answer_comes_after_close_is_not_taken_back() -> None:
    # A fresh batch goes as one body; shutdown closes while it runs; the answer does not
    # vouch for it all, and the sender has encoded its events one by one: the ledger
    # says False (shutdown reported them) and counts neither them nor their bytes.
    led = ledger()
    accept(led, 3)
    led.flush_asked = True
    with led.lock:
        taken, _ = led.plan_locked(100.0)
        items = list(led.inflight_raw)
        assert taken == items
        led.begin_fresh_locked(400)
        led.close_locked([])
    assert (led.outstanding, led.outstanding_bytes) == (0, 400)  # the body, until it ends
    assert audit(led).events == 0  # its events dropped, no longer in flight
    pendings = [Pending(0.0, q[SEQ], q, b'{"e":1}', held(q) + 7) for q in items]
    with led.lock:
        assert led.fresh_unsure_locked(400, pendings, grown=3 * 7) is False
    assert (led.outstanding, led.outstanding_bytes, led.inflight_body) == (0, 0, 0)
    assert (led.inflight, led.inflight_raw) == ([], [])
    assert led.counters.dropped == {"shutdown": 3}
    assert led.counters.delivered == 0
    audit(led)
