"""The gateway's Prometheus metrics, through real HTTP against a fake aggregator (the devnet test of
the ``avs-gateway`` binary scrapes them over its ``--metrics-listen`` port)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from avs.client import RequestStatus
from avs.errors import CancelledError, DeadlineExceededError
from avs.gateway.config import GatewayConfigError, load_config
from avs.gateway.errors import SubmittedRequestError
from avs.gateway.metrics import ROUTES, GatewayMetrics, classify_outcome, classify_route
from avs.gateway.server import GatewayServer
from tests.gateway.fakes import MODEL, OUTPUT_IDS, FakeIntake
from tests.gateway.test_server import REQUESTER, client_for, raw, start, wait_for

QUESTION = "fox?"


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics(CollectorRegistry())


@pytest.fixture
def intake() -> FakeIntake:
    return FakeIntake()


@pytest.fixture
def server(intake: FakeIntake, metrics: GatewayMetrics) -> Iterator[GatewayServer]:
    gateway = start(intake, metrics=metrics)
    yield gateway
    gateway.stop()


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def ask(server: GatewayServer, stream: bool = False) -> None:
    client = client_for(server)
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    if stream:
        for _ in client.chat.completions.create(model=MODEL, messages=messages, stream=True):
            pass
    else:
        client.chat.completions.create(model=MODEL, messages=messages)


def test_a_certified_completion_is_counted_with_its_tokens_and_time(
    server: GatewayServer, metrics: GatewayMetrics
) -> None:
    ask(server)
    ask(server, stream=True)
    # a completion is counted once its answer is sent: the client may read it a moment before
    wait_for(lambda: sample(metrics, "avs_gateway_completion_seconds_count", route="chat") == 2)
    assert sample(metrics, "avs_gateway_completions_total", route="chat", outcome="ok") == 2
    assert sample(metrics, "avs_gateway_completion_seconds_count", route="chat") == 2
    assert sample(metrics, "avs_gateway_http_responses_total", route="chat", code="200") == 2
    # the prompt counted here (the fake tokenizer: a token per character), the certified output's ids
    assert sample(metrics, "avs_gateway_tokens_total", kind="prompt") == 2 * len(QUESTION)
    assert sample(metrics, "avs_gateway_tokens_total", kind="completion") == 2 * len(OUTPUT_IDS)


def test_a_certificate_that_does_not_verify_is_its_own_outcome(metrics: GatewayMetrics) -> None:
    gateway = start(FakeIntake(), metrics=metrics, check_certificate=lambda certificate, request_hash: ["forged"])
    try:
        with pytest.raises(openai.InternalServerError):
            ask(gateway)
        wait_for(lambda: sample(metrics, "avs_gateway_completions_total", route="chat", outcome="certificate_mismatch"))
    finally:
        gateway.stop()
    assert sample(metrics, "avs_gateway_completions_total", route="chat", outcome="certificate_mismatch") == 1
    assert sample(metrics, "avs_gateway_completions_total", route="chat", outcome="ok") == 0
    assert sample(metrics, "avs_gateway_http_responses_total", route="chat", code="502") == 1
    assert sample(metrics, "avs_gateway_completion_seconds_count", route="chat") == 0
    assert sample(metrics, "avs_gateway_tokens_total", kind="completion") == 0  # nothing certified was answered


def test_refusals_are_counted_by_code_and_paths_are_never_labels(
    server: GatewayServer, metrics: GatewayMetrics
) -> None:
    status, _ = raw(server, "POST", "/v1/completions", b"{not json", **{"Content-Type": "application/json"})
    assert status == 400
    wait_for(
        lambda: sample(metrics, "avs_gateway_completions_total", route="completions", outcome="invalid_request_error")
    )
    assert sample(metrics, "avs_gateway_completions_total", route="completions", outcome="invalid_request_error") == 1
    assert raw(server, "GET", "/v1/../../secret-path-42")[0] == 404
    assert raw(server, "GET", "/v1/verification/0x" + "ab" * 32)[0] == 200
    assert raw(server, "GET", "/health")[0] == 200
    assert sample(metrics, "avs_gateway_http_responses_total", route="other", code="404") == 1
    assert sample(metrics, "avs_gateway_http_responses_total", route="verification", code="200") == 1
    assert sample(metrics, "avs_gateway_http_responses_total", route="health", code="200") == 1
    routes = {s.labels["route"] for m in metrics.registry.collect() for s in m.samples if "route" in s.labels}
    assert routes <= set(ROUTES)


def test_the_in_flight_gauge_reads_the_completions_being_followed(intake: FakeIntake, metrics: GatewayMetrics) -> None:
    seen: list[float] = []

    def look(status: RequestStatus) -> None:  # runs while the completion is being followed
        seen.append(sample(metrics, "avs_gateway_completions_in_flight"))

    intake.edit_certified = look
    gateway = start(intake, metrics=metrics)
    try:
        ask(gateway)
        wait_for(lambda: sample(metrics, "avs_gateway_completions_in_flight") == 0)  # let go just after answering
    finally:
        gateway.stop()
    assert seen == [1.0]
    assert sample(metrics, "avs_gateway_completions_in_flight") == 0


def test_outcomes() -> None:
    assert classify_outcome(None) == "ok"
    assert classify_outcome(CancelledError("went away")) == "client_gone"
    assert classify_outcome(BrokenPipeError()) == "client_gone"
    assert classify_outcome(TimeoutError("socket stalled")) == "client_gone"
    # a stream's write failing once the request was submitted comes wrapped (from the review of the day)
    follow = "/v1/verification/0x" + "ab" * 32
    assert classify_outcome(SubmittedRequestError(follow, BrokenPipeError())) == "client_gone"
    assert classify_outcome(SubmittedRequestError(follow, DeadlineExceededError("late"))) == "certification_timeout"
    # a certification deadline is answered (504): not a client that went away
    assert classify_outcome(DeadlineExceededError("not certified in time")) not in ("client_gone", "ok")


@given(st.text(max_size=80))
def test_any_path_is_one_of_the_routes(path: str) -> None:
    assert classify_route(path) in ROUTES


def test_metrics_listen_is_checked() -> None:
    with pytest.raises(GatewayConfigError, match="metrics_listen"):
        load_config(requester=REQUESTER, model_dirs=["models/tiny"], metrics_listen="no-port")
    assert load_config(requester=REQUESTER, model_dirs=["models/tiny"]).metrics_listen is None
