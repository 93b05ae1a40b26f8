"""``AggregatorClient.wait`` survives an aggregator restart: a real gRPC server is stopped and a new
one started on the same port while the client watches; the client reconnects and goes on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from avs.client import AggregatorClient, Cancellation, RequestFailedError, get_state_name
from avs.errors import CancelledError, DeadlineExceededError
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.aggregator.v1 import aggregator_pb2_grpc as ag_grpc

REQUEST_HASH = b"\x11" * 32


class ScriptedAggregator(ag_grpc.AggregatorServiceServicer):
    """Answers the current ``state``; WatchStatus sends it, then each change, until final."""

    def __init__(self, state: int) -> None:
        self.state = state
        self.changed = threading.Condition()
        self.watch_calls = 0
        self.get_calls = 0

    def set_state(self, state: int) -> None:
        with self.changed:
            self.state = state
            self.changed.notify_all()

    def _status(self, request_hash: bytes) -> ag.RequestStatus:
        error = "no operator could serve it" if self.state == ag.REQUEST_STATE_FAILED else ""
        return ag.RequestStatus(request_hash=request_hash, state=self.state, error=error)  # type: ignore[arg-type]

    def GetStatus(self, request: ag.GetStatusRequest, context: grpc.ServicerContext) -> ag.RequestStatus:
        self.get_calls += 1
        if bytes(request.request_hash) != REQUEST_HASH:
            context.abort(grpc.StatusCode.NOT_FOUND, "no request with this hash")
        return self._status(REQUEST_HASH)

    def WatchStatus(self, request: ag.GetStatusRequest, context: grpc.ServicerContext) -> Iterator[ag.RequestStatus]:
        self.watch_calls += 1
        if bytes(request.request_hash) != REQUEST_HASH:
            context.abort(grpc.StatusCode.NOT_FOUND, "no request with this hash")
        sent = None
        while context.is_active():
            with self.changed:
                state = self.state
                if state == sent:
                    self.changed.wait(0.1)
                    continue
            sent = state
            yield self._status(REQUEST_HASH)
            if state in (ag.REQUEST_STATE_CERTIFIED, ag.REQUEST_STATE_FAILED):
                return


def serve(servicer: ScriptedAggregator, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ag_grpc.add_AggregatorServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"port {port} could not be bound again"
    server.start()
    return server, bound


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_wait_reconnects_after_the_aggregator_restarts_on_the_same_port() -> None:
    first = ScriptedAggregator(ag.REQUEST_STATE_GENERATING)
    server, port = serve(first)
    seen: list[str] = []
    result: dict[str, object] = {}
    with AggregatorClient(f"127.0.0.1:{port}") as client:

        def watch() -> None:
            try:
                result["status"] = client.wait(
                    REQUEST_HASH, timeout=30, on_progress=lambda s: seen.append(get_state_name(s.state))
                )
            except Exception as exc:  # reported below
                result["error"] = exc

        watcher = threading.Thread(target=watch)
        watcher.start()
        wait_until(lambda: seen == ["GENERATING"])
        server.stop(grace=None).wait()  # the aggregator dies mid-stream
        time.sleep(1.0)  # down for a while: the client must keep trying, not fail
        assert watcher.is_alive() and "error" not in result
        second = ScriptedAggregator(ag.REQUEST_STATE_BATCHED)  # it resumed the request from its store
        restarted, _ = serve(second, port)
        try:
            wait_until(lambda: "BATCHED" in seen)
            second.set_state(ag.REQUEST_STATE_CERTIFIED)
            watcher.join(15)
        finally:
            restarted.stop(grace=None).wait()
    assert not watcher.is_alive()
    assert "error" not in result, result.get("error")
    status = result["status"]
    assert isinstance(status, ag.RequestStatus) and status.state == ag.REQUEST_STATE_CERTIFIED
    assert seen == ["GENERATING", "BATCHED", "CERTIFIED"]  # each state once, across the restart
    assert second.watch_calls + second.get_calls >= 1


def test_wait_gives_up_at_its_deadline_when_the_aggregator_stays_down() -> None:
    servicer = ScriptedAggregator(ag.REQUEST_STATE_VERIFYING)
    server, port = serve(servicer)
    with AggregatorClient(f"127.0.0.1:{port}") as client:
        seen: list[int] = []
        stopped_at: list[float] = []

        def stop_once_watched() -> None:  # down once the client has its first status, however long that took
            try:
                wait_until(lambda: bool(seen))
            finally:
                server.stop(grace=None)
                stopped_at.append(time.monotonic())

        threading.Thread(target=stop_once_watched, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.wait(REQUEST_HASH, timeout=3.0, on_progress=lambda s: seen.append(s.state))
        elapsed = time.monotonic() - started
    assert 2.9 <= elapsed < 8.0
    assert seen == [ag.REQUEST_STATE_VERIFYING]
    assert stopped_at and stopped_at[0] - started < 2.5  # it gave up on a server that was down, not up


def test_wait_does_not_retry_an_answer() -> None:
    servicer = ScriptedAggregator(ag.REQUEST_STATE_FAILED)
    server, port = serve(servicer)
    try:
        with AggregatorClient(f"127.0.0.1:{port}") as client:
            with pytest.raises(RequestFailedError, match="no operator could serve it"):
                client.wait(REQUEST_HASH, timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                client.wait(b"\x22" * 32, timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(grace=None).wait()
    assert servicer.watch_calls == 2


class BusyAggregator(ScriptedAggregator):
    """Every WatchStatus slot taken (the aggregator's ``max_watches``): the stream is refused."""

    def WatchStatus(self, request: ag.GetStatusRequest, context: grpc.ServicerContext) -> Iterator[ag.RequestStatus]:
        self.watch_calls += 1
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "16 WatchStatus streams are open already; poll GetStatus")
        yield from ()


