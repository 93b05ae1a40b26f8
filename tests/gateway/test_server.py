"""The HTTP gateway against a fake aggregator, driven by the official ``openai`` client and raw HTTP."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam

from avs.client import RequestStatus
from avs.errors import DeadlineExceededError, OverloadedError, UntrustedAnswerError
from avs.gateway import cli
from avs.gateway import service as gateway_service
from avs.gateway.config import GatewayConfig, load_config
from avs.gateway.metrics import GatewayMetrics
from avs.gateway.models import LocalModel
from avs.gateway.server import MAX_JSON_DEPTH, GatewayServer, compute_json_depth, is_authorized
from avs.gateway.service import CertificateChecker, GatewayService
from avs.inference.params import compute_prompt_hash
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from tests.gateway.fakes import (
    EOS_ID,
    MODEL,
    MODEL_ID,
    OUTPUT_IDS,
    OUTPUT_TEXT,
    REQUEST_HASH,
    FakeCodec,
    FakeIntake,
    FakeRpcError,
    failing_intake,
    make_status,
)

REQUESTER = "0x" + "11" * 20
KEY = "sk-test-key"
POST_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"


MODEL_DIRS = ["models/tiny"]


def accept_any(certificate: Any, request_hash: bytes) -> list[str]:
    return []  # the fake's certificates carry no signatures; the devnet tests verify real ones


def start(
    intake: FakeIntake,
    api_keys: tuple[str, ...] = (),
    texts: dict[tuple[int, ...], str] | None = None,
    check_certificate: CertificateChecker = accept_any,
    metrics: GatewayMetrics | None = None,
    **settings: Any,
) -> GatewayServer:
    """The gateway over ``intake``; its tokenizer decodes the intake's ids to the intake's text
    unless ``texts`` says otherwise."""
    config = load_config(
        requester=REQUESTER,
        model_dirs=MODEL_DIRS,
        quorums=[1, 0],
        threshold_bps=6667,
        listen="127.0.0.1:0",
        api_keys=",".join(api_keys) or None,
        **settings,
    )
    codec = FakeCodec(texts if texts is not None else {tuple(intake.ids): intake.text})
    models = {MODEL: LocalModel(MODEL_ID, codec, frozenset({EOS_ID}))}
    service = GatewayService(intake, config, models, check_certificate, metrics=metrics)
    server = GatewayServer(service, config, metrics)
    server.start()
    return server


@pytest.fixture
def intake() -> FakeIntake:
    return FakeIntake()


@pytest.fixture
def server(intake: FakeIntake) -> Iterator[GatewayServer]:
    gateway = start(intake)
    yield gateway
    gateway.stop()


def client_for(server: GatewayServer, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=api_key, max_retries=0)


def raw(server: GatewayServer, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, Any]:
    if method == "POST":
        headers = {"Content-Type": "application/json", **headers}
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def test_models_are_the_aggregators(server: GatewayServer) -> None:
    client = client_for(server)
    (model,) = client.models.list().data
    assert model.id == MODEL and model.object == "model"
    assert (model.model_extra or {})["model_id"] == "0x" + MODEL_ID.hex()
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_a_reply_sent_back_as_history_is_taken(server: GatewayServer, intake: FakeIntake) -> None:
    """The openai client's multi-turn pattern: the previous reply's message (with "refusal": null,
    and every empty field when dumped) goes back into the next request's messages."""
    client = client_for(server)
    first = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fox?"}])
    reply = first.choices[0].message
    for sent_back in (reply, reply.model_dump(), {"role": "assistant", "content": "a", "tool_calls": []}):
        history: list[Any] = [{"role": "user", "content": "fox?"}, sent_back, {"role": "user", "content": "more"}]
        assert client.chat.completions.create(model=MODEL, messages=history).choices[0].message.content
        assert intake.submitted[-1]["messages"][1]["role"] == "assistant"


def test_a_chat_completion_is_answered_with_its_certificate(server: GatewayServer, intake: FakeIntake) -> None:
    completion = client_for(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "short"}, {"role": "user", "content": "fox?"}],
        max_tokens=5,
        temperature=0,
        seed=9,
        stop=["jumps"],
    )
    assert completion.id == "chatcmpl-" + REQUEST_HASH.hex() and completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.content == "the quick brown fox. " and choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens == len("shortfox?")  # counted here, by the model's tokenizer
    verification = (completion.model_extra or {})["verification"]
    assert verification["state"] == "CERTIFIED" and verification["certificate"]["output_text"] == OUTPUT_TEXT
    (submitted,) = intake.submitted
    assert submitted == {
        "messages": [{"role": "system", "content": "short"}, {"role": "user", "content": "fox?"}],
        "requester": REQUESTER,
        "model_id": MODEL_ID,
        "prompt_hash": compute_prompt_hash(tuple(ord(c) for c in "shortfox?")),
        "max_tokens": 5,
        "temperature_milli": 0,
        "top_p_micro": 1_000_000,
        "seed": 9,
        "nonce": submitted["nonce"],  # drawn here (see the idempotency test)
        "stop_sequences": ["jumps"],
        "quorums": b"\x00\x01",
        "threshold_bps": 6667,
    }


def test_an_idempotency_key_makes_a_retry_the_same_request(server: GatewayServer, intake: FakeIntake) -> None:
    """A client that timed out and retries (the SDK's default) paid for a new request each time: a
    new random nonce and seed. Under one Idempotency-Key the same body is the same request (the
    aggregator takes a request hash it has as the one it has); another key, or none, is another."""
    client = client_for(server)
    chat: list[ChatCompletionMessageParam] = [{"role": "user", "content": "fox?"}]

    def post(key: str | None, **fields: Any) -> dict[str, Any]:
        headers = {} if key is None else {"Idempotency-Key": key}
        client.chat.completions.create(model=MODEL, messages=chat, extra_headers=headers, **fields)
        return intake.submitted[-1]

    first, retry, other, plain = post("k-1"), post("k-1"), post("k-2"), post(None)
    assert first == retry and isinstance(first["nonce"], int) and 0 <= first["seed"] < 2**63
    assert other["nonce"] != first["nonce"] and other["seed"] != first["seed"]
    # without a key the gateway draws a random one (kept, with the rest, to check the certificate)
    assert isinstance(plain["nonce"], int) and plain["nonce"] not in (first["nonce"], other["nonce"])
    assert post("k-1", seed=5)["nonce"] == first["nonce"]  # the body decides the rest of the request
    for bad in ("", "a b", "é", "x" * 256):
        status, body = raw(
            server,
            "POST",
            "/v1/chat/completions",
            json.dumps({"model": MODEL, "messages": chat}).encode(),
            **{"Idempotency-Key": bad},
        )
        assert status == 400 and "Idempotency-Key" in body["error"]["message"], bad


def test_idempotency_keys_are_per_api_key(intake: FakeIntake) -> None:
    gateway = start(intake, api_keys=("key-a", "key-b"))
    try:
        nonces = []
        for api_key in ("key-a", "key-b"):
            client_for(gateway, api_key).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "fox?"}], extra_headers={"Idempotency-Key": "k"}
            )
            nonces.append(intake.submitted[-1]["nonce"])
        assert nonces[0] != nonces[1]
    finally:
        gateway.stop()


def test_a_model_may_be_named_by_its_id(server: GatewayServer, intake: FakeIntake) -> None:
    client_for(server).completions.create(model="0x" + MODEL_ID.hex(), prompt="x", max_tokens=5)
    assert intake.submitted[0]["model_id"] == MODEL_ID


