"""The tracker: a bounded in-memory queue fed by ``track()`` and one sender thread.

Design, in the spirit of OpenTelemetry's BatchProcessor:

* ``track()`` validates, stamps an ``eventId`` and appends a tuple to a deque under one
  short lock. No I/O, no JSON of the batch, no allocation beyond the tuple.
* One daemon thread (started lazily, restarted if found dead, re-created after fork)
  forms batches by count, encoded bytes and time, hands each to a :class:`Sender`
  and does the per-event accounting of the answer.
* Every accepted event ends in exactly one of: delivered, dropped with a reason
  (reported to ``on_drop``, counted, logged), or still pending. ``stats()`` shows the
  books; they always balance.
* All waiting (flush interval, backoff, ``Retry-After``) happens on the sender thread,
  on an Event that ``flush()`` and ``shutdown()`` can cut short.
"""

from __future__ import annotations

import base64
import heapq
import logging
import math
import os
import random
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any, Final, Literal

import httpx
import msgspec

from . import _lifecycle
from ._aio import AsyncMixin
from ._auth import make_credentials
from ._config import Config
from ._errors import ConfigurationError, describe_exception
from ._log import DeferredLog, ErrorCounter
from ._model import DropKind, DropReason, Event, Stats
from ._sender import Answered, HttpSender, Outcome, Rejected, Retry, Sender, TooLarge
from ._validate import (
    MAX_EXACT_INT,
    bad_value,
    check_id,
    check_name,
    coerce_value,
    encode_metadata,
    timestamp_ns,
)
from ._wire import BODY_OVERHEAD, EventEncoder, FailedRecord, join_batch, reconcile
from .integrations import auto_enable

__all__ = ["Tracker"]


# Layout of a queued event; a tuple because it is the cheapest thing to build in track().
QueuedEvent = tuple[int, str, str, str, int | float | Decimal, int, bytes | None, str | None, int]
_SEQ: Final = 0  # acceptance sequence number (== accepted count when it was queued)
_ID: Final = 1
_ENTITY: Final = 2
_METRIC: Final = 3
_VALUE: Final = 4
_TS: Final = 5  # epoch nanoseconds, UTC
_META: Final = 6  # metadata, already JSON
_JOB: Final = 7
_SIZE: Final = 8  # estimated bytes, for max_queue_bytes

# max_queue_bytes counts what an event really holds (measured with tracemalloc; see
# tests/test_hardening.py): CPython object headers included, names in bytes not
# characters, and, once it is encoded, its wire body in place of its metadata JSON.
_STR_OVERHEAD: Final = 49  # header of an ASCII str
_BYTES_OVERHEAD: Final = 33  # header of a bytes object
#: One queued event beyond its strings: the tuple and its deque slot, the generated id,
#: the timestamp and value objects, and the headers of fresh entity and metric strs.
_EVENT_OVERHEAD: Final = 420
#: Added once the event is encoded: the _Pending struct, its floats, its body's header
#: and its heap entries (the body's own length is counted on top).
_PENDING_OVERHEAD: Final = 240
#: The metadata slot of an encoded event: its JSON lives in the wire body only.
_IN_BODY: Final = b"<metadata in the wire body>"
#: Per-record ``statusCode`` values worth another try (the rest are permanent).
_RETRYABLE_RECORD_STATUS = frozenset({408, 425, 429})
#: Drops waiting to be logged and handed to on_drop once the lock is released.
_Reports = list[tuple[list[QueuedEvent], DropReason]]
_NO_SEQ: Final = 1 << 62
_CLOSED: Final = -1.0  # _step(): the tracker is closed, the sender thread ends


class _Pending(msgspec.Struct, order=True, gc=False):
    """An event the sender has taken from the queue: encoded once, retried as is.

    A Struct because the sender makes one per event (~60 ns, against ~340 ns for a
    slotted class); ``order=True`` gives the retry heap its order (due time, then
    acceptance), and ``gc=False`` is safe since it never takes part in a cycle.
    """

    due: float
    seq: int
    item: QueuedEvent
    body: bytes
    #: Bytes it holds now (its item's estimate, grown by the body once encoded).
    size: int = 0
    attempts: int = 0
    first_sent: float = 0.0
    #: In ``_unsettled`` (the heap flush() reads its low-water mark from), and whether
    #: that entry is stale: settled since, or in flight (counted from ``_inflight``).
    parked: bool = False
    done: bool = False
    #: Largest batch this event may go in; halved each time its batch fails while the
    #: server is otherwise healthy (see _backoff_locked), so a poison event ends up alone.
    group: int = 1 << 30


def _new_id_prefix() -> str:
    # 80 random bits per tracker (drawn again in a forked child): unique across
    # processes, machines and forks (a collision needs ~10^12 trackers), while each id
    # costs only a counter increment. os.urandom, not `random`: an application that
    # calls random.seed() must not make two processes hand out the same ids.
    token = base64.b32encode(os.urandom(10)).decode("ascii").lower()
    return f"evt_{token}_"  # + hex(seq): "evt_…_0x1f"


#: Our own generator: drawing jitter from the global one would shift the sequence of an
#: application that seeds `random` for reproducibility.
_jitter_rng = random.Random()


