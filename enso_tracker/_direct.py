"""Sending a few events now, in the caller's thread, and saying what became of each.

:func:`send_events` (and :func:`send` for one event) is for scripts, cron jobs and the
command line: no tracker to manage, no thread, no queue and never a spool. Events are
checked exactly as ``Tracker.track()`` checks them (an error at the call site, nothing
sent), then POSTed by the tracker's own sender (``_http.sender.HttpSender``: the same
credentials handling, request deadline, answer bounds and classification), and each
event is judged by its own ``eventId`` from Enso's per-record answer (``_wire.reconcile``).

Retryable trouble (network, timeouts, 408/425/429, 5xx, an answer that does not account
for the batch, a per-record 5xx) is retried with the tracker's full-jitter backoff and
the *same* eventIds, so Enso's dedup keeps a resend from billing twice, until the
call's ``timeout``; what is still unsettled then is ``"undelivered"``.
"""

from __future__ import annotations

import base64
import math
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

import httpx
import msgspec

from ._config import DAY, Config, env_flag, options_from_env
from ._errors import (
    ConfigurationError,
    InvalidEventError,
    InvalidEventTypeError,
    describe_exception,
    short_repr,
)
from ._http.auth import make_credentials
from ._http.sender import (
    Answered,
    HttpSender,
    Outcome,
    Rejected,
    Retry,
    Sender,
    TooLarge,
    Unauthorized,
)
from ._retry import RetryPolicy
from ._validate import CheckedEvent, check_event
from ._wire import BODY_OVERHEAD, EventEncoder, join_batch, reconcile

__all__ = ["DEFAULT_SEND_TIMEOUT", "MAX_SEND_EVENTS", "SendResult", "send", "send_events"]

#: Default deadline of a whole :func:`send_events` call, retries included.
DEFAULT_SEND_TIMEOUT = 30.0
#: Most events one call takes: this is for a few events; a stream wants a ``Tracker``.
MAX_SEND_EVENTS = 10_000
_CREDENTIALS = ("api_key", "client_key", "client_secret")
_rng = random.Random()  # our own: a caller's random.seed() must not shape our backoff

SendState = Literal["delivered", "rejected", "unauthorized", "undelivered", "disabled"]


