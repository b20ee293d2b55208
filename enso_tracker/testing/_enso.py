"""The Enso API as :class:`FakeEnso` plays it: routes, validation, dedup, JWTs, state.

What carries the requests lives elsewhere (``_server.py``: a socket; ``_transport.py``:
an ``httpx.MockTransport``), and so do the scripted faults (``_faults.py``); everything
here is the behaviour a client can observe and the state a test inspects.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, Literal

import httpx
import msgspec

from ._faults import Fault, FaultPlan
from ._messages import DROP, TIMED_OUT, Incoming, Reply, route_of
from ._server import ServerRunner
from ._transport import make_transport

__all__ = [
    "CLICKHOUSE_TIMESTAMP_ERROR",
    "FakeEnso",
    "RecordedRequest",
    "ResponseShape",
    "derive_event_id",
]

ResponseShape = Literal["wrapped", "bare"]

#: Text of the per-record error the real API returns for an unparseable timestamp. The server
#: does not validate timestamps itself; ClickHouse rejects the ``NaN`` date JavaScript produced.
#: The ``\\n`` is a literal backslash-n, exactly as it appears in the decoded wire payload.
CLICKHOUSE_TIMESTAMP_ERROR: Final[str] = (
    "Cannot parse input: expected '\"' before: 'N NaN:NaN:NaN.NaN' "
    "(while reading the value of key timestamp): (at row 1)\\n"
    ": While executing WaitForAsyncInsert. "
)

_BATCH: Final = "/events/batch"
_SINGLE: Final = "/events"
_LOGIN: Final = "/auth/system-login"
_ROUTES: Final = frozenset({_BATCH, _SINGLE, _LOGIN})

#: Largest body a gzip request may inflate to; past it the request gets 413 (a bomb).
_MAX_INFLATED: Final = 256 * 1024 * 1024
_TRANSIENT_ERROR: Final = "Service temporarily unavailable"

# RFC 3339 date-time: full date, "T"/space, full time, optional fraction, mandatory offset.
# fromisoformat() alone would also accept week dates, basic format and offset-less times.
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder()

# Header values that authenticate: never shown by a repr (FakeEnso ends up in test logs).
_SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
# JSON members that hold a secret, string or not, in a body of any shape (even invalid JSON).
_SECRET_MEMBER: Final = re.compile(
    rb'("(?:clientSecret|accessToken|client_secret|access_token|apiKey|api_key)"\s*:\s*)'
    rb'(?:"(?:[^"\\]|\\.)*"|[^,}\]\s]+)'
)
REDACTED: Final = "<redacted>"


def _redact_header(name: str, value: str) -> str:
    if name.lower() not in _SECRET_HEADERS:
        return value
    scheme, space, credential = value.partition(" ")
    if space and credential and scheme.isalpha():  # keep "Bearer": it helps debugging
        return f"{scheme} {REDACTED}"
    return REDACTED


def redact_body(body: bytes) -> bytes:
    """``body`` with the values of secret JSON members (``clientSecret`` …) replaced."""
    return _SECRET_MEMBER.sub(rb'\1"' + REDACTED.encode() + rb'"', body)


class RedactedHeaders(dict[str, str]):
    """A plain ``dict`` of headers whose ``repr`` hides credentials; lookups are untouched."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr({name: _redact_header(name, value) for name, value in self.items()})


