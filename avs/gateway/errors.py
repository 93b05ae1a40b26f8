"""The gateway's errors and the one place that maps errors to HTTP statuses and OpenAI's error JSON.

Request handling raises ``AvsError`` subclasses (the ones below carry OpenAI's ``param`` and
``code``); gRPC errors from the aggregator are mapped by their status code. Anything else is a bug:
it becomes a 500 with a generic message, and the server logs the details.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import grpc

from avs.client import RequestFailedError
from avs.errors import (
    AuthenticationError,
    AvsError,
    ContextLimitError,
    DeadlineExceededError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    UnavailableError,
    UntrustedAnswerError,
)
from avs.rpc.status import is_message_too_large

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class RequestParameterError(InvalidInputError):
    """A request body field that is missing, malformed or out of range (``param`` names it)."""

    default_code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code or self.default_code


class UnsupportedParameterError(RequestParameterError):
    """An OpenAI parameter this gateway does not implement (n > 1, logprobs, tools ...)."""

    default_code = "unsupported_parameter"


class UnknownParameterError(RequestParameterError):
    """A body field that is not an OpenAI parameter of this endpoint."""

    default_code = "unknown_parameter"


class PayloadTooLargeError(InvalidInputError):
    """A request body over the gateway's size limit."""


class SubmittedRequestError(AvsError):
    """Anything that went wrong once the request was submitted: the aggregator may still certify it,
    so the caller must follow it at ``follow_url``, not send it again (a retry is a new, paid inference)."""

    def __init__(self, follow_url: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.follow_url = follow_url
        self.cause = cause


class MaybeSubmittedError(AvsError):
    """A Submit past its deadline: the aggregator most likely took the request, and a retry without an
    ``Idempotency-Key`` would draw a new nonce, another paid inference, so it is answered with no retry."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class TooManyRequestsError(AvsError):
    """Over the gateway's own cap of completions in flight (in all, or the caller's) or its rate per
    caller: nothing was submitted, so a retry later is safe, after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HostNotAllowedError(PermissionDeniedError):
    """A ``Host`` this gateway does not answer to (a loopback gateway without keys: DNS rebinding)."""

    code = "host_not_allowed"


class UnsupportedMediaTypeError(InvalidInputError):
    """A POST body that is not declared JSON (``Content-Type: application/json``)."""


class ShuttingDownError(AvsError):
    """The gateway is stopping: no new completion is taken (nothing submitted: retry elsewhere or later)."""


class RouteNotFoundError(AvsError, LookupError):
    """A path this gateway does not serve."""


