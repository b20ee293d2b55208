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
from ._items import (
    BYTES_OVERHEAD,
    ENTITY,
    EVENT_OVERHEAD,
    ID,
    IN_BODY,
    JOB,
    META,
    METRIC,
    PENDING_OVERHEAD,
    SEQ,
    SIZE,
    STR_OVERHEAD,
    TS,
    VALUE,
    Pending,
    QueuedEvent,
    metadata_of,
)
from ._log import DeferredLog, ErrorCounter
from ._model import DropKind, DropReason, Event, Stats
from ._schedule import NO_SEQ, RetryPolicy, Schedule
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
from ._wire import EventEncoder, FailedRecord, join_batch, reconcile
from .integrations import auto_enable

__all__ = ["Tracker"]


#: Per-record ``statusCode`` values worth another try (the rest are permanent).
_RETRYABLE_RECORD_STATUS = frozenset({408, 425, 429})
#: Drops waiting to be logged and handed to on_drop once the lock is released.
_Reports = list[tuple[list[QueuedEvent], DropReason]]
_NO_SEQ: Final = 1 << 62
_CLOSED: Final = -1.0  # _step(): the tracker is closed, the sender thread ends


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
        self._init_state()
        self._closed = False  # shutdown() finished: nothing more is accepted or sent
        _lifecycle.register(self, handle_sigterm=cfg.handle_sigterm)
        if cfg.integrations:
            auto_enable()

    def _init_state(self) -> None:
        """Everything that a forked child must get fresh (no I/O, no threads, no logging)."""
        cfg = self._config
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
        self._schedule = Schedule(
            RetryPolicy(
                max_retries=cfg.max_retries,
                max_event_age=cfg.max_event_age,
                backoff_base=cfg.backoff_base,
                backoff_max=cfg.backoff_max,
            ),
            batch_size=cfg.max_batch_size,
            byte_limit=cfg.max_batch_bytes,
            flush_interval=cfg.flush_interval,
            rng=_jitter_rng,
        )
        self._inflight: list[Pending] = []
        self._inflight_raw: list[QueuedEvent] = []  # taken from the queue, being encoded
        self._outstanding = 0  # events in queue + ready + retry + in flight
        self._outstanding_bytes = 0
        self._flush_waiters = 0
        self._flush_asked = False  # flush() from the sender thread: send what is queued now
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
        size = EVENT_OVERHEAD
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
            size += len(meta) + BYTES_OVERHEAD
        if event_id is not None:
            if type(event_id) is not str or not _is_id(event_id, self._max_id):
                event_id = check_id("event_id", event_id, self._max_id)
            size += len(event_id)  # in place of the generated id counted in the overhead
        if job_id is not None:
            if type(job_id) is not str or not _is_id(job_id, self._max_id):
                job_id = check_id("job_id", job_id, self._max_id)
            size += len(job_id) + STR_OVERHEAD
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
                - sum(item[SIZE] for item in self._inflight_raw),
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
        sequence order, in-flight events are one batch, and the schedule keeps the rest
        (events out of order) in a heap."""
        low = self._queue[0][SEQ] if self._queue else NO_SEQ
        if self._inflight_raw:
            low = min(low, self._inflight_raw[0][SEQ])
        for p in self._inflight:
            if p.seq < low:
                low = p.seq
        return min(low, self._schedule.low_water())

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

    def _plan_locked(self, now: float) -> tuple[list[Pending | QueuedEvent], float | None]:
        """What to send now, or how long to sleep; what is taken counts as in flight."""
        urgent = self._stopping or self._flush_waiters > 0 or self._flush_asked
        taken, wait = self._schedule.plan(now, self._queue, urgent=urgent)
        if taken:
            if not self._queue:
                self._flush_asked = False
            self._inflight = [p for p in taken if isinstance(p, Pending)]
            # Raw queue items become Pending in _send; in flight from now on.
            self._inflight_raw = [q for q in taken if not isinstance(q, Pending)]
        return taken, wait

    def _encode(self, item: QueuedEvent) -> bytes:
        # msgspec hands back its growth buffer (up to 1.5x the text): an exact copy keeps
        # a retried event's memory what max_queue_bytes counts.
        return bytes(memoryview(self._encoder.encode(*item[ID:SIZE])))

    def _send(self, taken: list[Pending | QueuedEvent]) -> None:
        # Encode outside the lock: only this thread touches these objects now.
        encoded: list[Pending] = []
        hard_limit = self._config.max_batch_bytes
        unencodable: list[tuple[Pending, Exception]] = []
        grown = 0
        for entry in taken:
            if isinstance(entry, Pending):
                p = entry
            else:
                try:
                    body = self._encode(entry)
                except Exception as exc:  # validation should make this impossible
                    unencodable.append((Pending(0.0, entry[SEQ], entry, b"", entry[SIZE]), exc))
                    continue
                # Once encoded, the body is what is kept: it replaces the metadata JSON
                # the tuple held (read back from the body if the event is ever reported),
                # and the event's size becomes what it now holds (max_queue_bytes).
                meta = entry[META]
                held = entry[SIZE] + len(body) + PENDING_OVERHEAD
                if meta is not None:
                    held -= len(meta) + BYTES_OVERHEAD
                    entry = (*entry[:META], IN_BODY, entry[JOB], entry[SIZE])
                grown += held - entry[SIZE]
                p = Pending(0.0, entry[SEQ], entry, body, held)
            encoded.append(p)
        now = time.monotonic()
        reports: _Reports = []
        try:
            with self._lock:
                if self._closed:
                    return
                self._outstanding_bytes += grown
                batch, too_large = self._schedule.cut(encoded, hard_limit)
                self._inflight = batch
                self._inflight_raw = []
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

    def _settle(self, batch: list[Pending], outcome: Outcome) -> None:
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
        batch: list[Pending],
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
        self._schedule.on_success()
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
        retry: list[Pending] = []
        rejected: dict[tuple[Any, Any, str], list[Pending]] = {}
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
                if self._schedule.retry_later(p, now):
                    self._retried += 1
                else:
                    self._exhaust_locked([p], now, reports)

    def _backoff_locked(
        self,
        batch: list[Pending],
        now: float,
        retry_after: float | None,
        reports: _Reports,
        *,
        suspect: bool = False,
    ) -> None:
        """A whole request failed: the schedule pauses sending and puts the batch back
        in line (bisecting it if it looks like the trouble); spent budgets are dropped."""
        exhausted = self._schedule.on_failure(batch, now, retry_after, suspect=suspect)
        self._retried += len(batch) - len(exhausted)
        if exhausted:
            self._exhaust_locked(exhausted, now, reports)

    def _exhaust_locked(self, group: list[Pending], now: float, reports: _Reports) -> None:
        for p in group:
            self._drop_locked(
                [p],
                DropReason(
                    kind="retries_exhausted",
                    message=f"gave up after {p.attempts} attempts over "
                    f"{now - p.first_sent:.1f} s; last error: {self._last_error}",
                ),
                reports,
            )

    def _split_locked(self, batch: list[Pending], reports: _Reports, message: str) -> None:
        body = self._schedule.on_too_large(batch)
        if body is None:
            self._drop_locked(
                batch, DropReason(kind="too_large", message=message, status=413), reports
            )
            return
        # Enso's size limit is undocumented: later batches stay at half this body's size.
        self._logger(
            logging.WARNING,
            "413",
            "Enso answered 413 to a %d-byte batch; batches are now cut at %d bytes",
            body,
            self._schedule.byte_limit,
        )

    def _recover_locked(self) -> None:
        """After an unexpected error mid-round: put what it had taken back in line."""
        if self._inflight_raw:
            self._queue.extendleft(reversed(self._inflight_raw))
            self._inflight_raw = []
        self._schedule.put_back(self._inflight)
        self._inflight = []

    def _forget_locked(self, p: Pending) -> None:
        p.done = True
        self._outstanding -= 1
        self._outstanding_bytes -= p.size

    def _drop_locked(
        self,
        group: Iterable[Pending],
        reason: DropReason,
        reports: _Reports,
    ) -> None:
        items = []
        for p in group:
            p.done = True
            item = p.item
            if item[META] is IN_BODY:  # reported with its metadata, read back from the body
                item = (*item[:META], metadata_of(p.body), item[JOB], item[SIZE])
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
                event_id=item[ID],
                entity=item[ENTITY],
                metric=item[METRIC],
                value=item[VALUE],
                timestamp=self._encoder.timestamp(item[TS]),
                metadata=None if item[META] is None else self._decode_metadata(item[META]),
                job_id=item[JOB],
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
            self._schedule.expedite()  # one more prompt try for everything that is left
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
            left: list[Pending] = [
                *self._schedule.drain(),
                *self._inflight,
                *(Pending(0.0, q[SEQ], q, b"", q[SIZE]) for q in self._inflight_raw),
                *(Pending(0.0, q[SEQ], q, b"", q[SIZE]) for q in self._queue),
            ]
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
    return sys.getsizeof(name) - STR_OVERHEAD - len(name) + utf8


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
