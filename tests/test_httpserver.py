"""The HTTP servers' limits, on a real socket: a connection that sends nothing is dropped after the
socket timeout, and one connection past the cap is answered 503 at once."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from avs.httpserver import BoundedHTTPServer


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
    time.sleep(0.2)  # that connection's thread ends once the client has closed it
    silent = socket.create_connection(("127.0.0.1", port))  # sends nothing: a slowloris
    time.sleep(0.1)
    assert _get(port) == 503  # the one slot is taken: refused at once, not queued
    silent.settimeout(10)
    started = time.monotonic()
    assert silent.recv(1) == b""  # dropped by the server once its socket timeout passed
    assert time.monotonic() - started < 5
    assert _get(port) == 200
    silent.close()
