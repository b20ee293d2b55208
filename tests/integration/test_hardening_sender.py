"""Issue #8, hardening of the sender: answers bounded in size (defect 8) and in time
(defect 9), 2xx answers that must account for every event (defect 12), and no
exception text from the HTTP stack in any message.

Hostile servers are small raw-socket servers on 127.0.0.1 defined here; exact tables
use ``httpx.MockTransport``; the accounting rule is also checked end to end.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from enso_tracker import Config, Tracker
from enso_tracker._http.answer import ANSWER_BASE_BYTES, AnswerError, answer_limit, read_answer
from enso_tracker._http.auth import ApiKey, ClientCredentials
from enso_tracker._http.deadline import DeadlineBackend
from enso_tracker._http.sender import Answered, HttpSender, Outcome, Rejected, Retry
from enso_tracker._wire import BatchAnswer, parse_batch_answer, reconcile
from enso_tracker.testing import DropRecorder, FakeEnso
from tests.conftest import API_KEY, TrackerFactory, accepted

MiB = 1024 * 1024
BODY = b'{"events":[{"eventId":"e1"}]}'
SUMMARY_OK = b'"data":{"summary":{"success":1,"failed":0,"total":1},"failedRecords":[]}'
OK_ANSWER = b'{"status":"success","message":"Success",' + SUMMARY_OK + b"}"


# ------------------------------------------------------------------ a hostile server


class RawServer:
    """Reads one HTTP request per connection, then lets ``respond`` misbehave on it.

    Counts the bytes it managed to write and whether it got to the end, so a test can
    tell that the client stopped reading early.
    """

    def __init__(self, respond: Callable[[RawServer, socket.socket], None]) -> None:
        self._respond = respond
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # so the accept loop sees stop()
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop = threading.Event()
        self.done = threading.Event()  # a response ended (finished or cut off)
        self._lock = threading.Lock()
        self._written = 0
        self.completed = False
        self.requests: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def written(self) -> int:
        with self._lock:
            return self._written

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self._lock:
            self._written += len(data)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(30.0)
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    data += piece
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    body += piece
                with self._lock:
                    self.requests.append(head + b"\r\n\r\n" + body)
                self._respond(self, conn)
        except OSError:
            pass  # the client hung up: what these tests expect of it
        finally:
            self.done.set()

    def close(self) -> None:
        self.stop.set()
        self._listener.close()
        self._accepting.join(5.0)
        for thread in self._threads:
            thread.join(5.0)


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[RawServer, socket.socket], None]], RawServer]]:
    made: list[RawServer] = []

    def make(respond: Callable[[RawServer, socket.socket], None]) -> RawServer:
        server = RawServer(respond)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def huge_answer(
    total: int, *, status: int = 200, content_length: bool = True
) -> Callable[[RawServer, socket.socket], None]:
    """A valid batch answer padded to ``total`` bytes (an old client would accept it)."""
    prefix = b'{"pad":"'
    suffix = b'",' + SUMMARY_OK + b"}"

    def respond(server: RawServer, conn: socket.socket) -> None:
        head = f"HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n"
        if content_length:
            head += f"Content-Length: {total}\r\n"
        server.send(conn, (head + "Connection: close\r\n\r\n").encode())
        server.send(conn, prefix)
        chunk = b"x" * MiB
        left = total - len(prefix) - len(suffix)
        while left > 0 and not server.stop.is_set():
            piece = chunk if left >= MiB else chunk[:left]
            server.send(conn, piece)
            left -= len(piece)
        server.send(conn, suffix)
        server.completed = True

    return respond


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body (~1/1000 of its size) that inflates to a valid, huge batch answer."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    parts = [packer.compress(b'{"pad":"')]
    chunk = b"0" * MiB
    parts += [packer.compress(chunk) for _ in range(inflated // MiB)]
    parts += [packer.compress(b'",' + SUMMARY_OK + b"}"), packer.flush()]
    return b"".join(parts)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb(256 * MiB)


def sending(body: bytes) -> Callable[[RawServer, socket.socket], None]:
    def respond(server: RawServer, conn: socket.socket) -> None:
        server.send(conn, body)
        server.completed = True

    return respond


def trickle(*, headers: bool) -> Callable[[RawServer, socket.socket], None]:
    """One byte every 0.3 s: of the whole answer, or of its body after prompt headers."""
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(OK_ANSWER)}\r\n\r\n"
    ).encode()

    def respond(server: RawServer, conn: socket.socket) -> None:
        slow = head + OK_ANSWER
        if not headers:
            server.send(conn, head)
            slow = OK_ANSWER
        for i in range(len(slow)):
            if server.stop.wait(0.3):
                return
            server.send(conn, slow[i : i + 1])
        server.completed = True

    return respond


def sender_for(url: str, *, timeout: float = 5.0, **options: Any) -> HttpSender:
    return HttpSender(Config(base_url=url, timeout=timeout, **options), ApiKey(API_KEY))


def send_once(sender: HttpSender, body: bytes = BODY, timeout: float | None = None) -> Outcome:
    try:
        return sender.send(body, sender._config.timeout if timeout is None else timeout)
    finally:
        sender.close()


# ------------------------------------------------- defect 8: answers bounded in size


@pytest.mark.parametrize("content_length", [True, False])
def test_defect8_huge_2xx_answer_is_retried_and_not_read_to_the_end(
    raw_server: Callable[..., RawServer], content_length: bool
) -> None:
    total = 128 * MiB
    server = raw_server(huge_answer(total, content_length=content_length))
    outcome = send_once(sender_for(server.url))
    assert isinstance(outcome, Retry)
    assert "limit" in outcome.message
    assert server.done.wait(30.0)
    # The client hung up: the server could not write it all (socket buffers hold a few MiB).
    assert not server.completed
    assert server.written < total // 2


@pytest.mark.slow
def test_defect8_gzip_bomb_is_retried_with_bounded_memory(
    raw_server: Callable[..., RawServer], bomb: bytes
) -> None:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(bomb)}\r\n\r\n"
    ).encode()
    server = raw_server(sending(head + bomb))
    sender = sender_for(server.url)
    tracemalloc.start()
    try:
        outcome = send_once(sender)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(outcome, Retry)
    assert "limit" in outcome.message
    # It inflates to 256 MiB; the bound for this body is ~1 MiB.
    assert peak < 32 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_defect8_read_answer_stops_pulling_the_stream_past_the_limit(bomb: bytes) -> None:
    pulled = 0

    class Counting(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            nonlocal pulled
            for start in range(0, len(bomb), 4096):
                pulled += 1
                yield bomb[start : start + 4096]

    response = httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=Counting())
    with pytest.raises(AnswerError, match="limit"):
        read_answer(response, MiB)
    # 1 MiB of zeros is ~1 KiB of gzip: the first 4 KiB piece is already over.
    assert pulled == 1
    # An error answer is only quoted: truncated to the bound, not refused.
    pulled = 0
    response = httpx.Response(500, headers={"Content-Encoding": "gzip"}, stream=Counting())
    assert read_answer(response, 1000, truncate=True) == b'{"pad":"' + b"0" * 992
    assert pulled == 1


@pytest.mark.parametrize(
    ("encoding", "packed"),
    [
        ("gzip", gzip.compress(OK_ANSWER, mtime=0)),
        ("x-gzip", gzip.compress(OK_ANSWER, mtime=0)),
        ("deflate", zlib.compress(OK_ANSWER)),
        ("deflate", zlib.compress(OK_ANSWER)[2:-4]),  # raw deflate, as some servers send
        ("identity", OK_ANSWER),
    ],
)
def test_compressed_answers_within_the_bound_are_read(encoding: str, packed: bytes) -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=packed, headers={"Content-Encoding": encoding})
    )
    sender = HttpSender(Config(base_url="https://enso.test"), ApiKey("k"), transport=transport)
    assert isinstance(send_once(sender), Answered)


@pytest.mark.parametrize(
    ("encoding", "packed"),
    [
        ("br", b"\x0b\x02\x80" + OK_ANSWER),
        ("gzip, gzip", gzip.compress(gzip.compress(OK_ANSWER, mtime=0), mtime=0)),
    ],
)
def test_defect8_answers_in_encodings_we_cannot_bound_are_retried(
    encoding: str, packed: bytes
) -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200,
            headers={"Content-Encoding": encoding},
            stream=httpx.ByteStream(packed),
        )
    )
    sender = HttpSender(Config(base_url="https://enso.test"), ApiKey("k"), transport=transport)
    outcome = send_once(sender)
    assert isinstance(outcome, Retry)
    assert "Content-Encoding" in outcome.message


CORRUPT = [
    ("gzip", b"\x1f\x8b\x08 not a deflate stream"),
    ("gzip", gzip.compress(OK_ANSWER, mtime=0)[:10] + b"\x00" * 30),
    ("deflate", b"neither zlib-wrapped nor raw deflate"),
]


@pytest.mark.parametrize(("encoding", "packed"), CORRUPT)
def test_a_corrupt_compressed_answer_is_an_answer_error_at_once(
    encoding: str, packed: bytes
) -> None:
    response = httpx.Response(
        200, headers={"Content-Encoding": encoding}, stream=httpx.ByteStream(packed)
    )
    with pytest.raises(AnswerError, match=r"^answer's compressed body is corrupt$"):
        read_answer(response, 10_000)


@pytest.mark.parametrize(("encoding", "packed"), CORRUPT)
@pytest.mark.parametrize("status", [200, 400, 503])
def test_a_corrupt_compressed_answer_is_never_a_success_and_ends_the_send(
    encoding: str, packed: bytes, status: int
) -> None:
    calls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        headers = {"Content-Encoding": encoding}
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(packed))

    sender = HttpSender(
        Config(base_url="https://enso.test"), ApiKey("k"), transport=httpx.MockTransport(handle)
    )
    outcome = send_once(sender)
    assert len(calls) == 1  # one request: no resend loop inside the sender
    if status == 200:  # a 2xx we cannot read vouches for nothing
        assert isinstance(outcome, Retry)
        assert outcome.message == "HTTP 200: answer's compressed body is corrupt"
    elif status == 400:  # an error answer we cannot read: the status alone decides
        assert outcome == Rejected("HTTP 400: (empty body)", 400)
    else:
        assert isinstance(outcome, Retry)
        assert (outcome.status, outcome.message) == (503, "HTTP 503: (empty body)")


def test_the_answer_limit_grows_with_the_batch() -> None:
    assert answer_limit(b"") == ANSWER_BASE_BYTES
    # The smallest event encodes to ~100 bytes: the bound leaves over 1 KiB per event.
    smallest = (
        b'{"CustomerEntityId":"a","metric":"b","value":0,'
        b'"timestamp":"2024-01-01T00:00:00.000Z","eventId":"x"}'
    )
    assert answer_limit(smallest) - answer_limit(b"") >= 1024


@pytest.mark.parametrize(("status", "kind"), [(503, Retry), (403, Rejected)])
def test_defect8_huge_error_answers_are_not_read_and_the_status_decides(
    raw_server: Callable[..., RawServer], status: int, kind: type
) -> None:
    total = 128 * MiB
    server = raw_server(huge_answer(total, status=status, content_length=False))
    outcome = send_once(sender_for(server.url))
    assert isinstance(outcome, kind)
    assert isinstance(outcome, Retry | Rejected)
    assert f"HTTP {status}" in outcome.message
    assert len(outcome.message) < 400  # quoted, truncated
    assert server.done.wait(30.0)
    assert not server.completed
    assert server.written < total // 2


def test_defect8_huge_login_answer_is_a_retry_and_not_read(
    raw_server: Callable[..., RawServer],
) -> None:
    total = 128 * MiB
    server = raw_server(huge_answer(total, content_length=False))
    config = Config(base_url=server.url, timeout=5.0)
    sender = HttpSender(config, ClientCredentials("ck", "cs", server.url))
    outcome = send_once(sender)
    assert isinstance(outcome, Retry)
    assert "login answer" in outcome.message
    assert server.requests[0].startswith(b"POST /auth/system-login ")
    assert server.done.wait(30.0)
    assert not server.completed
    assert server.written < total // 2


# -------------------------------------------- defect 9: a deadline for the request


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.mark.slow
@pytest.mark.parametrize("path", ["direct", "proxy"])
@pytest.mark.parametrize("headers", [True, False], ids=["trickled-headers", "trickled-body"])
def test_defect9_a_trickling_server_cannot_hold_a_request_past_the_timeout(
    raw_server: Callable[..., RawServer],
    no_proxy_env: pytest.MonkeyPatch,
    path: str,
    headers: bool,
) -> None:
    server = raw_server(trickle(headers=headers))
    if path == "proxy":
        # The Client path: an environment proxy applies (the "proxy" trickles too).
        no_proxy_env.setenv("HTTP_PROXY", server.url)
        sender = sender_for("http://127.0.0.1:9", timeout=1.0)
    else:
        sender = sender_for(server.url, timeout=1.0)
    sender._http()
    assert (sender._direct is None) is (path == "proxy")
    started = time.monotonic()
    outcome = send_once(sender)
    elapsed = time.monotonic() - started
    assert isinstance(outcome, Retry)
    assert outcome.message == "ReadTimeout"
    assert elapsed < 5.0, f"held for {elapsed:.1f} s with timeout=1.0"
    assert server.requests  # it really went to the trickling server
    assert not server.completed


@pytest.mark.slow
def test_defect9_a_trickled_login_is_bounded_too(
    raw_server: Callable[..., RawServer], no_proxy_env: pytest.MonkeyPatch
) -> None:
    server = raw_server(trickle(headers=False))
    config = Config(base_url=server.url, timeout=1.0)
    sender = HttpSender(config, ClientCredentials("ck", "cs", server.url))
    started = time.monotonic()
    outcome = send_once(sender)
    elapsed = time.monotonic() - started
    assert isinstance(outcome, Retry)
    assert outcome.message == "login failed: ReadTimeout"
    assert elapsed < 5.0, f"held for {elapsed:.1f} s with timeout=1.0"


@pytest.mark.parametrize("proxied", [False, True])
def test_defect9_every_transport_is_armed(no_proxy_env: pytest.MonkeyPatch, proxied: bool) -> None:
    # Pins how the deadline reaches httpcore: an httpx upgrade that moves it fails here.
    if proxied:
        no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    sender = sender_for("https://api.getenso.ai")
    try:
        client: Any = sender._http()
        mounts = [t for t in client._mounts.values() if t is not None]
        # Proxied: batches go through the Client, whose proxy mount must be armed.
        assert len(mounts) == (1 if proxied else 0)
        assert (sender._direct is None) is proxied
        direct = [] if sender._direct is None else [sender._direct]
        for transport in [client._transport, *mounts, *direct]:
            assert isinstance(transport._pool._network_backend, DeadlineBackend)
    finally:
        sender.close()


def test_defect9_normal_delivery_still_works(tracker: TrackerFactory, fake_enso: FakeEnso) -> None:
    t = tracker(timeout=1.0)
    ids = [accepted(t.track("ent", "api_calls", i)) for i in range(250)]
    assert t.flush(10.0)
    assert set(fake_enso.events) == set(ids)
    stats = t.stats()
    assert stats.delivered == 250
    assert stats.failed_requests == 0
    assert stats.balanced
    sender: Any = t._sender
    assert sender._deadline.at == float("inf")  # no deadline left behind between sends


@pytest.mark.slow
def test_a_later_request_does_not_inherit_an_old_deadline(fake_enso: FakeEnso) -> None:
    # Pooled connections outlive a send(): a later send must not inherit an old deadline.
    sender = sender_for(fake_enso.url, timeout=1.0)
    try:
        first = sender.send(BODY, 1.0)
        fake_enso.hang(1.5)  # longer than the timeout: this one times out
        second = sender.send(BODY, 1.0)
        fake_enso.release()
        third = sender.send(BODY, 1.0)
    finally:
        sender.close()
    assert isinstance(first, Answered)
    assert isinstance(second, Retry)
    assert isinstance(third, Answered)


# -------------------------------------------- no exception text from the HTTP stack


@pytest.mark.parametrize(
    "error",
    [
        httpx.LocalProtocolError("Illegal header value b'Bearer sekrit-token'"),
        httpx.ConnectError("sekrit-token"),
        httpx.ReadTimeout("sekrit-token"),
    ],
)
def test_exception_texts_never_reach_the_outcome(error: httpx.HTTPError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    sender = HttpSender(
        Config(base_url="https://enso.test"),
        ApiKey("sekrit-token"),
        transport=httpx.MockTransport(handler),
    )
    outcome = send_once(sender)
    assert isinstance(outcome, Retry)
    assert outcome.message == type(error).__name__


def test_a_header_httpx_cannot_encode_is_a_retry_without_its_text() -> None:
    # make_credentials refuses such a key; a Credentials object built otherwise must
    # still not leak it through UnicodeEncodeError's text (which quotes the value).
    sender = HttpSender(
        Config(base_url="https://enso.test"),
        ApiKey("sekrit-t\u00f6ken"),
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=OK_ANSWER)),
    )
    outcome = send_once(sender)
    assert isinstance(outcome, Retry)
    assert "sekrit" not in outcome.message
    assert outcome.message.startswith("UnicodeEncodeError")


def test_error_bodies_are_quoted_without_control_characters() -> None:
    body = b'{"status":"error","message":"busy\\r\\nFAKE LOG LINE\\u001b[31m"}'
    transport = httpx.MockTransport(lambda request: httpx.Response(503, content=body))
    sender = HttpSender(Config(base_url="https://enso.test"), ApiKey("k"), transport=transport)
    outcome = send_once(sender)
    assert isinstance(outcome, Retry)
    assert outcome.message.startswith("HTTP 503: busy")
    assert "FAKE LOG LINE" in outcome.message
    assert not any(ord(c) < 32 for c in outcome.message)


# ----------------------------------------- defect 12: answers must account for events


def answer(doc: dict[str, Any]) -> BatchAnswer:
    parsed = parse_batch_answer(json.dumps(doc).encode())
    assert parsed is not None
    return parsed


def wrapped(success: Any, failed: Any, total: Any, records: list[Any] | None = None) -> BatchAnswer:
    summary = {
        k: v for k, v in (("success", success), ("failed", failed), ("total", total)) if v != "-"
    }
    return answer({"status": "success", "data": {"summary": summary, "failedRecords": records}})


def rec(index: int, status: int = 404) -> dict[str, Any]:
    return {
        "index": index,
        "error": "Customer entity not found",
        "code": 2002,
        "statusCode": status,
    }


RECONCILE_TABLE: list[tuple[str, BatchAnswer, bool, bool, set[int]]] = [
    # name, answer for a batch of 3, vouched, reconciled, trusted failure indexes
    ("all delivered", wrapped(3, 0, 3, []), True, True, set()),
    ("Enso's own example", wrapped(0, 3, 3, [rec(2), rec(0), rec(1)]), True, True, {0, 1, 2}),
    ("one failure", wrapped(2, 1, 3, [rec(1)]), True, True, {1}),
    (
        "bare shape",
        answer({"summary": {"success": 3, "failed": 0, "total": 3}, "failedRecords": []}),
        True,
        True,
        set(),
    ),
    (
        "status Success, any case",
        answer({"status": "Success", "data": {"summary": {"success": 3, "failed": 0, "total": 3}}}),
        True,
        True,
        set(),
    ),
    ("empty summary", answer({"data": {"summary": {}}}), False, False, set()),
    (
        "status error",
        answer(
            {
                "status": "error",
                "message": "Internal error",
                "data": {"summary": {"success": 3, "failed": 0, "total": 3}, "failedRecords": []},
            }
        ),
        False,
        False,
        set(),
    ),
    (
        "status not a string",
        answer({"status": 1, "data": {"summary": {"success": 3, "failed": 0, "total": 3}}}),
        False,
        False,
        set(),
    ),
    ("all zero", wrapped(0, 0, 0, []), False, False, set()),
    ("failed missing", wrapped(1, "-", 3, []), False, False, set()),
    ("total missing", wrapped(3, 0, "-", []), False, False, set()),
    ("counts do not add up", wrapped(1, 0, 3, []), False, False, set()),
    ("total too large", wrapped(4, 0, 4, []), False, False, set()),
    ("negative count", wrapped(4, -1, 3, []), False, False, set()),
    ("index past the batch", wrapped(3, 0, 3, [rec(7)]), False, False, set()),
    ("index past the batch, counted", wrapped(2, 1, 3, [rec(3)]), False, False, set()),
    ("negative index", wrapped(2, 1, 3, [rec(-1)]), False, False, set()),
    ("index listed twice", wrapped(1, 2, 3, [rec(0), rec(0)]), False, False, set()),
    ("more listed than counted", wrapped(2, 1, 3, [rec(0), rec(1)]), False, False, set()),
    ("fewer listed than counted", wrapped(1, 2, 3, [rec(1)]), False, True, {1}),
    ("failures counted, none listed", wrapped(2, 1, 3, []), False, True, set()),
]


@pytest.mark.parametrize(
    ("case", "given", "vouched", "reconciled", "trusted"),
    RECONCILE_TABLE,
    ids=[row[0] for row in RECONCILE_TABLE],
)
def test_defect12_reconcile_table(
    case: str, given: BatchAnswer, vouched: bool, reconciled: bool, trusted: set[int]
) -> None:
    verdict = reconcile(given, 3)
    assert verdict.vouched is vouched
    assert verdict.reconciled is reconciled
    assert set(verdict.failures) == trusted
    assert (verdict.problem is None) is vouched
    if verdict.problem is not None:
        assert "Customer entity" not in verdict.problem  # numbers, not body text


class ScriptedEnso:
    """A batch endpoint that gives scripted 2xx bodies first, then honest answers.

    With ``gate``, the first honest answer waits until ``open_gate()``, so a test can
    look at the tracker's books while the resend is in flight.
    """

    def __init__(self, bad: list[bytes], *, gate: bool = False) -> None:
        self._bad = list(bad)
        self._gate = threading.Event()
        if not gate:
            self._gate.set()
        self._cond = threading.Condition()
        self.batches: list[list[str]] = []
        self.acknowledged: Counter[str] = Counter()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ids = [e["eventId"] for e in json.loads(body)["events"]]
                with owner._cond:
                    owner.batches.append(ids)
                    owner._cond.notify_all()
                    scripted = owner._bad.pop(0) if owner._bad else None
                if scripted is None:
                    owner._gate.wait(30.0)
                    with owner._cond:
                        owner.acknowledged.update(ids)
                    summary = {"success": len(ids), "failed": 0, "total": len(ids)}
                    scripted = json.dumps(
                        {"status": "success", "data": {"summary": summary, "failedRecords": []}}
                    ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(scripted)))
                self.end_headers()
                self.wfile.write(scripted)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_batches(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.batches) >= n, timeout)

    def open_gate(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self._gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


BAD_ANSWERS: dict[str, bytes] = {
    "empty summary": b'{"data":{"summary":{}}}',
    "status error": (
        b'{"status":"error","message":"Internal error",'
        b'"data":{"summary":{"success":3,"failed":0,"total":3},"failedRecords":[]}}'
    ),
    "all zero": b'{"data":{"summary":{"success":0,"failed":0,"total":0},"failedRecords":[]}}',
    "success 1 of 3, no failures": b'{"data":{"summary":{"success":1,"total":3}}}',
    "failure outside the batch": (
        b'{"data":{"summary":{"success":3,"failed":0,"total":3},"failedRecords":'
        b'[{"index":7,"error":"x","code":2002,"statusCode":404}]}}'
    ),
    "bare, all zero": b'{"summary":{"success":0,"failed":0,"total":0},"failedRecords":[]}',
}


def scripted_tracker(url: str, drops: DropRecorder, **options: Any) -> Tracker:
    return Tracker(
        api_key=API_KEY,
        base_url=url,
        on_drop=drops,
        max_batch_size=3,  # the three events go in one request, as soon as tracked
        flush_interval=10.0,
        backoff_base=0.01,
        backoff_max=0.05,
        **options,
    )


@pytest.mark.parametrize("bad", list(BAD_ANSWERS.values()), ids=list(BAD_ANSWERS))
def test_defect12_an_answer_that_does_not_account_for_the_events_delivers_none(
    bad: bytes, drop_recorder: DropRecorder
) -> None:
    server = ScriptedEnso([bad], gate=True)
    tracker = scripted_tracker(server.url, drop_recorder)
    try:
        ids = [accepted(tracker.track("ent", "api_calls", i)) for i in range(3)]
        # The bad answer, then the resend, now held by the server.
        assert server.wait_batches(2, 10.0)
        between = tracker.stats()
        assert between.delivered == 0
        assert between.in_flight == 3
        assert between.failed_requests == 1
        assert between.balanced
        assert between.last_error is not None
        assert "does not account" in between.last_error
        server.open_gate()
        assert tracker.flush(10.0)
        after = tracker.stats()
    finally:
        tracker.shutdown(2.0)
        server.close()
    assert server.batches[0] == server.batches[1] == ids  # the same eventIds, resent
    assert server.acknowledged == Counter(ids)  # each delivered once, on the honest answer
    assert after.delivered == 3
    assert after.dropped == {}
    assert after.balanced
    assert drop_recorder.calls == []


def test_defect12_unaccounted_events_end_retries_exhausted(drop_recorder: DropRecorder) -> None:
    bad = BAD_ANSWERS["empty summary"]
    server = ScriptedEnso([bad] * 10)
    tracker = scripted_tracker(server.url, drop_recorder, max_retries=1)
    try:
        ids = [accepted(tracker.track("ent", "api_calls", i)) for i in range(3)]
        assert tracker.flush(10.0)
        stats = tracker.stats()
    finally:
        tracker.shutdown(2.0)
        server.close()
    assert len(server.batches) == 2  # the first try and max_retries=1 more
    assert [e.event_id for e in drop_recorder.events("retries_exhausted")] == ids
    reason = drop_recorder.reasons()[ids[0]]
    assert "does not account" in reason.message
    assert stats.delivered == 0
    assert stats.dropped == {"retries_exhausted": 3}
    assert stats.balanced
    assert not server.acknowledged


def test_counted_but_unlisted_failures_are_resent_and_listed_ones_trusted(
    drop_recorder: DropRecorder,
) -> None:
    # Reconciles (2 + 1 == 3) but lists none of the failures: nothing guessed delivered.
    server = ScriptedEnso([b'{"data":{"summary":{"success":2,"failed":1,"total":3}}}'])
    tracker = scripted_tracker(server.url, drop_recorder)
    try:
        ids = [accepted(tracker.track("ent", "api_calls", i)) for i in range(3)]
        assert tracker.flush(10.0)
        stats = tracker.stats()
    finally:
        tracker.shutdown(2.0)
        server.close()
    # Each event goes back on its own backoff: resent, possibly in several requests.
    assert sorted(i for batch in server.batches[1:] for i in batch) == sorted(ids)
    assert server.acknowledged == Counter(ids)
    assert stats.delivered == 3
    assert stats.failed_requests == 0  # a coherent answer: the request itself worked
    assert stats.balanced
