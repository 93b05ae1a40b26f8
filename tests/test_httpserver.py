"""The HTTP servers' limits, on a real socket: a connection that sends nothing is dropped after the
socket timeout, one that dribbles its request head is dropped at the head deadline, and one
connection past the cap is answered 503 at once."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from avs.httpserver import BoundedHTTPServer, read_body, start_metrics_server


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[BoundedHTTPServer]:
    bounded = BoundedHTTPServer(("127.0.0.1", 0), _Ok, max_connections=1, socket_timeout=1.0)
    thread = threading.Thread(target=bounded.serve_forever, daemon=True)
    thread.start()
    yield bounded
    bounded.shutdown()
    bounded.server_close()


def _wait_for_free_slot(server: BoundedHTTPServer) -> None:
    """Until every finished connection has given its slot back (its thread runs when the machine lets it)."""
    deadline = time.monotonic() + 10
    while server._slots._value == 0:
        assert time.monotonic() < deadline, "a finished connection kept its slot"
        time.sleep(0.01)


def _get(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_silent_connection_holds_its_slot_only_until_the_socket_timeout(server: BoundedHTTPServer) -> None:
    port = int(server.server_address[1])
    assert _get(port) == 200
    _wait_for_free_slot(server)  # that connection's thread ends once the client has closed it
    silent = socket.create_connection(("127.0.0.1", port))  # sends nothing: a slowloris
    time.sleep(0.1)
    assert _get(port) == 503  # the one slot is taken: refused at once, not queued
    silent.settimeout(10)
    started = time.monotonic()
    assert silent.recv(1) == b""  # dropped by the server once its socket timeout passed
    assert time.monotonic() - started < 5
    _wait_for_free_slot(server)
    assert _get(port) == 200
    silent.close()


class _Echo(_Ok):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(**limits: float) -> BoundedHTTPServer:
    bounded = BoundedHTTPServer(("127.0.0.1", 0), _Echo, max_connections=2, **limits)
    threading.Thread(target=bounded.serve_forever, daemon=True).start()
    return bounded


def test_a_client_dribbling_its_headers_is_cut_off_at_the_head_deadline() -> None:
    server = _serve(socket_timeout=5.0, head_timeout=1.0)
    port = int(server.server_address[1])
    try:
        dribbler = socket.create_connection(("127.0.0.1", port))
        dribbler.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):  # a byte every 0.2 s, well inside the 5 s socket timeout, for 10 s
            while time.monotonic() - started < 10:
                dribbler.sendall(b"X")
                time.sleep(0.2)
        assert time.monotonic() - started < 4  # closed at the 1 s head deadline
        dribbler.close()
        assert _get(port) == 200
    finally:
        server.shutdown()
        server.server_close()


def test_the_head_deadline_is_for_the_head_only() -> None:
    """A body slower than the head deadline is read; a kept-alive connection's next request gets its own."""
    server = _serve(socket_timeout=5.0, head_timeout=1.0)
    try:
        client = socket.create_connection(("127.0.0.1", int(server.server_address[1])))
        client.settimeout(10)
        for _ in range(2):
            client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
            time.sleep(1.5)
            client.sendall(b"hello")
            answer = b""
            while not answer.endswith(b"hello"):
                chunk = client.recv(4096)
                assert chunk, "the server closed the connection"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
        client.close()
    finally:
        server.shutdown()
        server.server_close()


class _BodyEcho(_Ok):
    def do_POST(self) -> None:
        try:
            body = read_body(self, int(self.headers["Content-Length"]))
        except TimeoutError:
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_body_read_with_read_body_is_cut_off_at_the_body_deadline() -> None:
    server = BoundedHTTPServer(
        ("127.0.0.1", 0), _BodyEcho, max_connections=2, socket_timeout=5.0, head_timeout=1.0, body_timeout=1.0
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = int(server.server_address[1])
    try:
        dribbler = socket.create_connection(("127.0.0.1", port))
        dribbler.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):  # a body byte every 0.2 s, inside the 5 s socket timeout, for 10 s
            while time.monotonic() - started < 10:
                dribbler.sendall(b"x")
                time.sleep(0.2)
        assert time.monotonic() - started < 4  # closed at the 1 s body deadline
        dribbler.close()
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        client.request("POST", "/", body=b"hello")  # a body sent at once is read
        assert client.getresponse().read() == b"hello"
        client.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_metrics_server_serves_the_registry_with_the_same_limits() -> None:
    """Every service's /metrics (operator, aggregator, challenger, chain exporter) runs on
    ``start_metrics_server``: prometheus_client's exposition, behind the head deadline and the cap."""
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    Counter("avs_test_things_total", "things", registry=registry).inc(3)
    server, thread = start_metrics_server("127.0.0.1", 0, registry, max_connections=1, head_timeout=1.0)
    port = int(server.server_address[1])
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200 and b"avs_test_things_total 3.0" in response.read()
        connection.close()
        _wait_for_free_slot(server)
        silent = socket.create_connection(("127.0.0.1", port))  # holds the one slot
        time.sleep(0.1)
        assert _get(port) == 503
        silent.settimeout(10)
        started = time.monotonic()
        assert silent.recv(1) == b""  # dropped at the head deadline, not after the 60 s socket timeout
        assert time.monotonic() - started < 5
        silent.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_refused_connection_gets_a_json_503(server: BoundedHTTPServer) -> None:
    port = int(server.server_address[1])
    silent = socket.create_connection(("127.0.0.1", port))  # takes the one slot
    time.sleep(0.1)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert (response.status, response.getheader("Content-Type")) == (503, "application/json")
        assert json.loads(response.read())["error"]["message"] == "too many connections"
    finally:
        connection.close()
        silent.close()


def test_a_burst_of_connects_is_queued_by_the_kernel_not_dropped() -> None:
    """With the standard library's backlog of 5, connects past it while the server was busy were
    dropped and retried by the client a second later. Nothing accepts here: every connect must
    still complete from the kernel's queue."""
    bounded = BoundedHTTPServer(("127.0.0.1", 0), _Ok)
    port = int(bounded.server_address[1])
    clients: list[socket.socket] = []
    try:
        for _ in range(64):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=3))
    finally:
        for client in clients:
            client.close()
        bounded.server_close()
    assert len(clients) == 64


def test_a_malformed_header_line_is_refused_and_its_connection_closed(server: BoundedHTTPServer) -> None:
    """The standard library stops reading headers at "Name : value" (whitespace before the colon)
    and drops the rest silently (a Content-Length, an Authorization): RFC 9112 says 400. Every
    server built on BoundedHTTPServer (gateway, node API, metrics) refuses it."""
    for head in (
        b"X-Pad : 1\r\nContent-Length: 18\r\n",
        # obs-fold: a proxy may read the folded line as a header of its own (RFC 9112 5.2)
        b"X-Pad: a\r\n Content-Length: 18\r\n",
        b"X-Pad: a\r\n\tContent-Length: 18\r\n",
    ):
        _wait_for_free_slot(server)  # the last case's connection thread ends after the client closes
        connection = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)
        connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + head + b"\r\nGET / HTTP/1.1\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        connection.close()
        assert answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.") == 1, head
