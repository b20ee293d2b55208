"""What a test sees of a request afterwards: :class:`RecordedRequest`, with every
credential hidden from its ``repr`` (reprs end up in test logs and CI output).

Owns: the redaction rules (secret headers, secret JSON members in any body, even invalid
JSON). Invariant: a repr never shows a credential; the fields hold the real values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import msgspec

__all__ = ["REDACTED", "RecordedRequest", "RedactedHeaders", "redact_body"]

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
