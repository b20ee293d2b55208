"""An in-process fake of the Enso usage-billing API, for tests.

:class:`FakeEnso` is a real HTTP/1.1 server on ``127.0.0.1`` that runs in a background
daemon thread. It speaks the wire contract of ``/events/batch``, ``/events`` and
``/auth/system-login`` as documented (see ``enso-api.md``), including the parts that surprise
clients: top-level ``"status": "success"`` with every record failed, the polymorphic
``code`` (``2002`` vs ``"27"``), unsorted ``failedRecords`` and content-derived event ids.
A real socket (rather than a mocked transport) lets tests exercise connection reuse, resets,
timeouts and restarts exactly as production code sees them.

Typical use::

    import httpx
    from enso_tracker.testing import FakeEnso, Fault

    def test_retries_on_503() -> None:
        with FakeEnso(known_entities={"ent_1"}) as fake:
            fake.script(Fault(status=503, retry_after="0"))
            ...  # point the client at fake.url with api key "test-api-key"
            assert fake.wait_for_events(1, timeout=5.0)
            assert len(fake.batch_requests()) == 2

Inspection (``events``, ``requests``, ``duplicates`` ...) is thread-safe and returns copies,
so assertions never race with the server threads. ``wait_for`` blocks on a condition that
is notified after every request, so tests wait for facts instead of sleeping.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import hmac
import re
import secrets
import selectors
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "CLICKHOUSE_TIMESTAMP_ERROR",
    "FakeEnso",
    "Fault",
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

_TRANSIENT_ERROR: Final = "Service temporarily unavailable"

# RFC 3339 date-time: full date, "T"/space, full time, optional fraction, mandatory offset.
# fromisoformat() alone would also accept week dates, basic format and offset-less times.
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request the fake received, as the test sees it afterwards.

    ``headers`` has lowercase names so lookups do not depend on the client's casing.
    ``status`` is the status that was sent, or ``0`` when the connection was dropped
    without a response (``Fault(drop_connection=True)``, or ``stop()`` during a hang).
    ``time`` is ``time.monotonic()`` at arrival, for measuring client backoff.
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


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by the next ``/events/batch`` request.

    Faults apply before authentication, so they model infrastructure (load balancer,
    gateway, network) failures in front of the real service:

    * ``delay``: wait this long first (cut short by ``stop()``), then do the rest.
    * ``drop_connection``: reset the TCP connection without any response.
    * ``status != 200``: answer with that status, ``Retry-After`` if given and ``body``
      (default: the error envelope); nothing is stored.
    * ``status == 200`` with ``body``: send that raw body (e.g. garbage); nothing is stored.
    * ``status == 200`` with ``record_status``: process normally, but the records at those
      request indexes fail with that per-record ``statusCode`` (code ``"transient"``) and
      are not stored.
    """

    status: int = 200
    retry_after: str | None = None
    body: bytes | None = None
    delay: float = 0.0
    drop_connection: bool = False
    record_status: Mapping[int, int] | None = None

    def __post_init__(self) -> None:
        """Reject impossible faults at script time, not deep inside a server thread."""
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status}")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")


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


@dataclass(frozen=True, slots=True)
class _Incoming:
    method: str
    raw_path: str
    route: str
    headers: dict[str, str]
    body: bytes | None  # None: the body could not be read (malformed framing)
    received_at: float


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False


_DROP: Final = _Reply(status=0, drop=True)


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
) -> _Reply:
    return _Reply(status=status, body=_envelope(status, message, errors), headers=headers)