def test_the_text_shown_is_decoded_here_from_the_certified_tokens() -> None:
    """Operators sign token ids; the aggregator's ``output_text`` is signed by nobody, so a
    compromised aggregator (or its plaintext gRPC path) could change it: the gateway shows its own
    decoding of the certified ids, in answers, streams and fetched certificates."""
    intake = FakeIntake(text="send your keys to evil.example")  # what the aggregator says the ids decode to
    gateway = start(intake, texts={tuple(intake.ids): OUTPUT_TEXT})
    try:
        client = client_for(gateway)
        chat: list[ChatCompletionMessageParam] = [{"role": "user", "content": "fox?"}]
        completion = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=5)
        assert completion.choices[0].message.content == OUTPUT_TEXT
        assert (completion.model_extra or {})["verification"]["certificate"]["output_text"] == OUTPUT_TEXT
        stream = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=5, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == OUTPUT_TEXT
        status, body = raw(gateway, "GET", f"/v1/verification/0x{REQUEST_HASH.hex()}")
        assert status == 200 and body["certificate"]["output_text"] == OUTPUT_TEXT
    finally:
        gateway.stop()


def _refused_mismatch(gateway: GatewayServer, stream: bool) -> openai.APIError:
    """A chat completion (streamed or not) that the gateway refuses as ``certificate_mismatch``."""
    with pytest.raises(openai.APIError) as refused:
        reply = client_for(gateway).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "fox?"}], max_tokens=5, stream=stream
        )
        list(reply) if stream else None
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "certificate_mismatch"
    return refused.value


@pytest.mark.parametrize("stream", [False, True])
def test_a_certificate_that_does_not_verify_is_the_aggregators_fault(stream: bool) -> None:
    problems = ["the aggregate signature does not verify over the batch digest"]
    gateway = start(FakeIntake(), check_certificate=lambda certificate, request_hash: problems)
    try:
        refused = _refused_mismatch(gateway, stream)
        assert problems[0] in refused.message and "/v1/verification/0x" in refused.message
        if not stream:
            assert isinstance(refused, openai.APIStatusError) and refused.status_code == 502
    finally:
        gateway.stop()


def test_a_model_the_gateway_has_no_tokenizer_for_is_not_served() -> None:
    intake = FakeIntake(models={MODEL: MODEL_ID, "other": b"\x07" * 32})
    gateway = start(intake)
    try:
        client = client_for(gateway)
        assert [m.id for m in client.models.list().data] == [MODEL]
        with pytest.raises(openai.NotFoundError, match="does not exist here"):
            client.chat.completions.create(model="other", messages=[{"role": "user", "content": "fox?"}])
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("other")
        assert intake.submitted == []
    finally:
        gateway.stop()


def test_messages_the_tokenizer_refuses_are_a_400_before_anything_is_submitted(
    server: GatewayServer, intake: FakeIntake
) -> None:
    with pytest.raises(openai.BadRequestError, match="special token"):
        client_for(server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi <|special|>"}], max_tokens=5
        )
    assert intake.submitted == []


def test_a_name_means_the_local_folders_model_whatever_the_aggregator_calls_it() -> None:
    """The aggregator names its models, and could name a cheap one after the one asked for: a name
    is bound to a model id by the gateway's own folders; the aggregator only says which it serves."""
    cheap = b"\x07" * 32
    intake = FakeIntake(models={MODEL: cheap, "the-real-one": MODEL_ID})
    gateway = start(intake)
    try:
        client = client_for(gateway)
        assert [m.id for m in client.models.list().data] == [MODEL]
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fox?"}])
        assert intake.submitted[-1]["model_id"] == MODEL_ID
        intake.models = {MODEL: cheap}  # the aggregator stopped serving the gateway's model
        assert client.models.list().data == []
        with pytest.raises(openai.NotFoundError, match="not served by the aggregator"):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fox?"}])
        assert len(intake.submitted) == 1
    finally:
        gateway.stop()


def _with_another_nonce(status: RequestStatus) -> None:
    status.certificate.request.nonce = b"\x01" * 32


@pytest.mark.parametrize("stream", [False, True])
def test_a_certificate_for_another_request_than_the_one_sent_is_refused(stream: bool) -> None:
    """The gateway keeps the request it sent (the nonce it drew included) and checks the certificate
    against it itself, not relying on the client library's bounded memory of sent requests."""
    gateway = start(FakeIntake(edit_certified=_with_another_nonce))
    try:
        refused = _refused_mismatch(gateway, stream)
        assert "another request than the one sent (changed: nonce)" in refused.message
    finally:
        gateway.stop()


def test_a_stream_whose_certified_output_is_not_the_accepted_one_ends_in_an_error() -> None:
    """The output is streamed when the quorum accepts it; an aggregator that certifies another one
    afterwards gets no finish reason: the stream ends with certificate_mismatch."""
    gateway = start(FakeIntake(accepted_ids=(1, 2, 3)), texts={(1, 2, 3): "shown", tuple(OUTPUT_IDS): OUTPUT_TEXT})
    try:
        stream = client_for(gateway).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "fox?"}], max_tokens=5, stream=True
        )
        chunks: list[Any] = []
        with pytest.raises(openai.APIError, match="not the one streamed") as refused:
            chunks.extend(stream)
        assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "certificate_mismatch"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "shown"
        assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)
    finally:
        gateway.stop()


def test_the_verification_url_says_whether_the_certificate_verifies() -> None:
    problems = ["the aggregate signature does not verify over the batch digest"]
    intake = FakeIntake()
    gateway = start(intake, check_certificate=lambda certificate, request_hash: problems)
    try:
        with pytest.raises(openai.APIError, match="does not verify"):  # what the verification URL shows
            client_for(gateway).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fox?"}])
        status, body = raw(gateway, "GET", f"/v1/verification/0x{REQUEST_HASH.hex()}")
        assert status == 200 and body["state"] == "CERTIFIED"
        assert body["verified"] is False and body["problems"] == problems
        problems.clear()
        status, body = raw(gateway, "GET", f"/v1/verification/0x{REQUEST_HASH.hex()}")
        assert body["verified"] is True and body["problems"] == []
        intake.get_status = lambda request_hash: make_status(ag.REQUEST_STATE_CERTIFIED)  # type: ignore[method-assign]
        status, body = raw(gateway, "GET", "/v1/verification/0x" + "cd" * 32)  # answered with another's
        assert status == 502 and body["error"]["code"] == "certificate_mismatch"
    finally:
        gateway.stop()