class SendResult(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one event given to :func:`send_events`, judged by its ``eventId``.

    ``state`` is one of:

    * ``"delivered"``: Enso's answer accounts for it as stored (a resend of an eventId
      Enso already holds counts once, so it is delivered too).
    * ``"rejected"``: Enso refused it for good (``code`` such as ``2002``, and ``status``,
      the record's or the request's HTTP status; 413 for an event too large alone).
      Sending it again unchanged will not help.
    * ``"unauthorized"``: Enso refused the credentials; nothing of it was stored. Fix
      them and send again with the same ``event_id``.
    * ``"undelivered"``: ``timeout`` passed first (network, 5xx, rate limits). It may
      or may not have reached Enso: send it again with the same ``event_id`` and Enso
      counts it once.
    * ``"disabled"``: sending is switched off (``disabled=True`` or ``ENSO_DISABLED=1``,
      as for a :class:`~enso_tracker.Tracker`): the event was checked, never sent.
    """

    event_id: str
    state: SendState
    #: Enso's message (rejected), or what went wrong (never a secret).
    message: str | None = None
    #: Enso's error code for a rejected record (``2002``, ``"27"``…), when it gave one.
    code: int | str | None = None
    #: The HTTP status (the record's ``statusCode``, or the request's), when there was one.
    status: int | None = None

    @property
    def delivered(self) -> bool:
        return self.state == "delivered"


class _Item(msgspec.Struct):
    event_id: str
    wire: bytes
    attempts: int = 0


def _event_error(index: int | None, exc: InvalidEventError) -> InvalidEventError:
    """``exc`` with its field named ``events[i].field`` when the call had several events."""
    if index is None:
        return exc
    text, prefix = str(exc), f"{exc.field}={short_repr(exc.value)}: "
    problem = text[len(prefix) :] if text.startswith(prefix) else text
    return type(exc)(f"events[{index}].{exc.field}", exc.value, problem)


def _prepare(events: Sequence[object], config: Config) -> list[_Item]:
    """Every event checked (the first bad one raises, before anything is sent), then
    given its eventId and encoded."""
    meta_encoder = msgspec.json.Encoder()
    single = len(events) == 1
    checked: list[CheckedEvent] = []
    seen: set[str] = set()
    for index, event in enumerate(events):
        try:
            fields = check_event(event, config, meta_encoder)
            given = fields[0]
            if given is not None and given in seen:
                raise InvalidEventError("event_id", given, "appears twice in one call")
        except InvalidEventError as exc:
            raise _event_error(None if single else index, exc) from None
        if given is not None:
            seen.add(given)
        checked.append(fields)
    # Fresh ids look like the tracker's: 80 random bits per call, then a counter.
    prefix = "evt_" + base64.b32encode(os.urandom(10)).decode("ascii").lower() + "_"
    encoder = EventEncoder()
    items: list[_Item] = []
    for index, (given, entity, metric, value, ts, meta, job_id) in enumerate(checked):
        event_id = given if given is not None else prefix + hex(index + 1)
        wire = encoder.encode(event_id, entity, metric, value, ts, meta, job_id)
        items.append(_Item(event_id, wire))
    return items


def _batches(items: list[_Item], config: Config) -> list[list[_Item]]:
    """``items`` cut into requests of at most ``max_batch_size`` events and bytes."""
    out: list[list[_Item]] = []
    current: list[_Item] = []
    size = BODY_OVERHEAD
    for item in items:
        cost = len(item.wire) + 1
        if current and (
            len(current) >= config.max_batch_size or size + cost > config.max_batch_bytes
        ):
            out.append(current)
            current, size = [], BODY_OVERHEAD
        current.append(item)
        size += cost
    if current:
        out.append(current)
    return out


class _Run:
    """One call's delivery loop: batches waiting (with the time each may go), results."""

    def __init__(self, sender: Sender, config: Config, deadline: float) -> None:
        self.sender = sender
        self.config = config
        self.deadline = deadline
        self.policy = RetryPolicy(
            max_retries=config.max_retries,
            max_event_age=math.inf,
            backoff_base=config.backoff_base,
            backoff_max=config.backoff_max,
        )
        self.waiting: list[tuple[float, list[_Item]]] = []
        self.results: dict[str, SendResult] = {}
        self.problem: tuple[str, int | None] = ("no answer from Enso before the deadline", None)

    def settle(self, items: list[_Item], state: SendState, **fields: Any) -> None:
        for item in items:
            self.results[item.event_id] = SendResult(event_id=item.event_id, state=state, **fields)

    def later(self, items: list[_Item], retry_after: float | None) -> None:
        """Back in line after a backoff (or Enso's ``Retry-After``), unless out of tries."""
        retry = [i for i in items if not self.policy.out_of_tries(i.attempts)]
        spent = [i for i in items if self.policy.out_of_tries(i.attempts)]
        message, status = self.problem
        self.settle(spent, "undelivered", message=message, status=status)
        if not retry:
            return
        attempt = max(i.attempts for i in retry)
        wait = self.policy.request_delay(attempt - 1, retry_after, _rng)
        self.waiting.append((time.monotonic() + wait, retry))

    def run(self, batches: list[list[_Item]]) -> None:
        now = time.monotonic()
        self.waiting = [(now, b) for b in batches]
        while self.waiting:
            self.waiting.sort(key=lambda w: w[0])
            at, batch = self.waiting[0]
            if at >= self.deadline:
                break  # the next try would start after the deadline
            pause = at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            left = self.deadline - time.monotonic()
            if left <= 0:
                break
            self.waiting.pop(0)
            for item in batch:
                item.attempts += 1
            body = join_batch([i.wire for i in batch])
            try:
                outcome: Outcome = self.sender.send(body, min(self.config.timeout, left))
            except Exception as exc:  # a Sender should not raise; a bug must not lose events
                outcome = Retry(describe_exception(exc))
            if self.judge(batch, outcome):
                break
        message, status = self.problem
        for _, batch in self.waiting:
            self.settle(batch, "undelivered", message=message, status=status)

    def judge(self, batch: list[_Item], outcome: Outcome) -> bool:
        """Settle or requeue ``batch`` by ``outcome``; True when nothing more can be sent."""
        match outcome:
            case Answered(answer=answer):
                verdict = reconcile(answer, len(batch))
                if not verdict.reconciled:
                    self.problem = (
                        f"Enso's answer does not account for the batch: {verdict.problem}",
                        None,
                    )
                    self.later(batch, None)
                    return False
                retry: list[_Item] = []
                for index, item in enumerate(batch):
                    failure = verdict.failures.get(index)
                    if failure is None:
                        if verdict.vouched:
                            self.settle([item], "delivered")
                        else:  # the counts say some unlisted event failed: which is unknown
                            self.problem = (
                                f"Enso's answer leaves events unaccounted for: {verdict.problem}",
                                None,
                            )
                            retry.append(item)
                        continue
                    status = failure.status
                    if self.policy.is_retryable_status(status):
                        self.problem = (failure.error or f"record failed with {status}", status)
                        retry.append(item)
                    else:
                        message = failure.error or "rejected by Enso"
                        self.settle(
                            [item], "rejected", message=message, code=failure.code, status=status
                        )
                if retry:
                    self.later(retry, None)
            case Retry(message=message, status=status, retry_after=retry_after):
                self.problem = (message, status)
                self.later(batch, retry_after)
            case TooLarge(message=message):
                if len(batch) == 1:
                    self.settle(batch, "rejected", message=message, status=413)
                else:  # split and try both halves now
                    half = len(batch) // 2
                    now = time.monotonic()
                    self.waiting += [(now, batch[:half]), (now, batch[half:])]
            case Rejected(message=message, status=status):
                self.settle(batch, "rejected", message=message, status=status)
            case Unauthorized(message=message, status=status):
                # The credentials are refused: every event still unsent would be too.
                rest = batch + [i for _, b in self.waiting for i in b]
                self.waiting = []
                self.settle(
                    rest,
                    "unauthorized",
                    message=f"Enso refuses the credentials: {message}",
                    status=status,
                )
                return True
        return False


