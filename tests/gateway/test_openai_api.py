"""The pure mapping between OpenAI's formats and the AVS's, and the error mapping."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from avs.client import RequestFailedError
from avs.errors import DeadlineExceededError, ModelNotFoundError
from avs.gateway import openai_api as api
from avs.gateway.errors import (
    PayloadTooLargeError,
    RequestParameterError,
    UnknownParameterError,
    UnsupportedParameterError,
    compute_api_error,
)
from avs.gateway.openai_api import JobKind, RequestDefaults
from avs.inference.params import SamplingParams
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from tests.gateway.fakes import REQUEST_HASH, FakeRpcError, make_status

DEFAULTS = RequestDefaults(max_tokens=100, temperature=1.0, seed=77)
HI = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> api.CompletionJob:
    return api.parse_chat_request({"model": "tiny", "messages": HI, **fields}, DEFAULTS)


def test_openai_s_edge_values_of_top_p_and_seed_are_taken() -> None:
    """top_p 0 (only the most likely token) and a signed 64-bit seed, as OpenAI's API takes them."""
    assert chat(top_p=0).sampling.top_p_micro == 1
    assert chat(seed=-1).sampling.seed == 2**64 - 1
    assert chat(seed=-(2**63)).sampling.seed == 2**63
    assert chat(seed=2**64 - 1).sampling.seed == 2**64 - 1


def test_chat_parameters_map_to_the_request_units() -> None:
    job = chat(max_tokens=16, temperature=0.7, top_p=0.9, seed=5, stop="\n", stream=True)
    assert job.kind is JobKind.CHAT and job.model == "tiny" and job.stream and not job.include_usage
    assert job.sampling == SamplingParams(
        temperature_milli=700, top_p_micro=900_000, seed=5, max_tokens=16, stop_sequences=("\n",)
    )
    assert chat(stop=["a", "bc"]).sampling.stop_sequences == ("a", "bc")
    assert chat(max_completion_tokens=9).sampling.max_tokens == 9
    assert chat(max_tokens=9, max_completion_tokens=9).sampling.max_tokens == 9
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage


def test_omitted_parameters_take_the_defaults() -> None:
    sampling = chat().sampling
    assert (sampling.max_tokens, sampling.temperature_milli, sampling.seed, sampling.top_p_micro) == (
        100,
        1000,
        77,
        1_000_000,
    )
    assert chat(temperature=None, n=1, logprobs=False, user="u", tools=None).sampling == sampling


def test_messages_map_roles_and_text_parts() -> None:
    job = api.parse_chat_request(
        {
            "model": "tiny",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    "name": "",
                },
            ],
        },
        DEFAULTS,
    )
    assert [(m.role, m.content) for m in job.messages] == [("system", "be brief"), ("user", "ab")]


