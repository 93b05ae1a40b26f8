"""gRPC health checking with limits, for servers whose port is public (operators, aggregators).

grpcio's ``HealthServicer`` answers ``Watch`` for any service name and keeps every name it was
asked about for good (about a megabyte per call with a name at the message limit), and each open
``Watch`` stays one of the server's active RPCs: a client with no credentials could grow the
process's memory without bound, or fill ``maximum_concurrent_rpcs`` so that every real call was
refused. Here ``Watch`` answers only the names the server gave a status (``set``), and at most
``MAX_HEALTH_WATCHERS`` streams at a time; ``Check`` is unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

# Open Watch streams per server: enough for an orchestrator or two; each holds an RPC slot.
MAX_HEALTH_WATCHERS = 4

# grpcio's sync server gives a call a thread before its request has arrived, so a peer that never
# finishes sending holds one until its connection goes. These bound that: a vanished peer (no FIN)
# is found by keepalive within about 80 s and its calls cancelled; any connection is closed after an
# hour, its calls given an hour more to finish (the longest deadline a config may set: a Generate
# started just before must not be cut). A live slow caller is kept out only by mTLS or a firewall
# (operators: grpc.tls_client_ca_file) or a proxy in front (the aggregator's intake).
CONNECTION_LIMIT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.max_connection_age_ms", 3_600_000),
    ("grpc.max_connection_age_grace_ms", 3_600_000),
]


class BoundedHealthServicer(health.HealthServicer):
    def __init__(self, services: Iterable[str], max_watchers: int = MAX_HEALTH_WATCHERS) -> None:
        super().__init__()  # non-blocking Watch: a stream holds no worker thread
        self._services = ("", *services)
        self._known: set[str] = set()  # every name the server gave a status: the only ones watched
        self._max_watchers = max_watchers
        self._watchers = 0
        self._watchers_lock = threading.Lock()
        self.set_serving(False)

    def set(self, service: str, status: Any) -> None:
        with self._watchers_lock:
            self._known.add(service)
        super().set(service, status)

    def set_serving(self, serving: bool) -> None:
        """The server and its services (those given at construction) SERVING, or NOT_SERVING."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._services:
            self.set(name, status)

    def _watcher_closed(self) -> None:
        with self._watchers_lock:
            self._watchers -= 1

    def Watch(  # noqa: N802  (gRPC's method name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext, send_response_callback: Any = None
    ) -> Any:
        with self._watchers_lock:
            if request.service not in self._known:
                context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
            if self._watchers >= self._max_watchers:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many health watchers; use Check")
            self._watchers += 1
        if not context.add_callback(self._watcher_closed):  # the call ended already
            self._watcher_closed()
        return super().Watch(request, context, send_response_callback)
