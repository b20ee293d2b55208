"""HTTP/1.1 plumbing of :class:`~.FakeEnso`: a real socket on loopback, one thread per connection.

This module knows nothing of Enso: it parses framing into an :class:`~._messages.Incoming`,
hands it to the fake's dispatch and writes the :class:`~._messages.Reply` back (or resets
the connection). :class:`ServerRunner` owns the listener's lifecycle: ``start()``,
a prompt ``stop()`` that also cuts hanging requests short, and restarts on the same port.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._messages import Dispatch, Incoming, Reply, route_of

__all__ = ["ServerRunner"]


class _Server(ThreadingHTTPServer):
    """Listening socket plus one daemon thread per connection."""

    daemon_threads = True
    allow_reuse_address = True  # so FakeEnso(port=old_port) works despite TIME_WAIT
    block_on_close = False  # stop() handles connection threads itself, with a bound

    def __init__(self, address: tuple[str, int], runner: ServerRunner) -> None:
        self.runner = runner
        # An IPv6 literal ("::1") needs an IPv6 socket; names and IPv4 stay on IPv4.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        # Made first: a failed bind calls server_close(), which closes them.
        self._wake_reader, self._wake_writer = socket.socketpair()
        super().__init__(address, _Handler)
        self.socket.setblocking(False)  # a client that vanishes before accept() cannot block us

    def serve_until_woken(self) -> None:
        """Accept connections until ``wake()``.

        Used instead of ``serve_forever()``, whose shutdown is only noticed at the next poll
        interval; the socketpair makes ``stop()`` immediate without any polling.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wake_reader for key, _ in ready):
                    return
                try:
                    request, client_address = self.get_request()
                except OSError:  # BlockingIOError: the client already went away
                    continue
                try:
                    self.process_request(request, client_address)
                except Exception:
                    self.handle_error(request, client_address)
                    self.shutdown_request(request)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept, forcing blocking mode: BSDs let accepted sockets inherit O_NONBLOCK."""
        request, client_address = self.socket.accept()
        request.setblocking(True)
        # The reply goes out as headers then body; without NODELAY, Nagle holds the body
        # until the client's delayed ACK (~40 ms), capping a keep-alive client at ~25 req/s.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return request, client_address

    def wake(self) -> None:
        """Make ``serve_until_woken()`` return; safe to call from any thread."""
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup, which can stall on odd hosts."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hang up; report genuine bugs."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Translates HTTP framing to dispatch calls and writes the replies."""

    protocol_version = "HTTP/1.1"  # keep-alive, so pooled clients reuse connections
    server_version = "FakeEnso/1"
    sys_version = ""
    _rejected = False

    def _runner(self) -> ServerRunner:
        server = self.server
        assert isinstance(server, _Server)
        return server.runner

    def setup(self) -> None:
        """Register the connection so ``stop()`` can close it, or refuse it mid-stop."""
        super().setup()
        if not self._runner().register_connection(self.connection):
            self._rejected = True
            self._drop()

    def handle(self) -> None:
        if not self._rejected:
            super().handle()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._runner().unregister_connection(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; tests inspect ``FakeEnso.requests`` instead."""

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _serve(self) -> None:
        received_at = time.monotonic()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body = self._read_body()
        if body is None:
            self.close_connection = True  # framing is broken; the stream cannot be trusted
        route = route_of(self.path)
        request = Incoming(self.command, self.path, route, headers, body, received_at)
        reply = self._runner().dispatch(request)
        if reply.drop:
            self._drop()
            return
        if reply.twice:
            self._answer_twice(reply)
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _answer_twice(self, reply: Reply) -> None:
        """The whole answer, head and body, twice in one write (``Fault.answer_twice``):
        the copy lands in the client's buffer right behind the answer."""
        phrase = self.responses.get(reply.status, ("",))[0]
        lines = [f"{self.protocol_version} {reply.status} {phrase}"]
        lines += [f"{name}: {value}" for name, value in reply.headers]
        lines += ["Content-Type: application/json", f"Content-Length: {len(reply.body)}"]
        answer = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command != "HEAD":
            answer += reply.body
        self.wfile.write(answer * 2)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            return None
        if size < 0:
            return None
        data = self.rfile.read(size)
        return data if len(data) == size else None

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers carry nothing the fake needs
                return b"".join(chunks)
            data = self.rfile.read(size)
            if len(data) != size:
                return None
            chunks.append(data)
            self.rfile.readline(65537)  # CRLF after the chunk

    def _drop(self) -> None:
        """Reset the connection: SO_LINGER (1, 0) makes close() send RST, not FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile holds a reference to the socket; the fd only closes when both are closed.
        self.rfile.close()
        self.connection.close()


class ServerRunner:
    """Binds, serves and stops the socket server; shares the fake's lock and condition.

    ``stopping`` is read under that lock by requests that hang, so ``stop()`` wakes them
    (through the shared condition) and they end with a connection reset.
    """

    def __init__(self, host: str, port: int, dispatch: Dispatch, cond: threading.Condition) -> None:
        self.host = host
        self.port = port
        self._dispatch = dispatch
        self._cond = cond
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.stopping = False
        self._connections: dict[socket.socket, threading.Thread] = {}

    @property
    def running(self) -> bool:
        with self._cond:
            return self._server is not None

    def dispatch(self, request: Incoming) -> Reply:
        return self._dispatch(request, interrupted=self._is_stopping, read_timeout=None)

    def _is_stopping(self) -> bool:
        return self.stopping

    def start(self) -> None:
        with self._cond:
            if self._server is not None:
                return
            try:
                server = _Server((self.host, self.port), self)
            except OSError as exc:
                raise _cannot_listen(self.host, self.port, exc) from exc
            self.port = int(server.server_address[1])
            self.stopping = False
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_until_woken,
                name=f"FakeEnso:{self.port}",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            server, thread = self._server, self._thread
            if server is None:
                return
            self._server = None
            self._thread = None
            self.stopping = True
            connections = list(self._connections.items())
            self._cond.notify_all()
        deadline = time.monotonic() + 2.0
        server.wake()
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        server.server_close()  # closes the listener: new connections are refused from here
        for sock, _ in connections:
            with contextlib.suppress(OSError):  # already closed by its own thread
                sock.shutdown(socket.SHUT_RDWR)  # unblocks threads reading idle keep-alives
        for _, worker in connections:
            if worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))

    def register_connection(self, sock: socket.socket) -> bool:
        with self._cond:
            if self.stopping:
                return False
            self._connections[sock] = threading.current_thread()
            return True

    def unregister_connection(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections.pop(sock, None)


def _cannot_listen(host: str, port: int, error: OSError) -> OSError:
    """Why the server could not bind, with where it tried (an ``OSError``, same errno)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = error.strerror or type(error).__name__
    hint = ""
    if error.errno == errno.EADDRINUSE:
        hint = " (something else holds the port: pass port=0 for a free one)"
    elif error.errno == errno.EACCES:
        hint = " (a port below 1024 needs privileges: pass port=0 for a free one)"
    elif error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(
        error, socket.gaierror
    ):
        hint = " (no such address on this machine" + (": is IPv6 enabled?)" if ":" in host else ")")
    return OSError(error.errno, f"FakeEnso cannot listen on {where}: {reason}{hint}")