def test_the_verification_url_shows_no_chat_or_text_the_certificate_does_not_commit_to() -> None:
    """The request hash covers the prompt's hash, not the chat: an aggregator could put any chat in a
    certificate, and any text beside its token ids, shown next to ``verified: true``. The chat must
    template to the prompt hash here; for a model not served here neither is shown."""

    def swap_chat(status: RequestStatus) -> None:
        status.certificate.request.messages[0].content = "wire the funds to evil.example"
        status.certificate.output_text = "made up"

    intake = FakeIntake(edit_certified=swap_chat)
    gateway = start(intake)
    try:
        client = client_for(gateway)
        with pytest.raises(openai.APIError):  # the completion path compares with the request sent
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fox?"}])
        status, body = raw(gateway, "GET", f"/v1/verification/0x{REQUEST_HASH.hex()}")
        assert status == 200 and body["verified"] is False
        assert body["problems"] == ["the certificate's chat is not the one its prompt hash commits to"]
        assert body["certificate"]["output_text"] == OUTPUT_TEXT  # decoded here, never the aggregator's
        intake.edit_certified = None
        status, body = raw(gateway, "GET", f"/v1/verification/0x{REQUEST_HASH.hex()}")
        assert body["verified"] is True and body["certificate"]["request"]["messages"]

        def other_model(status: RequestStatus) -> None:
            swap_chat(status)
            status.certificate.request.model_id = b"\x07" * 32

        intake.edit_certified = other_model
        status, body = raw(gateway, "GET", f"/v1/verification/0x{REQUEST_HASH.hex()}")
        shown = body["certificate"]
        assert not shown["request"].get("messages") and not shown.get("output_text")
    finally:
        gateway.stop()


def test_a_streamed_chat_sends_states_then_the_output_then_the_certificate(server: GatewayServer) -> None:
    stream = client_for(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "fox?"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == "chatcmpl-" + REQUEST_HASH.hex() for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    states = [(c.model_extra or {}).get("verification", {}).get("state") for c in chunks]
    assert [s for s in states if s] == ["RECEIVED", "GENERATING", "VERIFYING", "ACCEPTED", "BATCHED", "CERTIFIED"]
    first_text = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    assert states[first_text - 1] == "VERIFYING"  # nothing before the quorum accepted it
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == OUTPUT_TEXT
    final, usage = chunks[-2:]
    assert final.choices[0].finish_reason == "length"
    assert (final.model_extra or {})["verification"]["certificate"]["tx_hash"]
    assert not usage.choices and usage.usage is not None and usage.usage.completion_tokens == 5


@pytest.mark.parametrize("stream", [False, True])
def test_an_output_ended_by_its_last_allowed_token_finished_by_stop(stream: bool) -> None:
    """End of sequence as the max_tokens-th token: the model stopped (OpenAI says ``stop``); the same
    length without it was cut (``length``)."""
    for ids, expected in (([5, 6, EOS_ID], "stop"), ([5, 6, 7], "length")):
        intake = FakeIntake(ids=ids)
        server = start(intake)
        try:
            chat = client_for(server).chat.completions
            question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "fox?"}]
            if stream:
                chunks = list(chat.create(model=MODEL, messages=question, max_tokens=3, stream=True))
                finish = chunks[-1].choices[0].finish_reason
            else:
                finish = chat.create(model=MODEL, messages=question, max_tokens=3).choices[0].finish_reason
        finally:
            server.stop()
        assert finish == expected, ids


def test_a_streamed_completion(server: GatewayServer) -> None:
    chunks = list(client_for(server).completions.create(model=MODEL, prompt="fox", max_tokens=9, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == OUTPUT_TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert (chunks[-1].model_extra or {})["verification"]["state"] == "CERTIFIED"


def test_errors_come_in_openais_format(server: GatewayServer, intake: FakeIntake) -> None:
    client = client_for(server)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found" and not_found.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=2)
    assert bad.value.code == "unsupported_parameter" and bad.value.param == "n"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], logprobs=True)
    assert bad.value.param == "logprobs"
    assert not intake.submitted


def test_raw_http_errors(server: GatewayServer) -> None:
    status, body = raw(server, "POST", "/v1/chat/completions", b"{not json", **{"Content-Type": "application/json"})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = raw(server, "GET", "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "unknown_url"
    status, body = raw(server, "GET", "/v1/chat/completions")
    assert status == 405
    status, body = raw(server, "DELETE", "/v1/models")
    assert status == 405
    status, body = raw(server, "GET", "/health")
    assert (status, body) == (200, {"status": "ok"})


def test_hostile_bodies_get_a_400_and_the_gateway_lives_on(server: GatewayServer) -> None:
    """JSON nested past the limit (100,000 levels used to segfault the process: the C parser recursed
    past the thread's stack under py_ecc's recursion limit), a lone surrogate, a non-ASCII length."""
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        status, body = raw(server, "POST", "/v1/chat/completions", b"[" * depth + b"]" * depth)
        assert status == 400 and "nests deeper" in body["error"]["message"]
    nested_ok = {"model": MODEL, "messages": [{"role": "user", "content": "[" * 10_000}]}  # brackets in a string
    status, _ = raw(server, "POST", "/v1/chat/completions", json.dumps(nested_ok).encode())
    assert status == 200
    lone = b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800"}]}' % MODEL.encode()
    status, body = raw(server, "POST", "/v1/chat/completions", lone)
    assert status == 400 and "surrogate" in body["error"]["message"]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Content-Length", "\xb2")  # "²": str.isdigit() says yes, int() says no
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400 and "Content-Length" in json.loads(response.read())["error"]["message"]
    connection.close()
    assert raw(server, "GET", "/health")[0] == 200


def test_a_body_over_the_limit_is_refused_and_the_connection_stays_usable() -> None:
    gateway = start(FakeIntake(), max_body_bytes=2048)
    try:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 4096}]}).encode()
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 413 and json.loads(response.read())["error"]["code"] == "request_too_large"
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        gateway.stop()


def test_the_verification_endpoint(server: GatewayServer) -> None:
    status, body = raw(server, "GET", "/v1/verification/0x" + REQUEST_HASH.hex())
    assert status == 200 and body["object"] == "verification" and body["state"] == "CERTIFIED"
    assert body["certificate"]["request_hash"]
    status, body = raw(server, "GET", "/v1/verification/0x" + "00" * 32)
    assert status == 404
    status, body = raw(server, "GET", "/v1/verification/0x1234")
    assert status == 400


def test_a_failed_request_is_a_502_or_an_error_event() -> None:
    gateway = start(failing_intake())
    try:
        client = client_for(gateway)
        with pytest.raises(openai.InternalServerError) as failed:
            client.completions.create(model=MODEL, prompt="x")
        assert failed.value.status_code == 502 and "40.00%" in failed.value.message
        stream = client.completions.create(model=MODEL, prompt="x", stream=True)
        with pytest.raises(openai.APIError, match=r"40\.00%"):
            list(stream)
    finally:
        gateway.stop()


def test_aggregator_errors_map_to_statuses() -> None:
    intake = FakeIntake(submit_error=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    gateway = start(intake)
    try:
        with pytest.raises(openai.InternalServerError) as unavailable:
            client_for(gateway).completions.create(model=MODEL, prompt="x", stream=True)
        assert unavailable.value.status_code == 503
        intake.submit_error = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be at most 512")
        with pytest.raises(openai.BadRequestError, match="at most 512"):
            client_for(gateway).completions.create(model=MODEL, prompt="x", max_tokens=600)
    finally:
        gateway.stop()


@pytest.fixture
def quick_submit_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_service, "SUBMIT_RETRY_DELAYS_SECONDS", (0.0, 0.0))


@pytest.mark.usefixtures("quick_submit_retries")
def test_a_submit_whose_reply_was_lost_is_sent_again_as_the_same_request() -> None:
    """A Submit can fail UNAVAILABLE after the aggregator took the request: the gateway sends the
    same message again (the same nonce: the same request), not a new one."""
    intake = FakeIntake(lost_replies=1)
    gateway = start(intake)
    try:
        assert client_for(gateway).completions.create(model=MODEL, prompt="x").choices[0].text == OUTPUT_TEXT
    finally:
        gateway.stop()
    assert len(intake.submitted) == 2 and intake.submitted[0] == intake.submitted[1]