def send_events(
    events: Iterable[Mapping[str, Any]],
    *,
    api_key: str | None = None,
    client_key: str | None = None,
    client_secret: str | None = None,
    timeout: float = DEFAULT_SEND_TIMEOUT,
    config: Config | None = None,
    transport: httpx.BaseTransport | None = None,
    **options: Any,
) -> list[SendResult]:
    """Send ``events`` now and return what became of each, in the order given.

    Each event is a mapping with ``track()``'s argument names: ``entity``, ``metric``,
    ``value`` and optionally ``timestamp``, ``metadata``, ``event_id``, ``job_id``. They
    are checked as ``track()`` checks them: a bad one raises
    :class:`~enso_tracker.InvalidEventError` naming ``events[i].field``, and nothing is
    sent. An event without ``event_id`` gets a fresh one (in its result).

    Credentials and options are ``Tracker``'s: ``api_key=`` or ``client_key=`` +
    ``client_secret=``, ``config=`` and any :class:`~enso_tracker.Config` option as a
    keyword (``base_url=``…); with no credential argument, ``ENSO_API_KEY`` or
    ``ENSO_CLIENT_KEY`` + ``ENSO_CLIENT_SECRET`` and ``ENSO_BASE_URL`` are read from the
    environment, as ``init()`` does. Nothing is ever written to disk: ``ENSO_SPOOL_DIR``
    and ``config.spool_dir`` are not used, and ``spool_dir=`` is refused.

    Returns within about ``timeout`` seconds (default 30): every attempt, backoff and
    login included; only a DNS lookup can overrun it. Never raises for delivery trouble.
    """
    if "spool_dir" in options:
        raise ConfigurationError("send_events() never uses a spool: drop spool_dir=")
    if "sender" in options:
        raise ConfigurationError("send_events() takes credentials, not a sender")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= DAY:
        raise ConfigurationError(
            f"timeout={timeout!r}: must be a positive number of seconds, at most {DAY:,.0f}"
        )
    if "disabled" not in options and env_flag(os.environ, "ENSO_DISABLED"):
        options["disabled"] = True  # as Tracker(): the environment's switch, unless given
    given = {"api_key": api_key, "client_key": client_key, "client_secret": client_secret}
    if all(v is None for v in given.values()):
        # As init() and Tracker.from_env(): the environment, then the keywords over it.
        env = options_from_env(os.environ)
        env.pop("spool_dir", None)
        given = {k: env.pop(k, None) for k in _CREDENTIALS}
        options = {**env, **options}
    try:
        cfg = (config or Config()).replace(spool_dir=None, **options)
    except TypeError as exc:
        raise ConfigurationError(str(exc)) from None
    if isinstance(events, Mapping):
        raise InvalidEventTypeError(
            "events", events, "must be a list of events; for one event call send()"
        )
    listed = list(events)
    if not listed:
        raise InvalidEventError("events", listed, "is empty: nothing to send")
    if len(listed) > MAX_SEND_EVENTS:
        raise InvalidEventError(
            "events", f"{len(listed)} events", f"more than {MAX_SEND_EVENTS}; use a Tracker"
        )
    if cfg.disabled:
        # As a disabled Tracker: checked as in production, credentials not needed (but
        # checked when given), nothing sent.
        if any(v is not None for v in given.values()):
            make_credentials(
                given["api_key"], given["client_key"], given["client_secret"], cfg.base_url
            )
        note = "not sent: sending is disabled (disabled=True or ENSO_DISABLED=1)"
        return [
            SendResult(event_id=item.event_id, state="disabled", message=note)
            for item in _prepare(listed, cfg)
        ]
    credentials = make_credentials(
        given["api_key"], given["client_key"], given["client_secret"], cfg.base_url
    )
    items = _prepare(listed, cfg)
    deadline = time.monotonic() + float(timeout)
    sender = HttpSender(cfg, credentials, transport)
    try:
        run = _Run(sender, cfg, deadline)
        run.run(_batches(items, cfg))
    finally:
        sender.close()
    return [run.results[item.event_id] for item in items]


def send(
    entity: str,
    metric: str,
    value: int | float | Decimal,
    *,
    timestamp: Any = None,
    metadata: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    job_id: str | None = None,
    timeout: float = DEFAULT_SEND_TIMEOUT,
    **connection: Any,
) -> SendResult:
    """Send one event now (``track()``'s arguments) and return what became of it.

    :func:`send_events` with one event: same checks, credentials and deadline.
    """
    event: dict[str, Any] = {"entity": entity, "metric": metric, "value": value}
    for key, given in (
        ("timestamp", timestamp),
        ("metadata", metadata),
        ("event_id", event_id),
        ("job_id", job_id),
    ):
        if given is not None:
            event[key] = given
    return send_events([event], timeout=timeout, **connection)[0]
