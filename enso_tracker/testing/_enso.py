"""The public face of the fake Enso API: :class:`FakeEnso`'s settings, state, lifecycle
and the controls a test calls (faults, hangs, reset); its inspection and waits come from
``_inspection``.

Owns: the fake's state (declared in ``_state.py``, set here), under one re-entrant
lock; its settings, lifecycle, ``reset()`` and fault controls. What carries the requests
lives elsewhere (``_server.py``: a socket; ``_transport.py``: an ``httpx.MockTransport``),
and so do the request path (``_serving.py``), what a test reads and waits on
(``_inspection.py``), the API's stateless rules (``_api.py``), what a test reads of a
request (``_recorded.py``) and the scripted faults (``_faults.py``).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import httpx

from ._api import CLICKHOUSE_TIMESTAMP_ERROR, IssuedToken, derive_event_id
from ._faults import Fault, FaultPlan
from ._inspection import Inspection
from ._recorded import RecordedRequest
from ._server import ServerRunner
from ._serving import Serving
from ._transport import make_transport

__all__ = [
    "CLICKHOUSE_TIMESTAMP_ERROR",
    "FakeEnso",
    "RecordedRequest",
    "ResponseShape",
    "derive_event_id",
]

ResponseShape = Literal["wrapped", "bare"]


@dataclass(frozen=True, slots=True)
class _Settings:
    """What a test may change at run time; ``reset()`` puts the constructor's values back."""

    response_shape: ResponseShape
    max_body_bytes: int | None
    known_entities: frozenset[str] | None
    token_lifetime: float
    client_credentials: Mapping[str, str]
    accept_gzip: bool = True


class FakeEnso(Inspection, Serving):
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
        self._tokens: dict[str, IssuedToken] = {}

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