@pytest.mark.usefixtures("quick_submit_retries")
def test_a_submit_past_its_deadline_is_not_retried_by_the_sdk_with_a_new_nonce() -> None:
    """A Submit past its deadline was most likely taken: the openai SDK's two retries would each draw
    a new nonce (three paid inferences): the 504 says not to retry, and how to retry safely."""
    intake = FakeIntake(lost_replies=99, lost_reply_code=grpc.StatusCode.DEADLINE_EXCEEDED)
    gateway = start(intake)
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="unused").completions.create(
                model=MODEL, prompt="x"
            )  # the SDK's default two retries
        assert failed.value.status_code == 504 and failed.value.response.headers["x-should-retry"] == "false"
        assert "Idempotency-Key" in failed.value.message and len(intake.submitted) == 1
    finally:
        gateway.stop()


@pytest.mark.usefixtures("quick_submit_retries")
def test_an_aggregator_unavailable_throughout_is_retriable() -> None:
    """UNAVAILABLE is also a refusal before anything was stored (a standby during a failover, a refused
    connection): after the gateway's own tries of the same request the 503 stays retriable (a review
    of the first fix, which told the SDKs not to retry through a failover)."""
    intake = FakeIntake(lost_replies=99)
    gateway = start(intake)
    try:
        with pytest.raises(openai.InternalServerError) as failed:
            client_for(gateway).completions.create(model=MODEL, prompt="x")
        assert failed.value.status_code == 503 and "x-should-retry" not in failed.value.response.headers
        assert len(intake.submitted) == 3 and len({s["nonce"] for s in intake.submitted}) == 1
    finally:
        gateway.stop()


def test_api_keys_are_checked() -> None:
    gateway = start(FakeIntake(), api_keys=(KEY, "other"))
    try:
        with pytest.raises(openai.AuthenticationError) as denied:
            client_for(gateway, "sk-wrong").models.list()
        assert denied.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client_for(gateway, "sk-wrong").completions.create(model=MODEL, prompt="x")
        assert client_for(gateway, KEY).completions.create(model=MODEL, prompt="x").choices[0].text == OUTPUT_TEXT
        assert raw(gateway, "GET", "/health")[0] == 200
    finally:
        gateway.stop()


def test_a_connection_stays_usable_after_a_refused_body() -> None:
    gateway = start(FakeIntake(), api_keys=(KEY,))
    try:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.request("POST", "/v1/completions", body=json.dumps({"model": MODEL, "prompt": "x"}))
        response = connection.getresponse()
        assert response.status == 401 and response.getheader("WWW-Authenticate") == "Bearer"
        response.read()
        connection.request("GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert json.loads(connection.getresponse().read())["data"][0]["id"] == MODEL
        connection.close()
    finally:
        gateway.stop()


def test_is_authorized() -> None:
    assert is_authorized(None, ())
    assert is_authorized("Bearer k", ("k",)) and is_authorized("bearer k", ("j", "k"))
    assert not is_authorized(None, ("k",)) and not is_authorized("Bearer ", ("k",))
    assert not is_authorized("Basic k", ("k",)) and not is_authorized("Bearer kk", ("k",))


def test_config_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVS_GATEWAY_API_KEYS", " a, b ,,")
    monkeypatch.setenv("AVS_GATEWAY_LISTEN", "0.0.0.0:9000")
    config = load_config(requester=REQUESTER.upper().replace("0X", "0x"), model_dirs=MODEL_DIRS, listen=None)
    assert isinstance(config, GatewayConfig) and config.get_api_keys() == ("a", "b")
    assert config.listen == "0.0.0.0:9000" and config.requester.startswith("0x11")
    assert "a, b" not in repr(config)  # the keys are secrets
    with pytest.raises(ValueError, match="requester"):
        load_config(requester="0x1234", model_dirs=MODEL_DIRS)
    with pytest.raises(ValueError, match="listen"):
        load_config(requester=REQUESTER, model_dirs=MODEL_DIRS, listen="nowhere")
    with pytest.raises(ValueError, match="model_dirs: Field required"):
        load_config(requester=REQUESTER)
    monkeypatch.setenv("AVS_GATEWAY_MODEL_DIRS", '["a", "b"]')
    assert [str(d) for d in load_config(requester=REQUESTER).model_dirs] == ["a", "b"]
    with pytest.raises(ValueError, match="rpc_url needs deployment"):  # verifyLeaf on which deployment?
        load_config(requester=REQUESTER, rpc_url="http://127.0.0.1:8545")
    monkeypatch.setenv("AVS_GATEWAY_RPC_URL", "https://rpc.example.invalid/v3/SECRET-KEY")
    config = load_config(requester=REQUESTER, deployment="deployment.json")
    assert config.rpc_url is not None and "SECRET-KEY" not in repr(config)  # a provider URL holds a key


@pytest.mark.parametrize("keys", ["", " ", ",", " , ,"])
def test_api_keys_set_but_blank_are_refused_not_read_as_no_authentication(
    monkeypatch: pytest.MonkeyPatch, keys: str
) -> None:
    monkeypatch.setenv("AVS_GATEWAY_API_KEYS", keys)
    with pytest.raises(ValueError, match=r"api_keys: .*holds no key"):
        load_config(requester=REQUESTER, model_dirs=MODEL_DIRS)
    monkeypatch.delenv("AVS_GATEWAY_API_KEYS")
    assert (
        load_config(requester=REQUESTER, model_dirs=MODEL_DIRS).get_api_keys() == ()
    )  # unset: no authentication, on purpose


@pytest.mark.parametrize("timeout", ["inf", "nan", "1e9"])
def test_an_endless_request_timeout_is_refused(timeout: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--request-timeout inf`` held a slot for as long as the aggregator never answered."""
    args = ["--requester", REQUESTER, "--listen", "127.0.0.1:0", "--request-timeout", timeout]
    assert cli.main([*args, *(a for d in MODEL_DIRS for a in ("--model-dir", d))]) == 2
    assert "request_timeout_seconds" in capsys.readouterr().err


def test_the_binary_refuses_a_bad_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--requester", "0x1234", "--listen", "127.0.0.1:0"]) == 2
    assert "requester" in capsys.readouterr().err


def _nesting(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_nesting(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_nesting(v) for v in value.values()), default=0)
    return 0


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@given(_json_values, st.booleans())
def test_json_depth_counts_nesting_and_ignores_brackets_in_strings(value: Any, ascii_only: bool) -> None:
    assert compute_json_depth(json.dumps(value, ensure_ascii=ascii_only).encode()) == _nesting(value)


ADVERSARIAL_BODIES = [
    (b'"' + b'\\"' * 500_000, 0),  # a string that never closes, all escaped quotes
    (b'"\\' * 500_000, 0),
    (b"[" * 50 + b'"a\\"[[[" , "x"' + b"]" * 50, 50),
    (b'[["' + b"[" * 500_000, 2),  # brackets in an unterminated string do not count
]


def test_json_depth_is_linear_on_adversarial_strings() -> None:
    """A backtracking string pattern took O(n^2) on these (about 50 CPU-minutes for a 1 MiB body),
    holding the GIL: computed in a child process that must finish well inside its timeout (it takes
    milliseconds)."""
    script = (
        "import sys; from avs.gateway.server import compute_json_depth; from tests.gateway.test_server import "
        "ADVERSARIAL_BODIES as B; print([compute_json_depth(b) for b, _ in B])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == str([depth for _, depth in ADVERSARIAL_BODIES])


def exchange(server: GatewayServer, data: bytes) -> bytes:
    """Everything the gateway answers ``data`` sent raw on one connection, until it closes it."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    connection.sendall(data)
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    connection.close()
    return answer


def test_a_body_sent_with_a_get_is_not_taken_for_the_next_request(server: GatewayServer, intake: FakeIntake) -> None:
    """Bytes after a GET's head are its body, never a request of their own (smuggled past a proxy
    that reads them as the GET's body): the GET is answered and the connection closed."""
    hidden = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "smuggled"}]}).encode()
    inner = POST_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(hidden), hidden)
    answer = exchange(
        server, b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(inner), inner)
    )
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 ") == 1
    assert b"Connection: close" in answer
    assert intake.submitted == []