def test_a_named_participant_is_refused_not_dropped() -> None:
    """OpenAI puts ``name`` into the prompt; dropping it would certify another conversation."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi", "name": "alice"}]}
    with pytest.raises(UnsupportedParameterError, match=r"unsupported fields: \['name'\]"):
        api.parse_chat_request(body, DEFAULTS)


@pytest.mark.parametrize(
    ("fields", "error", "param"),
    [
        ({"n": 2}, UnsupportedParameterError, "n"),
        ({"logprobs": True}, UnsupportedParameterError, "logprobs"),
        ({"top_logprobs": 3}, UnsupportedParameterError, "top_logprobs"),
        ({"tools": [{"type": "function"}]}, UnsupportedParameterError, "tools"),
        ({"presence_penalty": 0.5}, UnsupportedParameterError, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, UnsupportedParameterError, "response_format"),
        ({"n": True}, UnsupportedParameterError, "n"),
        ({"frobnicate": 1}, UnknownParameterError, "frobnicate"),
        ({"echo": True}, UnknownParameterError, "echo"),
        ({"model": ""}, RequestParameterError, "model"),
        ({"max_tokens": 0}, RequestParameterError, "max_tokens"),
        ({"max_tokens": 1.5}, RequestParameterError, "max_tokens"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, RequestParameterError, "max_completion_tokens"),
        ({"temperature": -0.1}, RequestParameterError, "temperature"),
        ({"temperature": True}, RequestParameterError, "temperature"),
        ({"top_p": -0.1}, RequestParameterError, "top_p"),
        ({"seed": -(2**63) - 1}, RequestParameterError, "seed"),
        ({"seed": 2**64}, RequestParameterError, "seed"),
        ({"stop": ["x"] * 9}, RequestParameterError, "stop"),
        ({"stop": 3}, RequestParameterError, "stop"),
        ({"stream": "yes"}, RequestParameterError, "stream"),
        ({"messages": []}, RequestParameterError, "messages"),
        ({"messages": "hi"}, RequestParameterError, "messages"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, RequestParameterError, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, UnsupportedParameterError, "messages[0].role"),
        ({"messages": [{"role": "user", "content": None}]}, UnsupportedParameterError, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "c"}]}]},
            UnsupportedParameterError,
            "messages[0]",
        ),
        ({"messages": [{"role": "user", "content": "x", "refusal": "no"}]}, UnsupportedParameterError, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            UnsupportedParameterError,
            "messages[0].content",
        ),
    ],
)
def test_bad_or_unsupported_chat_parameters_are_named(
    fields: dict[str, Any], error: type[RequestParameterError], param: str
) -> None:
    with pytest.raises(error) as caught:
        chat(**fields)
    assert type(caught.value) is error and caught.value.param == param
    api_error = compute_api_error(caught.value)
    assert api_error.status == 400 and api_error.param == param and api_error.type == "invalid_request_error"


def test_the_body_must_be_an_object_with_messages() -> None:
    with pytest.raises(RequestParameterError):
        api.parse_chat_request([1], DEFAULTS)
    with pytest.raises(RequestParameterError) as caught:
        api.parse_chat_request({"model": "tiny"}, DEFAULTS)
    assert caught.value.code == "missing_required_parameter"


def test_a_completion_prompt_is_one_user_message() -> None:
    for prompt in ("say hi", ["say hi"]):
        job = api.parse_completion_request(
            {"model": "tiny", "prompt": prompt, "max_tokens": 3, "echo": False}, DEFAULTS
        )
        assert job.kind is JobKind.TEXT and [(m.role, m.content) for m in job.messages] == [("user", "say hi")]
        assert job.sampling.max_tokens == 3
    bad_prompts: list[object] = [["a", "b"], [1, 2, 3], None]
    for bad in bad_prompts:
        with pytest.raises(UnsupportedParameterError):
            api.parse_completion_request({"model": "tiny", "prompt": bad}, DEFAULTS)
    with pytest.raises(UnsupportedParameterError):
        api.parse_completion_request({"model": "tiny", "prompt": "x", "best_of": 2}, DEFAULTS)
    with pytest.raises(UnknownParameterError):
        api.parse_completion_request({"model": "tiny", "prompt": "x", "messages": HI}, DEFAULTS)


def test_finish_reason_and_visible_text() -> None:
    sampling = SamplingParams(max_tokens=4, stop_sequences=("\n\n", "END"))
    eos = {2}
    assert api.compute_finish_reason("abc", [7, 8, 9, 10], sampling, eos) == "length"
    assert api.compute_finish_reason("abc", [7, 8, 2], sampling, eos) == "stop"
    assert api.compute_finish_reason("ab END", [7, 8, 9, 10], sampling, eos) == "stop"
    # the end-of-sequence token as the last one allowed: the model stopped, the budget did not cut it
    assert api.compute_finish_reason("abc", [7, 8, 9, 2], sampling, eos) == "stop"
    assert api.compute_finish_reason("abc", [7, 8, 9, 2], sampling, set()) == "length"
    assert api.compute_visible_text("one END two\n\nthree", sampling.stop_sequences) == "one "
    assert api.compute_visible_text("no stop", sampling.stop_sequences) == "no stop"


@given(st.text())
def test_text_pieces_join_to_the_text(text: str) -> None:
    pieces = api.compute_text_pieces(text)
    assert "".join(pieces) == text
    assert all(piece for piece in pieces)


def test_verification_before_and_after_certification() -> None:
    pending = api.build_verification(make_status(ag.REQUEST_STATE_VERIFYING))
    assert pending["state"] == "VERIFYING" and pending["certificate"] is None and pending["tx_hash"] is None
    assert pending["request_hash"] == "0x" + REQUEST_HASH.hex()
    assert pending["certificate_url"] == "/v1/verification/0x" + REQUEST_HASH.hex()
    done = api.build_verification(make_status(ag.REQUEST_STATE_CERTIFIED))
    assert done["state"] == "CERTIFIED" and done["batch_index"] == 3 and done["certified_block"] == 42
    # once certified, the output hash and batch shown are the certificate's (the checked ones)
    edited = make_status(ag.REQUEST_STATE_CERTIFIED)
    edited.output_hash, edited.batch_index = b"\x99" * 32, 77
    shown = api.build_verification(edited)
    assert shown["output_hash"] == "0x" + "01" * 32 and shown["batch_index"] == 3
    assert done["tx_hash"] == "0x" + "02" * 32
    certificate = done["certificate"]
    assert isinstance(certificate, dict) and certificate["chain_id"] == "31337"


def test_completion_objects_carry_usage_and_verification() -> None:
    job = chat(max_tokens=5)
    body = api.build_completion(job, make_status(ag.REQUEST_STATE_CERTIFIED), created=1, eos_ids={2})
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-" + REQUEST_HASH.hex()
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 5, "total_tokens": 5}  # no tokenizer
    status = make_status(ag.REQUEST_STATE_CERTIFIED)
    status.prompt_tokens = 17  # what the aggregator's intake counted
    counted = api.build_completion(job, status, created=1, eos_ids={2})
    assert counted["usage"] == {"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22}
    choices = body["choices"]
    assert isinstance(choices, list) and len(choices) == 1
    choice = choices[0]
    assert choice["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ModelNotFoundError("no"), 404, "model_not_found"),
        (PayloadTooLargeError("big"), 413, "request_too_large"),
        (RequestFailedError("rejected"), 502, "not_certified"),
        (DeadlineExceededError("slow"), 504, "certification_timeout"),
        (FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be at most 512"), 400, None),
        (FakeRpcError(grpc.StatusCode.NOT_FOUND, "no model"), 404, "not_found"),
        (FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy"), 429, "aggregator_busy"),
        (
            FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (9 vs. 8)"),
            413,
            "request_too_large",
        ),
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connect failed 10.0.0.1"), 503, "aggregator_unavailable"),
        (FakeRpcError(grpc.StatusCode.INTERNAL, "boom"), 502, "aggregator_error"),
        (RuntimeError("bug"), 500, "internal_error"),
    ],
)
def test_errors_map_to_http_statuses(error: Exception, status: int, code: str | None) -> None:
    api_error = compute_api_error(error)
    assert (api_error.status, api_error.code) == (status, code)
    fields = api_error.to_json()["error"]
    assert isinstance(fields, dict) and set(fields) == {"message", "type", "param", "code"}
    if status in (500, 503):
        assert "bug" not in api_error.message and "10.0.0.1" not in api_error.message
    if status == 400:
        assert "max_tokens must be at most 512" in api_error.message