@dataclass(frozen=True, slots=True, repr=False)
class RecordedRequest:
    """One HTTP request the fake received, as the test sees it afterwards.

    ``headers`` has lowercase names so lookups do not depend on the client's casing.
    ``status`` is the status that was sent, or ``0`` when the connection was dropped
    without a response (``Fault(drop_connection=True)``, ``stop()`` during a hang, or a
    client read timeout through :meth:`FakeEnso.transport`).
    ``time`` is ``time.monotonic()`` at arrival, for measuring client backoff.

    ``repr()`` hides credentials (the ``Authorization`` value, ``clientSecret`` in login
    bodies), because reprs end up in test logs and CI output; ``headers``, ``body`` and
    ``json()`` hold the real values for assertions.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    time: float

    def json(self) -> Any:
        """Decode the body as JSON, to assert on what the client actually put on the wire."""
        return _DECODER.decode(self.body)

    def __repr__(self) -> str:
        headers = {name: _redact_header(name, value) for name, value in self.headers.items()}
        return (
            f"RecordedRequest(method={self.method!r}, path={self.path!r}, headers={headers!r}, "
            f"body={redact_body(self.body)!r}, status={self.status!r}, time={self.time!r})"
        )


def derive_event_id(event: Mapping[str, Any]) -> str:
    """Return the id the fake assigns to an event sent without ``eventId``.

    The docs say the server "may" derive an id from (metric, value, timestamp,
    CustomerEntityId). Doing so here reproduces the hazard: two distinct but identical
    events collapse into one. Integral floats are normalised to ints because the real
    server is JavaScript, where ``1`` and ``1.0`` are the same number.
    """
    value = event.get("value")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    material = _ENCODER.encode(
        [event.get("metric"), value, event.get("timestamp"), event.get("CustomerEntityId")]
    )
    return "derived_" + hashlib.sha256(material).hexdigest()


@dataclass(slots=True)
class _IssuedToken:
    expires_at: float  # time.monotonic() deadline, float-precise so sub-second lifetimes work
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class _RecordFailure:
    error: str
    code: int | str
    status_code: int


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _envelope(status: int, message: str | None = None, errors: list[Any] | None = None) -> bytes:
    """The generic error envelope; the docs show no other request-level error body."""
    return _ENCODER.encode(
        {"status": "error", "message": message or _phrase(status), "errors": errors or []}
    )


def _error(
    status: int,
    message: str | None = None,
    errors: list[Any] | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    return Reply(status=status, body=_envelope(status, message, errors), headers=headers)


def _success(data: Any, status: int = 200) -> Reply:
    body = _ENCODER.encode({"status": "success", "message": "Success", "data": data})
    return Reply(status=status, body=body)


def _valid_timestamp(value: object) -> bool:
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        return False
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:  # e.g. month 13, second 61
        return False
    return parsed.tzinfo is not None


def _non_empty_str(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _validate(record: object, known_entities: frozenset[str] | None) -> _RecordFailure | None:
    """Per-record checks, in the order the real service appears to apply them."""
    if not isinstance(record, dict):
        return _RecordFailure("Event must be an object", "validation", 400)
    entity = record.get("CustomerEntityId")
    if not _non_empty_str(entity):
        return _RecordFailure("Customer entity ID required", 2001, 400)
    if known_entities is not None and entity not in known_entities:
        return _RecordFailure("Customer entity not found", 2002, 404)
    if not _non_empty_str(record.get("metric")):
        return _RecordFailure(
            "metric is required and must be a non-empty string", "validation", 400
        )
    value = record.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _RecordFailure("value is required and must be a number", "validation", 400)
    if not _valid_timestamp(record.get("timestamp")):
        return _RecordFailure(CLICKHOUSE_TIMESTAMP_ERROR, "27", 400)
    if "metadata" in record and not isinstance(record["metadata"], dict):
        return _RecordFailure("metadata must be an object", "validation", 400)
    if "eventId" in record and not _non_empty_str(record["eventId"]):
        return _RecordFailure("eventId must be a non-empty string", "validation", 400)
    return None


def _inflate(request: Incoming, accept_gzip: bool) -> tuple[Incoming, Reply | None]:
    """The request with its body decoded (``Content-Encoding: gzip``), or the refusal:
    415 for an encoding not taken, 400 for a malformed gzip body, 413 past
    ``_MAX_INFLATED``. The recorded request holds the decoded body (its headers still say
    how it came)."""
    encoding = ""
    for name, value in request.headers.items():
        if name.lower() == "content-encoding":
            encoding = value.strip().lower()
    if encoding in ("", "identity") or request.body is None:
        return request, None
    if encoding != "gzip":
        return request, _error(415, f"Unsupported Content-Encoding: {encoding}")
    inflater = zlib.decompressobj(wbits=31)
    try:
        body = inflater.decompress(request.body, _MAX_INFLATED)
    except zlib.error:
        return request, _error(400, "Malformed gzip body")
    if inflater.unconsumed_tail:
        return request, _error(413)
    if not inflater.eof:
        return request, _error(400, "Truncated gzip body")
    request = replace(request, body=body)  # recorded decoded, even when refused
    if not accept_gzip:
        return request, _error(415, "Unsupported Content-Encoding: gzip")
    return request, None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class _Settings:
    """What a test may change at run time; ``reset()`` puts the constructor's values back."""

    response_shape: ResponseShape
    max_body_bytes: int | None
    known_entities: frozenset[str] | None
    token_lifetime: float
    client_credentials: Mapping[str, str]
    accept_gzip: bool = True