class Tracker(AsyncMixin):
    """Collects usage events and delivers them to Enso in the background.

    ``Tracker(api_key=...)`` or ``Tracker(client_key=..., client_secret=...)``; every
    option of :class:`Config` may be passed as a keyword, or a whole ``config=``.
    Thread-safe; fork-safe; usable as a context manager (``shutdown()`` on exit), also
    ``async with`` (``ashutdown()``); ``aflush``/``ashutdown`` wait without blocking the
    event loop, and ``flush_after`` flushes around a serverless handler.

    For tests: ``transport=`` is handed to httpx (e.g. ``httpx.MockTransport``), and
    ``sender=`` replaces the HTTP layer altogether (anything with the ``Sender``
    protocol's ``send``/``close``/``after_fork``/``logins``), in which case no
    credentials are passed.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        client_key: str | None = None,
        client_secret: str | None = None,
        config: Config | None = None,
        transport: httpx.BaseTransport | None = None,
        sender: Sender | None = None,
        **options: Any,
    ) -> None:
        try:
            cfg = (config or Config()).replace(**options) if options else (config or Config())
        except TypeError as exc:
            raise ConfigurationError(str(exc)) from None
        self._config = cfg
        if sender is None:
            sender = HttpSender(
                cfg, make_credentials(api_key, client_key, client_secret, cfg.base_url), transport
            )
        elif api_key is not None or client_key is not None or client_secret is not None:
            raise ConfigurationError("pass credentials or a sender, not both")
        self._sender = sender
        # A tracker dropped without shutdown() closes its connections when collected (its
        # thread holds it only weakly while idle). Not at exit: the atexit hook shuts it
        # down first, and a finalizer run before that would close the client under it.
        weakref.finalize(self, sender.close).atexit = False
        self._encoder = EventEncoder()
        self._metadata_encoder = msgspec.json.Encoder()
        self._decode_metadata = msgspec.json.Decoder(dict[str, Any]).decode
        self._on_drop = cfg.on_drop
        # Hot-path copies of the bounds (attribute lookups on self are the cheapest).
        self._max_name = cfg.max_name_length
        self._max_id = cfg.max_id_length
        self._max_queue = cfg.max_queue_size
        self._max_queue_bytes = cfg.max_queue_bytes
        self._batch_size = cfg.max_batch_size
        self._byte_limit = cfg.max_batch_bytes
        self._init_state()
        self._closed = False  # shutdown() finished: nothing more is accepted or sent
        _lifecycle.register(self, handle_sigterm=cfg.handle_sigterm)
        if cfg.integrations:
            auto_enable()

    def _init_state(self) -> None:
        """Everything that a forked child must get fresh (no I/O, no threads, no logging)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # an event settled (flush waits)
        self._room = threading.Condition(self._lock)  # queue space freed ("block" policy)
        self._wake = threading.Event()
        weakref.finalize(self, self._wake.set).atexit = False  # the idle sender ends
        self._start_lock = threading.Lock()
        # Fresh after a fork too: a lock inherited mid-acquire would never be released.
        self._hook_errors = ErrorCounter()  # raised by on_drop or a logging handler
        self._logger = DeferredLog(self._hook_errors)
        self._thread: threading.Thread | None = None
        self._worker_gone = True  # no sender thread running (never started, or it died)
        self._id_prefix = _new_id_prefix()
        self._seq = 0  # sequence number of the last accepted event == accepted count
        self._queue: deque[QueuedEvent] = deque()
        self._ready: deque[_Pending] = deque()  # encoded, to send before the queue
        self._retry: list[_Pending] = []  # heap by due time
        self._inflight: list[_Pending] = []
        self._inflight_raw: list[QueuedEvent] = []  # taken from the queue, being encoded
        self._unsettled: list[tuple[int, _Pending]] = []  # see _park_locked
        self._outstanding = 0  # events in queue + ready + retry + in flight
        self._outstanding_bytes = 0
        self._batch_clock: float | None = None  # when the oldest queued event was seen
        self._gate_until = 0.0  # request-level backoff: nothing is sent before it
        self._failures = 0  # consecutive failed requests
        self._flush_waiters = 0
        self._flush_asked = False  # flush() from the sender thread: send what is queued now
        self._queue_turn = False  # after a failed retry, the next batch comes from the queue
        self._reporting = 0  # drops counted but not yet handed to on_drop (flush waits)
        self._stopping = False
        self._deadline = math.inf
        self._finish_on_worker = False  # shutdown() came from the sender thread itself
        self._delivered = 0
        self._dropped: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._retried = 0
        self._requests = 0
        self._failed_requests = 0
        self._worker_errors = 0
        self._auth_state: Literal["ok", "unauthorized"] = "ok"
        self._last_error: str | None = None
        self._last_success_at: float | None = None

    # ------------------------------------------------------------------ public API

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Tracker:
        """A tracker configured from ``ENSO_API_KEY`` or ``ENSO_CLIENT_KEY`` +
        ``ENSO_CLIENT_SECRET``, and ``ENSO_BASE_URL``; keywords override the environment."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        for var, name in (
            ("ENSO_API_KEY", "api_key"),
            ("ENSO_CLIENT_KEY", "client_key"),
            ("ENSO_CLIENT_SECRET", "client_secret"),
            ("ENSO_BASE_URL", "base_url"),
        ):
            if env.get(var):
                kwargs[name] = env[var]
        kwargs.update(options)
        return cls(**kwargs)

    @property
    def config(self) -> Config:
        return self._config

    @property
    def shutdown_timeout(self) -> float:
        return self._config.shutdown_timeout

    def __repr__(self) -> str:
        state = "closed" if self._closed else "stopping" if self._stopping else "open"
        return f"<Tracker {state} base_url={self._config.base_url!r} pending={self._outstanding}>"

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def track(
        self,
        entity: str,
        metric: str,
        value: int | float | Decimal,
        *,
        timestamp: Any = None,
        metadata: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        job_id: str | None = None,
    ) -> str | None:
        """Queue one usage event; return its ``eventId``, or ``None`` if it was refused.

        ``entity`` is the customer entity (Enso id or a unique attribute value), sent as
        ``CustomerEntityId``. ``timestamp`` defaults to now; it may be a tz-aware
        ``datetime`` or an RFC 3339 string with an offset. Bad arguments raise
        :class:`~enso_tracker.InvalidEventError` here; delivery problems never raise.
        """
        # Fast checks inline; the check_*/bad_* helpers say precisely what is wrong.
        size = _EVENT_OVERHEAD
        if (
            type(entity) is not str
            or not entity.isascii()
            or not 0 < len(entity) <= self._max_name
            or entity.isspace()
        ):
            entity = check_name("entity", entity, self._max_name)
            size += _wide_cost(entity)
        if (
            type(metric) is not str
            or not metric.isascii()
            or not 0 < len(metric) <= self._max_name
            or metric.isspace()
        ):
            metric = check_name("metric", metric, self._max_name)
            size += _wide_cost(metric)
        kind = type(value)
        if kind is int:
            if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
                bad_value(value)
        elif kind is float:
            if value - value != 0:  # type: ignore[operator]  # NaN/±inf; cheaper than isfinite
                bad_value(value)
        else:
            value = coerce_value(value)
        ts = time.time_ns() if timestamp is None else timestamp_ns(timestamp)
        meta = None
        size += len(entity) + len(metric)
        if metadata is not None:
            meta = encode_metadata(
                metadata, self._metadata_encoder, self._config.max_metadata_bytes
            )
            meta = bytes(memoryview(meta))  # exact size: msgspec's buffer is up to 1.5x
            size += len(meta) + _BYTES_OVERHEAD
        if event_id is not None:
            if type(event_id) is not str or not _is_id(event_id, self._max_id):
                event_id = check_id("event_id", event_id, self._max_id)
            size += len(event_id)  # in place of the generated id counted in the overhead
        if job_id is not None:
            if type(job_id) is not str or not _is_id(job_id, self._max_id):
                job_id = check_id("job_id", job_id, self._max_id)
            size += len(job_id) + _STR_OVERHEAD
        if self._pid != os.getpid():
            self._after_fork_in_child()  # a fork that skipped os.register_at_fork hooks
        refusal = None
        lock = self._lock
        lock.acquire()  # cheaper than `with` on this path; released in the finally
        try:
            if (
                self._outstanding >= self._max_queue
                or self._outstanding_bytes + size > self._max_queue_bytes
                or self._stopping  # also set once closed
            ):
                refusal = self._refuse_locked(size)
            if refusal is None:
                seq = self._seq = self._seq + 1
                if event_id is None:
                    event_id = self._id_prefix + hex(seq)  # cheapest of the spellings
                queue = self._queue
                queue.append((seq, event_id, entity, metric, value, ts, meta, job_id, size))
                self._outstanding += 1
                self._outstanding_bytes += size
                n = len(queue)
        finally:
            lock.release()
        if refusal is not None:  # reported outside the lock: on_drop may call stats()
            self._report_refusal(refusal, event_id, entity, metric, value, ts, meta, job_id)
            return None
        if n == 1 or n == self._batch_size or self._worker_gone:
            # The queue just became non-empty, or just reached a full batch (a sender that
            # is awake drains every full batch before it sleeps again), or the sender is
            # not running: wake (or start) it. Other calls skip the Event.set() cost.
            self._kick()
        return event_id

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything accepted so far, without waiting for ``flush_interval``.

        Returns True once every event accepted before the call is delivered or dropped
        (see ``stats()``/``on_drop`` for which), False if ``timeout`` (default:
        ``shutdown_timeout``; ``math.inf`` for no limit) passed first. Never raises for
        delivery reasons.

        Called on the sender thread (from ``on_drop`` or a logging handler), it cannot
        wait for that thread: it asks for a prompt send and returns at once, True only
        if everything is already settled.
        """
        deadline = self._deadline_in(timeout)
        with self._lock:
            target = self._seq
            if self._settled_locked(target):
                return True
            if threading.current_thread() is self._thread:
                self._flush_asked = True  # the next rounds send without waiting
                return False
            self._flush_waiters += 1
        try:
            self._kick()
            with self._settled:
                while not self._settled_locked(target):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._settled.wait(min(remaining, threading.TIMEOUT_MAX))
                return True
        finally:
            with self._lock:
                self._flush_waiters -= 1

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop accepting, deliver what can be within ``timeout``, stop the thread.

        What is still undelivered at the deadline is dropped with reason ``shutdown``
        (reported to ``on_drop`` and logged). Returns True when nothing was dropped.
        Idempotent; after it, ``track()`` refuses events (reason ``closed``). ``timeout``
        defaults to ``shutdown_timeout``; ``math.inf`` waits as long as delivery takes.

        Called on the sender thread (from ``on_drop`` or a logging handler), it cannot
        wait for that thread: it stops intake and returns False at once, and the sender
        thread finishes the shutdown itself, by the same deadline.
        """
        deadline = self._deadline_in(timeout)
        if threading.current_thread() is self._thread:
            with self._lock:
                if not self._closed:
                    self._finish_on_worker = True
            self._begin_shutdown(deadline)
            return False
        self._begin_shutdown(deadline)
        return self._finish_shutdown(deadline)

    def stats(self) -> Stats:
        """A consistent snapshot of the counters (see :class:`~enso_tracker.Stats`)."""
        with self._lock:
            return Stats(
                accepted=self._seq,
                delivered=self._delivered,
                dropped=dict(self._dropped),
                refused=dict(self._refused),
                retried=self._retried,
                queued=self._outstanding - len(self._inflight) - len(self._inflight_raw),
                queued_bytes=self._outstanding_bytes
                - sum(p.size for p in self._inflight)
                - sum(item[_SIZE] for item in self._inflight_raw),
                in_flight=len(self._inflight) + len(self._inflight_raw),
                requests=self._requests,
                failed_requests=self._failed_requests,
                logins=self._sender.logins,
                worker_errors=self._worker_errors,
                hook_errors=self._hook_errors.count,
                auth_state=self._auth_state,
                last_error=self._last_error,
                last_success_at=self._last_success_at,
            )

    # ------------------------------------------------------------- track() helpers

    def _refuse_locked(self, size: int) -> DropReason | None:
        """Why the event cannot be queued, or None if room was made (``block`` policy)."""
        if self._stopping:
            return self._count_refusal("closed", "track() after shutdown()")
        cfg = self._config
        if cfg.queue_full_policy == "block" and threading.current_thread() is not self._thread:
            deadline = time.monotonic() + cfg.block_timeout
            while self._is_full_locked(size) and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._room.wait(remaining)
            if not self._is_full_locked(size) and not self._stopping:
                return None
            if self._stopping:
                return self._count_refusal("closed", "track() after shutdown()")
        return self._count_refusal(
            "queue_full",
            f"queue full ({self._outstanding} events, ~{self._outstanding_bytes} bytes; "
            f"max_queue_size={cfg.max_queue_size}, max_queue_bytes={cfg.max_queue_bytes})",
        )

    def _is_full_locked(self, size: int) -> bool:
        return (
            self._outstanding >= self._max_queue
            or self._outstanding_bytes + size > self._max_queue_bytes
        )

    def _count_refusal(self, kind: DropKind, message: str) -> DropReason:
        self._refused[kind] = self._refused.get(kind, 0) + 1
        return DropReason(kind=kind, message=message)

    def _report_refusal(
        self,
        reason: DropReason,
        event_id: str | None,
        entity: str,
        metric: str,
        value: int | float | Decimal,
        ts: int,
        meta: bytes | None,
        job_id: str | None,
    ) -> None:
        item: QueuedEvent = (0, event_id or "", entity, metric, value, ts, meta, job_id, 0)
        self._report([([item], reason)])

    def _kick(self) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start_worker()
        self._wake.set()

    def _start_worker(self) -> None:
        try:
            self._start_worker_locked()
        finally:
            self._logger.emit()  # "died"/"cannot start" lines, once _start_lock is free

    def _start_worker_locked(self) -> None:
        with self._start_lock:
            thread = self._thread
            if (thread is not None and thread.is_alive()) or self._closed:
                return
            if thread is not None:
                self._logger(logging.ERROR, "dead", "enso-tracker sender thread died; restarting")
            thread = threading.Thread(
                target=_run_worker,
                args=(weakref.ref(self),),
                name="enso-tracker-sender",
                daemon=True,
            )
            self._worker_gone = False
            try:
                thread.start()
            except RuntimeError as exc:  # e.g. at interpreter shutdown
                self._worker_gone = True
                self._logger(logging.ERROR, "start", "cannot start the sender thread: %s", exc)
                return
            self._thread = thread

    def _deadline_in(self, timeout: float | None) -> float:
        """The ``time.monotonic()`` deadline of a public call's timeout (may be ``inf``)."""
        if timeout is None:
            timeout = self._config.shutdown_timeout
        if not timeout >= 0:  # negative, or NaN
            timeout = 0.0
        return time.monotonic() + timeout

    # ----------------------------------------------------------- the sender thread

    def _settled_locked(self, seq: int) -> bool:
        """Every event up to ``seq`` is delivered or dropped, and its drop reported."""
        return self._reporting == 0 and self._min_unsettled_locked() > seq

    def _min_unsettled_locked(self) -> int:
        """The lowest sequence not yet settled, in O(log n) amortised: the queue is in
        sequence order, in-flight events are one batch, and everything else out of order
        is in the ``_unsettled`` heap (stale entries are dropped as they surface)."""
        low = self._queue[0][_SEQ] if self._queue else _NO_SEQ
        if self._inflight_raw:
            low = min(low, self._inflight_raw[0][_SEQ])
        for p in self._inflight:
            if p.seq < low:
                low = p.seq
        heap = self._unsettled
        while heap and heap[0][1].done:
            heapq.heappop(heap)[1].parked = False
        if heap and heap[0][0] < low:
            low = heap[0][0]
        return low

    def _step(self) -> float | None:
        """One round of the sender loop: send a batch, or say how long to sleep.

        Returns 0.0 after sending, the seconds to sleep (``None``: until woken), or
        ``_CLOSED``. It never sleeps itself, so the loop can drop its strong reference
        to the tracker while idle.
        """
        self._wake.clear()
        with self._lock:
            if self._closed:
                return _CLOSED
            now = time.monotonic()
            finish = self._finish_on_worker and (not self._outstanding or now >= self._deadline)
            if not finish:
                taken, wait = self._plan_locked(now)
                if self._finish_on_worker:  # shutdown() from on_drop: this thread ends it
                    wait = min(self._deadline - now, math.inf if wait is None else wait)
        if finish:
            self._finish_shutdown(self._deadline)
            return _CLOSED
        if not taken:
            return wait
        self._send(taken)
        return 0.0

    def _plan_locked(self, now: float) -> tuple[list[_Pending | QueuedEvent], float | None]:
        """What to send now (ready retries first, then the queue), or how long to sleep."""
        stopping = self._stopping
        if now < self._gate_until:
            return [], self._gate_until - now
        retry = self._retry
        while retry and retry[0].due <= now:
            self._ready.append(heapq.heappop(retry))
        queue = self._queue
        if queue and self._batch_clock is None:
            self._batch_clock = now
        queue_due = bool(queue) and (
            len(queue) + len(self._ready) >= self._batch_size
            or stopping
            or self._flush_waiters > 0
            or self._flush_asked
            or now - (self._batch_clock or now) >= self._config.flush_interval
        )
        if self._queue_turn and queue:
            # A batch of retries just failed: try fresh events before it again, so one bad
            # batch cannot hold up the rest, and a success tells "server down" from
            # "this batch is the trouble" (see _backoff_locked).
            self._queue_turn = False
            fresh = [queue.popleft() for _ in range(min(len(queue), self._batch_size))]
            if not queue:
                self._batch_clock = None
            self._inflight = []
            self._inflight_raw = fresh
            return [*fresh], 0.0
        if not self._ready and not queue_due:
            waits = []
            if queue and self._batch_clock is not None:
                waits.append(self._batch_clock + self._config.flush_interval - now)
            if retry:
                waits.append(retry[0].due - now)
            return [], (max(min(waits), 0.0) if waits else None)
        taken: list[_Pending | QueuedEvent] = []
        limit = self._batch_size
        ready = self._ready
        while ready and len(taken) < limit and ready[0].group > len(taken):
            limit = min(limit, ready[0].group)
            taken.append(ready.popleft())
        room = limit - len(taken)
        if queue_due:
            while queue and room:
                taken.append(queue.popleft())
                room -= 1
            if not queue:
                self._batch_clock = None
                self._flush_asked = False
        self._inflight = [p for p in taken if isinstance(p, _Pending)]
        # Raw queue items become _Pending in _send; count them in flight from now on.
        self._inflight_raw = [q for q in taken if not isinstance(q, _Pending)]
        return taken, 0.0

    def _encode(self, item: QueuedEvent) -> bytes:
        # msgspec hands back its growth buffer (up to 1.5x the text): an exact copy keeps
        # a retried event's memory what max_queue_bytes counts.
        return bytes(memoryview(self._encoder.encode(*item[_ID:_SIZE])))

    def _send(self, taken: list[_Pending | QueuedEvent]) -> None:
        # Encode outside the lock: only this thread touches these objects now.
        batch: list[_Pending] = []
        leftover: list[_Pending] = []
        too_large: list[_Pending] = []
        size = BODY_OVERHEAD
        hard_limit = self._config.max_batch_bytes
        unencodable: list[tuple[_Pending, Exception]] = []
        grown = 0
        for entry in taken:
            if isinstance(entry, _Pending):
                p = entry
            else:
                try:
                    body = self._encode(entry)
                except Exception as exc:  # validation should make this impossible
                    unencodable.append((_Pending(0.0, entry[_SEQ], entry, b"", entry[_SIZE]), exc))
                    continue
                # Once encoded, the body is what is kept: it replaces the metadata JSON
                # the tuple held (read back from the body if the event is ever reported),
                # and the event's size becomes what it now holds (max_queue_bytes).
                meta = entry[_META]
                held = entry[_SIZE] + len(body) + _PENDING_OVERHEAD
                if meta is not None:
                    held -= len(meta) + _BYTES_OVERHEAD
                    entry = (*entry[:_META], _IN_BODY, entry[_JOB], entry[_SIZE])
                grown += held - entry[_SIZE]
                p = _Pending(0.0, entry[_SEQ], entry, body, held)
            need = len(p.body) + (1 if batch else 0)
            if leftover or (batch and size + need > self._byte_limit):
                leftover.append(p)
            elif BODY_OVERHEAD + len(p.body) > hard_limit:
                too_large.append(p)
            else:
                batch.append(p)
                size += need
        now = time.monotonic()
        reports: _Reports = []
        try:
            with self._lock:
                if self._closed:
                    return
                self._outstanding_bytes += grown
                self._inflight = batch
                self._inflight_raw = []
                for p in reversed(leftover):
                    self._ready.appendleft(p)
                    self._park_locked(p)
                if too_large:
                    self._drop_locked(
                        too_large,
                        DropReason(
                            kind="too_large",
                            message=f"event alone is larger than max_batch_bytes={hard_limit}",
                        ),
                        reports,
                    )
                for p, error in unencodable:
                    self._drop_locked(
                        [p],
                        DropReason(
                            kind="unencodable", message=f"cannot be encoded as JSON: {error!r}"
                        ),
                        reports,
                    )
                deadline = self._deadline
        finally:
            self._hand_over(reports)
        if not batch:
            return
        for p in batch:
            p.attempts += 1
            if p.first_sent == 0.0:
                p.first_sent = now
        timeout = self._config.timeout
        if deadline != math.inf:
            timeout = max(min(timeout, deadline - now), 0.05)
        try:
            outcome = self._sender.send(join_batch([p.body for p in batch]), timeout)
        except Exception as exc:  # a bug in a sender must not lose the batch
            what = describe_exception(exc)
            self._logger(logging.ERROR, "sender", "sender raised %s; will retry", what)
            with self._lock:
                self._worker_errors += 1
            outcome = Retry(f"sender raised {what}")
        self._settle(batch, outcome)

    def _settle(self, batch: list[_Pending], outcome: Outcome) -> None:
        reports: _Reports = []
        now = time.monotonic()
        try:
            with self._lock:
                if self._closed:
                    self._inflight = []
                    return  # shutdown() already reported these as dropped at its deadline
                self._requests += 1
                for p in batch:  # settled from here, unless parked again for a retry
                    p.done = True
                if isinstance(outcome, Answered):
                    self._settle_answer_locked(batch, outcome, now, reports)
                else:
                    self._failed_requests += 1
                    self._failures += 1
                    self._last_error = outcome.message
                    if isinstance(outcome, Retry):
                        # Rate limits and timeouts say nothing about the batch's content.
                        suspect = outcome.status is None or outcome.status >= 500
                        self._backoff_locked(
                            batch, now, outcome.retry_after, reports, suspect=suspect
                        )
                        self._logger(
                            logging.WARNING,
                            "retry",
                            "Enso request failed, will retry %d events: %s",
                            len(batch),
                            outcome.message,
                        )
                    elif isinstance(outcome, TooLarge):
                        self._split_locked(batch, reports, outcome.message)
                    elif isinstance(outcome, Rejected):
                        self._drop_locked(
                            batch,
                            DropReason(
                                kind="rejected", message=outcome.message, status=outcome.status
                            ),
                            reports,
                        )
                    else:  # Unauthorized: keep the events while their budget lasts
                        if self._auth_state != "unauthorized":
                            self._logger.always(
                                logging.ERROR,
                                "Enso refuses the credentials; events stay queued and are "
                                "retried with backoff: %s",
                                outcome.message,
                            )
                        self._auth_state = "unauthorized"
                        self._backoff_locked(batch, now, None, reports)
                # Emptied only now: should the accounting above fail, the loop's recovery
                # puts the batch back in line instead of losing it.
                self._inflight = []
                self._settled.notify_all()
                self._room.notify_all()
        finally:
            self._hand_over(reports)

    def _settle_answer_locked(
        self,
        batch: list[_Pending],
        outcome: Answered,
        now: float,
        reports: _Reports,
    ) -> None:
        n = len(batch)
        # enso-api.md §11: an event is delivered only when the answer accounts for it.
        verdict = reconcile(outcome.answer, n)
        self._auth_state = "ok"  # a 2xx: Enso took the credentials
        if not verdict.reconciled:
            # Counts that do not add up vouch for nothing, not even the listed failures:
            # a failed request, the whole batch resent (same eventIds: dedup makes that
            # safe) until its retry budget runs out, then reported as retries_exhausted.
            self._failed_requests += 1
            self._failures += 1
            self._last_error = f"Enso's answer does not account for the batch: {verdict.problem}"
            self._logger(
                logging.WARNING,
                "unreconciled",
                "Enso's answer does not account for a %d-event batch (%s); resending it",
                n,
                verdict.problem,
            )
            self._backoff_locked(batch, now, None, reports)
            return
        self._failures = 0
        self._last_success_at = time.time()
        failed: dict[int, FailedRecord] = verdict.failures
        # Counts that add up but list fewer failures than they count: which of the
        # others failed is unknown, so they are all resent rather than guessed delivered.
        unsure = not verdict.vouched
        if unsure:
            self._last_error = f"Enso's answer leaves events unaccounted for: {verdict.problem}"
            self._logger(
                logging.WARNING,
                "unlisted",
                "Enso's answer to a %d-event batch leaves events unaccounted for (%s); "
                "resending them",
                n,
                verdict.problem,
            )
        if not failed and not unsure:  # the common case: everything delivered
            self._delivered += n
            self._outstanding -= n
            self._outstanding_bytes -= sum([p.size for p in batch])
            return
        delivered = 0
        retry: list[_Pending] = []
        rejected: dict[tuple[Any, Any, str], list[_Pending]] = {}
        for i, p in enumerate(batch):
            failure = failed.get(i)
            if failure is None:
                if unsure:
                    retry.append(p)
                else:
                    delivered += 1
                    self._forget_locked(p)
                continue
            status = failure.status
            if status is not None and (status >= 500 or status in _RETRYABLE_RECORD_STATUS):
                retry.append(p)
            else:
                key = (failure.code, status, failure.error or "rejected by Enso")
                rejected.setdefault(key, []).append(p)
        self._delivered += delivered
        for (code, status, message), group in rejected.items():
            self._drop_locked(
                group,
                DropReason(kind="rejected", message=message, code=code, status=status),
                reports,
            )
        if retry:
            self._last_error = self._last_error or "per-record failures"
            for p in retry:
                self._schedule_locked(p, now + self._jitter(p.attempts), now, reports)

    def _jitter(self, attempt: int) -> float:
        cfg = self._config
        return _jitter_rng.uniform(
            0, min(cfg.backoff_max, cfg.backoff_base * 2 ** min(attempt, 60))
        )

    def _backoff_locked(
        self,
        batch: list[_Pending],
        now: float,
        retry_after: float | None,
        reports: _Reports,
        *,
        suspect: bool = False,
    ) -> None:
        """A whole request failed: pause all sending, and put its events back in line.

        The pause (``Retry-After``, else full jitter on the consecutive failures) spares
        a struggling server. When the request before this one succeeded, the server is
        up and this batch itself may be the trouble (a poison record): it is split in
        half, and an event that fails alone waits on its own backoff, so the others
        get through around it instead of queueing behind it.
        """
        delay = self._jitter(self._failures) if retry_after is None else retry_after
        self._gate_until = now + delay
        # A batch of retries failed: next, probe with fresh events rather than retrying
        # it again at once (and the other way round), so neither starves the other.
        self._queue_turn = batch[0].attempts > 1
        keep = [p for p in batch if self._within_budget_locked(p, now, reports)]
        self._retried += len(keep)
        for p in keep:
            self._park_locked(p)
        if len(batch) == 1:
            for p in keep:  # alone and failing: on its own schedule, off the head of the line
                p.due = now + max(delay, self._jitter(p.attempts))
                heapq.heappush(self._retry, p)
            return
        if suspect and self._failures == 1:
            half = (len(batch) + 1) // 2
            for p in keep:
                p.group = min(p.group, half)
        self._ready.extend(keep)  # behind what is already waiting

    def _schedule_locked(self, p: _Pending, due: float, now: float, reports: _Reports) -> None:
        if self._within_budget_locked(p, now, reports):
            p.due = due
            heapq.heappush(self._retry, p)
            self._park_locked(p)
            self._retried += 1

    def _within_budget_locked(self, p: _Pending, now: float, reports: _Reports) -> bool:
        cfg = self._config
        if p.attempts > cfg.max_retries or now - p.first_sent > cfg.max_event_age:
            self._drop_locked(
                [p],
                DropReason(
                    kind="retries_exhausted",
                    message=f"gave up after {p.attempts} attempts over "
                    f"{now - p.first_sent:.1f} s; last error: {self._last_error}",
                ),
                reports,
            )
            return False
        return True

    def _split_locked(self, batch: list[_Pending], reports: _Reports, message: str) -> None:
        if len(batch) == 1:
            self._drop_locked(
                batch, DropReason(kind="too_large", message=message, status=413), reports
            )
            return
        # Enso's size limit is undocumented: learn it. Later batches stay at half this
        # body's size; a lone event above that is still tried on its own.
        body = BODY_OVERHEAD + sum(len(p.body) + 1 for p in batch) - 1
        self._byte_limit = max(BODY_OVERHEAD + 2, min(self._byte_limit, body // 2))
        for p in batch:
            p.attempts -= 1  # a split is not a failed attempt of the event
        for p in reversed(batch):
            self._ready.appendleft(p)
            self._park_locked(p)
        self._logger(
            logging.WARNING,
            "413",
            "Enso answered 413 to a %d-byte batch; batches are now cut at %d bytes",
            body,
            self._byte_limit,
        )

    def _recover_locked(self) -> None:
        """After an unexpected error mid-round: put what it had taken back in line."""
        if self._inflight_raw:
            self._queue.extendleft(reversed(self._inflight_raw))
            self._inflight_raw = []
        for p in reversed(self._inflight):
            self._ready.appendleft(p)
            self._park_locked(p)
        self._inflight = []

    def _park_locked(self, p: _Pending) -> None:
        """Note an unsettled event that is out of sequence order (waiting to be retried,
        or put back): ``flush()`` reads the lowest such sequence from a heap in O(log n)
        instead of scanning every pending event under the lock."""
        p.done = False
        if not p.parked:
            p.parked = True
            heapq.heappush(self._unsettled, (p.seq, p))

    def _forget_locked(self, p: _Pending) -> None:
        p.done = True
        self._outstanding -= 1
        self._outstanding_bytes -= p.size

    def _drop_locked(
        self,
        group: Iterable[_Pending],
        reason: DropReason,
        reports: _Reports,
    ) -> None:
        items = []
        for p in group:
            p.done = True
            item = p.item
            if item[_META] is _IN_BODY:  # reported with its metadata, read back from the body
                item = (*item[:_META], _metadata_of(p.body), item[_JOB], item[_SIZE])
            items.append(item)
            self._outstanding -= 1
            self._outstanding_bytes -= p.size
        self._dropped[reason.kind] = self._dropped.get(reason.kind, 0) + len(items)
        self._last_error = str(reason)
        reports.append((items, reason))
        self._reporting += 1

    def _public_events(self, items: Sequence[QueuedEvent]) -> list[Event]:
        return [
            Event(
                event_id=item[_ID],
                entity=item[_ENTITY],
                metric=item[_METRIC],
                value=item[_VALUE],
                timestamp=self._encoder.timestamp(item[_TS]),
                metadata=None if item[_META] is None else self._decode_metadata(item[_META]),
                job_id=item[_JOB],
            )
            for item in items
        ]

    def _hand_over(self, reports: _Reports) -> None:
        """Report drops counted by ``_drop_locked``, then let ``flush()`` see them done.

        Called with the lock released, after every locked section of the sender: it is
        also where log records queued under the lock are emitted.
        """
        if not reports:
            self._logger.emit()
            return
        try:
            self._report(reports)
        finally:
            with self._lock:
                self._reporting -= len(reports)
                self._settled.notify_all()

    def _report(self, reports: _Reports) -> None:
        """Log and hand drops to ``on_drop``; never under the lock, never raising."""
        for events, reason in reports:
            self._logger(
                logging.WARNING if reason.kind in ("queue_full", "closed") else logging.ERROR,
                f"drop:{reason.kind}",
                "enso-tracker dropped %d event(s): %s",
                len(events),
                reason,
            )
            hook = self._on_drop
            if hook is None:
                continue  # no hook: do not pay for building Event objects
            try:
                hook(self._public_events(events), reason)
            except Exception as exc:
                self._hook_errors.add()
                self._logger(
                    logging.ERROR, "hook", "on_drop raised %s; ignored", describe_exception(exc)
                )
        self._logger.emit()

    # ------------------------------------------------------------ shutdown & fork

    def _begin_shutdown(self, deadline: float) -> None:
        if self._pid != os.getpid():
            # A fork that skipped the hooks (uWSGI forks from C): the parent's events are
            # the parent's, never reported or waited for here.
            self._after_fork_in_child()
        with self._lock:
            if self._closed or self._stopping:
                return
            self._stopping = True
            self._deadline = deadline
            # Cut every backoff short: one more prompt try for everything that is left,
            # in acceptance order (the heap is re-ordered for its new keys).
            self._gate_until = 0.0
            for p in self._retry:
                p.due = 0.0
            heapq.heapify(self._retry)
            self._room.notify_all()  # blocked track() calls give up now
            pending = self._outstanding
        if pending:
            self._kick()
        else:
            self._wake.set()

    def _finish_shutdown(self, deadline: float) -> bool:
        with self._settled:
            while self._outstanding and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self._thread is None or not self._thread.is_alive():
                    break  # no sender to wait for (e.g. it could not start at exit)
                self._settled.wait(min(remaining, threading.TIMEOUT_MAX))
            if self._closed:
                return not self._dropped.get("shutdown")
            self._closed = True
            reports: _Reports = []
            left: list[_Pending] = [
                *self._ready,
                *self._retry,
                *self._inflight,
                *(_Pending(0.0, q[_SEQ], q, b"", q[_SIZE]) for q in self._inflight_raw),
                *(_Pending(0.0, q[_SEQ], q, b"", q[_SIZE]) for q in self._queue),
            ]
            self._ready.clear()
            self._retry.clear()
            self._unsettled.clear()
            self._inflight = []
            self._inflight_raw = []
            self._queue.clear()
            if left:
                self._drop_locked(
                    left,
                    DropReason(
                        kind="shutdown",
                        message="not delivered before the shutdown deadline "
                        f"(last error: {self._last_error}); events in flight may still "
                        "have reached Enso, and resending them is safe (same eventIds)",
                    ),
                    reports,
                )
            self._settled.notify_all()
            self._room.notify_all()
            delivered, dropped = self._delivered, dict(self._dropped)
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(min(max(deadline - time.monotonic(), 0.0), threading.TIMEOUT_MAX))
        # Closing the client also aborts a request still hanging past the deadline.
        try:
            self._sender.close()
        except Exception as exc:
            self._logger(
                logging.ERROR,
                "close",
                "closing the HTTP client failed: %s",
                describe_exception(exc),
            )
        _lifecycle.forget(self)
        lost = sum(dropped.values())
        self._logger.always(
            logging.WARNING if left else logging.INFO,
            "enso-tracker shut down: %d delivered, %d dropped%s",
            delivered,
            lost,
            f" {dropped}" if lost else "",
        )
        self._hand_over(reports)
        return not left

    def _after_fork_in_child(self) -> None:
        # The parent still owns (and will deliver) every event it had queued: the child
        # starts with empty books, fresh locks and no thread or connection.
        closed = self._closed or self._stopping
        self._init_state()
        self._closed = self._stopping = closed  # a tracker shut down (or stopping) stays so
        self._sender.after_fork()


def _wide_cost(name: str) -> int:
    """Bytes a non-ASCII name holds beyond ``len(name)``: its wider code units, and the
    UTF-8 copy CPython caches inside the str once msgspec has encoded it."""
    if name.isascii():
        return 0
    utf8 = len(name.encode("utf-8", "surrogatepass"))
    return sys.getsizeof(name) - _STR_OVERHEAD - len(name) + utf8


class _MetadataOnly(msgspec.Struct):
    metadata: msgspec.Raw = msgspec.Raw()  # empty: the body has no metadata


_decode_metadata_only = msgspec.json.Decoder(_MetadataOnly).decode


def _metadata_of(body: bytes) -> bytes | None:
    """The metadata JSON of an encoded event, read back from its wire body."""
    raw = _decode_metadata_only(body).metadata
    return bytes(raw) if raw else None


def _is_id(value: str, max_length: int) -> bool:
    return (
        0 < len(value) <= max_length
        and value.isascii()
        and value.isprintable()
        and (" " not in value)
    )


def _run_worker(ref: weakref.ReferenceType[Tracker]) -> None:
    """The sender thread. Catches everything: it must never die silently.

    It holds its tracker weakly while idle (as OpenTelemetry's worker does): a tracker
    dropped without ``shutdown()`` first delivers what it holds (the thread keeps it alive
    while anything is outstanding), then is collected; its finalizer wakes this thread,
    which finds the reference dead and exits, and closes its HTTP client.
    """
    tracker = ref()
    try:
        while tracker is not None:
            try:
                wait = tracker._step()
            except Exception as exc:
                error = describe_exception(exc)
                with tracker._lock:
                    tracker._worker_errors += 1
                    tracker._last_error = f"internal error: {error}"
                    tracker._recover_locked()
                tracker._logger(
                    logging.ERROR, "loop", "enso-tracker sender loop error (continuing): %s", error
                )
                wait = tracker._config.backoff_base  # no hot spin on a bug
            tracker._logger.emit()
            if wait == _CLOSED:
                return
            if wait is None or wait > 0:
                wake = tracker._wake
                if not tracker._outstanding:
                    tracker = None  # idle: let an unreferenced tracker be collected now
                wake.wait(None if wait is None else min(wait, threading.TIMEOUT_MAX))
            tracker = ref()
    except BaseException:
        # SystemExit or KeyboardInterrupt raised in this thread: put the batch back and
        # let the next track() (or flush) start a fresh thread.
        if tracker is not None:
            with tracker._lock:
                tracker._worker_errors += 1
                tracker._recover_locked()
            tracker._logger.always(
                logging.ERROR, "enso-tracker sender thread stopped; the next track() restarts it"
            )
            tracker._logger.emit()
        raise
    finally:
        if tracker is not None:
            tracker._worker_gone = True