class MethodNotAllowedError(AvsError):
    """A known path asked with the wrong HTTP method."""


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error as the HTTP layer sends it: the status and OpenAI's ``{"error": {...}}`` fields."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    retry: bool = True  # False: the request was submitted, a retry would submit (and pay for) another

    def to_json(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# Most specific first: the first matching class wins. (class, HTTP status, type, default param, default code)
ERROR_TABLE: tuple[tuple[type[BaseException], int, str, str | None, str | None], ...] = (
    (AuthenticationError, 401, INVALID_REQUEST, None, "invalid_api_key"),
    (PermissionDeniedError, 403, INVALID_REQUEST, None, "origin_not_allowed"),  # a CORS preflight
    (PayloadTooLargeError, 413, INVALID_REQUEST, None, "request_too_large"),
    (UnsupportedMediaTypeError, 415, INVALID_REQUEST, None, "unsupported_media_type"),
    (ModelNotFoundError, 404, INVALID_REQUEST, "model", "model_not_found"),
    (RouteNotFoundError, 404, INVALID_REQUEST, None, "unknown_url"),
    (MethodNotAllowedError, 405, INVALID_REQUEST, None, "method_not_allowed"),
    (ContextLimitError, 400, INVALID_REQUEST, "messages", "context_length_exceeded"),
    (UntrustedAnswerError, 502, SERVER_ERROR, None, "certificate_mismatch"),  # the aggregator's fault
    (InvalidInputError, 400, INVALID_REQUEST, None, None),
    (TooManyRequestsError, 429, "rate_limit_error", None, "too_many_requests"),
    (OverloadedError, 429, "rate_limit_error", None, "aggregator_busy"),
    (RequestFailedError, 502, SERVER_ERROR, None, "not_certified"),
    (DeadlineExceededError, 504, SERVER_ERROR, None, "certification_timeout"),
    (UnavailableError, 503, SERVER_ERROR, None, "chain_unavailable"),  # --rpc-url could not be read
    (ShuttingDownError, 503, SERVER_ERROR, None, "shutting_down"),
)

# The aggregator's status codes (see aggregator.proto): (HTTP status, type, code, pass the details on)
GRPC_TABLE: dict[grpc.StatusCode, tuple[int, str, str | None, bool]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, INVALID_REQUEST, None, True),
    grpc.StatusCode.OUT_OF_RANGE: (400, INVALID_REQUEST, "context_length_exceeded", True),
    grpc.StatusCode.NOT_FOUND: (404, INVALID_REQUEST, "not_found", True),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "aggregator_busy", True),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, SERVER_ERROR, "aggregator_timeout", False),
    grpc.StatusCode.UNAVAILABLE: (503, SERVER_ERROR, "aggregator_unavailable", False),
}
GRPC_DEFAULT = (502, SERVER_ERROR, "aggregator_error", False)
INTERNAL = ApiError(500, "internal error in the gateway", SERVER_ERROR, None, "internal_error")


def compute_api_error(error: BaseException) -> ApiError:
    """The HTTP status and OpenAI error body for ``error`` (``INTERNAL`` for an unexpected one)."""
    if isinstance(error, SubmittedRequestError):
        cause = compute_api_error(error.cause)
        message = f"{cause.message}; the request was submitted: follow it at {error.follow_url}"
        return replace(cause, message=message, retry=False)
    if isinstance(error, MaybeSubmittedError):
        cause = compute_api_error(error.cause)
        message = (
            f"{cause.message}; the request may have reached the aggregator, so it is not to be sent again as"
            " it is (another paid inference): send it with an Idempotency-Key to retry safely"
        )
        return replace(cause, message=message, retry=False)
    if isinstance(error, grpc.RpcError):
        return _compute_grpc_error(error)
    for error_type, status, kind, param, code in ERROR_TABLE:
        if isinstance(error, error_type):
            return ApiError(status, str(error), kind, getattr(error, "param", None) or param, _get_code(error, code))
    return INTERNAL


def _get_code(error: BaseException, default: str | None) -> str | None:
    code = getattr(error, "code", None)
    return code if isinstance(code, str) else default


def _compute_grpc_error(error: grpc.RpcError) -> ApiError:
    code = _call_or_none(error, "code")  # the channel's RpcErrors are also grpc.Call objects
    details = _call_or_none(error, "details")
    if is_message_too_large(error):  # RESOURCE_EXHAUSTED too, but no retry will ever fit
        message = f"the request is larger than the aggregator accepts ({details}): shorten the chat"
        return ApiError(413, message, INVALID_REQUEST, "messages", "request_too_large")
    row = GRPC_TABLE.get(code, GRPC_DEFAULT) if isinstance(code, grpc.StatusCode) else GRPC_DEFAULT
    status, kind, api_code, pass_details = row
    if pass_details and isinstance(details, str) and details:
        return ApiError(status, f"the aggregator refused the request: {details}", kind, None, api_code)
    name = code.name if isinstance(code, grpc.StatusCode) else "unknown"
    return ApiError(status, f"the aggregator could not answer ({name})", kind, None, api_code)


def _call_or_none(error: grpc.RpcError, name: str) -> object:
    method = getattr(error, name, None)
    return method() if callable(method) else None