def test_a_body_sent_too_slowly_is_cut_off_and_the_gateway_lives_on(intake: FakeIntake) -> None:
    gateway = start(intake)
    gateway._http.body_timeout = 1.0
    try:
        dribbler = socket.create_connection(("127.0.0.1", gateway.port))
        dribbler.sendall(POST_HEAD + b"Content-Length: 1000\r\n\r\n{")
        started = time.monotonic()
        with pytest.raises(OSError):  # a byte every 0.2 s, inside the 60 s socket timeout, for 10 s
            while time.monotonic() - started < 10:
                dribbler.sendall(b" ")
                time.sleep(0.2)
        assert time.monotonic() - started < 4
        dribbler.close()
        assert raw(gateway, "GET", "/health")[0] == 200
    finally:
        gateway.stop()


def test_an_openai_client_with_its_default_retries_submits_a_failed_request_once() -> None:
    """A 502 (or 504) comes after the request was submitted: the SDK's default retries would submit
    it again, another inference. The gateway's ``x-should-retry: false`` stops them."""
    intake = failing_intake()
    gateway = start(intake)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="unused")  # 2 retries
        with pytest.raises(openai.InternalServerError) as failed:
            client.completions.create(model=MODEL, prompt="x")
        assert failed.value.status_code == 502
        assert failed.value.response.headers["x-should-retry"] == "false"
        assert len(intake.submitted) == 1
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding: Chunked \r\n",
        b"Content-Length: 2\r\n",  # a second Content-Length
    ],
)
def test_a_post_framed_two_ways_is_refused_and_its_connection_closed(
    server: GatewayServer, intake: FakeIntake, framing: bytes
) -> None:
    """A proxy and the gateway must not disagree on where a body ends: any Transfer-Encoding, or two
    Content-Lengths, is refused, and nothing after the head is read as another request."""
    hidden = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "smuggled"}]}).encode()
    inner = POST_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(hidden), hidden)
    body = b"{}" + inner
    head = POST_HEAD + b"Content-Length: %d\r\n%s\r\n" % (len(body), framing)
    answer = exchange(server, head + body)
    assert answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.1 ") == 1
    assert intake.submitted == []


@pytest.mark.parametrize(
    ("request_line", "framing"),
    [
        # a Content-Length that is no plain number (a proxy may take "71, 71" as 71): read as no body
        (b"GET /health", b"Content-Length: %d, %d\r\n"),
        (b"POST /nothing", b"Content-Length: %d, %d\r\n"),
        (b"PUT /v1/models", b"Content-Length: +%d\r\n"),  # refused before its body is read: 405
        # whitespace before a colon: the standard library stopped reading headers there, silently
        (b"GET /health", b"X-Pad : 1\r\nContent-Length: %d\r\n"),
        (b"POST /v1/chat/completions", b"X-Pad : 1\r\nContent-Length: %d\r\n"),
    ],
)
def test_a_body_whose_end_is_unclear_is_never_read_as_the_next_request(
    server: GatewayServer, intake: FakeIntake, request_line: bytes, framing: bytes
) -> None:
    """Found in review: both were read as a body of 0 bytes on a kept-alive connection, so the body
    was served as a second request (two answers to what a proxy sees as one request)."""
    hidden = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "smuggled"}]}).encode()
    inner = POST_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(hidden), hidden)
    lengths = (len(inner),) * framing.count(b"%d")
    head = request_line + b" HTTP/1.1\r\nHost: localhost\r\n" + framing % lengths + b"\r\n"
    answer = exchange(server, head + inner)
    assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in answer, answer[:300]
    assert intake.submitted == []


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/nothing"), ("PUT", "/v1/models")])
def test_a_refused_request_with_a_slow_body_is_cut_off_too(intake: FakeIntake, method: str, path: str) -> None:
    """A body drained after an error (404, 405, 401) is read under the same deadline as one that is used."""
    gateway = start(intake)
    gateway._http.body_timeout = 1.0
    try:
        dribbler = socket.create_connection(("127.0.0.1", gateway.port))
        dribbler.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n".encode())
        started = time.monotonic()
        with pytest.raises(OSError):  # a byte every 0.2 s for up to 10 s
            while time.monotonic() - started < 10:
                dribbler.sendall(b" ")
                time.sleep(0.2)
        assert time.monotonic() - started < 4
        dribbler.close()
    finally:
        gateway.stop()


def test_a_body_in_another_encoding_than_utf8_is_refused_before_parsing(server: GatewayServer) -> None:
    """json.loads(bytes) also reads UTF-16, whose bytes the depth check cannot read: U+4E22's low byte
    is a quote, so 100,000 levels once passed as depth 1 and segfaulted the process."""
    hidden = ('["\u4e22",' + "[" * 100_000).encode("utf-16-le")  # happens to be valid UTF-8 (NUL bytes)
    assert raw(server, "POST", "/v1/chat/completions", hidden)[0] == 400  # parsed as text: not JSON
    utf16 = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode("utf-16")
    status, body = raw(server, "POST", "/v1/chat/completions", utf16)
    assert status == 400 and "not UTF-8" in body["error"]["message"]
    assert raw(server, "GET", "/health")[0] == 200


class UncertifiedIntake(FakeIntake):
    def wait(self, request_hash: bytes, timeout: float, on_progress: Any, cancellation: Any = None) -> Any:
        raise DeadlineExceededError(f"the request was not certified within {timeout} s")


def test_a_certification_timeout_is_a_504_not_a_dropped_connection() -> None:
    """DeadlineExceededError is a TimeoutError, once taken for a stalled client: the connection was
    dropped with no answer and the openai SDK submitted the request twice more."""
    intake = UncertifiedIntake()
    gateway = start(intake, request_timeout_seconds=0.5)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="unused")  # 2 retries
        with pytest.raises(openai.InternalServerError) as timed_out:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert timed_out.value.status_code == 504 and timed_out.value.response.headers["x-should-retry"] == "false"
        assert len(intake.submitted) == 1
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
        with pytest.raises(openai.APIError, match="not certified within"):
            list(stream)
    finally:
        gateway.stop()


def test_refusals_of_the_http_layer_itself_are_json_too(server: GatewayServer) -> None:
    for method, path, allow in (
        ("HEAD", "/v1/models", "GET"),
        ("OPTIONS", "/v1/models", "GET"),
        ("GET", "/v1/completions", "POST"),
    ):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request(method, path)
        response = connection.getresponse()
        assert response.status == 405 and response.getheader("Content-Type") == "application/json"
        assert response.getheader("Allow") == allow
        body = response.read()
        assert body == b"" if method == "HEAD" else json.loads(body)["error"]["type"] == "invalid_request_error"
        connection.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"application/json" in head
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert raw(server, "GET", "/health")[0] == 200


