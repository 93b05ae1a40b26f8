"""A ``grpc.aio`` server driven from threaded code, for a public port.

grpcio's sync server gives a call a worker thread before its request message has arrived, so a
client that opens calls and never finishes sending them holds every worker: the server answers no
one (reproduced with 36 unfinished calls on a 32-thread intake). A ``grpc.aio`` server waits for a
request on its event loop; only then does a plain (sync) handler get a worker thread of
``max_workers``, and an ``async`` handler runs on the loop itself. So unfinished calls cost memory
only, bounded per connection (``grpc.max_concurrent_streams``) and cleared when a peer vanishes
(keepalive), and no number of them keeps a complete request from being served.

``ThreadedAioServer`` runs that server on an event loop of its own thread, with the sync server's
``add_insecure_port`` / ``start`` / ``stop(grace).wait()``, so the rest of the program (threads,
SQLAlchemy, blocking chain reads) is unchanged. Deliberately no ``maximum_concurrent_rpcs``: it
counts calls from their arrival, so unfinished calls would fill it just the same.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

# HTTP/2 streams one connection may have open at once (grpc's default is unlimited): unfinished calls
# beyond it wait on the client's side, so one connection cannot pile up calls without bound.
MAX_STREAMS_PER_CONNECTION = 64


class ThreadedAioServer:
    def __init__(
        self,
        *,
        max_workers: int,
        thread_name: str,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"{thread_name}-loop", daemon=True)
        self._thread.start()
        self._workers = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name)
        self._stop_lock = threading.Lock()
        self._stopped: threading.Event | None = None
        all_options = [("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION), *options]

        async def make() -> grpc.aio.Server:  # an aio server belongs to the loop it is made on
            return grpc.aio.server(
                migration_thread_pool=self._workers, interceptors=list(interceptors), options=all_options
            )

        self.server = self._await(make())

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:  # calls still running after the grace (a handler on a worker thread): cancelled
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def _await(self, awaitable: Awaitable[T]) -> T:
        """``awaitable`` run on the loop; refused once ``stop`` was called (scheduled then, it could
        land after the loop's last sweep of its tasks and never finish: its caller would wait for ever)."""

        async def wrapped() -> T:
            return await awaitable

        with self._stop_lock:
            if self._stopped is not None:
                if inspect.iscoroutine(awaitable):
                    awaitable.close()
                raise RuntimeError("the server is stopping or stopped")
            future = asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
        return future.result()

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` run on the server's loop (aio objects are not thread-safe)."""

        async def run() -> T:
            return function(*args)

        return self._await(run())

    def add_insecure_port(self, address: str) -> int:
        return self.call(self.server.add_insecure_port, address)

    def start(self) -> None:
        self._await(self.server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Refuse new calls, cancel those still running after ``grace`` seconds; the event is set once
        the server has stopped and its loop has ended (a sync handler still running on a worker thread
        then may finish later: threads cannot be cancelled)."""
        with self._stop_lock:
            if self._stopped is not None:  # stopping already: the same event
                return self._stopped
            stopped = self._stopped = threading.Event()

        async def stop_server() -> None:
            try:
                await self.server.stop(grace)
            finally:
                self._workers.shutdown(wait=False, cancel_futures=True)
                self._loop.call_soon(self._loop.stop)

        def when_done(_: object) -> None:
            self._thread.join()
            stopped.set()

        future = asyncio.run_coroutine_threadsafe(stop_server(), self._loop)
        future.add_done_callback(lambda f: threading.Thread(target=when_done, args=(f,), daemon=True).start())
        return stopped
