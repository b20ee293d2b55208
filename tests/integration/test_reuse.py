"""Issue #18, finding 7: an answer is read only as the answer to the request just sent.

A server or middlebox that sends one answer twice on a kept-alive connection leaves the
copy to be read as the answer to the next request. These tests drive that against
FakeEnso's ``Fault(answer_twice=True)`` and against a raw-socket "middlebox" that also
swallows the request after the doubled answer (so nothing but the stale copy answers
it), and pin how the sender sees httpcore's parser buffer.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

import httpx
import pytest

from enso_tracker import Config
from enso_tracker._http.auth import ApiKey, ClientCredentials
from enso_tracker._http.deadline import Deadline, DeadlineStream
from enso_tracker._http.reuse import _parser_buffer
from enso_tracker._http.sender import Answered, HttpSender, Retry
from enso_tracker.testing import FakeEnso, Fault
from tests.conftest import API_KEY, TrackerFactory, accepted


def body_of(ids: list[str]) -> bytes:
    events = [
        {
            "CustomerEntityId": "ent",
            "metric": "api_calls",
            "value": 1,
            "timestamp": "2026-01-01T00:00:00.000Z",
            "eventId": event_id,
        }
        for event_id in ids
    ]
    return json.dumps({"events": events}).encode()


# ------------------------------------------------------------ against FakeEnso


def test_a_doubled_answer_is_never_read_as_the_next_requests_answer(
    tracker: TrackerFactory, fake_enso: FakeEnso
) -> None:
    t = tracker(max_batch_size=5)
    fake_enso.script(Fault(answer_twice=True))
    first = [accepted(t.track("ent", "api_calls", i)) for i in range(5)]
    assert t.flush(10.0)
    # The next batch's true answer fails one record (503): the stale copy of the first
    # answer says all five succeeded. Read as this batch's answer, it would book the
    # failed event delivered though Enso never stored it.
    second = [accepted(t.track("ent", "api_calls", i)) for i in range(5)]
    fake_enso.fail_event_ids([second[2]], status=503, times=1)
    assert t.flush(10.0)
    assert set(fake_enso.events) == set(first) | set(second)
    stats = t.stats()
    assert stats.delivered == 10
    assert stats.balanced
    sent = [e["eventId"] for r in fake_enso.batch_requests() for e in r.json()["events"]]
    assert sent.count(second[2]) == 2  # failed by its own answer, so resent
    sender: Any = t._sender
    assert sender.discarded == 1


def test_a_doubled_answer_on_a_direct_sender_closes_the_connection(fake_enso: FakeEnso) -> None:
    sender = HttpSender(Config(base_url=fake_enso.url, timeout=5.0), ApiKey(API_KEY))
    try:
        fake_enso.script(Fault(answer_twice=True))
        assert isinstance(sender.send(body_of(["a1", "a2"]), 5.0), Answered)
        fake_enso.fail_event_ids(["b1"], status=503, times=1)
        outcome = sender.send(body_of(["b1", "b2"]), 5.0)
    finally:
        sender.close()
    assert isinstance(outcome, Answered)
    assert [r.index for r in outcome.answer.failed] == [0]  # b1's own answer
    assert sender.discarded == 1


# ---------------------------------------------------- against a raw "middlebox"


class DoublingMiddlebox:
    """A keep-alive HTTP/1.1 server storing eventIds, whose first answer goes out twice.

    After the doubled answer it swallows the next request on that connection (stores
    nothing, answers nothing, closes): only the stale copy could answer it, as with a
    middlebox that replays an answer and loses the request behind it.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self.stored: dict[str, int] = {}
        self.connections = 0
        self.swallowed = 0
        self._doubled = False
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        doubled_here = False
        try:
            while True:
                request = self._read_request(reader)
                if request is None:
                    return
                if doubled_here:
                    with self._lock:
                        self.swallowed += 1
                    return  # the request behind the doubled answer is lost
                events = json.loads(request)["events"]
                with self._lock:
                    for event in events:
                        self.stored[event["eventId"]] = self.stored.get(event["eventId"], 0) + 1
                    double = not self._doubled
                    self._doubled = True
                summary = {"success": len(events), "failed": 0, "total": len(events)}
                body = json.dumps({"summary": summary, "failedRecords": []}).encode()
                answer = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                conn.sendall(answer * 2 if double else answer)
                doubled_here = double
        except OSError:
            return
        finally:
            reader.close()
            conn.close()

    @staticmethod
    def _read_request(reader: BinaryIO) -> bytes | None:
        length = None
        line = reader.readline()
        if not line:
            return None
        while True:
            line = reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return reader.read(length or 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (close() does not)
        self._listener.close()
        self._accepting.join(5.0)
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):  # already closed by its thread
                    conn.shutdown(socket.SHUT_RDWR)  # wakes a thread reading a kept-alive one
        for thread in self._threads:
            thread.join(5.0)


