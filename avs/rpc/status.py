"""One place that maps the project's errors to gRPC status codes.

Servicers raise ``AvsError`` subclasses; ``ErrorToStatusInterceptor`` turns each into the right
status with the error's message (never a code inside a message string). Anything that is not an
``AvsError`` is a bug: it becomes INTERNAL with a generic message, and the details go to the log.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from avs.errors import (
    AuthenticationError,
    AvsError,
    CancelledError,
    ContextLimitError,
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    ModelMismatchError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    PreconditionFailedError,
    SlashingProtectionError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

# Most specific first: the first matching class wins.
STATUS_BY_ERROR: tuple[tuple[type[AvsError], grpc.StatusCode], ...] = (
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ContextLimitError, grpc.StatusCode.OUT_OF_RANGE),
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (SlashingProtectionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ModelMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (PreconditionFailedError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (InferenceError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (CancelledError, grpc.StatusCode.CANCELLED),
)


def get_status_code(error: BaseException) -> grpc.StatusCode:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


# Status details travel in a header (percent-encoded: up to 9 bytes per character) and clients
# refuse headers over 16 KiB, which they report as RESOURCE_EXHAUSTED, not the error's own code.
MAX_DETAILS_CHARS = 1_000


def shorten_details(message: str) -> str:
    """``message`` cut to ``MAX_DETAILS_CHARS``, saying how long it was (an echoed input can be huge)."""
    if len(message) <= MAX_DETAILS_CHARS:
        return message
    suffix = f"... ({len(message)} characters)"
    return message[: MAX_DETAILS_CHARS - len(suffix)] + suffix


# gRPC refuses a message over the receiver's (or the sender's) size limit with RESOURCE_EXHAUSTED,
# the code of an overload; only its details tell "too large, never retry" from "busy, retry".
# ("SERVER: Received message larger than max (276545 vs. 276544)", the prefix missing in some versions)
_TOO_LARGE_DETAILS = re.compile(r"(SERVER: |CLIENT: )?(Received|Sent) message larger than max \(")


def is_message_too_large(error: BaseException) -> bool:
    """``error`` is gRPC's refusal of a message over a size limit."""
    code, details = getattr(error, "code", None), getattr(error, "details", None)  # a channel's errors are Calls
    if not (isinstance(error, grpc.RpcError) and callable(code) and callable(details)):
        return False
    text = details()
    too_large = isinstance(text, str) and _TOO_LARGE_DETAILS.match(text) is not None
    return code() == grpc.StatusCode.RESOURCE_EXHAUSTED and too_large


def describe_call_error(error: BaseException) -> str:
    """A failed call as one line: a gRPC error as its code and details (its str() spans lines and
    carries the peer's address and a debug string, which end up in a requester's status), else
    ``str(error)``."""
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def _status_of(error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status a call that raised ``error`` ends with; anything unexpected is logged, not shown."""
    if isinstance(error, AvsError):
        return get_status_code(error), shorten_details(str(error))
    logger.error("unexpected error in %s", method, exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error"


def _abort(context: grpc.ServicerContext, error: Exception, method: str) -> None:
    context.abort(*_status_of(error, method))


# The project's own services; the others (health, reflection) are grpcio's, left as they are: their
# handlers carry grpcio's flags (a non-blocking health Watch), which a wrapper would drop, leaving
# each Watch stream holding a worker thread for as long as its client liked.
OWN_METHODS_PREFIX = "/avs."


class _Undecodable:
    """A request whose bytes are not the method's message (e.g. a string field that is not UTF-8)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` answering ``_Undecodable`` instead of raising: grpcio answers a raising one
    with INTERNAL and logs a traceback per call, which any client could fill the log with."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:
            return _Undecodable(error)

    return parse


def _malformed(request: _Undecodable) -> str:
    return shorten_details(f"malformed request: {request.error}")


def _decoded(decode: Callable[[bytes], Any] | None, raw: Any, context: grpc.ServicerContext) -> Any:
    """The request of ``raw`` (decoded by ``decode``, when given); aborts if it does not decode."""
    request = raw if decode is None else decode(raw)
    if isinstance(request, _Undecodable):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed(request))
    return request


def wrap_own_handler(handler: Any, method: str) -> Any:
    """``handler`` of one of the project's methods answering its errors with their status codes (and
    undecodable requests with INVALID_ARGUMENT); grpcio's own services are left as they are. Plain
    handlers may run on a sync server or as a ``grpc.aio`` server's sync handlers; an ``async`` stream
    handler runs on a ``grpc.aio`` server's loop.

    A plain handler decodes its request itself, on the thread that runs it: a ``grpc.aio`` server
    decodes on its event loop as soon as a request has arrived, and keeps it while the call waits for
    a thread, so a queue of large requests (a full chat of empty messages is ~30x its wire size as
    Python objects) would be held decoded; undecoded, each is held as its bytes."""
    if handler is None or not method.startswith(OWN_METHODS_PREFIX):
        return handler
    deserializer = _lenient(handler.request_deserializer)
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        def unary_unary(raw: Any, context: grpc.ServicerContext) -> Any:
            request = _decoded(deserializer, raw, context)
            try:
                return inner(request, context)
            except Exception as error:
                if _is_abort(error, context):
                    raise
                _abort(context, error, method)

        return grpc.unary_unary_rpc_method_handler(unary_unary, None, handler.response_serializer)
    if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
        inner_async = handler.unary_stream

        async def unary_stream_async(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed(request))
            try:
                async for response in inner_async(request, context):
                    yield response
            except Exception as error:
                if _is_abort(error, context):
                    raise
                await context.abort(*_status_of(error, method))

        return grpc.unary_stream_rpc_method_handler(unary_stream_async, deserializer, handler.response_serializer)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        def unary_stream(raw: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            request = _decoded(deserializer, raw, context)
            try:
                yield from inner_stream(request, context)
            except Exception as error:
                if _is_abort(error, context):
                    raise
                _abort(context, error, method)

        return grpc.unary_stream_rpc_method_handler(unary_stream, None, handler.response_serializer)
    return handler


class ErrorToStatusInterceptor(grpc.ServerInterceptor):
    """``wrap_own_handler`` for grpcio's sync server."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        return wrap_own_handler(continuation(details), details.method)


class AioErrorToStatusInterceptor(grpc.aio.ServerInterceptor):
    """``wrap_own_handler`` for a ``grpc.aio`` server (``avs.rpc.aio``)."""

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        return wrap_own_handler(await continuation(details), details.method)


def _is_abort(error: Exception, context: Any) -> bool:
    """``error`` is ``context.abort()``'s, to let through: a grpc.aio server's (of a sync or an async
    handler) raises an AbortError; the sync server's a bare ``Exception()`` after setting the status
    code. A bare ``Exception`` with no code set is a handler's bug, answered INTERNAL and logged like
    any other (let through, grpc answered it UNKNOWN, and our log had no line of it)."""
    if isinstance(error, grpc.aio.AbortError):
        return True
    code = getattr(context, "code", None)  # grpc.aio's context of a sync handler has none (nor needs it)
    return type(error) is Exception and code is not None and code() is not None
