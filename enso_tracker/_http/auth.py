"""Credentials: a static API token, or client credentials exchanged for a short-lived JWT.

See ``docs/wire-contract.md`` (Authentication). Login runs on the sender thread only (never inside
``track()``), so it is single-flight by construction. Nothing in this module ever
puts a secret or a token into a log record, a ``repr`` or an exception message.

Owns: the credential modes (:class:`ApiKey`, :class:`ClientCredentials`), the checks
on credentials at the call site (:func:`make_credentials`), the login call and the
token's renewal (:func:`jwt_lifetime`).

Invariants:

* A credential that cannot travel is a ``ConfigurationError`` at construction, never
  a failure on every request; surrounding whitespace is stripped (:func:`as_read`).
* One login at a time, on the sender's thread; a token is renewed before its ``exp``.
* A login answer is read within ``LOGIN_ANSWER_BYTES`` and on a connection we trust
  (:mod:`.reuse`).
* No secret or token in a log record, ``repr`` or exception.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
import unicodedata
from typing import Protocol

import httpx
import msgspec

from .._errors import ConfigurationError, describe_exception
from .._spool.identity import fingerprint
from .answer import LOGIN_ANSWER_BYTES, AnswerError, read_answer
from .reuse import discard, stale_reason, surplus

__all__ = [
    "ApiKey",
    "AuthFailure",
    "ClientCredentials",
    "Credentials",
    "as_read",
    "make_credentials",
]

log = logging.getLogger("enso_tracker")

#: Lifetime assumed for a token whose ``exp`` cannot be read.
FALLBACK_TOKEN_TTL = 300.0
#: Renew this long before ``exp`` (or a quarter of the lifetime, if that is shorter).
REFRESH_MARGIN = 60.0
#: Least lifetime assumed for a token whose lifetime is only known through the client's
#: wall clock (no usable ``iat``): a clock running ahead of Enso's makes a fresh token
#: look expired, and without a floor every request would log in again.
MIN_TOKEN_TTL = 30.0
#: Surrounding whitespace stripped from credentials: what a key read from a file or a
#: Kubernetes secret typically carries (a trailing newline), never part of a key.
_STRIPPED = " \t\r\n"


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

    def spool_identity(self, base_url: str) -> str:
        """The non-secret fingerprint of this key and ``base_url`` (``_spool.identity``)."""
        return fingerprint(base_url, "api_key", self._header[len("Bearer ") :])

    def __repr__(self) -> str:
        return "ApiKey(<redacted>)"


class _LoginData(msgspec.Struct):
    accessToken: str | None = None


class _LoginBody(msgspec.Struct):
    data: _LoginData | None = None
    accessToken: str | None = None  # bare shape, should Enso ever drop the envelope


_decode_login = msgspec.json.Decoder(_LoginBody).decode
_decode_claims = msgspec.json.Decoder(dict[str, object]).decode


def _claim(claims: dict[str, object], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None


def jwt_lifetime(token: str, now: float) -> float | None:
    """Seconds the JWT is good for from its issue, read without verifying the signature;
    ``None`` when it has no readable ``exp``.

    ``exp - iat`` when both claims are readable and ``exp > iat``: both come from Enso's
    clock, so the client's own clock (``now``, wall-clock seconds) does not matter. Without
    a usable ``iat`` it is ``exp - now``, floored at :data:`MIN_TOKEN_TTL`: a client clock
    ahead of Enso's makes a fresh token look expired, and a lifetime of zero would mean a
    login before every request.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = _decode_claims(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    exp = _claim(claims, "exp")
    if exp is None:
        return None
    iat = _claim(claims, "iat")
    if iat is not None and exp > iat:
        return exp - iat
    return max(exp - now, MIN_TOKEN_TTL)


class ClientCredentials:
    """``clientKey``/``clientSecret`` exchanged at ``POST /auth/system-login`` for a JWT.

    The token is cached and renewed ahead of its ``exp`` claim. ``/auth/refresh`` is not
    used: system-login returns no refresh token (``docs/wire-contract.md``).
    """

    __slots__ = ("_header", "_key", "_login_url", "_logins", "_renew_at", "_secret", "lifetime")

    def __init__(self, client_key: str, client_secret: str, base_url: str) -> None:
        self._key = client_key
        self._secret = client_secret
        self._login_url = base_url.rstrip("/") + "/auth/system-login"
        self._header: str | None = None
        self._renew_at = 0.0
        self._logins = 0
        #: Seconds the last token was good for from its issue (``jwt_lifetime``); None
        #: before a login, or when its ``exp`` was unreadable (``doctor`` shows it).
        self.lifetime: float | None = None

    @property
    def logins(self) -> int:
        return self._logins

    def spool_identity(self, base_url: str) -> str:
        """The fingerprint of the client key id and ``base_url`` (never the secret)."""
        return fingerprint(base_url, "client_key", self._key)

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
        self.lifetime = None
        # The token cannot have been issued before the request left: anchoring its
        # lifetime here (monotonic) renews it a little early, never late.
        sent_at = time.monotonic()

        try:
            # No Authorization header: this call is what issues the token (the login page's
            # prose; its generated header table says otherwise).
            # Streamed: an endless answer or a gzip bomb is abandoned at the bound.
            with client.stream(
                "POST",
                self._login_url,
                json={"clientKey": self._key, "clientSecret": self._secret},
                timeout=timeout,
            ) as response:
                try:
                    content: bytes | None = read_answer(response, LOGIN_ANSWER_BYTES)
                except AnswerError:
                    content = None  # over LOGIN_ANSWER_BYTES or undecodable: refused below
                stale = stale_reason(response)
                if stale is not None or (content is not None and surplus(response)):
                    discard(response)  # never reused (see reuse.py)
        except Exception as exc:
            # Not only httpx.HTTPError: whatever fails here may quote the request (an h11
            # header error, a UnicodeEncodeError holding the JSON with clientSecret), so
            # only the exception's type and the OS's own words go on.
            raise AuthFailure(f"login failed: {describe_exception(exc)}", retryable=True) from None
        status = response.status_code
        if stale is not None:
            raise AuthFailure(f"login answer not trusted: {stale}", retryable=True)
        if status in (400, 401, 403):
            raise AuthFailure(
                f"Enso refused the client credentials (HTTP {status})",
                retryable=False,
                status=status,
            )
        if status != 200 and status != 201:
            raise AuthFailure(f"login answered HTTP {status}", retryable=True, status=status)
        if content is None:
            raise AuthFailure(
                f"login answer is over {LOGIN_ANSWER_BYTES} bytes or undecodable; not read",
                retryable=True,
                status=status,
            )
        try:
            body = _decode_login(content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # The decoder's message can quote the body, which may hold a token: not kept.
            raise AuthFailure(
                "login answer is not the documented JSON", retryable=True, status=status
            ) from None
        token = (body.data.accessToken if body.data else None) or body.accessToken
        if not token:
            raise AuthFailure(
                "login answer holds no data.accessToken", retryable=True, status=status
            )
        token = token.strip(_STRIPPED)
        if not token or _unsendable(token, header=True) is not None:
            # Sent as is, h11 would refuse the header and quote it in its exception text.
            raise AuthFailure(
                "login answer's accessToken cannot travel in an HTTP header "
                "(empty, control or non-ASCII characters)",
                retryable=True,
                status=status,
            )
        lifetime = self.lifetime = jwt_lifetime(token, time.time())
        if lifetime is None:
            lifetime = FALLBACK_TOKEN_TTL
        margin = min(REFRESH_MARGIN, lifetime / 4)
        self._renew_at = sent_at + lifetime - margin
        self._header = f"Bearer {token}"
        self._logins += 1
        log.debug("logged in to Enso; token valid for %.0f s", lifetime)


def as_read(value: str) -> str:
    """A credential as the tracker reads it: surrounding whitespace (a file's trailing
    newline) dropped. ``doctor`` fingerprints what it shows this way."""
    return value.strip(_STRIPPED)


def _unsendable(value: str, *, header: bool) -> str | None:
    """What keeps ``value`` from travelling (a header when ``header``, else a JSON string),
    or None. Says what kind of character and where, never the character's neighbours."""
    if header and value.isascii():
        bad = next((i for i, c in enumerate(value) if c < " " or c == "\x7f"), None)
        return None if bad is None else f"a control character at index {bad}"
    for i, char in enumerate(value):
        category = unicodedata.category(char)
        if category == "Cs":
            return (
                f"a lone surrogate at index {i} (not valid Unicode: an environment "
                "variable or file that is not UTF-8?)"
            )
        if category == "Cc":
            return f"a control character at index {i}"
    if header:
        bad = next(i for i, c in enumerate(value) if not c.isascii())
        return f"a non-ASCII character at index {bad} (it travels in an HTTP header)"
    return None


def _credential(name: str, value: object, *, header: bool) -> str:
    """``value`` stripped of surrounding whitespace, or ``ConfigurationError`` naming
    ``name`` (never quoting the value: it is a secret)."""
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a non-empty string, not {type(value).__name__}")
    value = str.__str__(value).strip(_STRIPPED)  # a str subclass goes on as its characters
    if not value:
        raise ConfigurationError(f"{name} must be a non-empty string")
    problem = _unsendable(value, header=header)
    if problem is not None:
        raise ConfigurationError(f"{name} holds {problem}; it cannot be sent")
    return value


def make_credentials(
    api_key: str | None, client_key: str | None, client_secret: str | None, base_url: str
) -> Credentials:
    """The credential mode the arguments select; ``ConfigurationError`` (never echoing a
    value) when they are missing, contradictory or unusable."""
    # Surrounding spaces, tabs, CR and LF are stripped (a key read from a file or a
    # Kubernetes secret ends with a newline); anything else that cannot travel is refused
    # here, since h11 or the JSON encoder would otherwise refuse it on every request,
    # quoting the secret in an exception text.
    if api_key is not None:
        api_key = _credential("api_key", api_key, header=True)
    if client_key is not None:
        client_key = _credential("client_key", client_key, header=False)
    if client_secret is not None:
        client_secret = _credential("client_secret", client_secret, header=False)
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
        "(or set ENSO_API_KEY, or ENSO_CLIENT_KEY and ENSO_CLIENT_SECRET, for from_env()); "
        "for development and tests without Enso, disabled=True or ENSO_DISABLED=1"
    )
