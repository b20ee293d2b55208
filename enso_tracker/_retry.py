"""The retry policy: every rule about trying again, as a method named for its question.

After urllib3's ``Retry``: one frozen value holds the knobs, and callers ask it instead
of re-deriving a rule. :class:`~._schedule.Schedule` keeps the state (gate, heaps,
consecutive failures) and asks; the sender (``_http``), outcome application (``_outcomes``),
``send_events`` (``_direct``) and ``import``'s preflight (``_http/probe.py``) ask too.

Invariants:

* **Retryable statuses** are 408, 425, 429 and every status from 500 up, for a whole
  request and for a record of a batch answer alike (:meth:`RetryPolicy.is_retryable_status`);
  a record that fails without a status is not retryable (it is rejected).
* **Suspect failures** are those that may be the batch's own fault (no HTTP answer, or
  5xx); rate limits and timeouts (408, 425, 429) are not (:meth:`RetryPolicy.is_suspect`).
* **Retry-After** is read as delta-seconds or a date with its time zone (an HTTP-date:
  whole seconds, GMT), clamped to ``[0, max_retry_after]``; anything else (a date
  without a zone included) is ignored, never an error (:meth:`RetryPolicy.retry_after`).
* **Backoff** is full jitter, ``uniform(0, min(backoff_max, backoff_base * 2**n))``; a
  ``Retry-After`` replaces it for the request, and a lone failing event waits at least
  the request's delay (:meth:`RetryPolicy.request_delay`, :meth:`RetryPolicy.event_delay`).
* **Budgets**: an event is exhausted after ``max_retries`` retries (``max_retries + 1``
  attempts) or once ``max_event_age`` seconds have passed since its first send;
  reaching either bound exactly is still within budget (:meth:`RetryPolicy.exhausted`).

Pure: no clock, random source or I/O of its own; the caller passes ``now`` and ``rng``.
All durations are float seconds.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from typing import TYPE_CHECKING, ClassVar, Protocol

import msgspec

if TYPE_CHECKING:
    from ._config import Config

__all__ = ["RetryPolicy"]


class Tried(Protocol):
    """What :meth:`RetryPolicy.exhausted` reads of an event (``_record.Pending``)."""

    @property
    def attempts(self) -> int: ...

    @property
    def first_sent(self) -> float: ...


class RetryPolicy(msgspec.Struct, frozen=True):
    """Backoff, ``Retry-After`` and retry budgets.

    ``max_retries``: retries of one event after its first attempt. ``max_event_age``:
    seconds from an event's first send after which it is not retried. ``backoff_base``
    and ``backoff_max``: the full-jitter backoff's first step and ceiling.
    ``max_retry_after``: the longest ``Retry-After`` honoured (longer ones are clamped).
    The defaults and meanings are ``Config``'s fields of the same names.
    """

    max_retries: int
    max_event_age: float
    backoff_base: float
    backoff_max: float
    max_retry_after: float = 300.0

    #: Statuses below 500 that mean "later", not "never": timeout, too early, rate limit.
    RETRYABLE_STATUS: ClassVar[frozenset[int]] = frozenset({408, 425, 429})

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        return cls(
            max_retries=config.max_retries,
            max_event_age=config.max_event_age,
            backoff_base=config.backoff_base,
            backoff_max=config.backoff_max,
            max_retry_after=config.max_retry_after,
        )

    # ------------------------------------------------------------------ statuses

    def is_retryable_status(self, status: int | None) -> bool:
        """Whether a failure with this HTTP status is worth trying again (the whole
        request's, or one record's in a batch answer). ``None`` (a record that failed
        without a status) is not: nothing says it would go through later."""
        return status is not None and (status >= 500 or status in self.RETRYABLE_STATUS)

    def is_suspect(self, status: int | None) -> bool:
        """Whether a retryable whole-request failure may be the batch's own doing, so
        the batch is worth bisecting: no HTTP status (network error, timeout, an answer
        not trusted or not read) or a 5xx. A 408/425/429 says nothing about the content."""
        return status is None or status >= 500

    # --------------------------------------------------------------- Retry-After

    def retry_after(self, header: str | None, now: float | None = None) -> float | None:
        """Seconds to wait from a ``Retry-After`` header, or None when absent or unreadable.

        Delta-seconds (decimals taken) or an HTTP-date, which has whole seconds: the wait
        it names is measured from ``now`` (wall-clock ``time.time()`` seconds; the
        current time when None). Clamped to ``[0, max_retry_after]``; a date without
        a time zone, NaN or infinity is ignored."""
        if not header:
            return None
        value = header.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:  # an HTTP-date is always GMT
                return None
            seconds = when.timestamp() - (time.time() if now is None else now)
        if not math.isfinite(seconds):
            return None
        return min(max(seconds, 0.0), self.max_retry_after)

    # ------------------------------------------------------------------- delays

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: ``uniform(0, min(backoff_max, backoff_base * 2**attempt))``."""
        return rng.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** min(attempt, 60)))

    def request_delay(self, failures: int, retry_after: float | None, rng: random.Random) -> float:
        """How long nothing is sent after a failed request: the server's ``Retry-After``
        when it gave one, else backoff on the ``failures`` in a row."""
        if retry_after is not None:
            return retry_after
        return self.backoff(failures, rng)

    def event_delay(self, attempts: int, request_delay: float, rng: random.Random) -> float:
        """How long a lone failing event waits before its next try: its own backoff on
        its ``attempts``, never less than the request's delay (so a ``Retry-After`` holds)."""
        return max(request_delay, self.backoff(attempts, rng))

    # ------------------------------------------------------------------ budgets

    def out_of_tries(self, attempts: int) -> bool:
        """Whether ``attempts`` sends used up the retries (``max_retries`` after the first)."""
        return attempts > self.max_retries

    def exhausted(self, p: Tried, now: float) -> bool:
        """Whether event ``p`` has spent its budget: too many attempts, or too old since
        its first send (``now`` on the same clock as ``p.first_sent``)."""
        return self.out_of_tries(p.attempts) or now - p.first_sent > self.max_event_age
