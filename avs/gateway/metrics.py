"""The gateway's Prometheus metrics, served on ``--metrics-listen`` (a port of its own, as the
aggregator's and the operators' are, so that ``/metrics`` is never on the public API port).

Labels are closed sets: ``route`` is one of ``ROUTES`` (never the raw path, which a client
chooses), ``outcome`` is ``ok``, ``client_gone`` or the ``code`` of the OpenAI error answered
(``avs.gateway.errors``: ``certificate_mismatch`` when the aggregator's certificate did not
verify here, ``not_certified``, ``timeout``, ``too_many_requests``, ...).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from avs.errors import AvsError, CancelledError
from avs.gateway.errors import SubmittedRequestError, compute_api_error
from avs.gateway.openai_api import VERIFICATION_PATH, JobKind

COMPLETION_ROUTES = {JobKind.CHAT: "chat", JobKind.TEXT: "completions"}
ROUTES = ("chat", "completions", "models", "verification", "health", "other")
OUTCOME_OK = "ok"
OUTCOME_CLIENT_GONE = "client_gone"
# The client closed its connection, or its socket stalled: nobody was answered. (A certification
# deadline is an AvsError that is a TimeoutError too: that one was answered, 504.)
SOCKET_ERRORS = (BrokenPipeError, ConnectionResetError, TimeoutError)
# Submit to certified answer: a tiny model on the devnet takes about a second, SmolLM2 on CPU with
# 128 tokens several, the aggregator's deadlines up to minutes.
COMPLETION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def classify_route(path: str) -> str:
    """One of ``ROUTES`` for a request path (already without its query and trailing slash)."""
    if path == "/v1/chat/completions":
        return "chat"
    if path == "/v1/completions":
        return "completions"
    if path == "/v1/models" or path.startswith("/v1/models/"):
        return "models"
    if path.startswith(VERIFICATION_PATH):
        return "verification"
    if path == "/health":
        return "health"
    return "other"


def classify_outcome(error: BaseException | None) -> str:
    """A completion's ``outcome`` label: ``ok`` without an error, ``client_gone``, or the code
    (else the type) of the OpenAI error answered for ``error``."""
    if error is None:
        return OUTCOME_OK
    if isinstance(error, SubmittedRequestError):  # a stream's write failed once submitted: the cause says
        error = error.cause
    if isinstance(error, CancelledError) or (isinstance(error, SOCKET_ERRORS) and not isinstance(error, AvsError)):
        return OUTCOME_CLIENT_GONE
    answered = compute_api_error(error)
    return answered.code or answered.type


class GatewayMetrics:
    """The gateway's collectors, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.responses = Counter(
            "avs_gateway_http_responses",
            "HTTP responses sent, by route and status code (a stream counts its 200 when it starts)",
            ["route", "code"],
            registry=registry,
        )
        self.completions = Counter(
            "avs_gateway_completions",
            "Completions ended, by route and outcome: ok (certified, its certificate checked here, "
            "answered), client_gone, or the code of the error answered",
            ["route", "outcome"],
            registry=registry,
        )
        self.completion_seconds = Histogram(
            "avs_gateway_completion_seconds",
            "From a completion's request head read to its certified answer sent (outcome ok only)",
            ["route"],
            buckets=COMPLETION_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "avs_gateway_tokens",
            "Tokens of the certified completions (checked here), by kind (prompt, completion)",
            ["kind"],
            registry=registry,
        )
        self.in_flight = Gauge("avs_gateway_completions_in_flight", "Completions being followed now", registry=registry)
        # Every series a dashboard or alert reads, from the start: rate() sees its first increase.
        for route in COMPLETION_ROUTES.values():
            for outcome in (OUTCOME_OK, "certificate_mismatch"):
                self.completions.labels(route, outcome)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind)

    def follow_in_flight(self, count: Callable[[], int]) -> None:
        """The in-flight gauge reads ``count()`` (the admission's) at each scrape."""
        self.in_flight.set_function(count)

    def record_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.tokens.labels("prompt").inc(prompt_tokens)
        self.tokens.labels("completion").inc(completion_tokens)
