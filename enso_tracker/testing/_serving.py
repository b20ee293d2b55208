"""How :class:`~enso_tracker.testing.FakeEnso` serves a request: route, record, apply
the scripted faults, validate and store records, log in.

Owns: the request path, as a base class of ``FakeEnso`` (which owns the state and the
public API a test calls). Invariants: every request is recorded, also when the answer is
dropped or times out; all state is read and written under the fake's one lock; a hang
or delay never polls.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import msgspec

from ._api import (
    BATCH,
    DECODER,
    ENCODER,
    LOGIN,
    ROUTES,
    TRANSIENT_ERROR,
    IssuedToken,
    RecordFailure,
    derive_event_id,
    error_reply,
    inflate,
    mint_jwt,
    success_reply,
    validate_record,
)
from ._messages import DROP, TIMED_OUT, Incoming, Reply
from ._recorded import RecordedRequest, RedactedHeaders
from ._state import FakeState

__all__ = ["Serving"]


class Serving(FakeState):
    """The request path of ``FakeEnso``; the attributes are set by its constructor."""

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
        reply = error_reply(500)
        try:
            request, refusal = inflate(request, self.accept_gzip)
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
        if request.route not in ROUTES:
            return error_reply(404)
        if request.method != "POST":
            return error_reply(405, headers=(("Allow", "POST"),))
        if request.route == BATCH:
            read_deadline = None if read_timeout is None else request.received_at + read_timeout
            return self._handle_batch(request, interrupted, read_deadline)
        if request.body is None:
            return error_reply(400, "Malformed request body")
        if request.route == LOGIN:
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
                return error_reply(fault.status, headers=headers)
            if fault.body is not None:
                return Reply(200, fault.body)

        if not self._authorized(request.headers):
            return error_reply(401)
        if request.body is None:
            return error_reply(400, "Malformed request body")
        if self.max_body_bytes is not None and len(request.body) > self.max_body_bytes:
            return error_reply(413)
        try:
            payload = DECODER.decode(request.body)
        except msgspec.DecodeError:
            return error_reply(400, "Invalid JSON body")
        events = payload.get("events") if isinstance(payload, dict) else None
        if not isinstance(events, list) or not events:
            return error_reply(400, errors=[{"code": 2003, "message": "events array is required"}])
        with self._lock:
            poison_status = self._plan.poisoned_status(events)
        if poison_status is not None:  # the whole request fails, whatever else it carries
            return error_reply(poison_status)

        overrides = dict(fault.record_status) if fault and fault.record_status else {}
        failed: list[dict[str, Any]] = []
        with self._lock:
            for index, record in enumerate(events):
                outcome = self._accept(record, overrides.get(index))
                if isinstance(outcome, RecordFailure):
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
        reply = Reply(200, ENCODER.encode(result)) if shape == "bare" else success_reply(result)
        if fault is not None and fault.answer_twice:
            return replace(reply, twice=True)
        return reply

    def _handle_single(self, request: Incoming) -> Reply:
        if not self._authorized(request.headers):
            return error_reply(401)
        body = request.body or b""
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            return error_reply(413)
        try:
            record = DECODER.decode(body)
        except msgspec.DecodeError:
            return error_reply(400, "Invalid JSON body")
        with self._lock:
            outcome = self._accept(record, None)
            if isinstance(outcome, RecordFailure):
                return error_reply(
                    outcome.status_code,
                    outcome.error,
                    [{"code": outcome.code, "message": outcome.error}],
                )
            echoed = {**self._events[outcome], "eventId": outcome}
        return Reply(201, ENCODER.encode(echoed))

    def _accept(self, record: object, override_status: int | None) -> RecordFailure | str:
        """Validate and store one record (lock held); return its failure or its eventId."""
        failure = validate_record(record, self._known_entities)
        if failure is not None:
            return failure
        assert isinstance(record, dict)
        explicit = record.get("eventId")
        event_id = explicit if isinstance(explicit, str) else derive_event_id(record)
        if override_status is not None:
            return RecordFailure(TRANSIENT_ERROR, "transient", override_status)
        failing_status = self._plan.take_record_failure(event_id)
        if failing_status is not None:
            return RecordFailure(TRANSIENT_ERROR, "transient", failing_status)
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
            payload = DECODER.decode(body)
        except msgspec.DecodeError:
            return error_reply(400, "Invalid JSON body")
        if not isinstance(payload, dict):
            return error_reply(401)
        key, secret = payload.get("clientKey"), payload.get("clientSecret")
        if not isinstance(key, str) or not isinstance(secret, str):
            return error_reply(401)
        with self._lock:
            expected = self._client_credentials.get(key)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            return error_reply(401)
        return success_reply({"accessToken": self._issue_token(key)})

    def _issue_token(self, subject: str) -> str:
        lifetime = self._token_lifetime
        token = mint_jwt(self._secret, subject, lifetime)
        with self._lock:
            self._tokens[token] = IssuedToken(time.monotonic() + lifetime)
        return token
