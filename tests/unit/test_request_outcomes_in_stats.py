"""What a request's outcome leaves in ``stats()`` and in the schedule's backoff: the
credentials' state comes back to ``ok`` on a 2xx after a 401, a 2xx stamps
``last_success_at`` and ends the failure streak (so the next failure is a first one
again: bisected if suspect), and ``retried`` counts the events
put back for another try, never those given up as ``retries_exhausted``.

Driven on the ledger as the sender drives it (no thread, socket or sleep).
"""

from __future__ import annotations

import time

from enso_tracker import Retry, Unauthorized
from tests.unit.audit import audit
from tests.unit.test_ledger import accept, answer, ledger, settle, take


def test_a_2xx_after_a_401_says_the_credentials_are_ok_again() -> None:
    led = ledger()
    accept(led, 2)
    settle(led, take(led), Unauthorized("HTTP 401", 401))
    assert led.snapshot(0, 0).auth_state == "unauthorized"
    led.schedule.gate_until = 0.0
    settle(led, take(led), answer(2))
    stats = led.snapshot(0, 0)
    assert (stats.auth_state, stats.delivered) == ("ok", 2)
    audit(led)


def test_a_2xx_stamps_last_success_at_and_a_failure_does_not() -> None:
    led = ledger()
    accept(led, 4)
    settle(led, take(led), Retry("HTTP 503", 503))
    assert led.snapshot(0, 0).last_success_at is None
    led.schedule.gate_until = 0.0
    before = time.time()
    settle(led, take(led), answer(2))  # the first half (the batch was bisected)
    after = time.time()
    stamped = led.snapshot(0, 0).last_success_at
    assert stamped is not None
    assert before <= stamped <= after


def test_a_success_ends_the_failure_streak_so_the_next_suspect_failure_bisects() -> None:
    # A failure right after a success may be the batch's own: it is cut in half. One in
    # a streak of failures says the server is down: the batch is kept whole.
    led = ledger()  # batch_size=4
    accept(led, 2)
    settle(led, take(led), Retry("HTTP 429", 429))  # a rate limit: a failure, no bisection
    led.schedule.gate_until = 0.0
    settle(led, take(led), answer(2))
    accept(led, 4)
    settle(led, take(led), Retry("HTTP 502", 502))  # the first failure since the success
    led.schedule.gate_until = 0.0
    assert [p.seq for p in take(led)] == [3, 4]  # half the batch goes first
    audit(led)


def test_retried_counts_the_events_put_back_not_those_given_up() -> None:
    led = ledger()  # max_retries=2
    accept(led, 2)
    for _ in range(3):  # the third failure spends the budget of both
        led.schedule.gate_until = 0.0
        settle(led, take(led), Retry("HTTP 429: slow down", 429))
    stats = led.snapshot(0, 0)
    assert stats.dropped == {"retries_exhausted": 2}
    assert stats.retried == 2 + 2  # two rounds put both back; the third put none back
    audit(led)
