"""Whom a spool file was written for: a non-secret fingerprint of destination and credential.

Every spool file, redrive file and dead letter carries the fingerprint of the tracker
that wrote it; a tracker adopts only files with its own (``docs/spool.md``). The
fingerprint is::

    PBKDF2-HMAC-SHA256(password = kind + NUL + credential,
                       salt     = "enso-tracker/spool-identity/1" + NUL + normalized base_url,
                       iterations = 10_000)[:16], as 32 hex digits

* ``kind`` is ``api_key`` (credential: the API key), ``client_key`` (credential: the
  client key id only; the client secret never enters it, so rotating the secret keeps
  the identity) or ``sender`` (a custom sender: no credential, the destination only).
* ``base_url`` is normalized: scheme and host lower case, the default port dropped,
  trailing slashes removed (``https://API.example.com:443/`` is ``https://api.example.com``).
* One-way, salted by the destination and slowed by the iterations: the fingerprint
  names an identity without revealing the key, and guessing a key from it costs a
  PBKDF2 computation per guess (an Enso API key is a long random token: out of reach).
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal
from urllib.parse import urlsplit

__all__ = ["IDENTITY_ITERATIONS", "CredentialKind", "fingerprint", "normalize_url", "short"]

CredentialKind = Literal["api_key", "client_key", "sender"]

IDENTITY_ITERATIONS: Final = 10_000
_SALT: Final = b"enso-tracker/spool-identity/1\0"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def normalize_url(base_url: str) -> str:
    """``base_url`` as the fingerprint sees it: equal for URLs that reach the same API."""
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def fingerprint(base_url: str, kind: CredentialKind, credential: str) -> str:
    """The identity of a tracker sending to ``base_url`` with ``credential`` (32 hex)."""
    password = f"{kind}\0{credential}".encode()
    salt = _SALT + normalize_url(base_url).encode()
    return hashlib.pbkdf2_hmac("sha256", password, salt, IDENTITY_ITERATIONS)[:16].hex()


def short(identity: str | None) -> str:
    """How an identity is shown to people: its first 12 hex digits (``legacy`` if none)."""
    return identity[:12] if identity else "legacy"
