"""``ThreadingHTTPServer`` with limits, for every HTTP endpoint we serve (gateway, node API, health).

The standard library's server starts one thread per connection, with no cap and no socket timeout:
a client that opens connections and sends nothing (or a byte a minute) pins a thread each, for
ever. Here each connection gets a socket timeout (a read or write that stalls that long ends the
connection; waiting between writes, as a stream does, is not a stall) and at most
``max_connections`` are served at once; one more is answered 503 and closed at once. A socket
timeout bounds each read, not a request: a client dribbling one byte just inside it would hold
its slot for ever. So the request line and headers of each request (and, on a kept-alive
connection, the wait for the next one) must arrive within ``head_timeout`` in all; past it the
connection is closed. A body read with ``read_body`` gets one deadline too (``body_timeout``).
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_SOCKET_TIMEOUT_SECONDS = 60.0
DEFAULT_HEAD_TIMEOUT_SECONDS = 10.0
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0  # 1 MiB at 35 kB/s
_BUSY_BODY = b'{"error": {"message": "too many connections", "type": "server_error", "param": null, "code": "busy"}}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_BUSY_BODY)
    + _BUSY_BODY
)


class _HeadDeadline:
    """When the head being read must be complete (``None``: not reading a head)."""

    def __init__(self) -> None:
        self.at: float | None = None


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each given at most the time left before the head's deadline."""

    def __init__(self, connection: socket.socket, deadline: _HeadDeadline, timeout: float | None) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline
        self._timeout = timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self._timeout
        if self._deadline.at is not None:
            remaining = self._deadline.at - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the request (its head, or its body) did not arrive in time")
            timeout = remaining if timeout is None else min(remaining, timeout)
        self._connection.settimeout(timeout)
        return self._connection.recv_into(buffer)


def _with_head_deadline(handler: type[BaseHTTPRequestHandler], seconds: float) -> type[BaseHTTPRequestHandler]:
    """``handler``, reading each request's line and headers under one deadline of ``seconds``."""

    class HeadDeadlineHandler(handler):  # type: ignore[valid-type, misc]
        connection: socket.socket
        rfile: BinaryIO

        def setup(self) -> None:
            super().setup()
            self._head_deadline = _HeadDeadline()
            self._read_timeout = self.connection.gettimeout()
            self.rfile.close()  # the socket file setup() made; ours replaces it
            reader = _DeadlineReader(self.connection, self._head_deadline, self._read_timeout)
            self.rfile = io.BufferedReader(reader)

        def handle_one_request(self) -> None:
            self._head_deadline.at = time.monotonic() + seconds
            try:
                super().handle_one_request()
            finally:
                self._end_head()

        def parse_request(self) -> bool:
            try:
                parsed = bool(super().parse_request())
            finally:
                self._end_head()
            folded = parsed and any("\n" in value for value in self.headers.values())
            if parsed and (self.headers.defects or self.headers.get_payload() or folded):
                # A malformed header line ("X-Pad : 1", whitespace before the colon) ends the
                # standard library's header parsing there, silently: every header after it, a
                # Content-Length or Authorization among them, was dropped, and a body served as the
                # next request. RFC 9112 5.1: refuse it with 400, and close. So is a line folded onto
                # the one before (obs-fold, a line starting with a space or tab: 5.2), whose header
                # a proxy may read as a header of its own ("X-Pad: a\r\n Transfer-Encoding: chunked").
                self.close_connection = True
                self.send_error(400, "malformed header line")
                return False
            return parsed

        def _end_head(self) -> None:
            self._head_deadline.at = None
            with contextlib.suppress(OSError):
                self.connection.settimeout(self._read_timeout)

    HeadDeadlineHandler.__name__ = HeadDeadlineHandler.__qualname__ = handler.__name__
    HeadDeadlineHandler.__module__ = handler.__module__
    return HeadDeadlineHandler


def read_body(handler: BaseHTTPRequestHandler, length: int) -> bytes:
    """``length`` bytes of ``handler``'s request body, all within the server's ``body_timeout``
    (raises ``TimeoutError``: a client sending a byte just inside each read's timeout is cut off)."""
    deadline: _HeadDeadline | None = getattr(handler, "_head_deadline", None)
    seconds = getattr(handler.server, "body_timeout", None)
    if deadline is None or seconds is None:
        return handler.rfile.read(length)
    deadline.at = time.monotonic() + seconds
    try:
        return handler.rfile.read(length)
    finally:
        handler._end_head()  # type: ignore[attr-defined]


class BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog (the standard library's is 5): past it the kernel drops a connect, and the
    # client sends it again a second later, so a burst of new clients waited ~1 s each.
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_SECONDS,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT_SECONDS,
        body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(address, _with_head_deadline(handler, head_timeout))
        self._slots = threading.BoundedSemaphore(max_connections)
        self.socket_timeout = socket_timeout
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.settimeout(self.socket_timeout)
        return connection, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def start_metrics_server(
    host: str, port: int, registry: Any, max_connections: int = 64, head_timeout: float = DEFAULT_HEAD_TIMEOUT_SECONDS
) -> tuple[BoundedHTTPServer, threading.Thread]:
    """Prometheus' ``/metrics`` for ``registry`` on a ``BoundedHTTPServer`` (prometheus_client's own
    ``start_http_server`` has no connection cap and no deadlines); port 0 picks a free one."""
    from prometheus_client.exposition import MetricsHandler

    handler = MetricsHandler.factory(registry)
    server = BoundedHTTPServer((host, port), handler, max_connections=max_connections, head_timeout=head_timeout)
    thread = threading.Thread(target=server.serve_forever, args=(0.2,), name="metrics-http", daemon=True)
    thread.start()
    return server, thread