def _success(data: Any, status: int = 200) -> _Reply:
    body = _ENCODER.encode({"status": "success", "message": "Success", "data": data})
    return _Reply(status=status, body=body)


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


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _Server(ThreadingHTTPServer):
    """Listening socket plus one daemon thread per connection."""

    daemon_threads = True
    allow_reuse_address = True  # so FakeEnso(port=old_port) works despite TIME_WAIT
    block_on_close = False  # stop() handles connection threads itself, with a bound

    def __init__(self, address: tuple[str, int], fake: FakeEnso) -> None:
        self.fake = fake
        super().__init__(address, _Handler)
        self.socket.setblocking(False)  # a client that vanishes before accept() cannot block us
        self._wake_reader, self._wake_writer = socket.socketpair()

    def serve_until_woken(self) -> None:
        """Accept connections until ``wake()``.

        Used instead of ``serve_forever()``, whose shutdown is only noticed at the next poll
        interval; the socketpair makes ``stop()`` immediate without any polling.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wake_reader for key, _ in ready):
                    return
                try:
                    request, client_address = self.get_request()
                except OSError:  # BlockingIOError: the client already went away
                    continue
                try:
                    self.process_request(request, client_address)
                except Exception:
                    self.handle_error(request, client_address)
                    self.shutdown_request(request)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept, forcing blocking mode: BSDs let accepted sockets inherit O_NONBLOCK."""
        request, client_address = self.socket.accept()
        request.setblocking(True)
        # The reply goes out as headers then body; without NODELAY, Nagle holds the body
        # until the client's delayed ACK (~40 ms), capping a keep-alive client at ~25 req/s.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return request, client_address

    def wake(self) -> None:
        """Make ``serve_until_woken()`` return; safe to call from any thread."""
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup, which can stall on odd hosts."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hang up; report genuine bugs."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Translates HTTP framing to ``FakeEnso._dispatch`` calls and writes the replies."""

    protocol_version = "HTTP/1.1"  # keep-alive, so pooled clients reuse connections
    server_version = "FakeEnso/1"
    sys_version = ""
    _rejected = False

    def _fake(self) -> FakeEnso:
        server = self.server
        assert isinstance(server, _Server)
        return server.fake

    def setup(self) -> None:
        """Register the connection so ``stop()`` can close it, or refuse it mid-stop."""
        super().setup()
        if not self._fake()._register_connection(self.connection):
            self._rejected = True
            self._drop()

    def handle(self) -> None:
        if not self._rejected:
            super().handle()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._fake()._unregister_connection(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; tests inspect ``FakeEnso.requests`` instead."""

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _serve(self) -> None:
        received_at = time.monotonic()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body = self._read_body()
        if body is None:
            self.close_connection = True  # framing is broken; the stream cannot be trusted
        route = _route_of(self.path)
        request = _Incoming(self.command, self.path, route, headers, body, received_at)
        reply = self._fake()._dispatch(request)
        if reply.drop:
            self._drop()
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            return None
        if size < 0:
            return None
        data = self.rfile.read(size)
        return data if len(data) == size else None

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers carry nothing the fake needs
                return b"".join(chunks)
            data = self.rfile.read(size)
            if len(data) != size:
                return None
            chunks.append(data)
            self.rfile.readline(65537)  # CRLF after the chunk

    def _drop(self) -> None:
        """Reset the connection: SO_LINGER (1, 0) makes close() send RST, not FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile holds a reference to the socket; the fd only closes when both are closed.
        self.rfile.close()
        self.connection.close()


class FakeEnso:
    """A faithful, inspectable, fault-injectable Enso API server for tests.

    Accepts a bearer that is one of ``api_keys`` or an unexpired, unrevoked JWT issued by
    ``/auth/system-login`` for a pair in ``client_credentials``. ``known_entities=None``
    means every ``CustomerEntityId`` exists; otherwise unknown ids fail with 2002/404.
    ``response_shape`` picks between the two documented ``/events/batch`` response shapes
    so clients can be tested against both. ``max_body_bytes`` makes larger bodies get 413.
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
    ) -> None:
        if token_lifetime < 0:
            raise ValueError(f"token_lifetime must be >= 0, got {token_lifetime}")
        self._api_keys = frozenset(key for key in api_keys if key)
        self._client_credentials = dict(client_credentials or {})
        self._token_lifetime = float(token_lifetime)
        self._known_entities = None if known_entities is None else frozenset(known_entities)
        self._response_shape: ResponseShape = "wrapped"
        self.response_shape = response_shape
        self._host = host
        self._port = port
        #: Bodies longer than this get 413; settable at any time (None = no limit).
        self.max_body_bytes = max_body_bytes
        self._secret = secrets.token_bytes(32)

        # One re-entrant lock guards all state, so predicates passed to wait_for() may call
        # the public accessors while the condition holds the lock.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._connections: dict[socket.socket, threading.Thread] = {}

        self._events: dict[str, dict[str, Any]] = {}
        self._duplicates: dict[str, int] = {}
        self._received = 0
        self._requests: list[RecordedRequest] = []
        self._login_count = 0
        self._in_flight = 0
        self._tokens: dict[str, _IssuedToken] = {}

        self._faults: deque[Fault] = deque()
        self._hang_active = False
        self._hang_seconds: float | None = None
        self._hang_generation = 0
        self._failing_ids: dict[str, tuple[int, int]] = {}  # eventId -> (status, times left)
        self._poison_ids: frozenset[str] = frozenset()
        self._poison_status = 500

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeEnso:
        """Bind and serve in a daemon thread; returns self so ``FakeEnso().start()`` chains.

        After ``stop()``, starting again re-binds the same port and keeps recorded data,
        which is how tests simulate a server restart under a live client.
        """
        with self._lock:
            if self._server is not None:
                return self
            server = _Server((self._host, self._port), self)
            self._port = int(server.server_address[1])
            self._stopping = False
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_until_woken,
                name=f"FakeEnso:{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop promptly: wake hung requests, close the listener and every connection.

        Requests that are hanging or delayed are answered with a connection reset, as a
        crashing server would. Idempotent.
        """
        with self._lock:
            server, thread = self._server, self._thread
            if server is None:
                return
            self._server = None
            self._thread = None
            self._stopping = True
            connections = list(self._connections.items())
            self._cond.notify_all()
        deadline = time.monotonic() + 2.0
        server.wake()
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        server.server_close()  # closes the listener: new connections are refused from here
        for sock, _ in connections:
            with contextlib.suppress(OSError):  # already closed by its own thread
                sock.shutdown(socket.SHUT_RDWR)  # unblocks threads reading idle keep-alives
        for _, worker in connections:
            if worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))

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
        return f"<FakeEnso {self._host}:{self._port} {state}>"

    @property
    def running(self) -> bool:
        """Whether the server is currently accepting connections."""
        with self._lock:
            return self._server is not None

    @property
    def host(self) -> str:
        """The interface the server binds to."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the one picked for ``port=0`` once started; 0 before)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:54321``."""
        if self._port == 0:
            raise RuntimeError("FakeEnso has not been started; no port is bound yet")
        return f"http://{self._host}:{self._port}"

    @property
    def response_shape(self) -> ResponseShape:
        """Which documented ``/events/batch`` response shape to send; settable."""
        return self._response_shape

    @response_shape.setter
    def response_shape(self, shape: ResponseShape) -> None:
        if shape not in ("wrapped", "bare"):
            raise ValueError(f"response_shape must be 'wrapped' or 'bare', got {shape!r}")
        self._response_shape = shape

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
            return [r for r in self._requests if _route_of(r.path) == route]

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
            return len(self._faults)

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

    def reset(self) -> None:
        """Forget recorded data and scripted faults (hang, failing ids included).

        Issued tokens stay valid: a reset between test phases should not look like a
        credential change to a client that is still running.
        """
        with self._lock:
            self._events.clear()
            self._duplicates.clear()
            self._received = 0
            self._requests.clear()
            self._login_count = 0
            self._faults.clear()
            self._failing_ids.clear()
            self._poison_ids = frozenset()
            self._end_hang()

    # ------------------------------------------------------------------ fault injection

    def script(self, *faults: Fault) -> None:
        """Queue faults; each following ``/events/batch`` request consumes one (FIFO)."""
        with self._lock:
            self._faults.extend(faults)

    def hang(self, seconds: float | None) -> None:
        """Make every batch request wait ``seconds`` (None: until ``release()``/``stop()``)."""
        if seconds is not None and seconds < 0:
            raise ValueError(f"seconds must be >= 0 or None, got {seconds}")
        with self._lock:
            self._hang_active = True
            self._hang_seconds = seconds

    def release(self) -> None:
        """End ``hang()``: wake requests that are waiting and stop hanging new ones."""
        with self._lock:
            self._end_hang()

    def _end_hang(self) -> None:
        self._hang_active = False
        self._hang_seconds = None
        self._hang_generation += 1
        self._cond.notify_all()

    def fail_event_ids(self, ids: Collection[str], status: int = 503, times: int = 1) -> None:
        """Fail those eventIds per record with ``status`` the next ``times`` times seen.

        Models a transient storage failure for specific events; they are stored on the
        first delivery after the failures are used up.
        """
        with self._lock:
            for event_id in ids:
                if times > 0:
                    self._failing_ids[event_id] = (status, times)
                else:
                    self._failing_ids.pop(event_id, None)

    def poison_event_ids(self, ids: Collection[str], status: int = 500) -> None:
        """Fail every whole ``/events/batch`` request that carries one of these eventIds.

        Models a server bug triggered by one record: a client that keeps resending the
        same batch, or retries it ahead of everything else, stalls behind it. An empty
        collection clears the poison.
        """
        with self._lock:
            self._poison_ids = frozenset(ids)
            self._poison_status = status

    def revoke_tokens(self) -> None:
        """Invalidate every JWT issued so far, as a key rotation would; API keys still work."""
        with self._lock:
            for issued in self._tokens.values():
                issued.revoked = True

    # ------------------------------------------------------------------ server side

    def _register_connection(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stopping:
                return False
            self._connections[sock] = threading.current_thread()
            return True

    def _unregister_connection(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.pop(sock, None)

    def _dispatch(self, request: _Incoming) -> _Reply:
        """Route one request, record it and notify waiters; runs on a connection thread."""
        with self._lock:
            self._in_flight += 1
            self._cond.notify_all()
        reply = _error(500)
        try:
            reply = self._route(request)
        finally:
            recorded = RecordedRequest(
                method=request.method,
                path=request.raw_path,
                headers=request.headers,
                body=request.body or b"",
                status=reply.status,
                time=request.received_at,
            )
            with self._lock:
                self._in_flight -= 1
                self._requests.append(recorded)
                self._cond.notify_all()
        return reply

    def _route(self, request: _Incoming) -> _Reply:
        if request.route not in _ROUTES:
            return _error(404)
        if request.method != "POST":
            return _error(405, headers=(("Allow", "POST"),))
        if request.route == _BATCH:
            return self._handle_batch(request)
        if request.body is None:
            return _error(400, "Malformed request body")
        if request.route == _LOGIN:
            return self._handle_login(request.body)
        return self._handle_single(request)

    def _wait_interruptibly(self, timeout: float | None, hang_generation: int | None) -> None:
        """Wait until timeout, stop(), or (for hangs) release(); never a polling sleep."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self._stopping
                    or (hang_generation is not None and self._hang_generation != hang_generation)
                ),
                timeout=timeout,
            )

    def _handle_batch(self, request: _Incoming) -> _Reply:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            hang = (self._hang_generation, self._hang_seconds) if self._hang_active else None
        if hang is not None:
            self._wait_interruptibly(hang[1], hang_generation=hang[0])
        if fault is not None and fault.delay > 0:
            self._wait_interruptibly(fault.delay, hang_generation=None)
        with self._lock:
            if self._stopping:
                return _DROP
        if fault is not None:
            if fault.drop_connection:
                return _DROP
            if fault.status != 200:
                headers = (("Retry-After", fault.retry_after),) if fault.retry_after else ()
                if fault.body is not None:
                    return _Reply(fault.status, fault.body, headers)
                return _error(fault.status, headers=headers)
            if fault.body is not None:
                return _Reply(200, fault.body)

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
            poisoned = any(
                isinstance(record, dict) and record.get("eventId") in self._poison_ids
                for record in events
            )
            poison_status = self._poison_status
        if poisoned:  # the whole request fails, every time, whatever else it carries
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
        failed.reverse()  # the real API does not sort failedRecords; never let clients rely on it
        summary = {
            "success": len(events) - len(failed),
            "failed": len(failed),
            "total": len(events),
        }
        result = {"summary": summary, "failedRecords": failed}
        if self._response_shape == "bare":
            return _Reply(200, _ENCODER.encode(result))
        return _success(result)

    def _handle_single(self, request: _Incoming) -> _Reply:
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
        return _Reply(201, _ENCODER.encode(echoed))

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
        failing = self._failing_ids.get(event_id)
        if failing is not None:
            status, left = failing
            if left > 1:
                self._failing_ids[event_id] = (status, left - 1)
            else:
                del self._failing_ids[event_id]
            return _RecordFailure(_TRANSIENT_ERROR, "transient", status)
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

    def _handle_login(self, body: bytes) -> _Reply:
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
        expected = self._client_credentials.get(key)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            return _error(401)
        return _success({"accessToken": self._issue_token(key)})

    def _issue_token(self, subject: str) -> str:
        """Mint a real HS256 JWT so clients can read ``exp`` exactly as in production."""
        now = time.time()
        header = _b64url(_ENCODER.encode({"alg": "HS256", "typ": "JWT"}))
        claims = {
            "sub": subject,
            "iat": int(now),
            "exp": int(now + self._token_lifetime),  # truncated: errs towards early refresh
            "jti": secrets.token_hex(16),  # every login yields a distinct token
        }
        signing_input = f"{header}.{_b64url(_ENCODER.encode(claims))}"
        signature = hmac.new(self._secret, signing_input.encode("ascii"), hashlib.sha256)
        token = f"{signing_input}.{_b64url(signature.digest())}"
        with self._lock:
            self._tokens[token] = _IssuedToken(time.monotonic() + self._token_lifetime)
        return token


def _route_of(raw_path: str) -> str:
    """Route key of a request target: no query, no trailing slash (old docs show /events/)."""
    route = urlsplit(raw_path).path
    return route.rstrip("/") if len(route) > 1 else route
