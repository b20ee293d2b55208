"""Configuration: one frozen object holding every bound, with its default."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from ._errors import ConfigurationError

if TYPE_CHECKING:
    from ._model import DropReason, Event

__all__ = ["DEFAULT_BASE_URL", "Config", "OnDrop"]

DEFAULT_BASE_URL = "https://api.getenso.ai"

OnDrop = Callable[[Sequence["Event"], "DropReason"], None]
"""``on_drop(events, reason)``: called once per group of events that will never be delivered."""

QueueFullPolicy = Literal["drop", "block"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """Every tunable of a :class:`~enso_tracker.Tracker`. All durations are float seconds.

    Credentials are deliberately *not* part of this object, so it can be logged and
    compared freely. The defaults and bounds are the ones in the README's table.
    """

    base_url: str = DEFAULT_BASE_URL
    #: Events per POST. Enso documents no limit; 100 is the common cap of billing APIs.
    max_batch_size: int = 100
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
    #: HTTP timeout of one request (connect, read, write and pool each).
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

    def __post_init__(self) -> None:
        _check_url(self.base_url, self.allow_insecure_http)
        _check_int("max_batch_size", self.max_batch_size, 1, 100_000)
        _check_int("max_batch_bytes", self.max_batch_bytes, 16 * 1024, 256 * 1024 * 1024)
        _check_int("max_queue_size", self.max_queue_size, 1, 100_000_000)
        _check_int("max_queue_bytes", self.max_queue_bytes, 1024, 64 * 1024 * 1024 * 1024)
        _check_int("max_retries", self.max_retries, 0, 1_000_000)
        _check_int("max_name_length", self.max_name_length, 1, 1_000_000)
        _check_int("max_id_length", self.max_id_length, 1, 100_000)
        _check_int("max_metadata_bytes", self.max_metadata_bytes, 2, 16 * 1024 * 1024)
        if self.max_metadata_bytes > self.max_batch_bytes // 2:
            raise ConfigurationError(
                "max_metadata_bytes must be at most half of max_batch_bytes, "
                "so that every accepted event fits in a batch"
            )
        for name in ("flush_interval", "timeout", "backoff_base", "backoff_max"):
            _check_seconds(name, getattr(self, name), positive=True)
        for name in ("block_timeout", "shutdown_timeout", "max_event_age", "max_retry_after"):
            _check_seconds(name, getattr(self, name), positive=False)
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
        if self.on_drop is not None and not callable(self.on_drop):
            raise ConfigurationError(f"on_drop={self.on_drop!r}: must be callable")

    def replace(self, **changes: object) -> Config:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int:
        raise ConfigurationError(f"{name}={value!r}: must be an int")
    if not low <= value <= high:
        raise ConfigurationError(f"{name}={value!r}: must be between {low} and {high}")


def _check_seconds(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name}={value!r}: must be a number of seconds")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ConfigurationError(f"{name}={value!r}: must be a finite, {kind} number of seconds")


def is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: object, allow_insecure_http: bool) -> None:
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"base_url={url!r}: must be a non-empty URL string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"base_url={url!r}: must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise ConfigurationError("base_url must not embed credentials")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"base_url={url!r}: must not have a query or fragment")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(parts.hostname):
        raise ConfigurationError(
            f"base_url={url!r}: plain http would send credentials in clear; use https, "
            "or pass allow_insecure_http=True if this really is what you want"
        )
