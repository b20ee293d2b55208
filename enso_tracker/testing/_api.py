"""The Enso API's rules as :class:`FakeEnso` plays them, without state: routes, record
validation in the real service's order, the error envelope, the id the server derives for
an event without ``eventId``, gzip bodies, and the JWTs of ``/auth/system-login``.

Owns: what an answer looks like. Invariant: nothing here touches the fake's state (that
is ``_enso.py``), the sockets (``_server.py``) or the scripted faults (``_faults.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from http import HTTPStatus
from typing import Any, Final

import msgspec

from ._messages import Incoming, Reply

__all__ = [
    "BATCH",
    "CLICKHOUSE_TIMESTAMP_ERROR",
    "DECODER",
    "ENCODER",
    "LOGIN",
    "ROUTES",
    "SINGLE",
    "TRANSIENT_ERROR",
    "IssuedToken",
    "RecordFailure",
    "derive_event_id",
    "error_reply",
    "inflate",
    "mint_jwt",
    "success_reply",
    "validate_record",
]

#: Text of the per-record error the real API returns for an unparseable timestamp. The server
#: does not validate timestamps itself; ClickHouse rejects the ``NaN`` date JavaScript produced.
#: The ``\\n`` is a literal backslash-n, exactly as it appears in the decoded wire payload.
CLICKHOUSE_TIMESTAMP_ERROR: Final[str] = (
    "Cannot parse input: expected '\"' before: 'N NaN:NaN:NaN.NaN' "
    "(while reading the value of key timestamp): (at row 1)\\n"
    ": While executing WaitForAsyncInsert. "
)

BATCH: Final = "/events/batch"
SINGLE: Final = "/events"
LOGIN: Final = "/auth/system-login"
ROUTES: Final = frozenset({BATCH, SINGLE, LOGIN})

#: Largest body a gzip request may inflate to; past it the request gets 413 (a bomb).
_MAX_INFLATED: Final = 256 * 1024 * 1024
TRANSIENT_ERROR: Final = "Service temporarily unavailable"

# RFC 3339 date-time: full date, "T"/space, full time, optional fraction, mandatory offset.
# fromisoformat() alone would also accept week dates, basic format and offset-less times.
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)

ENCODER: Final = msgspec.json.Encoder()
DECODER: Final = msgspec.json.Decoder()


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
    material = ENCODER.encode(
        [event.get("metric"), value, event.get("timestamp"), event.get("CustomerEntityId")]
    )
    return "derived_" + hashlib.sha256(material).hexdigest()


@dataclass(slots=True)
class IssuedToken:
    expires_at: float  # time.monotonic() deadline, float-precise so sub-second lifetimes work
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class RecordFailure:
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
    return ENCODER.encode(
        {"status": "error", "message": message or _phrase(status), "errors": errors or []}
    )


def error_reply(
    status: int,
    message: str | None = None,
    errors: list[Any] | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    return Reply(status=status, body=_envelope(status, message, errors), headers=headers)


def success_reply(data: Any, status: int = 200) -> Reply:
    body = ENCODER.encode({"status": "success", "message": "Success", "data": data})
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


def validate_record(record: object, known_entities: frozenset[str] | None) -> RecordFailure | None:
    """Per-record checks, in the order the real service appears to apply them."""
    if not isinstance(record, dict):
        return RecordFailure("Event must be an object", "validation", 400)
    entity = record.get("CustomerEntityId")
    if not _non_empty_str(entity):
        return RecordFailure("Customer entity ID required", 2001, 400)
    if known_entities is not None and entity not in known_entities:
        return RecordFailure("Customer entity not found", 2002, 404)
    if not _non_empty_str(record.get("metric")):
        return RecordFailure("metric is required and must be a non-empty string", "validation", 400)
    value = record.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return RecordFailure("value is required and must be a number", "validation", 400)
    if not _valid_timestamp(record.get("timestamp")):
        return RecordFailure(CLICKHOUSE_TIMESTAMP_ERROR, "27", 400)
    if "metadata" in record and not isinstance(record["metadata"], dict):
        return RecordFailure("metadata must be an object", "validation", 400)
    if "eventId" in record and not _non_empty_str(record["eventId"]):
        return RecordFailure("eventId must be a non-empty string", "validation", 400)
    return None


def inflate(request: Incoming, accept_gzip: bool) -> tuple[Incoming, Reply | None]:
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
        return request, error_reply(415, f"Unsupported Content-Encoding: {encoding}")
    inflater = zlib.decompressobj(wbits=31)
    try:
        body = inflater.decompress(request.body, _MAX_INFLATED)
    except zlib.error:
        return request, error_reply(400, "Malformed gzip body")
    if inflater.unconsumed_tail:
        return request, error_reply(413)
    if not inflater.eof:
        return request, error_reply(400, "Truncated gzip body")
    request = replace(request, body=body)  # recorded decoded, even when refused
    if not accept_gzip:
        return request, error_reply(415, "Unsupported Content-Encoding: gzip")
    return request, None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_jwt(secret: bytes, subject: str, lifetime: float) -> str:
    """A real HS256 JWT, so clients can read ``exp`` exactly as in production."""
    now = time.time()
    header = _b64url(ENCODER.encode({"alg": "HS256", "typ": "JWT"}))
    claims = {
        "sub": subject,
        "iat": int(now),
        "exp": int(now + lifetime),  # truncated: errs towards early refresh
        "jti": secrets.token_hex(16),  # every login yields a distinct token
    }
    signing_input = f"{header}.{_b64url(ENCODER.encode(claims))}"
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256)
    return f"{signing_input}.{_b64url(signature.digest())}"
