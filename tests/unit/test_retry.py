"""The retry policy, method by method, exactly: no clock, socket or sleep."""

from __future__ import annotations

import email.utils
import math
import random
import time

import msgspec
import pytest

from enso_tracker import Config
from enso_tracker._record import Pending
from enso_tracker._retry import RetryPolicy

POLICY = RetryPolicy(
    max_retries=3, max_event_age=100.0, backoff_base=0.5, backoff_max=8.0, max_retry_after=60.0
)
#: A wall-clock instant with a fraction of a second (HTTP-dates have none).
NOW = 1_700_000_000.75


def http_date(at: float) -> str:
    return email.utils.formatdate(at, usegmt=True)


def pending(attempts: int, first_sent: float) -> Pending:
    item = (1, "evt_1", "ent", "m", 1, 0, None, None, 100)
    return Pending(0.0, 1, item, b"{}", 100, attempts, first_sent)


# ------------------------------------------------------------------ statuses


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (None, False),  # a failed record without a status: rejected, never a resend loop
        (200, False),
        (400, False),
        (401, False),
        (403, False),
        (407, False),
        (408, True),
        (409, False),
        (413, False),
        (424, False),
        (425, True),
        (426, False),
        (428, False),
        (429, True),
        (430, False),
        (499, False),
        (500, True),
        (503, True),
        (599, True),
        (600, True),  # "from 500 up": a status past the table is still a server's trouble
    ],
)
def test_is_retryable_status(status: int | None, retryable: bool) -> None:
    assert POLICY.is_retryable_status(status) is retryable


def test_the_status_set_below_500_is_exactly_timeout_too_early_and_rate_limit() -> None:
    assert frozenset({408, 425, 429}) == RetryPolicy.RETRYABLE_STATUS
    below = {s for s in range(100, 500) if POLICY.is_retryable_status(s)}
    assert below == {408, 425, 429}


@pytest.mark.parametrize(
    ("status", "suspect"),
    [
        (None, True),  # network error, timeout, an answer not trusted or not read
        (408, False),
        (425, False),
        (429, False),
        (499, False),
        (500, True),
        (502, True),
        (599, True),
    ],
)
def test_is_suspect(status: int | None, suspect: bool) -> None:
    assert POLICY.is_suspect(status) is suspect


# --------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("60", 60.0),  # exactly the cap
        ("60.5", 60.0),
        ("300", 60.0),  # clamped to max_retry_after
        ("1e30", 60.0),  # huge: clamped, not an overflow
        ("-4", 0.0),  # negative: now
        ("-0.5", 0.0),
        ("1e400", None),  # infinite after parsing: ignored
        ("inf", None),
        ("-inf", None),
        ("nan", None),
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("3 seconds", None),
        ("0x10", None),
        ("Tue, 14 Nov 2023 22:13:50 -0000", None),  # no time zone: not an HTTP-date
        ("Tue, 99 Nov 2023 22:13:50 GMT", None),
    ],
)
def test_retry_after_forms(header: str | None, seconds: float | None) -> None:
    assert POLICY.retry_after(header, NOW) == seconds


def test_retry_after_http_date_is_measured_from_now() -> None:
    assert POLICY.retry_after(http_date(NOW - 0.75 + 30), NOW) == 29.25
    assert POLICY.retry_after(http_date(NOW + 30), NOW) == 29.25


def test_retry_after_http_date_has_one_second_resolution() -> None:
    # A server meaning "2 s from now" can only name a whole second: formatted at NOW
    # (a fraction of .75), the date names NOW + 1.25 s; the wait is that, not 2 s.
    header = http_date(NOW + 2.0)
    assert header == "Tue, 14 Nov 2023 22:13:22 GMT"
    assert POLICY.retry_after(header, NOW) == 1.25
    # And the same header read a moment later asks for correspondingly less.
    assert POLICY.retry_after(header, NOW + 1.0) == 0.25


def test_retry_after_http_date_in_the_past_is_now_and_far_ahead_is_clamped() -> None:
    assert POLICY.retry_after(http_date(NOW - 3600), NOW) == 0.0
    assert POLICY.retry_after(http_date(NOW + 86_400), NOW) == 60.0
    other_zone = "Tue, 14 Nov 2023 23:13:50 +0100"  # 22:13:50 GMT
    gmt = email.utils.parsedate_to_datetime("Tue, 14 Nov 2023 22:13:50 GMT").timestamp()
    assert POLICY.retry_after(other_zone, gmt - 10.0) == 10.0
    assert POLICY.retry_after("Tuesday, 14-Nov-23 22:13:50 GMT", gmt - 10.0) == 10.0  # RFC 850


