"""Configuration: one frozen object holding every bound, with its default.

Owns :class:`Config` (every option, its default and its cross-field rules) and what the
environment may set (``options_from_env``, ``env_flag``). The checks of single values
(numbers, durations, URLs) are :mod:`._config_checks`'.

Design constraints (what must never break):

* A ``Config`` is valid once built: every option is checked in ``__post_init__`` (and
  again by ``replace()``), failing with a ``ConfigurationError`` naming it and its value.
* It holds no credentials, so it can be logged and compared freely.
* An environment switch that is not clearly yes or no is an error, never a guess.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from ._config_checks import check_int, check_seconds, check_url
from ._errors import ConfigurationError
from ._http.compress import Compression
from ._spool.sqlite import Durability

if TYPE_CHECKING:
    from ._model import DropReason, Event

__all__ = ["DEFAULT_BASE_URL", "Config", "OnDrop", "env_flag", "options_from_env"]

DEFAULT_BASE_URL = "https://api.getenso.ai"

OnDrop = Callable[[Sequence["Event"], "DropReason"], None]
"""``on_drop(events, reason)``: called once per group of events that will never be delivered."""

QueueFullPolicy = Literal["drop", "block"]

#: Upper bound of every duration option but ``max_event_age``: longer is surely a mistake
#: (a unit slip, ``float("inf")``), and well inside what ``threading`` waits accept
#: (``threading.TIMEOUT_MAX``).
DAY = 86_400.0
#: Upper bound of ``max_event_age``: how long an event may keep being retried.
WEEK = 7 * DAY
#: What SQLite needs beyond a row's bytes to store it (schema, b-tree and freelist pages
#: of 64 KiB): ``max_spool_bytes`` must hold one ``max_batch_bytes`` row and this.
SPOOL_ROW_OVERHEAD = 4 * 65536


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """Every tunable of a :class:`~enso_tracker.Tracker`. All durations are float seconds.

    Credentials are deliberately *not* part of this object, so it can be logged and
    compared freely. The defaults and bounds are the ones in the README's table.
    """

    base_url: str = DEFAULT_BASE_URL
    #: Events per POST (OpenTelemetry's default is 512). Enso documents no limit; a
    #: 500-event body is ~115 KB, far below gateway limits, and a 413 splits and learns.
    #: At low rates batches stay small anyway: ``flush_interval`` cuts them. A backlog
    #: (more than one full batch queued) goes in requests of ``max_backlog_batch_size``.
    max_batch_size: int = 500
    #: Encoded bytes per POST body (the whole ``{"events": [...]}``).
    max_batch_bytes: int = 1024 * 1024
    #: Longest an accepted event waits before its batch is sent.
    flush_interval: float = 1.0
    #: Events held in memory (queued, in flight and waiting to retry).
    max_queue_size: int = 100_000
    #: Estimated bytes held in memory (same scope as ``max_queue_size``).
    max_queue_bytes: int = 64 * 1024 * 1024
    #: What ``track()`` does when the queue is full: ``"drop"`` the new event, or ``"block"``.
    queue_full_policy: QueueFullPolicy = "drop"
    #: With ``"block"``: longest ``track()`` waits for room before dropping.
    block_timeout: float = 1.0
    #: Deadline of one delivery attempt, from connect to the last byte of the answer
    #: (a login and a replay after a 401 included): not a per-read timeout.
    timeout: float = 10.0
    #: Deadline of ``shutdown()`` when none is given, and of the ``atexit`` hook.
    shutdown_timeout: float = 5.0
    #: Sending attempts per event before it is dropped as ``retries_exhausted``.
    max_retries: int = 100
    #: Seconds an event may spend retrying before it is dropped as ``retries_exhausted``.
    max_event_age: float = 1800.0
    #: Backoff is ``uniform(0, min(backoff_max, backoff_base * 2**n))`` ("full jitter").
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    #: A server's ``Retry-After`` is honoured up to this many seconds.
    max_retry_after: float = 300.0
    #: Called with events that will never be delivered. Runs on the sender thread (or,
    #: for ``queue_full``/``closed`` refusals in ``track()``, on the caller's); be quick.
    on_drop: OnDrop | None = None
    #: Longest accepted ``entity``/``metric`` (characters).
    max_name_length: int = 512
    #: Longest accepted ``event_id``/``job_id`` (characters, printable ASCII for ids).
    max_id_length: int = 128
    #: Largest ``metadata`` once encoded as JSON.
    max_metadata_bytes: int = 8 * 1024
    #: Permit ``http://`` to a host that is not loopback (tokens would travel in clear).
    allow_insecure_http: bool = False
    #: TLS verification, passed to httpx: ``True``, a CA bundle path, or an SSLContext.
    verify: bool | str | ssl.SSLContext = True
    #: Honour ``HTTP(S)_PROXY``/``SSL_CERT_FILE``… environment variables (httpx's trust_env).
    trust_env: bool = True
    #: Make SIGTERM a graceful stop (see the README's "Shutdown and exit"): installed at
    #: the first tracker made in the main thread while SIGTERM has its default action.
    #: ``ENSO_HANDLE_SIGTERM=0`` in the environment also turns it off.
    handle_sigterm: bool = True
    #: Enable the framework integrations (Celery, uWSGI…) whose framework is present.
    integrations: bool = True
    #: A local directory for the durable spool (README "Durable spool"); None: memory only.
    #: Also ``ENSO_SPOOL_DIR``. Created 0700; a network filesystem is refused.
    spool_dir: str | None = None
    #: Longest an accepted event waits in memory before it is written to the spool.
    spool_interval: float = 0.2
    #: ``"process"``: a written batch survives any death of the process (SQLite WAL,
    #: ``synchronous=NORMAL``); ``"power"``: also a power loss (``synchronous=FULL``).
    durability: Durability = "process"
    #: Largest this process's spool file grows; past it the newest batch is dropped as
    #: ``spool_full`` (``queue_full_policy="drop"``) or kept in memory (``"block"``).
    #: Must hold one row: ``max_batch_bytes`` plus ``SPOOL_ROW_OVERHEAD`` (256 KiB).
    max_spool_bytes: int = 1024 * 1024 * 1024
    #: Largest all the spool files in ``spool_dir`` grow together (every process's, and
    #: files left by processes that are gone); at least ``max_spool_bytes``. Past it the
    #: newest batch is refused as with ``max_spool_bytes``. Also ``ENSO_MAX_SPOOL_DIR_BYTES``.
    max_spool_dir_bytes: int = 4 * 1024 * 1024 * 1024
    #: The spool grows no file while its filesystem has less than this free (for the
    #: application's own needs); past it the newest batch is refused as with
    #: ``max_spool_bytes``. 0: no guard. Also ``ENSO_SPOOL_MIN_FREE_BYTES``.
    spool_min_free_bytes: int = 256 * 1024 * 1024
    #: Largest the directory's dead-letter store grows; past it the oldest are evicted.
    max_dead_letter_bytes: int = 64 * 1024 * 1024
    #: Development and test mode: ``track()`` validates and returns ids as always, but
    #: nothing is sent, no credentials are needed, no thread starts and no spool is
    #: opened; ``stats().disabled`` counts the events let go. ``ENSO_DISABLED=1`` in the
    #: environment sets it for every tracker not given ``disabled=False`` explicitly.
    disabled: bool = False
    #: Receipts (docs/receipts.md): ``True`` keeps totals per (entity, metric, UTC hour,
    #: outcome); ``"events"`` also one row per event (eventId → outcome, code, when);
    #: ``False`` none. ``None`` (the default): totals with a spool or a ``receipts_dir``.
    receipts: bool | Literal["events"] | None = None
    #: Where the receipts store lives (default: ``spool_dir``; needed without a spool).
    #: Also ``ENSO_RECEIPTS_DIR``.
    receipts_dir: str | None = None
    #: How long per-event receipts are kept (``receipts="events"``): 35 days.
    receipts_retention: float = 35 * DAY
    #: ``"gzip"``: compress request bodies (``Content-Encoding: gzip``, fast level). Off
    #: by default: Enso's documentation does not say it accepts compressed bodies; a 415
    #: answer turns it off for the tracker and the body is resent uncompressed. Also
    #: ``ENSO_COMPRESSION=gzip``.
    compression: Compression | None = None
    #: Events per request while a backlog is queued (more than one full batch waiting:
    #: high rates, after an outage), within ``max_batch_bytes``: fewer, fuller requests
    #: cost the sender (and, through the GIL, your threads) less CPU per event. Never
    #: below ``max_batch_size``; set it equal to keep every request at that size.
    max_backlog_batch_size: int = 5_000
    #: Shortest gap between two requests whose batch was cut by size. When batches fill
    #: faster than this (high rates), the sender waits out the gap and sends what
    #: gathered meanwhile in one fuller request (up to ``max_backlog_batch_size`` events
    #: within ``max_batch_bytes``): at 20,000 events/s, 2,000 events per request instead
    #: of 500, a quarter of the requests and of the sender's CPU. It adds at most this
    #: much latency, only at high rates; ``flush()``, shutdown, retries, a queue half
    #: full and the spool's stored batches are never held. 0 sends every full batch at
    #: once. A ``flush_interval`` below it wins.
    min_request_interval: float = 0.1

    def __post_init__(self) -> None:
        check_url(self.base_url, self.allow_insecure_http)
        check_int("max_batch_size", self.max_batch_size, 1, 100_000)
        check_int("max_batch_bytes", self.max_batch_bytes, 16 * 1024, 256 * 1024 * 1024)
        check_int("max_queue_size", self.max_queue_size, 1, 100_000_000)
        check_int("max_queue_bytes", self.max_queue_bytes, 1024, 64 * 1024 * 1024 * 1024)
        check_int("max_retries", self.max_retries, 0, 1_000_000)
        check_int("max_name_length", self.max_name_length, 1, 1_000_000)
        check_int("max_id_length", self.max_id_length, 1, 100_000)
        check_int("max_metadata_bytes", self.max_metadata_bytes, 2, 16 * 1024 * 1024)
        if self.max_metadata_bytes > self.max_batch_bytes // 2:
            raise ConfigurationError(
                "max_metadata_bytes must be at most half of max_batch_bytes, "
                "so that every accepted event fits in a batch"
            )
        for name in ("flush_interval", "timeout", "backoff_base", "backoff_max"):
            check_seconds(name, getattr(self, name), positive=True, maximum=DAY)
        for name in ("block_timeout", "shutdown_timeout", "max_retry_after"):
            check_seconds(name, getattr(self, name), positive=False, maximum=DAY)
        check_seconds("max_event_age", self.max_event_age, positive=False, maximum=WEEK)
        if self.queue_full_policy not in ("drop", "block"):
            raise ConfigurationError(
                f"queue_full_policy={self.queue_full_policy!r}: must be 'drop' or 'block'"
            )
        if isinstance(self.verify, str) and not os.path.exists(self.verify):
            raise ConfigurationError(f"verify={self.verify!r}: no such CA bundle file or folder")
        if not isinstance(self.verify, bool | str | ssl.SSLContext):
            raise ConfigurationError(
                f"verify={self.verify!r}: must be True/False, a CA bundle path or an SSLContext"
            )
        if self.spool_dir is not None:
            if not isinstance(self.spool_dir, str | os.PathLike) or not os.fspath(self.spool_dir):
                raise ConfigurationError(f"spool_dir={self.spool_dir!r}: must be a directory path")
            object.__setattr__(self, "spool_dir", os.fspath(self.spool_dir))
        check_seconds("spool_interval", self.spool_interval, positive=True, maximum=DAY)
        if self.durability not in get_args(Durability):
            raise ConfigurationError(
                f"durability={self.durability!r}: must be 'process' or 'power'"
            )
        check_int("max_spool_bytes", self.max_spool_bytes, 1024 * 1024, 1 << 50)
        if self.max_spool_bytes < self.max_batch_bytes + SPOOL_ROW_OVERHEAD:
            raise ConfigurationError(
                f"max_spool_bytes={self.max_spool_bytes} cannot hold one batch of "
                f"max_batch_bytes={self.max_batch_bytes}: it must be at least "
                f"{self.max_batch_bytes + SPOOL_ROW_OVERHEAD} (a batch plus "
                f"{SPOOL_ROW_OVERHEAD} bytes of SQLite pages); raise max_spool_bytes or "
                "lower max_batch_bytes"
            )
        check_int("max_spool_dir_bytes", self.max_spool_dir_bytes, 1024 * 1024, 1 << 50)
        if self.max_spool_dir_bytes < self.max_spool_bytes:
            raise ConfigurationError(
                f"max_spool_dir_bytes={self.max_spool_dir_bytes} is less than "
                f"max_spool_bytes={self.max_spool_bytes}: the directory must hold at least "
                "one process's spool file; raise max_spool_dir_bytes or lower max_spool_bytes"
            )
        check_int("spool_min_free_bytes", self.spool_min_free_bytes, 0, 1 << 50)
        check_int("max_dead_letter_bytes", self.max_dead_letter_bytes, 64 * 1024, 1 << 50)
        if type(self.disabled) is not bool:
            raise ConfigurationError(f"disabled={self.disabled!r}: must be True or False")
        self._check_receipts()
        check_int("max_backlog_batch_size", self.max_backlog_batch_size, 1, 1_000_000)
        check_seconds(
            "min_request_interval", self.min_request_interval, positive=False, maximum=DAY
        )
        if self.compression not in (None, "gzip"):
            raise ConfigurationError(f"compression={self.compression!r}: must be None or 'gzip'")
        if self.on_drop is not None and not callable(self.on_drop):
            raise ConfigurationError(f"on_drop={self.on_drop!r}: must be callable")

    def _check_receipts(self) -> None:
        if self.receipts not in (None, True, False, "events"):
            raise ConfigurationError(
                f"receipts={self.receipts!r}: must be True, False, 'events' or None"
            )
        if self.receipts_dir is not None:
            if not isinstance(self.receipts_dir, str | os.PathLike) or not os.fspath(
                self.receipts_dir
            ):
                raise ConfigurationError(
                    f"receipts_dir={self.receipts_dir!r}: must be a directory path"
                )
            object.__setattr__(self, "receipts_dir", os.fspath(self.receipts_dir))
        if self.receipts and self.spool_dir is None and self.receipts_dir is None:
            raise ConfigurationError(
                f"receipts={self.receipts!r} without a spool needs receipts_dir: where to keep them"
            )
        check_seconds(
            "receipts_retention", self.receipts_retention, positive=True, maximum=3660 * DAY
        )

    def replace(self, **changes: object) -> Config:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def options_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``Tracker`` keywords from ``ENSO_API_KEY``, ``ENSO_CLIENT_KEY`` +
    ``ENSO_CLIENT_SECRET``, ``ENSO_BASE_URL``, ``ENSO_SPOOL_DIR``,
    ``ENSO_MAX_SPOOL_DIR_BYTES``, ``ENSO_SPOOL_MIN_FREE_BYTES`` and ``ENSO_COMPRESSION``
    (unset or empty ones are left out; a byte count that is not an integer is a
    ``ConfigurationError``; ``ENSO_COMPRESSION=none`` is off)."""
    kwargs: dict[str, Any] = {}
    for var, name in (
        ("ENSO_API_KEY", "api_key"),
        ("ENSO_CLIENT_KEY", "client_key"),
        ("ENSO_CLIENT_SECRET", "client_secret"),
        ("ENSO_BASE_URL", "base_url"),
        ("ENSO_SPOOL_DIR", "spool_dir"),
        ("ENSO_RECEIPTS_DIR", "receipts_dir"),
    ):
        if environ.get(var):
            kwargs[name] = environ[var]
    for var, name in (
        ("ENSO_MAX_SPOOL_DIR_BYTES", "max_spool_dir_bytes"),
        ("ENSO_SPOOL_MIN_FREE_BYTES", "spool_min_free_bytes"),
    ):
        text = environ.get(var, "").strip()
        if text:
            try:
                kwargs[name] = int(text)
            except ValueError:
                raise ConfigurationError(
                    f"{var}={text!r}: must be a whole number of bytes"
                ) from None
    compression = environ.get("ENSO_COMPRESSION", "").strip().lower()
    if compression:  # a wrong value fails in Config, naming it
        kwargs["compression"] = None if compression in ("none", "off", "0") else compression
    return kwargs


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def env_flag(environ: Mapping[str, str], name: str) -> bool:
    """A yes/no switch from the environment (``ENSO_DISABLED``, ``ENSO_DEBUG``): unset or
    empty is no; anything but 1/0, true/false, yes/no, on/off is a ConfigurationError
    (a typo must not silently leave billing on, or off)."""
    raw = environ.get(name, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r}: must be 1/0, true/false, yes/no or on/off")