@pytest.mark.parametrize(
    ("line", "status"),
    [(b"GARBAGE", 400), (b"GET / HTTP/2.0", 505), (b"GET /" + b"a" * 70_000 + b" HTTP/1.1", 414)],
)
def test_a_refused_request_line_is_answered_in_json(server: GatewayServer, line: bytes, status: int) -> None:
    """The standard library refuses these before the request has a path: logging the refusal read
    the missing path and dropped the connection without a reply."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(line + b"\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode() and b"application/json" in head, reply[:200]
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


class BusyAfterSubmitIntake(FakeIntake):
    """Submitted, then the aggregator answers RESOURCE_EXHAUSTED (429 before the request was sent)."""

    def wait(self, request_hash: bytes, timeout: float, on_progress: Any, cancellation: Any = None) -> Any:
        raise OverloadedError("the aggregator is serving its limit; retry later")


@pytest.mark.parametrize(
    ("intake", "status", "code"),
    [
        (BusyAfterSubmitIntake(), 429, "aggregator_busy"),
        (FakeIntake(fail_with=UntrustedAnswerError("the aggregator certified another request")), 502, None),
    ],
)
def test_any_error_after_the_submission_says_where_to_follow_it_and_not_to_retry(
    intake: FakeIntake, status: int, code: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDKs retry a 429 by default, and each retry would submit (and pay for) a new inference; an
    aggregator that certified another request than the one sent is its fault (502), never the user's."""
    gateway = start(intake)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="unused")  # 2 retries
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == status
        assert refused.value.response.headers["x-should-retry"] == "false"
        error = refused.value.body
        assert isinstance(error, dict) and f"follow it at /v1/verification/0x{REQUEST_HASH.hex()}" in error["message"]
        assert error["code"] == (code or "certificate_mismatch")
        assert len(intake.submitted) == 1
    finally:
        gateway.stop()
    if status == 502:
        assert any(r.levelname == "ERROR" and "request failed" in r.getMessage() for r in caplog.records)


class HeldIntake(FakeIntake):
    """``wait`` holds until ``release`` is set (then certifies) or its wait is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.cancelled: list[bytes] = []

    def wait(self, request_hash: bytes, timeout: float, on_progress: Any, cancellation: Any = None) -> Any:
        if on_progress is not None:
            on_progress(make_status(ag.REQUEST_STATE_GENERATING))
        while not self.release.wait(0.02):
            if cancellation is not None and cancellation.cancelled:
                self.cancelled.append(request_hash)
                cancellation.raise_if_cancelled(request_hash)
        return super().wait(request_hash, timeout, on_progress)


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_frees_its_slot_at_once(stream: bool, caplog: pytest.LogCaptureFixture) -> None:
    """A client that gave up (its own timeout, a killed process) held its thread and connection until
    the request ended, up to 540 s; now its wait is cancelled when its connection closes (the request
    goes on at the aggregator) and its slot serves the next client."""
    caplog.set_level(logging.INFO, logger="avs.gateway")
    intake = HeldIntake()
    gateway = start(intake, max_in_flight=1)
    try:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            head = POST_HEAD.decode() + f"Content-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body)
            wait_for(lambda: len(intake.submitted) == 1)
        wait_for(lambda: intake.cancelled == [REQUEST_HASH], timeout=3)
        wait_for(lambda: any("went away" in r.getMessage() for r in caplog.records))
        intake.release.set()
        answer = client_for(gateway).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == OUTPUT_TEXT  # the one slot was free again
    finally:
        intake.release.set()
        gateway.stop()


def test_completions_in_flight_are_capped_per_key_and_in_all() -> None:
    """One API key could take every connection (and /health with them); a request over a cap is a 429
    before anything is submitted, so the SDK's retry after Retry-After is safe."""
    keys = (KEY, "other", "third")
    intake = HeldIntake()
    gateway = start(intake, api_keys=keys, max_in_flight=2, max_in_flight_per_key=1)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    pool = futures.ThreadPoolExecutor(2)
    try:
        held = []
        caps = ((KEY, KEY, "you have 1 completions in flight"), ("other", "third", "following 2"))
        for holder, refused_key, cap in caps:
            create = client_for(gateway, holder).chat.completions.create
            held.append(pool.submit(create, model=MODEL, messages=messages))
            wait_for(lambda: len(intake.submitted) == len(held))
            with pytest.raises(openai.RateLimitError, match=cap) as refused:
                client_for(gateway, refused_key).chat.completions.create(model=MODEL, messages=messages)
            assert refused.value.code == "too_many_requests" and refused.value.response.headers["Retry-After"] == "1"
        assert len(intake.submitted) == 2  # nothing submitted for the refused ones
        assert raw(gateway, "GET", "/health")[0] == 200
        intake.release.set()
        assert [f.result(10).choices[0].message.content for f in held] == [OUTPUT_TEXT] * 2
        client_for(gateway, KEY).chat.completions.create(model=MODEL, messages=messages)  # its slot is back
    finally:
        intake.release.set()
        pool.shutdown()
        gateway.stop()


def test_without_api_keys_only_the_total_cap_applies() -> None:
    """Behind a proxy every client has the proxy's address: a cap per address was the gateway's."""
    from avs.gateway.admission import Admission
    from avs.gateway.errors import TooManyRequestsError

    admission = Admission(max_in_flight=3, max_in_flight_per_caller=1)
    full = pytest.raises(TooManyRequestsError, match="following 3 completions")
    with admission.admit(""), admission.admit(""), admission.admit(None), full, admission.admit(""):
        pass
    over = pytest.raises(TooManyRequestsError, match="you have 1")
    with admission.admit("key 0"), over, admission.admit("key 0"):
        pass
    assert admission.in_flight == 0


def test_completions_started_per_minute_are_capped_per_key(intake: FakeIntake) -> None:
    """Each completion is a paid inference: over --rate-limit-per-minute a key gets a 429 (nothing
    submitted) whose Retry-After says when its next one is allowed; another key is not held back."""
    gateway = start(intake, api_keys=(KEY, "other"), rate_limit_per_minute=2)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    try:
        for _ in range(2):
            client_for(gateway, KEY).chat.completions.create(model=MODEL, messages=messages)
        with pytest.raises(openai.RateLimitError, match="per minute") as refused:
            client_for(gateway, KEY).chat.completions.create(model=MODEL, messages=messages)
        assert refused.value.code == "too_many_requests"
        assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 30  # a token every 30 s
        assert len(intake.submitted) == 2
        client_for(gateway, "other").chat.completions.create(model=MODEL, messages=messages)
    finally:
        gateway.stop()


def test_a_retry_under_its_idempotency_key_is_not_charged_again(intake: FakeIntake) -> None:
    """The same body under the same Idempotency-Key is the request already paid for (its retry after
    a dropped connection follows it): no second token. Another body under that key, or the same body
    under another key, is another inference and is charged."""
    gateway = start(intake, api_keys=(KEY,), rate_limit_per_minute=1)
    client = client_for(gateway, KEY)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    try:
        for _ in range(3):
            client.chat.completions.create(model=MODEL, messages=messages, extra_headers={"Idempotency-Key": "k1"})
        assert len({r["nonce"] for r in intake.submitted}) == 1  # one request, sent three times
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=5, extra_headers={"Idempotency-Key": "k1"}
            )
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MODEL, messages=messages, extra_headers={"Idempotency-Key": "k2"})
    finally:
        gateway.stop()


