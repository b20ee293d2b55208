"""Loopback servers for the benchmarks, run in a child process.

The measured process shares one GIL between the caller, the tracker's sender thread and
anything else in it; a server in the same process would steal that GIL and make every
figure worse than it is in production. So the servers run in a child process
(``python -m benchmarks._serve KIND``) and are driven over a line protocol on its
stdin/stdout:

* first line from the child: ``URL http://127.0.0.1:PORT``
* ``count``            -> ``<events> <requests>`` (counting sink only)
* ``wait <n> <secs>``  -> ``<events>`` once at least n events arrived, or at the timeout
* ``quit``             -> the child stops its server and exits
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

__all__ = ["CountingSink", "ServerProcess", "closed_port"]

_ENSO_SUFFIX = "/events/batch"


class CountingSink(ThreadingHTTPServer):
    """A minimal HTTP/1.1 keep-alive sink: counts events, answers success.

    ``/events/batch`` bodies are counted by their ``"eventId"`` keys (no JSON parsing)
    and answered with Enso's success JSON; any other POST (Segment's ``/v1/batch``,
    PostHog's ``/batch/``) is parsed, its ``batch`` list counted and answered ``{}``.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.events = 0
        self.requests = 0
        self.changed = threading.Condition()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, events: int) -> None:
        with self.changed:
            self.events += events
            self.requests += 1
            self.changed.notify_all()

    def wait_for(self, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.events < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.changed.wait(remaining)
            return self.events


class _SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: CountingSink

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        if self.path.rstrip("/").endswith(_ENSO_SUFFIX):
            n = body.count(b'"eventId"')
            answer = (
                b'{"status":"success","message":"Success","data":{"summary":'
                b'{"success":%d,"failed":0,"total":%d},"failedRecords":[]}}' % (n, n)
            )
        else:
            n = _count_batch(body)
            answer = b"{}"
        self.server.add(n)
        self._answer(answer)

    def do_GET(self) -> None:
        # Peers may poll for configuration; answer an empty object.
        self._answer(b"{}")

    def _answer(self, body: bytes) -> None:
        # One write for head and body: separate small writes meet Nagle's algorithm and
        # the client's delayed ACK, which costs 40 ms per request on Linux.
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )


def _count_batch(body: bytes) -> int:
    try:
        document = json.loads(body)
    except ValueError:
        return 0
    if isinstance(document, dict):
        batch = document.get("batch")
        if isinstance(batch, list):
            return len(batch)
        return 1 if "event" in document else 0
    return len(document) if isinstance(document, list) else 0


class ServerProcess:
    """Handle on a server child process (``sink`` or ``fake``)."""

    def __init__(self, kind: str, start_timeout: float = 30.0) -> None:
        self.kind = kind
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._serve", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            bufsize=0,
        )
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        assert self._proc.stdout is not None
        self._selector.register(self._proc.stdout, selectors.EVENT_READ)
        try:
            first = self._readline(start_timeout)
            if not first.startswith("URL "):
                raise RuntimeError(f"{kind} server did not start: {first!r}")
        except BaseException:
            self.close()
            raise
        self.url = first.split(" ", 1)[1]

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        stdout = self._proc.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                raise TimeoutError(f"no answer from the {self.kind} server in {timeout} s")
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the {self.kind} server exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()

    def _ask(self, command: str, timeout: float) -> str:
        stdin = self._proc.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()
        return self._readline(timeout)

    def count(self) -> int:
        """Events counted so far (cumulative over the server's life)."""
        return int(self._ask("count", 10.0).split()[0])

    def wait(self, n: int, timeout: float) -> int:
        """Block until at least ``n`` events arrived (or ``timeout``); the count then."""
        return int(self._ask(f"wait {n} {timeout}", timeout + 10.0))

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.write(b"quit\n")
                proc.stdin.flush()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        self._selector.close()


@contextlib.contextmanager
def closed_port() -> Iterator[str]:
    """A loopback URL nothing listens on: the port stays bound (so nobody else takes it)
    but never listens, so every connection attempt is refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
