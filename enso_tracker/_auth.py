"""Credentials: a static API token, or client credentials exchanged for a short-lived JWT.

See ``shared/enso-api.md`` §2. Login runs on the sender thread only (never inside
``track()``), so it is single-flight by construction. Nothing in this module ever
puts a secret or a token into a log record, a ``repr`` or an exception message.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from typing import Protocol

import httpx
import msgspec

from ._errors import ConfigurationError

__all__ = [
    "ApiKey",
    "AuthFailure",
    "ClientCredentials",
    "Credentials",
    "make_credentials",
]

log = logging.getLogger("enso_tracker")

#: Lifetime assumed for a token whose ``exp`` cannot be read.
FALLBACK_TOKEN_TTL = 300.0
#: Renew this long before ``exp`` (or a quarter of the lifetime, if that is shorter).
REFRESH_MARGIN = 60.0


class AuthFailure(Exception):
    """Login did not produce a token. ``retryable`` is False when Enso refused the credentials."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class Credentials(Protocol):
    """What the sender needs from a credential mode."""

    def authorization(self, client: httpx.Client, timeout: float) -> str:
        """The ``Authorization`` header value; may log in. Raises :class:`AuthFailure`."""
        ...

    def invalidate(self, authorization: str) -> bool:
        """Forget a token Enso refused; True when a fresh one may be obtained."""
        ...

    @property
    def logins(self) -> int: ...


class ApiKey:
    """A long-lived bearer token from the Enso dashboard."""

    __slots__ = ("_header",)

    def __init__(self, api_key: str) -> None:
        self._header = f"Bearer {api_key}"

    def authorization(self, client: httpx.Client, timeout: float) -> str:
        return self._header

    def invalidate(self, authorization: str) -> bool:
        return False  # nothing to refresh: the same key would be refused again

    @property
    def logins(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "ApiKey(<redacted>)"


class _LoginData(msgspec.Struct):
    accessToken: str | None = None


class _LoginBody(msgspec.Struct):
    data: _LoginData | None = None
    accessToken: str | None = None  # bare shape, should Enso ever drop the envelope


class _Claims(msgspec.Struct):
    exp: float | None = None


_decode_login = msgspec.json.Decoder(_LoginBody).decode
_decode_claims = msgspec.json.Decoder(_Claims).decode


def jwt_lifetime(token: str, now: float) -> float | None:
    """Seconds until the JWT's ``exp``, read without verifying the signature."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        exp = _decode_claims(raw).exp
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return None if exp is None else exp - now


class ClientCredentials:
    """``clientKey``/``clientSecret`` exchanged at ``POST /auth/system-login`` for a JWT.

    The token is cached and renewed ahead of its ``exp`` claim. ``/auth/refresh`` is not
    used: system-login returns no refresh token (``enso-api.md`` §9 A3).
    """

    __slots__ = ("_header", "_key", "_login_url", "_logins", "_renew_at", "_secret")

    def __init__(self, client_key: str, client_secret: str, base_url: str) -> None:
        self._key = client_key
        self._secret = client_secret
        self._login_url = base_url.rstrip("/") + "/auth/system-login"
        self._header: str | None = None
        self._renew_at = 0.0
        self._logins = 0

    @property
    def logins(self) -> int:
        return self._logins

    def __repr__(self) -> str:
        return "ClientCredentials(client_key=<redacted>, client_secret=<redacted>)"

    def authorization(self, client: httpx.Client, timeout: float) -> str:
        if self._header is None or time.monotonic() >= self._renew_at:
            self._login(client, timeout)
        assert self._header is not None
        return self._header

    def invalidate(self, authorization: str) -> bool:
        if authorization == self._header:
            self._header = None
        return True

    def _login(self, client: httpx.Client, timeout: float) -> None:
        self._header = None
        try:
            # No Authorization header: this call is what issues the token (§9 A5).
            response = client.post(
                self._login_url,
                json={"clientKey": self._key, "clientSecret": self._secret},
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise AuthFailure(
                f"login failed: {type(exc).__name__}: {exc}", retryable=True
            ) from None
        status = response.status_code
        if status in (400, 401, 403):
            raise AuthFailure(
                f"Enso refused the client credentials (HTTP {status})",
                retryable=False,
                status=status,
            )
        if status != 200 and status != 201:
            raise AuthFailure(f"login answered HTTP {status}", retryable=True, status=status)
        try:
            body = _decode_login(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise AuthFailure(
                "login answer is not the documented JSON", retryable=True, status=status
            ) from None
        token = (body.data.accessToken if body.data else None) or body.accessToken
        if not token:
            raise AuthFailure(
                "login answer holds no data.accessToken", retryable=True, status=status
            )
        now = time.monotonic()
        lifetime = jwt_lifetime(token, time.time())
        if lifetime is None:
            lifetime = FALLBACK_TOKEN_TTL
        margin = min(REFRESH_MARGIN, max(lifetime, 0.0) / 4)
        self._renew_at = now + lifetime - margin
        self._header = f"Bearer {token}"
        self._logins += 1
        log.debug("logged in to Enso; token valid for %.0f s", lifetime)


def make_credentials(
    api_key: str | None, client_key: str | None, client_secret: str | None, base_url: str
) -> Credentials:
    """The credential mode the arguments select; ``ConfigurationError`` (never echoing a
    value) when they are missing, contradictory or unusable."""
    for name, value in (
        ("api_key", api_key),
        ("client_key", client_key),
        ("client_secret", client_secret),
    ):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigurationError(f"{name} must be a non-empty string")  # value not shown
    if api_key is not None:
        if client_key is not None or client_secret is not None:
            raise ConfigurationError("pass either api_key or client_key + client_secret, not both")
        return ApiKey(api_key)
    if client_key is not None and client_secret is not None:
        return ClientCredentials(client_key, client_secret, base_url)
    if client_key is not None or client_secret is not None:
        raise ConfigurationError("client_key and client_secret go together; one is missing")
    raise ConfigurationError(
        "no credentials: pass api_key=..., or client_key=... and client_secret=... "
        "(or set ENSO_API_KEY, or ENSO_CLIENT_KEY and ENSO_CLIENT_SECRET, for from_env())"
    )
