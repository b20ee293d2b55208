"""The tracker: the public class, and the accept path of ``track()``.

Owns the public calls (``track()``, ``flush()``, ``shutdown()``, ``stats()``) and the
hot-path copies of the bounds ``track()`` reads. Its base classes own the rest of the
object: :mod:`._tracker_parts` its construction, the pipeline it builds (and rebuilds in
a forked child) and the plumbing the public calls share; :mod:`._tracker_spool` the
dead-letter methods.

Design constraints (what must never break):

* ``track()`` validates, stamps an ``eventId`` and appends a tuple to the ledger's deque
  under one short lock: no I/O, no JSON of the batch, no call beyond the checks, and
  no attribute lookup it can avoid (``benchmarks/hot_path.py`` measures it).
* Bad arguments raise at the call site; delivery problems never raise into the caller.
* No user code (``on_drop``, log handlers) runs under the ledger's lock.

The rest of the pipeline sits behind it, one job per module (:mod:`._ledger` the books,
the queue and the lock; :mod:`._worker` the sender thread; the whole map is in
``docs/internals.md``).

Every accepted event ends in exactly one of: delivered, dropped with a reason (reported
to ``on_drop``, counted, logged), or still pending; ``stats()`` shows the books.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any

import httpx
import msgspec

from ._aio import AsyncMixin
from ._config import Config, options_from_env
from ._http.sender import Sender
from ._ledger import Ledger
from ._model import Stats
from ._record import BYTES_OVERHEAD, EVENT_OVERHEAD, STR_OVERHEAD, QueuedEvent
from ._reentry import (
    REENTRANT_STATS_WAIT,
    interrupted_inside,
    lock_free_within,
    register_lock_holders,
)
from ._tracker_spool import DeadLetterAdmin
from ._validate import (
    MAX_EXACT_INT,
    bad_value,
    check_id,
    check_name,
    coerce_value,
    encode_metadata,
    is_id,
    timestamp_ns,
    wide_cost,
)
from ._worker import Worker

__all__ = ["Tracker"]


class Tracker(AsyncMixin, DeadLetterAdmin):
    """Collects usage events and delivers them to Enso in the background.

    ``Tracker(api_key=...)`` or ``Tracker(client_key=..., client_secret=...)``; every
    option of :class:`Config` may be passed as a keyword, or a whole ``config=``.
    Thread-safe; fork-safe; usable as a context manager (``shutdown()`` on exit), also
    ``async with`` (``ashutdown()``); ``aflush``/``ashutdown`` wait without blocking the
    event loop, and ``flush_after`` flushes around a serverless handler.

    For tests: ``transport=`` is handed to httpx (e.g. ``httpx.MockTransport``), and
    ``sender=`` replaces the HTTP layer altogether (anything with the ``Sender``
    protocol's ``send``/``close``/``after_fork``/``logins``), in which case no
    credentials are passed. ``disabled=True`` (or ``ENSO_DISABLED=1``) validates and
    counts events and sends nothing, without credentials (see :class:`Config`).
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
        by_env = self._configure(
            api_key, client_key, client_secret, config, transport, sender, options
        )
        cfg = self._config
        self._metadata_encoder = msgspec.json.Encoder()
        # Hot-path copies of the bounds (attribute lookups on self are the cheapest).
        self._max_name = cfg.max_name_length
        self._max_id = cfg.max_id_length
        self._max_queue = cfg.max_queue_size
        self._max_queue_bytes = cfg.max_queue_bytes
        self._batch_size = cfg.max_batch_size
        self._build_parts()
        self._start(by_env)

    # ------------------------------------------------------------------ public API

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Tracker:
        """A tracker configured from ``ENSO_API_KEY`` or ``ENSO_CLIENT_KEY`` +
        ``ENSO_CLIENT_SECRET``, ``ENSO_BASE_URL`` and ``ENSO_SPOOL_DIR``; keywords override
        the environment. With ``ENSO_DISABLED=1`` no credentials are needed."""
        kwargs: dict[str, Any] = options_from_env(os.environ if environ is None else environ)
        kwargs.update(options)
        return cls(**kwargs)

    @property
    def config(self) -> Config:
        return self._config

    @property
    def shutdown_timeout(self) -> float:
        return self._config.shutdown_timeout

    def __repr__(self) -> str:
        led = self._ledger
        state = led.state.name.lower()  # open, stopping, closed
        if self._config.disabled:
            state += " disabled"
        pending = led.outstanding + led.on_disk
        return f"<Tracker {state} base_url={self._config.base_url!r} pending={pending}>"

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
            size += wide_cost(entity)
        if (
            type(metric) is not str
            or not metric.isascii()
            or not 0 < len(metric) <= self._max_name
            or metric.isspace()
        ):
            metric = check_name("metric", metric, self._max_name)
            size += wide_cost(metric)
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
            if type(event_id) is not str or not is_id(event_id, self._max_id):
                event_id = check_id("event_id", event_id, self._max_id)
            size += len(event_id)  # in place of the generated id counted in the overhead
        if job_id is not None:
            if type(job_id) is not str or not is_id(job_id, self._max_id):
                job_id = check_id("job_id", job_id, self._max_id)
            size += len(job_id) + STR_OVERHEAD
        if self._pid != os.getpid():
            self._after_fork_in_child()  # a fork that skipped os.register_at_fork hooks
        refusal = None
        led = self._ledger
        # `with`, not acquire()/try: CPython runs a signal handler (KeyboardInterrupt)
        # only after a call or on a backward jump, and arms a with-block's exit before
        # either: an interruption can never leave this lock held.
        with led.lock:
            if (
                led.outstanding >= self._max_queue
                or led.outstanding_bytes + size > self._max_queue_bytes
                or led.state  # not State.OPEN (0): stopping or closed
            ):
                refusal = led.refuse_locked(size, may_block=not self._worker.on_thread())
            if refusal is None:
                seq = led.seq + 1
                queue = led.queue
                n = len(queue) + 1
                item = (
                    seq,
                    event_id,
                    entity,
                    metric,
                    value,
                    ts,
                    meta,
                    job_id,
                    size - EVENT_OVERHEAD,
                )
                # No call between these stores and the append, which is the last call:
                # an interruption lands before all of them or after all of them, so the
                # books never count an event the queue does not hold, or the reverse.
                led.seq = seq
                led.outstanding += 1
                led.outstanding_bytes += size
                queue.append(item)
        if refusal is not None:  # reported outside the lock: on_drop may call stats()
            refused: QueuedEvent = (0, event_id or "", entity, metric, value, ts, meta, job_id, 0)
            self._reporter.report([([refused], refusal)])
            return None
        if event_id is None:  # generated, not stored: see _record.ID
            event_id = led.id_prefix + hex(seq)  # cheapest of the spellings
        if n == 1 or n == self._batch_size or led.worker_gone:
            # The queue just became non-empty, or just reached a full batch (a sender that
            # is awake drains every full batch before it sleeps again), or the sender is
            # not running: wake (or start) it. Other calls skip the Event.set() cost.
            self._worker.kick()
        return event_id

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything accepted so far, without waiting for ``flush_interval``.

        Returns True once every event accepted before the call is delivered or dropped
        (see ``stats()``/``on_drop`` for which), False if ``timeout`` (default:
        ``shutdown_timeout``; ``math.inf`` for no limit) passed first. Never raises for
        delivery reasons.

        When the sender thread cannot start (resource limits, or CPython 3.12.0-3.12.2
        after the main thread returned), it sends in the calling thread instead, within
        ``timeout``.

        Called on the sender thread (from ``on_drop`` or a logging handler), it cannot
        wait for that thread: it asks for a prompt send and returns at once, True only
        if everything is already settled. Called from a signal handler that interrupted
        this tracker's own code on the same thread, it waits for the tracker's lock no
        longer than ``timeout`` (the interrupted frame may hold it) and returns False if
        it stays held.
        """
        deadline = self._deadline_in(timeout)
        if self._pid != os.getpid():
            self._after_fork_in_child()  # never wait for (or resend) a parent's events
        led, worker = self._ledger, self._worker
        reentered = interrupted_inside(self._parts())
        if reentered and not lock_free_within(led.lock, deadline):
            return False
        with led.lock:
            target = led.seq
            if led.settled_locked(target):
                return True
            if worker.on_thread() or reentered:
                led.ask_prompt_send_locked()  # the next rounds send without waiting
                if worker.on_thread():
                    return False
            led.add_flush_waiter_locked()
        try:
            if not reentered:  # kick() may take locks the interrupted frame holds
                worker.kick()
                if worker.stalled():  # no thread could start: send from this thread
                    worker.deliver_inline(lambda: led.settled_now(target), deadline)
            return led.wait_settled(target, deadline)
        finally:
            led.flush_waiter_gone()

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop accepting, deliver what can be within ``timeout``, stop the thread.

        What is still undelivered at the deadline is dropped with reason ``shutdown``
        (reported to ``on_drop`` and logged). Returns True only when every event given to
        ``track()`` reached Enso: nothing dropped, for any reason, and nothing refused.
        Idempotent; after it, ``track()`` refuses events (reason ``closed``). ``timeout``
        defaults to ``shutdown_timeout``; ``math.inf`` waits as long as delivery takes.
        When the sender thread cannot start, it sends in the calling thread instead,
        within ``timeout``. It never raises.

        Called on the sender thread (from ``on_drop`` or a logging handler), it cannot
        wait for that thread: it stops intake and returns False at once, and the sender
        thread finishes the shutdown itself, by the same deadline. Called from a signal
        handler that interrupted this tracker's own code on the same thread, it cannot
        wait for that frame either: the shutdown runs on a helper thread (same deadline)
        and it returns False at once.
        """
        deadline = self._deadline_in(timeout)
        if interrupted_inside(self._parts()) and not self._called_back_inline(deadline):
            helper = threading.Thread(
                target=self.shutdown, args=(timeout,), name="enso-tracker-shutdown"
            )
            try:
                helper.start()
            except Exception:  # no thread can start: the exit hook shuts it down later
                self._reporter.log.always(
                    logging.ERROR,
                    "enso-tracker: shutdown() in a signal handler could not start its "
                    "helper thread; the tracker is shut down at exit instead",
                )
            return False
        if self._worker.on_thread():
            self._ledger.finish_on_sender()
            self._worker.begin_shutdown(deadline)
            return False
        self._begin_shutdown(deadline)
        return self._finish_shutdown(deadline)

    def stats(self) -> Stats:
        """A consistent snapshot of the counters (see :class:`~enso_tracker.Stats`).

        From a signal handler that interrupted this tracker's own code on the same
        thread, while that frame holds the lock, the snapshot is read without it (it
        may then be one event off, never blocked)."""
        if self._pid != os.getpid():
            self._after_fork_in_child()  # a child's books, never its parent's
        led = self._ledger
        locked = not interrupted_inside(
            (self, self._ledger, self._worker, self._worker.wake)
        ) or lock_free_within(led.lock, time.monotonic() + REENTRANT_STATS_WAIT)
        stats = led.snapshot(self._sender.logins, self._reporter.hook_errors.count, locked=locked)
        receipts = self._worker.receipts
        if receipts is not None and receipts.store.errors:
            stats = msgspec.structs.replace(stats, receipt_errors=receipts.store.errors)
        return stats


# Calls of these may hold the ledger's lock (or the wake event's) when a signal handler
# runs on top of them: see _reentry.interrupted_inside.
register_lock_holders(
    Tracker.track,
    Tracker.flush,
    Tracker.stats,
    Tracker.shutdown,
    Ledger.snapshot,
    Ledger.refuse_locked,
    Ledger.wait_settled,
    Ledger.handed_over,
    Ledger.finish_on_sender,
    Ledger.flush_waiter_gone,
    Worker.kick,
    Worker.begin_shutdown,
    Worker.finish_shutdown,
    threading.Event.set,
)
