"""The schedule: which events go in the next request, and when. Pure code.

No lock, thread, clock, random source or I/O of its own: the caller passes ``now`` and
the random generator, holds the tracker lock around every call, and does the sending.
That is what lets ``tests/unit/test_schedule.py`` check its rules deterministically:

* **Request gate.** After a failed request nothing is sent before ``gate_until``: the
  server's ``Retry-After``, else full-jitter backoff on the consecutive failures.
* **Turn-taking.** After a batch of retries fails, the next request carries fresh events
  (and the other way round), so neither starves the other during an outage, and one
  success tells "the server is down" from "this batch is the trouble".
* **Poison bisection.** A batch that fails while the server is otherwise healthy is cut
  in half (each event's ``group`` is the largest batch it may join), again on each such
  failure, until the culprit is alone; a lone failing event waits on its own backoff in
  the retry heap while everything else flows around it.
* **413 learning.** A refused body halves the byte limit for the tracker's life.
* **Budgets and delays.** :class:`~._retry.RetryPolicy` answers every retry question
  (how long to wait, when an event has been tried enough); this module keeps the state.
* **Low-water mark.** Events out of acceptance order (retried, put back) are noted in a
  heap, so the lowest unsettled sequence is found in O(log n) (``flush()`` needs it).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from itertools import islice, repeat
from typing import Final

from ._config import Config
from ._record import Pending, QueuedEvent, size_of
from ._retry import RetryPolicy
from ._wire import BODY_OVERHEAD

__all__ = ["NO_SEQ", "Schedule"]

NO_SEQ: Final = 1 << 62  # "nothing unsettled" for a low-water mark
#: Wire bytes of an event beyond what its ``SIZE`` estimate counts (keys, timestamp, a
#: generated id, a 16-digit value, the comma): 144 measured, rounded up.
WIRE_ESTIMATE: Final = 160


def take(queue: deque[QueuedEvent], n: int) -> list[Pending | QueuedEvent]:
    """The first ``n`` items of ``queue``, removed: one C-level loop (``map`` over the
    unbound ``popleft``), not a Python-level ``popleft`` per event."""
    return list(map(deque.popleft, repeat(queue, n)))


class Schedule:
    """Ready retries, the retry heap, the request gate and the learned byte limit."""

    @classmethod
    def from_config(cls, config: Config, rng: random.Random) -> Schedule:
        return cls(
            RetryPolicy.from_config(config),
            batch_size=config.max_batch_size,
            backlog_size=max(config.max_batch_size, config.max_backlog_batch_size),
            byte_limit=config.max_batch_bytes,
            flush_interval=config.flush_interval,
            min_request_interval=min(config.min_request_interval, config.flush_interval),
            rng=rng,
        )

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        batch_size: int,
        backlog_size: int | None = None,
        byte_limit: int,
        flush_interval: float,
        min_request_interval: float = 0.0,
        rng: random.Random,
    ) -> None:
        self.policy = policy
        self.batch_size = batch_size
        #: Events per request from a backlog (more than a batch queued, no retry ahead).
        self.backlog_size = batch_size if backlog_size is None else backlog_size
        #: Bodies are cut at this many bytes; halved by every 413 (never grows back).
        self.byte_limit = byte_limit
        self.flush_interval = flush_interval
        #: Shortest gap between two queue takes cut by size, unless told not to hold.
        self.min_request_interval = min_request_interval
        self.last_take = -math.inf  # when a take last emptied the queue
        self._rng = rng
        self.ready: deque[Pending] = deque()  # to send before the queue, in this order
        self.retry: list[Pending] = []  # heap by (due, seq)
        self.gate_until = 0.0  # request-level backoff: nothing is sent before it
        self.failures = 0  # consecutive failed requests
        self.queue_turn = False  # after a failed retry, the next batch comes from the queue
        self.batch_clock: float | None = None  # when the oldest queued event was seen
        self._parked: list[tuple[int, Pending]] = []  # out-of-order events, by seq

    # ------------------------------------------------------------------- planning

    def plan(
        self, now: float, queue: deque[QueuedEvent], *, urgent: bool, room: int = 0
    ) -> tuple[list[Pending | QueuedEvent], float | None]:
        """What to send now (ready retries first, then the queue), or how long to wait
        (``None``: until something happens). ``urgent`` (a flush or shutdown is
        waiting) sends queued events without waiting for ``flush_interval``. A full
        batch waits until ``min_request_interval`` has passed since the last take, so
        that high rates go in fewer, fuller requests, if at the rate the queue fills
        fewer than ``room`` events would arrive meanwhile. Taken queue items are
        popped from ``queue``."""
        if now < self.gate_until:
            return [], self.gate_until - now
        retry = self.retry
        while retry and retry[0].due <= now:
            self.ready.append(heapq.heappop(retry))
        if queue and self.batch_clock is None:
            self.batch_clock = now
        held_until = 0.0
        queue_due = bool(queue) and (
            urgent
            or now - (self.batch_clock or now) >= self.flush_interval
            or len(queue) + len(self.ready) >= self.batch_size
        )
        if (
            queue_due
            and room > 0
            and not urgent
            and not self.ready
            and len(queue) < self.backlog_size
            and now < self.last_take + self.min_request_interval
            and self.batch_clock is not None
            and now - self.batch_clock < self.flush_interval
        ):
            # Full by size, but the last request left less than min_request_interval
            # ago: gather more for one fuller request (see Config.min_request_interval),
            # unless, at the rate the queue has been filling, that would eat the room.
            held_until = self.last_take + self.min_request_interval
            elapsed = max(now - self.batch_clock, 1e-3)
            if len(queue) * (held_until - now) < room * elapsed:
                queue_due = False
            else:
                held_until = 0.0
        if self.queue_turn and queue:
            self.queue_turn = False
            fresh: list[Pending | QueuedEvent] = take(queue, min(len(queue), self.batch_size))
            self._taken(now, queue)
            return fresh, 0.0
        if not self.ready and not queue_due:
            waits = []
            if queue and self.batch_clock is not None:
                waits.append(self.batch_clock + self.flush_interval - now)
            if held_until > now:
                waits.append(held_until - now)
            if retry:
                waits.append(retry[0].due - now)
            return [], (max(min(waits), 0.0) if waits else None)
        taken: list[Pending | QueuedEvent] = []
        limit = self.batch_size
        ready = self.ready
        while ready and len(taken) < limit and ready[0].group > len(taken):
            limit = min(limit, ready[0].group)
            taken.append(ready.popleft())
        if queue_due:
            room = min(limit - len(taken), len(queue))
            if (
                not taken
                and len(queue) > limit
                and self.backlog_size > limit
                and not isinstance(queue[0], Pending)  # the spool's staged: per batch
            ):
                room = self.backlog_room(queue)
            if room:
                taken += take(queue, room)
                self._taken(now, queue)
        return taken, 0.0

    def _taken(self, now: float, queue: deque[QueuedEvent]) -> None:
        # A take that emptied the queue means the sender keeps up: the next full batch
        # may wait out min_request_interval. One that left events behind is draining a
        # backlog (a burst, its tail, an outage): what is left goes without waiting.
        if queue:
            self.last_take = -math.inf
        else:
            self.last_take = now
            self.batch_clock = None

    def backlog_room(self, queue: deque[QueuedEvent]) -> int:
        """Events to send from a backlog: up to ``backlog_size``, as many as the size
        estimate kept at ``track()`` says fit in ``byte_limit`` (with a margin; the worker
        checks the encoded body, and cuts it event by event if it is still too large).
        C-level sums, no per-event Python; never fewer than ``batch_size``."""
        n = min(len(queue), self.backlog_size)
        estimate = sum(map(size_of, islice(queue, n))) + n * WIRE_ESTIMATE
        budget = self.byte_limit * 9 // 10
        if estimate > budget:
            n = n * budget // estimate
        return max(n, min(self.batch_size, len(queue)))

    def cut(self, pending: list[Pending], hard_limit: int) -> tuple[list[Pending], list[Pending]]:
        """Cut one body's worth from ``pending`` at the byte limit.

        Returns the batch and the events that are alone larger than ``hard_limit`` (to
        be dropped as ``too_large``); the rest goes back to the head of the line."""
        batch: list[Pending] = []
        too_large: list[Pending] = []
        leftover: list[Pending] = []
        size = BODY_OVERHEAD
        for p in pending:
            need = len(p.body) + (1 if batch else 0)
            if leftover or (batch and size + need > self.byte_limit):
                leftover.append(p)
            elif BODY_OVERHEAD + len(p.body) > hard_limit:
                too_large.append(p)
            else:
                batch.append(p)
                size += need
        self.put_back(leftover)
        return batch, too_large

    # ------------------------------------------------------------------- outcomes

    def on_success(self) -> None:
        self.failures = 0

    def on_failure(
        self, batch: list[Pending], now: float, retry_after: float | None, *, suspect: bool
    ) -> list[Pending]:
        """A whole request failed: shut the gate, put the batch back in line.

        ``suspect``: the failure may be the batch's own (a 5xx or a network error, not a
        rate limit or a refused credential); right after a success, the batch is then
        bisected. Returns the events whose retry budget is spent (not put back)."""
        self.failures += 1
        delay = self.policy.request_delay(self.failures, retry_after, self._rng)
        self.gate_until = now + delay
        self.queue_turn = batch[0].attempts > 1
        keep, exhausted = self._budget(batch, now)
        for p in keep:
            self.park(p)
        if len(batch) == 1:
            for p in keep:  # alone and failing: on its own schedule, off the head of the line
                p.due = now + self.policy.event_delay(p.attempts, delay, self._rng)
                heapq.heappush(self.retry, p)
            return exhausted
        if suspect and self.failures == 1:
            half = (len(batch) + 1) // 2
            for p in keep:
                p.group = min(p.group, half)
        self.ready.extend(keep)  # behind what is already waiting
        return exhausted

    def retry_later(self, p: Pending, now: float) -> bool:
        """One event failed on its own (a per-record 5xx): back off it alone. False if
        its budget is spent."""
        if self.policy.exhausted(p, now):
            return False
        p.due = now + self.policy.backoff(p.attempts, self._rng)
        heapq.heappush(self.retry, p)
        self.park(p)
        return True

    def on_too_large(self, batch: list[Pending]) -> int | None:
        """Enso refused the body as too large (413). Alone, the event is beyond help:
        returns None. Else learns the limit (half this body) and puts the batch back to
        be cut smaller; returns the refused body's size."""
        if len(batch) == 1:
            return None
        body = BODY_OVERHEAD + sum(len(p.body) + 1 for p in batch) - 1
        self.byte_limit = max(BODY_OVERHEAD + 2, min(self.byte_limit, body // 2))
        for p in batch:
            p.attempts -= 1  # a split is not a failed attempt of the event
        self.put_back(batch)
        return body

    def put_back(self, pending: list[Pending]) -> None:
        """Back to the head of the line, in this order (a cut's rest, a failed round)."""
        for p in reversed(pending):
            self.ready.appendleft(p)
            self.park(p)

    def enqueue(self, pending: list[Pending]) -> None:
        """At the end of the line of ready events, in this order (adopted from disk)."""
        for p in pending:
            self.ready.append(p)
            self.park(p)

    def expedite(self) -> None:
        """Shutdown: cut every backoff short, one more prompt try for everything left."""
        self.gate_until = 0.0
        for p in self.retry:
            p.due = 0.0
        heapq.heapify(self.retry)  # same keys for all: re-ordered by acceptance

    def drain(self) -> list[Pending]:
        """Everything waiting (shutdown's deadline): taken out, in no particular order."""
        left = [*self.ready, *self.retry]
        self.ready.clear()
        self.retry.clear()
        self._parked.clear()
        return left

    def _budget(self, batch: list[Pending], now: float) -> tuple[list[Pending], list[Pending]]:
        keep: list[Pending] = []
        exhausted: list[Pending] = []
        for p in batch:
            (exhausted if self.policy.exhausted(p, now) else keep).append(p)
        return keep, exhausted

    # ------------------------------------------------------------ low-water mark

    def park(self, p: Pending) -> None:
        """Note an unsettled event out of acceptance order (waiting to be retried, or put
        back); ``low_water`` reads the lowest such sequence from a heap in O(log n).

        Events adopted from a spool (sequences past ``NO_SEQ``) are never this tracker's
        to flush: not noted. The heap is pruned only as ``low_water`` is read, so noting
        a million of them would keep them all (their bodies too) until a flush."""
        p.done = False
        if not p.parked and p.seq <= NO_SEQ:
            p.parked = True
            heapq.heappush(self._parked, (p.seq, p))

    def low_water(self) -> int:
        """The lowest sequence among parked events not settled since (``NO_SEQ``: none)."""
        heap = self._parked
        while heap and heap[0][1].done:
            heapq.heappop(heap)[1].parked = False
        return heap[0][0] if heap else NO_SEQ