def test_charged_requests_are_remembered_for_an_hour_and_boundedly() -> None:
    from avs.gateway import admission as module
    from avs.gateway.errors import TooManyRequestsError

    now = [0.0]
    admission = module.Admission(max_in_flight=10, max_in_flight_per_caller=10, rate_per_minute=1, clock=lambda: now[0])
    with admission.admit("key 0", b"r1"):
        pass
    with admission.admit("key 0", b"r1"):  # a repeat, whatever the bucket holds
        pass
    with pytest.raises(TooManyRequestsError), admission.admit("key 0", b"r2"):
        pass
    with pytest.raises(TooManyRequestsError), admission.admit("key 0"):  # no key: never a repeat
        pass
    now[0] = module.REPEAT_MEMORY_SECONDS + 1  # forgotten, and the bucket is full again
    with admission.admit("key 0", b"r2"):
        pass
    with pytest.raises(TooManyRequestsError), admission.admit("key 0", b"r1"):
        pass
    limiter = module.RateLimiter(1_000_000)
    for i in range(module.MAX_REMEMBERED_REQUESTS + 1):
        limiter.take("", i.to_bytes(4, "big"))
    assert not limiter.is_repeat((0).to_bytes(4, "big")) and limiter.is_repeat((1).to_bytes(4, "big"))


def test_the_rate_limit_refills_over_time() -> None:
    from avs.gateway.admission import Admission
    from avs.gateway.errors import TooManyRequestsError

    now = [0.0]
    admission = Admission(max_in_flight=10, max_in_flight_per_caller=10, rate_per_minute=6, clock=lambda: now[0])
    for _ in range(6):  # a minute's worth at once
        with admission.admit("key 0"):
            pass
    with pytest.raises(TooManyRequestsError) as refused, admission.admit("key 0"):
        pass
    assert refused.value.retry_after == 10  # one every 10 s
    now[0] = 9.0
    with pytest.raises(TooManyRequestsError) as refused, admission.admit("key 0"):
        pass
    assert refused.value.retry_after == 1
    now[0] = 10.0
    with admission.admit("key 0"):
        pass
    now[0] = 1_000.0  # idle for long: back to a minute's worth, no more
    for _ in range(6):
        with admission.admit("key 0"):
            pass
    with pytest.raises(TooManyRequestsError), admission.admit("key 0"):
        pass


def test_the_disconnect_watcher_outlives_a_failing_callback_and_sockets_with_timeouts() -> None:
    """The watcher peeks on its own non-blocking copy of each socket (a handler's socket has a
    timeout, which a peek waited out, blocking every other watch), and one failure does not end it."""
    from avs.gateway.disconnects import DisconnectWatcher

    watcher = DisconnectWatcher()
    gone: list[str] = []

    def fail() -> None:
        gone.append("first")
        raise RuntimeError("a callback that fails")

    try:
        for name, callback in (("first", fail), ("second", lambda: gone.append("second"))):
            ours, theirs = socket.socketpair()
            ours.settimeout(30)
            with ours, watcher.watching(ours, callback):
                theirs.close()
                wait_for(lambda name=name: name in gone, timeout=3)
        ours, theirs = socket.socketpair()
        ours.settimeout(30)
        with ours, theirs, watcher.watching(ours, lambda: gone.append("third")):
            theirs.sendall(b"GET /health HTTP/1.1\r\n")  # bytes, not a close: left for the handler
            time.sleep(0.5)
            assert ours.recv(64).startswith(b"GET")
    finally:
        started = time.monotonic()
        watcher.close()
    assert gone == ["first", "second"] and time.monotonic() - started < 2


def test_api_keys_may_come_from_a_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "api_keys"
    keys.write_text("alpha,beta\n")
    monkeypatch.delenv("AVS_GATEWAY_API_KEYS", raising=False)
    monkeypatch.setenv("AVS_GATEWAY_API_KEYS_FILE", str(keys))
    assert load_config(requester=REQUESTER, model_dirs=MODEL_DIRS).get_api_keys() == ("alpha", "beta")


class SlowIntake(FakeIntake):
    """Each status change comes ``pause`` seconds after the last (a long generation)."""

    pause: float = 0.6

    def wait(self, request_hash: bytes, timeout: float, on_progress: Any, cancellation: Any = None) -> Any:
        def slowly(status: Any) -> None:
            time.sleep(self.pause)
            if on_progress is not None:
                on_progress(status)

        return super().wait(request_hash, timeout, slowly, cancellation)


