"""Errors of the project's own gRPC handlers become status codes, on the sync server and on grpc.aio."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from avs.errors import InvalidInputError
from avs.rpc.aio import ThreadedAioServer
from avs.rpc.status import AioErrorToStatusInterceptor, ErrorToStatusInterceptor

METHOD = "/avs.test.v1.Probe/Call"


def _bug(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise Exception("a handler's bug")  # a bare Exception, as the sync server's abort raises


def _refused(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise InvalidInputError("max_tokens must be at least 1")


def _aborted(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no request with this hash")
    raise AssertionError("abort returns no more")


def _handlers(behaviour: Callable[[bytes, grpc.ServicerContext], bytes]) -> grpc.GenericRpcHandler:
    handler = grpc.unary_unary_rpc_method_handler(behaviour, lambda b: b, lambda b: b)
    return grpc.method_handlers_generic_handler("avs.test.v1.Probe", {"Call": handler})


def _sync_server(behaviour: Callable[[bytes, grpc.ServicerContext], bytes]) -> tuple[Any, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[ErrorToStatusInterceptor()])
    server.add_generic_rpc_handlers((_handlers(behaviour),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _aio_server(behaviour: Callable[[bytes, grpc.ServicerContext], bytes]) -> tuple[Any, int]:
    server = ThreadedAioServer(max_workers=2, thread_name="probe", interceptors=[AioErrorToStatusInterceptor()])
    server.call(server.server.add_generic_rpc_handlers, (_handlers(behaviour),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(params=["sync", "aio"])
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., grpc.RpcError]]:
    """Serves a behaviour on the server kind of the parameter; returns the error of one call."""
    servers: list[Any] = []

    def call(behaviour: Callable[[bytes, grpc.ServicerContext], bytes]) -> grpc.RpcError:
        server, port = (_sync_server if request.param == "sync" else _aio_server)(behaviour)
        servers.append(server)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as failed:
            probe: Any = channel.unary_unary(METHOD)  # raw bytes both ways
            probe(b"x", timeout=10)
        return failed.value

    yield call
    for server in servers:
        server.stop(None).wait()


def test_a_bare_exception_from_a_handler_is_internal_and_logged(
    serve: Callable[..., grpc.RpcError], caplog: pytest.LogCaptureFixture
) -> None:
    """It was taken for ``context.abort()``'s (which raises a bare Exception on the sync server) and
    let through: UNKNOWN, and no line in our log."""
    with caplog.at_level(logging.ERROR, logger="avs.rpc.status"):
        error = serve(_bug)
    assert error.code() == grpc.StatusCode.INTERNAL and error.details() == "internal error"
    assert any(r.getMessage() == f"unexpected error in {METHOD}" for r in caplog.records)


def test_our_errors_and_aborts_keep_their_codes(serve: Callable[..., grpc.RpcError]) -> None:
    refused = serve(_refused)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details() == "max_tokens must be at least 1"
    aborted = serve(_aborted)
    assert aborted.code() == grpc.StatusCode.NOT_FOUND
    assert aborted.details() == "no request with this hash"
