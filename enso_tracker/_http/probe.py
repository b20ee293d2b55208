"""Is Enso reachable, and does it take these credentials? Asked with the tracker's own stack.

One probe is an empty batch, ``{"events": []}``, POSTed by the tracker's sender
(``_http.sender.HttpSender``, with the credentials ``_http.auth.make_credentials`` built: the same
login, headers, request deadline, answer bounds and classification as every batch).
Enso answers it with code 2003 ("events array is required") once the credentials are
accepted, 401 when not; no usage is ever sent. The probe adds no HTTP of its own: it
sees the answer's status, ``Date`` and body through ``HttpSender.on_answer`` and the
token's lifetime as ``ClientCredentials.lifetime``, and only explains the sender's
:data:`~.sender.Outcome` in its own words. ``doctor`` shows one probe;
:func:`preflight` is what ``import`` asks before reading rows, retrying transient trouble
for at most :data:`PREFLIGHT_TIMEOUT` seconds so an unreachable Enso fails the run fast.

Owns: :class:`ProbeResult` and its kinds, :func:`probe`, :func:`probe_compression`
and :func:`preflight`.

Invariants:

* No HTTP of its own: every request is ``HttpSender.send(PROBE_BODY, ...)``.
* No usage is ever sent: the probe body is an empty batch.
* A :class:`ProbeResult` never holds a secret.
"""

from __future__ import annotations

import math
import random
import re
import time
from typing import Literal

import httpx
import msgspec

from .._config import Config
from .._errors import describe_exception
from .._retry import RetryPolicy
from .auth import ClientCredentials, Credentials
from .sender import Answered, HttpSender, Outcome, Rejected, Retry, TooLarge, Unauthorized

__all__ = [
    "PREFLIGHT_TIMEOUT",
    "PROBE_BODY",
    "ProbeResult",
    "preflight",
    "probe",
    "probe_compression",
]

PROBE_BODY = b'{"events":[]}'
#: Longest :func:`preflight` keeps trying an Enso that does not answer (or answers 5xx).
PREFLIGHT_TIMEOUT = 10.0
_CODE_2003 = re.compile(rb"\b2003\b")
_rng = random.Random()

ProbeKind = Literal[
    "accepted",  # Enso took the credentials (2xx, or 400 with code 2003)
    "login_refused",  # system-login refused the client credentials
    "unauthorized",  # 401 to the probe (after one fresh login, with client credentials)
    "forbidden",  # 403: authenticated, but this SystemUser may not send events
    "redirected",  # 3xx: the base URL is not Enso's API
    "unreachable",  # no HTTP answer at all: DNS, connect, TLS, timeout, reset
    "unavailable",  # an HTTP answer saying "later": 5xx, 408/425/429, an unreadable 2xx
    "unexpected",  # any other answer: reachable, credentials not refused, shape unknown
]
#: Kinds that ``import`` stops on: nothing it sent could be delivered.
BLOCKING: frozenset[str] = frozenset(
    {"login_refused", "unauthorized", "forbidden", "redirected", "unreachable", "unavailable"}
)


class ProbeResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one probe (or the last of a preflight's) found. Never holds a secret."""

    kind: ProbeKind
    #: For humans: the sender's words (no header, token or key is ever in them).
    message: str
    #: The HTTP status of the probe's answer (or of the login's, when that failed).
    status: int | None = None
    #: Enso's ``Date`` header and the wall-clock times around the attempt (``time.time()``),
    #: for a clock check.
    date: str | None = None
    sent_at: float = 0.0
    received_at: float = 0.0
    #: Client credentials: successful logins, and the token's lifetime in seconds.
    logins: int = 0
    token_lifetime: float | None = None
    #: Probes sent (a preflight may send several).
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.kind == "accepted"

    @property
    def login_failed(self) -> bool:
        return self.kind == "login_refused" or (
            self.logins == 0 and self.message.startswith("login")
        )


class _Seen:
    """What the sender showed of the last answer (``HttpSender.on_answer``)."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.date: str | None = None
        self.content = b""

    def __call__(self, response: httpx.Response, content: bytes) -> None:
        self.status = response.status_code
        self.date = response.headers.get("Date")
        self.content = content  # read within the sender's bounds (64 KiB for an error)


def _sender(
    config: Config, credentials: Credentials, transport: httpx.BaseTransport | None
) -> tuple[HttpSender, _Seen]:
    sender = HttpSender(config, credentials, transport)
    seen = _Seen()
    sender.on_answer = seen
    return sender, seen


def probe(
    config: Config,
    credentials: Credentials,
    timeout: float,
    transport: httpx.BaseTransport | None = None,
) -> ProbeResult:
    """Send one empty batch and say what Enso's answer (or its absence) means."""
    sender, seen = _sender(config, credentials, transport)
    sent_at = time.time()
    try:
        outcome: Outcome = sender.send(PROBE_BODY, timeout)
    except Exception as exc:  # a sender should not raise; doctor must not show a traceback
        outcome = Retry(describe_exception(exc))
    finally:
        received_at = time.time()
        sender.close()
    kind, status = _kind(outcome, seen, credentials)
    message = outcome.message if not isinstance(outcome, Answered) else "accepted"
    lifetime = credentials.lifetime if isinstance(credentials, ClientCredentials) else None
    return ProbeResult(
        kind=kind,
        message=message,
        status=status,
        date=seen.date,
        sent_at=sent_at,
        received_at=received_at,
        logins=credentials.logins,
        token_lifetime=lifetime,
    )


CompressionKind = Literal["accepted", "refused", "unknown"]


def probe_compression(
    config: Config,
    credentials: Credentials,
    timeout: float,
    transport: httpx.BaseTransport | None = None,
) -> tuple[CompressionKind, str]:
    """Whether Enso reads a gzip body: the empty batch again, gzip-compressed, without
    the sender's plain fallback. ``accepted``: answered as the plain probe is (2xx, or
    400 with code 2003: it read the JSON inside); ``refused``: 415, or a 400 without
    code 2003 (it did not read it); ``unknown``: anything else, with the sender's words."""
    sender, seen = _sender(config.replace(compression="gzip"), credentials, transport)
    sender.fallback = False
    try:
        outcome: Outcome = sender.send(PROBE_BODY, timeout)
    except Exception as exc:  # a sender should not raise; doctor must not show a traceback
        outcome = Retry(describe_exception(exc))
    finally:
        sender.close()
    kind, status = _kind(outcome, seen, credentials)
    if kind == "accepted":
        return "accepted", f"Enso read a gzip-compressed empty batch (HTTP {status})"
    if status in (400, 415):
        return "refused", f"Enso answered HTTP {status} to a gzip-compressed empty batch"
    message = outcome.message if not isinstance(outcome, Answered) else "accepted"
    return "unknown", message


def _kind(outcome: Outcome, seen: _Seen, credentials: Credentials) -> tuple[ProbeKind, int | None]:
    status = seen.status
    logging_in = isinstance(credentials, ClientCredentials) and credentials.logins == 0
    match outcome:
        case Answered():
            return "accepted", status
        case Rejected(status=rejected):
            if rejected == 400 and _CODE_2003.search(seen.content):
                return "accepted", rejected
            if rejected == 403:
                return "forbidden", rejected
            if 300 <= rejected < 400:
                return "redirected", rejected
            return "unexpected", rejected
        case Unauthorized(status=refused):
            return ("login_refused" if logging_in else "unauthorized"), refused
        case Retry(status=retry_status):
            if retry_status is None and (status is None or logging_in):
                return "unreachable", None
            return "unavailable", retry_status or status
        case TooLarge():
            return "unexpected", 413
    return "unexpected", status  # pragma: no cover  (every Outcome is matched above)


def preflight(
    config: Config,
    credentials: Credentials,
    budget: float = PREFLIGHT_TIMEOUT,
    transport: httpx.BaseTransport | None = None,
) -> ProbeResult:
    """Probe until Enso answers, at most ``budget`` seconds: unreachable and unavailable
    are retried (full-jitter backoff, as the tracker's), a refusal is final at once."""
    deadline = time.monotonic() + budget
    policy = RetryPolicy(
        max_retries=0,
        max_event_age=math.inf,
        backoff_base=config.backoff_base,
        backoff_max=min(config.backoff_max, 2.0),
    )
    attempts = 0
    while True:
        left = deadline - time.monotonic()
        result = probe(config, credentials, max(min(config.timeout, left), 0.001), transport)
        attempts += 1
        if result.kind not in ("unreachable", "unavailable"):
            break
        pause = policy.request_delay(attempts, None, _rng)
        if time.monotonic() + pause >= deadline:
            break
        time.sleep(pause)
    return msgspec.structs.replace(result, attempts=attempts)