def test_a_quiet_stream_gets_keep_alive_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy cuts a connection that sends nothing for its read timeout (nginx: 60 s) while a long
    output is generated: a quiet stream sends an SSE comment, which clients skip."""
    import avs.gateway.server as server_module

    monkeypatch.setattr(server_module, "SSE_KEEPALIVE_SECONDS", 0.2)
    gateway = start(SlowIntake())
    try:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "fox?"}], "stream": True})
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body.encode()
            )
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, events = reply.partition(b"\r\n\r\n")
        assert b"X-Accel-Buffering: no" in head
        assert b"\n\n: keep-alive\n\n" in events and events.endswith(b"data: [DONE]\n\n")
        stream = client_for(gateway).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "fox?"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == OUTPUT_TEXT  # the comments are skipped by the client
    finally:
        gateway.stop()


APP = "https://app.example"
CHAT_BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()


def http_exchange(
    server: GatewayServer, method: str, path: str, body: bytes | None = None, /, **headers: str
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on its own connection: the status, the headers and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def preflight(server: GatewayServer, path: str, origin: str, asked: str = "authorization, content-type") -> Any:
    return http_exchange(
        server,
        "OPTIONS",
        path,
        Origin=origin,
        **{"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked},
    )


def test_cors_lets_a_listed_page_call_with_its_key(intake: FakeIntake) -> None:
    gateway = start(intake, api_keys=(KEY,), cors_origins=[APP, "http://localhost:3000"])
    try:
        # The preflight carries no key; the openai SDK's own headers are allowed too.
        status, headers, body = preflight(gateway, "/v1/chat/completions", APP, "Authorization, x-stainless-os")
        assert (status, body) == (204, b"")
        assert headers["Access-Control-Allow-Origin"] == APP and headers["Vary"] == "Origin"
        assert headers["Access-Control-Allow-Methods"] == "POST"
        assert headers["Access-Control-Allow-Headers"] == "Authorization, x-stainless-os"
        assert headers["Access-Control-Max-Age"] == "600"
        assert preflight(gateway, "/v1/models", "http://LOCALHOST:3000")[1]["Access-Control-Allow-Methods"] == "GET"

        auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", "Origin": APP}
        status, headers, body = http_exchange(gateway, "POST", "/v1/chat/completions", CHAT_BODY, **auth)
        assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == OUTPUT_TEXT
        assert headers["Access-Control-Allow-Origin"] == APP
        assert "x-should-retry" in headers["Access-Control-Expose-Headers"]

        streamed = json.dumps({**json.loads(CHAT_BODY), "stream": True}).encode()
        status, headers, body = http_exchange(gateway, "POST", "/v1/chat/completions", streamed, **auth)
        assert status == 200 and headers["Content-Type"] == "text/event-stream" and body.endswith(b"[DONE]\n\n")
        assert headers["Access-Control-Allow-Origin"] == APP

        # An error reaches the page too (it can show why), and a key is still needed.
        status, headers, body = http_exchange(gateway, "GET", "/v1/models", Origin=APP)
        assert status == 401 and headers["Access-Control-Allow-Origin"] == APP
        assert json.loads(body)["error"]["code"] == "invalid_api_key"
    finally:
        gateway.stop()


def test_cors_refuses_other_pages_and_never_skips_the_key(intake: FakeIntake) -> None:
    gateway = start(intake, api_keys=(KEY,), cors_origins=[APP])
    try:
        status, headers, body = preflight(gateway, "/v1/chat/completions", "https://evil.example")
        assert status == 403 and json.loads(body)["error"]["code"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in headers
        status, headers, _ = http_exchange(gateway, "GET", "/health", Origin="https://app.example.evil")
        assert status == 200 and "Access-Control-Allow-Origin" not in headers and headers["Vary"] == "Origin"

        assert preflight(gateway, "/v1/nowhere", APP)[0] == 404
        assert preflight(gateway, "/v1/chat/completions", APP, "authorization\r\n\tx: y")[0] == 400
        assert preflight(gateway, "/v1/chat/completions", APP, "a" * 5000)[0] == 400
        # The preflight's headers on another method are no way around the key.
        sneaky = {"Origin": APP, "Access-Control-Request-Method": "GET"}
        assert http_exchange(gateway, "GET", "/v1/models", **sneaky)[0] == 401
        # An OPTIONS that is no preflight is refused as before.
        key = {"Authorization": f"Bearer {KEY}"}
        status, headers, _ = http_exchange(gateway, "OPTIONS", "/v1/chat/completions", Origin=APP, **key)
        assert status == 405 and headers["Allow"] == "POST"
    finally:
        gateway.stop()


def test_cors_any_origin_and_none_configured(intake: FakeIntake, server: GatewayServer) -> None:
    with pytest.raises(ValueError, match=r"cors_origins \* needs API keys"):
        start(intake, cors_origins=["*"])
    gateway = start(intake, api_keys=(KEY,), cors_origins=["*"])
    try:
        status, headers, _ = preflight(gateway, "/v1/completions", "https://anyone.example")
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "*" and headers["Vary"] == "Origin"
        key = {"Authorization": f"Bearer {KEY}"}
        status, headers, _ = http_exchange(gateway, "GET", "/v1/models", Origin="null", **key)  # a sandboxed page
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    finally:
        gateway.stop()
    # Not configured: no CORS header anywhere, and a preflight is a 405 (the browser refuses the call).
    status, headers, _ = preflight(server, "/v1/chat/completions", APP)
    assert status == 405 and "Access-Control-Allow-Origin" not in headers
    status, headers, _ = http_exchange(server, "GET", "/v1/models", Origin=APP)
    assert status == 200 and "Access-Control-Allow-Origin" not in headers and "Vary" not in headers


@pytest.mark.parametrize("origin", ["https://app.example/", "app.example", "https://app.example/x", "ftp://a", ""])
def test_cors_origins_must_be_origins(origin: str) -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        load_config(requester=REQUESTER, model_dirs=MODEL_DIRS, cors_origins=[origin])


def test_a_post_must_declare_json(server: GatewayServer) -> None:
    """A page's form or text/plain POST needs no CORS preflight: a body not declared JSON is refused
    (415) before it is read as a request, so no web page can start a paid completion that way."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    for media_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        status, answer = raw(server, "POST", "/v1/chat/completions", body, **{"Content-Type": media_type})
        assert status == 415 and answer["error"]["code"] == "unsupported_media_type", media_type
    status, _ = raw(server, "POST", "/v1/chat/completions", body, **{"Content-Type": "Application/JSON; charset=utf-8"})
    assert status == 200


def test_a_loopback_gateway_without_keys_answers_loopback_host_names_only(intake: FakeIntake) -> None:
    """DNS rebinding: a page points its own domain at 127.0.0.1 and reads the answers as same-origin.
    Without keys on a loopback address only localhost names are answered; with keys, or on another
    address (behind a proxy, under its public name), any Host is."""
    unkeyed = start(intake)
    keyed = start(intake, api_keys=(KEY,))
    try:
        for host in ("localhost", "localhost:8080", "127.0.0.1", "127.0.0.2:9", "[::1]:80", "LOCALHOST", "[0:0::1]"):
            assert http_exchange(unkeyed, "GET", "/health", Host=host)[0] == 200, host
        for host in ("rebind.evil.example", "rebind.evil.example:8080", "10.0.0.1", "", "127.evil.example:8080"):
            status, _, body = http_exchange(unkeyed, "GET", "/v1/models", Host=host)
            assert status == 403 and json.loads(body)["error"]["code"] == "host_not_allowed", host
        key = {"Authorization": f"Bearer {KEY}"}
        assert http_exchange(keyed, "GET", "/v1/models", Host="gateway.example", **key)[0] == 200
    finally:
        unkeyed.stop()
        keyed.stop()
    proxied = start(intake, allowed_hosts=["Gateway.Example"])  # behind a proxy that forwards Host
    try:
        assert http_exchange(proxied, "GET", "/v1/models", Host="gateway.example:443")[0] == 200
        assert http_exchange(proxied, "GET", "/v1/models", Host="other.example")[0] == 403
    finally:
        proxied.stop()


def test_a_client_gone_mid_stream_is_no_server_error(caplog: pytest.LogCaptureFixture) -> None:
    """Our write to a reset connection failed: logged as the client going away, not a 500 with a
    traceback (and no error event written to the dead socket)."""
    intake = SlowIntake()
    intake.pause = 0.3
    gateway = start(intake)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    try:
        with caplog.at_level(logging.INFO, logger="avs.gateway.server"):
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            sock.sendall(POST_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert sock.recv(300).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
            sock.close()
            wait_for(lambda: any("went away" in r.getMessage() for r in caplog.records), timeout=10)
            time.sleep(0.5)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        gateway.stop()


def is_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_a_stop_waits_for_the_completions_in_flight() -> None:
    """SIGTERM mid-completion: the answer still comes (cut off, the SDKs would retry it as a new paid
    inference); meanwhile no new completion is taken (503, nothing submitted)."""
    intake = SlowIntake()
    intake.pause = 0.3
    gateway = start(intake)
    answers: list[Any] = []
    client = client_for(gateway)
    chat: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    caller = threading.Thread(target=lambda: answers.append(client.chat.completions.create(model=MODEL, messages=chat)))
    caller.start()
    wait_for(lambda: gateway.in_flight == 1)
    stopper = threading.Thread(target=gateway.stop, args=(10.0,))
    stopper.start()
    wait_for(lambda: gateway._http.draining)
    wait_for(lambda: is_refused(gateway.port), timeout=3)  # the listening socket closed: not queued
    caller.join(timeout=10)
    stopper.join(timeout=10)
    assert answers and answers[0].choices[0].message.content == OUTPUT_TEXT
    assert len(intake.submitted) == 1


def test_a_draining_gateway_takes_no_new_completion(server: GatewayServer, intake: FakeIntake) -> None:
    server._http.draining = True
    assert raw(server, "GET", "/health") == (503, {"status": "stopping"})
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, answer = raw(server, "POST", "/v1/chat/completions", body)
    assert status == 503 and answer["error"]["code"] == "shutting_down" and intake.submitted == []