def test_a_busy_aggregator_is_polled_not_given_up() -> None:
    """The request is submitted and goes on: refused a status stream, the client polls GetStatus
    (an error here would make a gateway's caller retry, submitting and paying for it again)."""
    servicer = BusyAggregator(ag.REQUEST_STATE_VERIFYING)
    server, port = serve(servicer)
    try:
        with AggregatorClient(f"127.0.0.1:{port}") as client:
            threading.Timer(1.0, servicer.set_state, (ag.REQUEST_STATE_CERTIFIED,)).start()
            status = client.wait(REQUEST_HASH, timeout=20)
    finally:
        server.stop(grace=None).wait()
    assert status.state == ag.REQUEST_STATE_CERTIFIED
    assert servicer.watch_calls >= 1 and servicer.get_calls >= 1


class SlowPolledAggregator(BusyAggregator):
    """Refuses the stream, and takes 10 s to answer a poll."""

    def GetStatus(self, request: ag.GetStatusRequest, context: grpc.ServicerContext) -> ag.RequestStatus:
        time.sleep(10)
        return super().GetStatus(request, context)


@pytest.mark.parametrize(
    "aggregator", [ScriptedAggregator, BusyAggregator, SlowPolledAggregator], ids=["streaming", "polled", "in-a-poll"]
)
def test_a_cancelled_wait_ends_at_once_and_closes_its_stream(aggregator: type[ScriptedAggregator]) -> None:
    """A gateway whose HTTP client went away cancels its wait: it ends at once, not at the next
    status change (minutes, while an output is generated), whether it is reading the status stream
    or backing off between polls; the aggregator sees the stream closed."""
    servicer = aggregator(ag.REQUEST_STATE_GENERATING)
    server, port = serve(servicer)
    cancellation = Cancellation()
    seen: list[int] = []
    try:
        with AggregatorClient(f"127.0.0.1:{port}") as client:
            threading.Timer(1.0, cancellation.cancel).start()
            started = time.monotonic()
            with pytest.raises(CancelledError, match="0x" + REQUEST_HASH.hex()):
                client.wait(REQUEST_HASH, 30, lambda s: seen.append(s.state), cancellation=cancellation)
            elapsed = time.monotonic() - started
            with pytest.raises(CancelledError):  # cancelled before it starts: no status is read
                client.wait(REQUEST_HASH, timeout=30, cancellation=cancellation)
    finally:
        server.stop(grace=None).wait()
    assert 0.9 <= elapsed < 2.0
    assert seen == ([] if aggregator is SlowPolledAggregator else [ag.REQUEST_STATE_GENERATING])
