"""Notice HTTP clients that go away while their request is being certified.

A handler thread waiting for a certificate does not read its socket, so a client that gave up
(its own timeout, a killed process) would hold the thread and its connection slot until the
request ended: up to ``request_timeout_seconds`` (540 s). One thread watches the sockets of all
waiting clients; when one is closed (end of file or reset) it calls that request's callback, which
cancels the wait (``avs.client.Cancellation``). The request goes on at the aggregator and can be
followed at its verification URL.

A client that sends bytes while it waits (a pipelined request) is no longer watched: what it sent
is left for the handler to read. A peer that vanishes without closing (a cable pulled) is seen
only by TCP itself, as before.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

SELECT_SECONDS = 0.5  # how long a newly watched socket can wait to be picked up by select()


class DisconnectWatcher:
    """``with watcher.watching(sock, on_close): ...`` calls ``on_close()`` (once, from the watcher's
    thread) if the client closes ``sock`` before the block ends. ``close()`` stops the thread."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="avs-gateway-disconnects", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watching(self, sock: socket.socket, on_close: Callable[[], None]) -> Iterator[None]:
        # The watcher's own descriptor, non-blocking (the handler's socket has a timeout, which a
        # peek would wait out), closed here under the lock: never closed or reused under the watcher.
        own = sock.dup()
        own.setblocking(False)
        with self._lock:
            self._selector.register(own, selectors.EVENT_READ, on_close)
        try:
            yield
        finally:
            with self._lock:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(own)
                own.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self._selector.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            if not self._selector.get_map():
                self._closed.wait(SELECT_SECONDS)  # epoll with nothing registered would return at once
                continue
            try:
                for key, _ in self._selector.select(SELECT_SECONDS):
                    self._check(key)
            except Exception:  # one socket's trouble must not end the watching of the others
                logger.exception("watching for disconnects failed; going on")
                self._closed.wait(SELECT_SECONDS)

    def _check(self, key: selectors.SelectorKey) -> None:
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        with self._lock:  # the request may have ended meanwhile, its descriptor closed
            if sock.fileno() < 0 or self._selector.get_map().get(sock) is not key:
                return
            try:
                gone = sock.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                return  # readable a moment ago, nothing to read now
            except OSError:
                gone = True  # reset by the peer
            self._selector.unregister(sock)  # closed: once; bytes sent: left for the handler to read
        if gone:
            try:
                key.data()
            except Exception:
                logger.exception("a disconnect callback failed")