class FakeEnso:
    """A faithful, inspectable, fault-injectable Enso API server for tests.

    Accepts a bearer that is one of ``api_keys`` or an unexpired, unrevoked JWT issued by
    ``/auth/system-login`` for a pair in ``client_credentials``. ``known_entities=None``
    means every ``CustomerEntityId`` exists; otherwise unknown ids fail with 2002/404.
    ``response_shape`` picks between the two documented ``/events/batch`` response shapes
    so clients can be tested against both. ``max_body_bytes`` makes larger bodies get 413
    (measured after a gzip body is inflated). ``accept_gzip=False`` answers gzip bodies 415.
    Those five settings can also be changed at any time, and ``reset()`` restores them.

    Two ways in, sharing one state: ``start()`` serves real HTTP on ``url``, and
    ``transport()`` gives an ``httpx.MockTransport`` that needs no socket.
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = ("test-api-key",),
        client_credentials: Mapping[str, str] | None = None,
        token_lifetime: float = 3600.0,
        known_entities: Collection[str] | None = None,
        response_shape: ResponseShape = "wrapped",
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int | None = None,
        accept_gzip: bool = True,
    ) -> None:
        self._api_keys = tuple(key for key in api_keys if key)
        self._secret = secrets.token_bytes(32)

        # One re-entrant lock guards all state, so predicates passed to wait_for() may call
        # the public accessors while the condition holds the lock.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._runner = ServerRunner(host, port, self._dispatch, self._cond)
        self._plan = FaultPlan()

        self._response_shape: ResponseShape = "wrapped"
        self._known_entities: frozenset[str] | None = None
        self._token_lifetime = 0.0
        self._client_credentials: dict[str, str] = {}
        #: Bodies longer than this get 413; settable at any time (None = no limit).
        self.max_body_bytes = max_body_bytes
        #: ``Content-Encoding: gzip`` bodies are inflated (bounded) and served as plain
        #: ones; False answers them 415, as a server without compression support would.
        #: Settable at any time. Other encodings always get 415.
        self.accept_gzip = accept_gzip
        self.response_shape = response_shape
        self.known_entities = known_entities
        self.token_lifetime = token_lifetime
        self.client_credentials = client_credentials or {}
        self._defaults = _Settings(
            self._response_shape,
            max_body_bytes,
            self._known_entities,
            self._token_lifetime,
            dict(self._client_credentials),
            accept_gzip,
        )

        self._events: dict[str, dict[str, Any]] = {}
        self._duplicates: dict[str, int] = {}
        self._received = 0
        self._requests: list[RecordedRequest] = []
        self._login_count = 0
        self._in_flight = 0
        self._tokens: dict[str, _IssuedToken] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeEnso:
        """Bind and serve in a daemon thread; returns self so ``FakeEnso().start()`` chains.

        ``host`` may be an IPv4 or IPv6 literal (``"::1"``) or a name. A bind that fails
        (a busy port, an address this machine does not have) raises ``OSError`` saying
        where and why.

        After ``stop()``, starting again re-binds the same port and keeps recorded data,
        which is how tests simulate a server restart under a live client.
        """
        self._runner.start()
        return self

    def stop(self) -> None:
        """Stop promptly: wake hung requests, close the listener and every connection.

        Requests that are hanging or delayed are answered with a connection reset, as a
        crashing server would. Idempotent. ``transport()`` is not a socket and keeps working.
        """
        self._runner.stop()

    def transport(self) -> httpx.MockTransport:
        """An ``httpx.MockTransport`` served by this fake, for fast tests without a socket.

        Same state as the socket server (events, dedup, auth, recorded requests, faults),
        whether or not it is started: ``Tracker(api_key=..., base_url="https://any.host",
        transport=fake.transport())``. What differs, having no socket:
        ``Fault(drop_connection=True)`` raises ``httpx.ReadError``; a ``hang()`` or
        ``Fault(delay=...)`` blocks the calling thread until ``release()``/``reset()`` or its
        own end, and when the request's read timeout comes first it raises
        ``httpx.ReadTimeout`` and the request is recorded with status 0 and not processed
        (a socket server would still process it after the client gave up); ``stop()`` does
        not affect it; keep-alive and HTTP framing are not exercised. In an
        ``httpx.AsyncClient`` a hang or delay blocks the event loop.
        """
        return make_transport(self._dispatch)

    def __enter__(self) -> FakeEnso:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<FakeEnso {self.host}:{self.port} {state}>"

    @property
    def running(self) -> bool:
        """Whether the server is currently accepting connections."""
        return self._runner.running

    @property
    def host(self) -> str:
        """The interface the server binds to."""
        return self._runner.host

    @property
    def port(self) -> int:
        """The bound port (the one picked for ``port=0`` once started; 0 before)."""
        return self._runner.port

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:54321``."""
        if self.port == 0:
            raise RuntimeError("FakeEnso has not been started; no port is bound yet")
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 in brackets
        return f"http://{host}:{self.port}"

    @property
    def api_key(self) -> str:
        """The first of ``api_keys``: the bearer a client under test should send."""
        if not self._api_keys:
            raise RuntimeError("this FakeEnso accepts no api key (api_keys is empty)")
        return self._api_keys[0]

    # ------------------------------------------------------------------ settings

    @property
    def response_shape(self) -> ResponseShape:
        """Which documented ``/events/batch`` response shape to send; settable."""
        return self._response_shape

    @response_shape.setter
    def response_shape(self, shape: ResponseShape) -> None:
        if shape not in ("wrapped", "bare"):
            raise ValueError(f"response_shape must be 'wrapped' or 'bare', got {shape!r}")
        self._response_shape = shape

    @property
    def known_entities(self) -> frozenset[str] | None:
        """The ``CustomerEntityId`` values that exist (None: all); settable."""
        return self._known_entities

    @known_entities.setter
    def known_entities(self, entities: Collection[str] | None) -> None:
        if isinstance(entities, str):  # a lone id would silently become a set of letters
            raise TypeError("known_entities must be a collection of ids, not a str")
        with self._lock:
            self._known_entities = None if entities is None else frozenset(entities)

    @property
    def token_lifetime(self) -> float:
        """Seconds a JWT issued from now on stays valid; settable."""
        return self._token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"token_lifetime must be >= 0, got {seconds}")
        self._token_lifetime = float(seconds)

    @property
    def client_credentials(self) -> dict[str, str]:
        """``clientKey -> clientSecret`` pairs that ``/auth/system-login`` accepts; settable."""
        with self._lock:
            return dict(self._client_credentials)

    @client_credentials.setter
    def client_credentials(self, pairs: Mapping[str, str]) -> None:
        with self._lock:
            self._client_credentials = dict(pairs)

    # ------------------------------------------------------------------ inspection

    @property
    def events(self) -> dict[str, dict[str, Any]]:
        """Unique accepted events by eventId (derived ids included), first-received order."""
        with self._lock:
            return copy.deepcopy(self._events)

    def event_ids(self) -> list[str]:
        """Ids of the unique accepted events, in first-received order."""
        with self._lock:
            return list(self._events)

    @property
    def received(self) -> int:
        """Accepted event records including duplicates: what a non-deduping server counts."""
        with self._lock:
            return self._received

    @property
    def duplicates(self) -> dict[str, int]:
        """eventId -> number of extra copies received after the first."""
        with self._lock:
            return dict(self._duplicates)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in completion order."""
        with self._lock:
            return list(self._requests)

    def batch_requests(self) -> list[RecordedRequest]:
        """Only the ``/events/batch`` requests, e.g. to count client attempts."""
        return self._requests_for(_BATCH)

    def login_requests(self) -> list[RecordedRequest]:
        """Only the ``/auth/system-login`` requests, e.g. to check no bearer was sent."""
        return self._requests_for(_LOGIN)

    def _requests_for(self, route: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if route_of(r.path) == route]

    @property
    def login_count(self) -> int:
        """Number of ``/auth/system-login`` attempts, successful or not."""
        with self._lock:
            return self._login_count

    @property
    def in_flight(self) -> int:
        """Requests received but not yet answered, e.g. to know a request is now hanging."""
        with self._lock:
            return self._in_flight

    @property
    def pending_faults(self) -> int:
        """Scripted faults not yet consumed by a batch request."""
        with self._lock:
            return len(self._plan.faults)

    def wait_for(self, predicate: Callable[[FakeEnso], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds or ``timeout`` passes; return whether it held.

        The predicate is re-evaluated whenever a request arrives or completes, so tests
        never need sleeps to "let the background sender run".
        """
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self), timeout=timeout))

    def wait_for_events(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` unique events are stored."""
        return self.wait_for(lambda fake: len(fake._events) >= n, timeout)

    def reset(self, *, tokens: bool = False) -> None:
        """Back to the state right after construction, for the next test or test phase.

        Forgets recorded data (events, duplicates, requests, counters) and every fault
        (script, hang, failing and poison ids), and restores the settings
        (``response_shape``, ``max_body_bytes``, ``accept_gzip``, ``known_entities``,
        ``token_lifetime``, ``client_credentials``) to the constructor's values. Issued
        tokens stay valid unless ``tokens=True``: a reset between phases of one test
        should not look like a credential change to a client that is still running,
        while a reset between tests should not let one test's token work in the next.
        The server keeps running.
        """
        with self._lock:
            self._events.clear()
            self._duplicates.clear()
            self._received = 0
            self._requests.clear()
            self._login_count = 0
            self._plan.clear()
            defaults = self._defaults
            self._response_shape = defaults.response_shape
            self.max_body_bytes = defaults.max_body_bytes
            self.accept_gzip = defaults.accept_gzip
            self._known_entities = defaults.known_entities
            self._token_lifetime = defaults.token_lifetime
            self._client_credentials = dict(defaults.client_credentials)
            if tokens:
                self._tokens.clear()
            self._cond.notify_all()

    # ------------------------------------------------------------------ fault injection

    def script(self, *faults: Fault) -> None:
        """Queue faults; each following ``/events/batch`` request consumes one (FIFO)."""
        with self._lock:
            self._plan.script(faults)

    def chaos(
        self, p503: float = 0.0, p_store_then_drop: float = 0.0, seed: int = 0, status: int = 503
    ) -> None:
        """Random faults for every batch request no scripted fault covers: a 503 (or
        ``status``) with probability ``p503``, a stored batch whose answer is lost
        (``store_then_drop``) with ``p_store_then_drop``; reproducible from ``seed``.
        ``chaos()`` turns it off."""
        with self._lock:
            self._plan.chaos(p503, p_store_then_drop, seed, status)

    def hang(self, seconds: float | None) -> None:
        """Make every batch request wait ``seconds`` (None: until ``release()``/``stop()``)."""
        with self._lock:
            self._plan.hang(seconds)

    def release(self) -> None:
        """End ``hang()``: wake requests that are waiting and stop hanging new ones."""
        with self._lock:
            self._plan.end_hang()
            self._cond.notify_all()

    def fail_event_ids(self, ids: Collection[str], status: int = 503, times: int = 1) -> None:
        """Fail those eventIds per record with ``status`` the next ``times`` times seen.

        Models a transient storage failure for specific events; they are stored on the
        first delivery after the failures are used up.
        """
        with self._lock:
            self._plan.fail_ids(ids, status, times)

    def poison_event_ids(self, ids: Collection[str], status: int = 500) -> None:
        """Fail every whole ``/events/batch`` request that carries one of these eventIds.

        Models a server bug triggered by one record: a client that keeps resending the
        same batch, or retries it ahead of everything else, stalls behind it. An empty
        collection clears the poison.
        """
        with self._lock:
            self._plan.poison(ids, status)

    def revoke_tokens(self) -> None:
        """Invalidate every JWT issued so far, as a key rotation would; API keys still work."""
        with self._lock:
            for issued in self._tokens.values():
                issued.revoked = True

    # ------------------------------------------------------------------ serving

    def _dispatch(
        self,
        request: Incoming,
        *,
        interrupted: Callable[[], bool],
        read_timeout: float | None,
    ) -> Reply:
        """Route one request, record it and notify waiters (see ``_messages.Dispatch``)."""
        with self._lock:
            self._in_flight += 1
            self._cond.notify_all()
        reply = _error(500)
        try:
            request, refusal = _inflate(request, self.accept_gzip)
            reply = refusal or self._route(request, interrupted, read_timeout)
        finally:
            recorded = RecordedRequest(
                method=request.method,
                path=request.raw_path,
                headers=RedactedHeaders(request.headers),
                body=request.body or b"",
                status=reply.status,
                time=request.received_at,
            )
            with self._lock:
                self._in_flight -= 1
                self._requests.append(recorded)
                self._cond.notify_all()
        return reply

    def _route(
        self, request: Incoming, interrupted: Callable[[], bool], read_timeout: float | None
    ) -> Reply:
        if request.route not in _ROUTES:
            return _error(404)
        if request.method != "POST":
            return _error(405, headers=(("Allow", "POST"),))
        if request.route == _BATCH:
            read_deadline = None if read_timeout is None else request.received_at + read_timeout
            return self._handle_batch(request, interrupted, read_deadline)
        if request.body is None:
            return _error(400, "Malformed request body")
        if request.route == _LOGIN:
            return self._handle_login(request.body)
        return self._handle_single(request)

    def _wait(
        self,
        seconds: float | None,
        hang_generation: int | None,
        interrupted: Callable[[], bool],
        read_deadline: float | None,
    ) -> bool:
        """Wait out a hang or delay, never by polling; False if the client gave up first.

        Ends early on ``interrupted()`` (the socket server stopping) or, for a hang, on
        ``release()``/``reset()``.
        """
        until = None if seconds is None else time.monotonic() + seconds
        client_first = read_deadline is not None and (until is None or read_deadline < until)
        end = read_deadline if client_first else until

        def woken() -> bool:
            return interrupted() or (
                hang_generation is not None and self._plan.hang_generation != hang_generation
            )

        with self._cond:
            timeout = None if end is None else max(0.0, end - time.monotonic())
            if self._cond.wait_for(woken, timeout=timeout):
                return True
        return not client_first

    def _handle_batch(
        self, request: Incoming, interrupted: Callable[[], bool], read_deadline: float | None
    ) -> Reply:
        with self._lock:
            fault = self._plan.next_fault()
            hang = self._plan.current_hang()
        if hang is not None and not self._wait(hang[1], hang[0], interrupted, read_deadline):
            return TIMED_OUT
        if (
            fault is not None
            and fault.delay > 0
            and not self._wait(fault.delay, None, interrupted, read_deadline)
        ):
            return TIMED_OUT
        with self._lock:
            if interrupted():
                return DROP
        if fault is not None:
            if fault.drop_connection:
                return DROP
            if fault.status != 200:
                headers = (("Retry-After", fault.retry_after),) if fault.retry_after else ()
                if fault.body is not None:
                    return Reply(fault.status, fault.body, headers)
                return _error(fault.status, headers=headers)
            if fault.body is not None:
                return Reply(200, fault.body)

        if not self._authorized(request.headers):
            return _error(401)
        if request.body is None:
            return _error(400, "Malformed request body")
        if self.max_body_bytes is not None and len(request.body) > self.max_body_bytes:
            return _error(413)
        try:
            payload = _DECODER.decode(request.body)
        except msgspec.DecodeError:
            return _error(400, "Invalid JSON body")
        events = payload.get("events") if isinstance(payload, dict) else None
        if not isinstance(events, list) or not events:
            return _error(400, errors=[{"code": 2003, "message": "events array is required"}])
        with self._lock:
            poison_status = self._plan.poisoned_status(events)
        if poison_status is not None:  # the whole request fails, whatever else it carries
            return _error(poison_status)

        overrides = dict(fault.record_status) if fault and fault.record_status else {}
        failed: list[dict[str, Any]] = []
        with self._lock:
            for index, record in enumerate(events):
                outcome = self._accept(record, overrides.get(index))
                if isinstance(outcome, _RecordFailure):
                    failed.append(
                        {
                            "index": index,
                            "error": outcome.error,
                            "code": outcome.code,
                            "statusCode": outcome.status_code,
                        }
                    )
            shape = self._response_shape
        if fault is not None and fault.store_then_drop:
            return DROP  # stored, and the answer lost on the way back
        failed.reverse()  # the real API does not sort failedRecords; never let clients rely on it
        summary = {
            "success": len(events) - len(failed),
            "failed": len(failed),
            "total": len(events),
        }
        result = {"summary": summary, "failedRecords": failed}
        reply = Reply(200, _ENCODER.encode(result)) if shape == "bare" else _success(result)
        if fault is not None and fault.answer_twice:
            return replace(reply, twice=True)
        return reply

    def _handle_single(self, request: Incoming) -> Reply:
        if not self._authorized(request.headers):
            return _error(401)
        body = request.body or b""
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            return _error(413)
        try:
            record = _DECODER.decode(body)
        except msgspec.DecodeError:
            return _error(400, "Invalid JSON body")
        with self._lock:
            outcome = self._accept(record, None)
            if isinstance(outcome, _RecordFailure):
                return _error(
                    outcome.status_code,
                    outcome.error,
                    [{"code": outcome.code, "message": outcome.error}],
                )
            echoed = {**self._events[outcome], "eventId": outcome}
        return Reply(201, _ENCODER.encode(echoed))

    def _accept(self, record: object, override_status: int | None) -> _RecordFailure | str:
        """Validate and store one record (lock held); return its failure or its eventId."""
        failure = _validate(record, self._known_entities)
        if failure is not None:
            return failure
        assert isinstance(record, dict)
        explicit = record.get("eventId")
        event_id = explicit if isinstance(explicit, str) else derive_event_id(record)
        if override_status is not None:
            return _RecordFailure(_TRANSIENT_ERROR, "transient", override_status)
        failing_status = self._plan.take_record_failure(event_id)
        if failing_status is not None:
            return _RecordFailure(_TRANSIENT_ERROR, "transient", failing_status)
        self._received += 1
        if event_id in self._events:
            self._duplicates[event_id] = self._duplicates.get(event_id, 0) + 1
        else:
            self._events[event_id] = record
        return event_id

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        if token in self._api_keys:
            return True
        with self._lock:
            issued = self._tokens.get(token)
            return (
                issued is not None and not issued.revoked and time.monotonic() < issued.expires_at
            )

    def _handle_login(self, body: bytes) -> Reply:
        with self._lock:
            self._login_count += 1
        try:
            payload = _DECODER.decode(body)
        except msgspec.DecodeError:
            return _error(400, "Invalid JSON body")
        if not isinstance(payload, dict):
            return _error(401)
        key, secret = payload.get("clientKey"), payload.get("clientSecret")
        if not isinstance(key, str) or not isinstance(secret, str):
            return _error(401)
        with self._lock:
            expected = self._client_credentials.get(key)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            return _error(401)
        return _success({"accessToken": self._issue_token(key)})

    def _issue_token(self, subject: str) -> str:
        """Mint a real HS256 JWT so clients can read ``exp`` exactly as in production."""
        now = time.time()
        lifetime = self._token_lifetime
        header = _b64url(_ENCODER.encode({"alg": "HS256", "typ": "JWT"}))
        claims = {
            "sub": subject,
            "iat": int(now),
            "exp": int(now + lifetime),  # truncated: errs towards early refresh
            "jti": secrets.token_hex(16),  # every login yields a distinct token
        }
        signing_input = f"{header}.{_b64url(_ENCODER.encode(claims))}"
        signature = hmac.new(self._secret, signing_input.encode("ascii"), hashlib.sha256)
        token = f"{signing_input}.{_b64url(signature.digest())}"
        with self._lock:
            self._tokens[token] = _IssuedToken(time.monotonic() + lifetime)
        return token
