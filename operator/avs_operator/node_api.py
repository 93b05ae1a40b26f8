"""EigenLayer's node API (``/eigen/node``): identity, health and services, over plain HTTP.

- ``GET /eigen/node``: ``{"node_name", "spec_version", "node_version"}``
- ``GET /eigen/node/health``: 200 healthy, 206 partially healthy, 503 unhealthy
- ``GET /eigen/node/services``: ``{"services": [{"id", "name", "description", "status"}]}``
- ``GET /eigen/node/services/{id}/health``: 200 up, 503 down, 404 unknown service
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from http.server import BaseHTTPRequestHandler
from typing import Any

from avs.httpserver import BoundedHTTPServer

SPEC_VERSION = "v0.0.1"


class ServiceStatus(StrEnum):
    UP = "Up"
    DOWN = "Down"
    INITIALIZING = "Initializing"


@dataclass(frozen=True, slots=True)
class ServiceState:
    id: str
    name: str
    description: str
    status: ServiceStatus


def compute_health_code(services: Sequence[ServiceState]) -> int:
    up = sum(s.status == ServiceStatus.UP for s in services)
    if services and up == len(services):
        return 200
    return 206 if up else 503


class NodeApiServer:
    """Serves the node API on ``host:port`` in a background thread; ``get_services`` is live state."""

    def __init__(
        self, host: str, port: int, node_name: str, node_version: str, get_services: Callable[[], list[ServiceState]]
    ) -> None:
        handler = _make_handler(node_name, node_version, get_services)
        self._server = BoundedHTTPServer((host, port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="node-api", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(
    node_name: str, node_version: str, get_services: Callable[[], list[ServiceState]]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            services = get_services()
            if path == "/eigen/node":
                self._send(200, {"node_name": node_name, "spec_version": SPEC_VERSION, "node_version": node_version})
            elif path == "/eigen/node/health":
                self._send(compute_health_code(services), None)
            elif path == "/eigen/node/services":
                self._send(200, {"services": [_service_json(s) for s in services]})
            elif path.startswith("/eigen/node/services/") and path.endswith("/health"):
                service_id = path[len("/eigen/node/services/") : -len("/health")]
                match = [s for s in services if s.id == service_id]
                if not match:
                    self._send(404, {"error": f"no service {service_id!r}"})
                else:
                    self._send(200 if match[0].status == ServiceStatus.UP else 503, None)
            else:
                self._send(404, {"error": "not found"})

        def _send(self, code: int, body: Any) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # access logs would be noise; metrics count what matters

    return Handler


def _service_json(service: ServiceState) -> dict[str, str]:
    return {"id": service.id, "name": service.name, "description": service.description, "status": str(service.status)}
