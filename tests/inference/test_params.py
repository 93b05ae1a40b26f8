"""Request-side validation: chat messages, sampling parameters, prompt hashes."""

from __future__ import annotations

from typing import Any

import pytest
from eth_utils import keccak

from avs.errors import InvalidInputError
from avs.inference.params import ChatMessage, SamplingParams, compute_prompt_hash, parse_chat_messages
from avs.messages import InferenceRequest, compute_stop_sequences_hash

REQUESTER = "0x" + "11" * 20


@pytest.mark.parametrize(
    "raw",
    [
        "hello",
        [],
        [{"role": "user"}],
        [{"role": "robot", "content": "hi"}],
        [{"role": "user", "content": 3}],
        [{"role": "user", "content": "hi", "extra": 1}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        ["user: hi"],
        None,
        [{"role": ["user"], "content": "hi"}],  # unhashable: still a clean InvalidInputError
        [{"role": {"user": 1}, "content": "hi"}],
    ],
)
def test_malformed_chat_messages_are_rejected(raw: Any) -> None:
    with pytest.raises(InvalidInputError):
        parse_chat_messages(raw)


def test_chat_messages_parse() -> None:
    parsed = parse_chat_messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert parsed == (ChatMessage("system", "be brief"), ChatMessage("user", "hi"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature_milli": -1},
        {"temperature_milli": 10_001},
        {"top_k": -1},
        {"top_p_micro": 0},
        {"top_p_micro": 1_000_001},
        {"seed": 2**64},
        {"max_tokens": 0},
        {"stop_sequences": ("",)},
        {"stop_sequences": ["x"]},
        {"stop_sequences": ("a",) * 9},
        {"temperature_milli": True},
    ],
)
def test_invalid_sampling_params_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        SamplingParams(**kwargs)


def _request(stop_hash: bytes) -> InferenceRequest:
    return InferenceRequest(
        model_id=b"\x01" * 32,
        prompt_hash=b"\x02" * 32,
        temperature_milli=700,
        top_k=40,
        top_p_micro=900_000,
        seed=5,
        max_tokens=64,
        stop_sequences_hash=stop_hash,
        requester=REQUESTER,
        nonce=1,
    )


def test_params_from_request_check_the_stop_sequences() -> None:
    request = _request(compute_stop_sequences_hash(["\n\n"]))
    params = SamplingParams.from_request(request, ["\n\n"])
    assert (params.temperature, params.top_k, params.top_p, params.seed, params.max_tokens) == (0.7, 40, 0.9, 5, 64)
    with pytest.raises(InvalidInputError):
        SamplingParams.from_request(request, ["END"])


@pytest.mark.parametrize("stops", [("\ud800",), (1,), ("",), ("x" * 65,), ("end\ufffd",)])
def test_malformed_stop_sequences_are_refused_before_they_are_hashed(stops: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidInputError, match="stop sequence"):
        SamplingParams.from_request(_request(b"\x00" * 32), stops)


def test_prompt_hash_is_the_eip712_uint32_array_encoding() -> None:
    assert compute_prompt_hash([1, 2]) == keccak((1).to_bytes(32, "big") + (2).to_bytes(32, "big"))
    assert compute_prompt_hash([]) == keccak(b"")
    with pytest.raises(InvalidInputError):
        compute_prompt_hash([2**32])


def test_lone_surrogates_are_not_text() -> None:
    """JSON's "\\ud800" decodes to a str that UTF-8 cannot encode, so it could be neither hashed nor
    sent: refused as input, not failed on later."""
    with pytest.raises(InvalidInputError, match="surrogate"):
        parse_chat_messages([{"role": "user", "content": "ok \ud800"}])
    with pytest.raises(InvalidInputError, match="surrogate"):
        SamplingParams(stop_sequences=("\udfff",))
    assert parse_chat_messages([{"role": "user", "content": "ok \U0001f600"}])[0].content.endswith("\U0001f600")