def test_retry_after_without_now_reads_the_wall_clock() -> None:
    before = time.time()
    got = POLICY.retry_after(http_date(before + 30))
    assert got is not None
    assert 29.0 - (time.time() - before) <= got <= 30.0


# ------------------------------------------------------------------- delays


def test_backoff_is_full_jitter_from_the_rng_exactly() -> None:
    for attempt, cap in [(0, 0.5), (1, 1.0), (3, 4.0), (4, 8.0), (5, 8.0), (10**6, 8.0)]:
        expected = cap * random.Random(attempt).random()  # uniform(0, cap) = cap * random()
        assert POLICY.backoff(attempt, random.Random(attempt)) == expected


def test_backoff_stays_within_its_bounds() -> None:
    rng = random.Random(11)
    for attempt in range(70):
        cap = min(8.0, 0.5 * 2**attempt)
        draws = [POLICY.backoff(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in draws)
        assert max(draws) > cap * 0.9  # jitter spans the range, not a fixed fraction of it


def test_request_delay_is_retry_after_when_given_and_draws_nothing() -> None:
    rng = random.Random(5)
    state = rng.getstate()
    assert POLICY.request_delay(3, 12.5, rng) == 12.5
    assert POLICY.request_delay(3, 0.0, rng) == 0.0  # "now" is an answer, not a missing one
    assert rng.getstate() == state


def test_request_delay_without_retry_after_is_backoff_on_the_failures() -> None:
    assert POLICY.request_delay(2, None, random.Random(5)) == POLICY.backoff(2, random.Random(5))
    assert POLICY.request_delay(2, None, random.Random(5)) == 2.0 * random.Random(5).random()


def test_event_delay_is_its_own_backoff_but_never_less_than_the_requests() -> None:
    short = RetryPolicy(max_retries=3, max_event_age=100.0, backoff_base=0.5, backoff_max=2.0)
    # The request's delay (a Retry-After of 5 s) is above any backoff (at most 2 s).
    assert short.event_delay(4, 5.0, random.Random(1)) == 5.0
    # A request delay of 0 leaves the event's own backoff, on its attempts.
    assert short.event_delay(2, 0.0, random.Random(1)) == 2.0 * random.Random(1).random()
    # Both draw one number from the rng, whichever wins.
    rng, twin = random.Random(9), random.Random(9)
    short.event_delay(4, 5.0, rng)
    twin.random()
    assert rng.getstate() == twin.getstate()


# ------------------------------------------------------------------ budgets


def test_out_of_tries_at_exactly_max_retries_retries() -> None:
    assert POLICY.out_of_tries(0) is False
    assert POLICY.out_of_tries(3) is False  # 1 attempt + 2 retries: one retry left
    assert POLICY.out_of_tries(4) is True  # 1 attempt + 3 retries (max_retries=3): spent
    none = msgspec.structs.replace(POLICY, max_retries=0)
    assert none.out_of_tries(0) is False
    assert none.out_of_tries(1) is True


def test_exhausted_at_exactly_the_budget() -> None:
    assert POLICY.exhausted(pending(attempts=3, first_sent=10.0), 110.0) is False  # age = 100
    just_after = math.nextafter(110.0, math.inf)
    assert POLICY.exhausted(pending(attempts=3, first_sent=10.0), just_after) is True
    assert POLICY.exhausted(pending(attempts=4, first_sent=10.0), 10.0) is True
    assert POLICY.exhausted(pending(attempts=1, first_sent=10.0), 10.0) is False


def test_no_age_limit_never_exhausts_by_age() -> None:
    ageless = msgspec.structs.replace(POLICY, max_event_age=math.inf)
    assert ageless.exhausted(pending(attempts=3, first_sent=0.0), 1e18) is False
    assert ageless.exhausted(pending(attempts=4, first_sent=0.0), 0.0) is True


def test_from_config_takes_every_knob() -> None:
    config = Config(
        base_url="https://enso.test",
        max_retries=7,
        max_event_age=123.0,
        backoff_base=0.25,
        backoff_max=9.0,
        max_retry_after=45.0,
    )
    assert RetryPolicy.from_config(config) == RetryPolicy(
        max_retries=7, max_event_age=123.0, backoff_base=0.25, backoff_max=9.0, max_retry_after=45.0
    )
    # The policy's own default (for a policy built without a Config) is Config's.
    bare = RetryPolicy(max_retries=1, max_event_age=1.0, backoff_base=1.0, backoff_max=1.0)
    assert bare.max_retry_after == Config(base_url="https://enso.test").max_retry_after