@pytest.fixture
def middlebox() -> Iterator[DoublingMiddlebox]:
    server = DoublingMiddlebox()
    yield server
    server.close()


def test_the_request_behind_a_doubled_answer_is_not_booked_by_the_copy(
    tracker: TrackerFactory, middlebox: DoublingMiddlebox
) -> None:
    t = tracker(base_url=middlebox.url, allow_insecure_http=True, max_batch_size=3)
    first = [accepted(t.track("ent", "api_calls", i)) for i in range(3)]
    assert t.flush(10.0)
    second = [accepted(t.track("ent", "api_calls", i)) for i in range(3)]
    assert t.flush(10.0)
    # Every event the tracker counts delivered was stored by the server, exactly once.
    assert middlebox.stored == dict.fromkeys(first + second, 1)
    stats = t.stats()
    assert stats.delivered == 6
    assert stats.balanced
    assert middlebox.swallowed == 0  # nothing was sent on the connection after the copy
    assert middlebox.connections == 2


# ------------------------------------------------------------------ the parts


def test_the_parser_buffer_is_found_on_both_paths(
    fake_enso: FakeEnso, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pins how the sender sees httpcore's h11 buffer: an upgrade that moves it fails here.
    fake_enso.script(Fault(answer_twice=True), Fault(answer_twice=True))
    seen: list[bytes | None] = []
    for transport in (httpx.HTTPTransport(), None):
        with httpx.Client(transport=transport) as client:
            request = client.build_request(
                "POST",
                fake_enso.url + "/events/batch",
                content=body_of(["x"]),
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            response = client.send(request, stream=True)
            response.read()
            seen.append(_parser_buffer(response))
            response.close()
    assert all(buffer and buffer.startswith(b"HTTP/1.1 200") for buffer in seen)


class ScriptedStream:
    """An httpcore network stream whose readability a test sets."""

    def __init__(self) -> None:
        self.readable = False
        self.written: list[bytes] = []

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return b"x"

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.written.append(buffer)

    def close(self) -> None:
        pass

    def get_extra_info(self, info: str) -> object:
        return self.readable if info == "is_readable" else None


def test_bytes_waiting_before_a_reused_connections_request_mark_it_early() -> None:
    inner = ScriptedStream()
    stream = DeadlineStream(inner, Deadline())  # type: ignore[arg-type]
    inner.readable = True  # a fresh TLS 1.3 socket holds session tickets: not early
    stream.write(b"request 1")
    assert not stream.early
    inner.readable = False
    stream.read(10)
    assert stream.reads == 1
    stream.write(b"request 2 head")
    inner.readable = True  # bytes arrive before the body's last byte went out
    stream.write(b"request 2 body")
    assert stream.early
    assert stream.reads == 0
    stream.write(b"")  # h11's empty end-of-body write checks and sends nothing
    assert inner.written == [b"request 1", b"request 2 head", b"request 2 body"]
    stream.read(10)
    inner.readable = False
    stream.write(b"request 3")  # a new cycle starts clean
    assert not stream.early


def test_an_answer_already_buffered_before_the_request_is_a_retry(
    fake_enso: FakeEnso, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parser-buffer check switched off: the stream's own watch still catches the copy.
    monkeypatch.setattr("enso_tracker._http.reuse._parser_buffer", lambda response: None)
    sender = HttpSender(Config(base_url=fake_enso.url, timeout=5.0), ApiKey(API_KEY))
    try:
        fake_enso.script(Fault(answer_twice=True))
        assert isinstance(sender.send(body_of(["a1"]), 5.0), Answered)
        stale = sender.send(body_of(["b1"]), 5.0)
        fresh = sender.send(body_of(["b1"]), 5.0)
    finally:
        sender.close()
    assert isinstance(stale, Retry)
    assert "before the request was sent" in stale.message
    assert isinstance(fresh, Answered)
    assert sender.discarded == 1


class AbandoningServer:
    """Keep-alive server whose first answer is one the client must abandon mid-way.

    ``kind="oversize"`` declares a body far over the answer limit; ``kind="stall"``
    sends half its body and stops. Records, per connection, how many requests arrived.
    """

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.per_connection: list[int] = []
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                index = len(self.per_connection)
                self.per_connection.append(0)
                self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        reader = conn.makefile("rb")
        try:
            while DoublingMiddlebox._read_request(reader) is not None:
                with self._lock:
                    self.per_connection[index] += 1
                body = b'{"summary":{"success":1,"failed":0,"total":1},"failedRecords":[]}'
                if index == 0 and self._kind == "oversize":
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {10**10}\r\n\r\n".encode()
                    conn.sendall(head + body)
                elif index == 0:
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    conn.sendall(head + body[:10])  # and nothing more
                else:
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    conn.sendall(head + body)
        except OSError:
            return
        finally:
            reader.close()
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepting.join(5.0)
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5.0)


@pytest.mark.parametrize("kind", ["oversize", "stall"])
def test_a_connection_abandoned_mid_answer_is_never_reused(kind: str) -> None:
    server = AbandoningServer(kind)
    sender = HttpSender(Config(base_url=server.url, timeout=1.0), ApiKey(API_KEY))
    try:
        first = sender.send(body_of(["a"]), 1.0)
        second = sender.send(body_of(["b"]), 1.0)
    finally:
        sender.close()
        server.close()
    assert isinstance(first, Retry)
    assert ("ReadTimeout" if kind == "stall" else "limit") in first.message
    assert isinstance(second, Answered)
    assert server.per_connection == [1, 1]  # the second request went on a new connection


# ----------------------------------------------------------------------- over TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


class TlsEnso(ThreadingHTTPServer):
    """A keep-alive HTTPS batch endpoint (TLS 1.3 where available, so session tickets
    arrive after the handshake); ``double`` requests are answered twice in one write."""

    daemon_threads = True

    def __init__(self, cert: str, key: str, double: set[int]) -> None:
        super().__init__(("127.0.0.1", 0), _TlsHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server_address[1]}"
        self.double = double
        self.requests = 0
        self.connections = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5.0)


class _TlsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        server = self.server
        assert isinstance(server, TlsEnso)
        with server.lock:
            server.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        server = self.server
        assert isinstance(server, TlsEnso)
        events = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["events"]
        with server.lock:
            server.requests += 1
            double = server.requests in server.double
        summary = {"success": len(events), "failed": 0, "total": len(events)}
        body = json.dumps({"summary": summary, "failedRecords": []}).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        self.wfile.write((head + body) * (2 if double else 1))


@pytest.mark.parametrize("double", [set(), {1}], ids=["plain", "first-answer-twice"])
def test_over_tls_a_connection_is_reused_unless_an_answer_came_twice(
    certificate: tuple[str, str], double: set[int]
) -> None:
    server = TlsEnso(*certificate, double)
    sender = HttpSender(
        Config(
            base_url=server.url,
            timeout=5.0,
            verify=ssl.create_default_context(cafile=certificate[0]),
        ),
        ApiKey(API_KEY),
    )
    try:
        outcomes = [sender.send(body_of([f"e{i}"]), 5.0) for i in range(5)]
    finally:
        sender.close()
        server.close()
    # No false alarm from TLS itself (session tickets, records): every answer trusted.
    assert all(isinstance(outcome, Answered) for outcome in outcomes)
    assert server.requests == 5
    assert sender.discarded == len(double)
    assert server.connections == 1 + len(double)


class DoublingLogin(DoublingMiddlebox):
    """System-login answers issuing ``tok1``, ``tok2``...; the first one goes out twice."""

    def __init__(self) -> None:
        self.logins = 0
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while self._read_request(reader) is not None:
                with self._lock:
                    self.logins += 1
                    issued = self.logins
                    double = not self._doubled
                    self._doubled = True
                body = json.dumps({"data": {"accessToken": f"tok{issued}"}}).encode()
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                conn.sendall((head + body) * (2 if double else 1))
        except OSError:
            return
        finally:
            reader.close()
            conn.close()


def test_a_doubled_login_answer_is_not_the_next_logins_answer() -> None:
    server = DoublingLogin()
    credentials = ClientCredentials("ck", "cs", server.url)
    try:
        with httpx.Client() as client:
            first = credentials.authorization(client, 5.0)
            credentials.invalidate(first)
            second = credentials.authorization(client, 5.0)
    finally:
        server.close()
    assert (first, second) == ("Bearer tok1", "Bearer tok2")  # not tok1's copy again
    assert server.connections == 2
