"""gRPC health checking with limits, for servers whose port is public (operators, aggregators).

grpcio's ``HealthServicer`` answers ``Watch`` for any service name and keeps every name it was
asked about for good (about a megabyte per call with a name at the message limit), and each open
``Watch`` stays one of the server's active RPCs: a client with no credentials could grow the
process's memory without bound, or fill ``maximum_concurrent_rpcs`` so that every real call was
refused. Here ``Watch`` answers only the names the server gave a status (``set``), and at most
``MAX_HEALTH_WATCHERS`` streams at a time; ``Check`` is unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# Open Watch streams per server: enough for an orchestrator or two; each holds an RPC slot.
MAX_HEALTH_WATCHERS = 4

# grpcio's sync server gives a call a thread before its request has arrived, so a peer that never
# finishes sending holds one until its connection goes. These bound that: a vanished peer (no FIN)
# is found by keepalive within about 80 s and its calls cancelled; any connection is closed after an
# hour, its calls given an hour more to finish (the longest deadline a config may set: a Generate
# started just before must not be cut). On the operator's sync server a live slow caller is kept
# out only by mTLS or a firewall (grpc.tls_client_ca_file); the aggregator's public intake runs on a
# grpc.aio server (avs.rpc.aio), where a call waits for its request without a thread.
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


class AioBoundedHealthServicer(health_pb2_grpc.HealthServicer):
    """``BoundedHealthServicer`` for a ``grpc.aio`` server (``avs.rpc.aio``): the same names and limits;
    ``Check`` and ``Watch`` run on the server's loop (a Watch holds no thread); ``set`` may be called
    from any thread."""

    def __init__(self, services: Iterable[str], max_watchers: int = MAX_HEALTH_WATCHERS) -> None:
        self._services = ("", *services)
        self._status: dict[str, Any] = {}  # every name the server gave a status: the only ones answered
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()  # set (and replaced) on the loop at every change
        self._max_watchers = max_watchers
        self._watchers = 0  # touched on the loop only
        self._shutting_down = False
        self.set_serving(False)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake watchers on ``loop`` (the server's) from now on."""
        self._loop = loop

    def set(self, service: str, status: Any) -> None:
        with self._lock:
            if self._shutting_down:
                return
            self._status[service] = status
        self._notify()

    def _notify(self) -> None:
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake_watchers)
            except RuntimeError:  # the loop is closed: the server stopped, nobody watches
                pass

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._services:
            self.set(name, status)

    def enter_graceful_shutdown(self) -> None:
        """Every name NOT_SERVING for good (later ``set`` calls are ignored): one step under the lock,
        so a ``set(SERVING)`` from another thread (a leader elected while the app stops) cannot land
        between the two and stick."""
        with self._lock:
            self._shutting_down = True
            for name in self._status:
                self._status[name] = health_pb2.HealthCheckResponse.NOT_SERVING
        self._notify()

    def _wake_watchers(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _get(self, service: str) -> Any:
        with self._lock:
            return self._status.get(service)

    async def Check(  # noqa: N802  (gRPC's method name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        if self._get(request.service) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        if self._watchers >= self._max_watchers:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many health watchers; use Check")
        self._watchers += 1
        try:
            last = None
            while True:
                changed = self._changed  # the event of the next change: taken before the status is read
                status = self._get(request.service)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                await changed.wait()
        finally:
            self._watchers -= 1
