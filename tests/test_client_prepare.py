"""The requester SDK refuses a prepared request that is not the one it asked for, before anything
is signed or insured: over real gRPC, against an aggregator whose Prepare changes one field."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from avs.client import AggregatorClient
from avs.errors import InvalidInputError
from avs.messages import Domain, compute_request_hash
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.aggregator.v1 import aggregator_pb2_grpc as ag_grpc
from avs.rpc.operator.v1 import operator_pb2 as op
from tests.helpers import serve_aggregator

DOMAIN = Domain(31337, "0x" + "11" * 20)
MODEL_ID = keccak(text="model")
REQUESTER = Account.from_key(keccak(text="requester"))
Change = Callable[[ag.PreparedRequest], None]


class PreparingAggregator(ag_grpc.AggregatorServiceServicer):
    """Completes the request honestly (model id, prompt hash, defaults), then applies ``change``."""

    def __init__(self) -> None:
        self.change: Change = lambda prepared: None
        self.wrong_hash = False

    def Prepare(self, request: ag.SubmitRequest, context: Any) -> ag.PreparedRequest:
        completed = op.InferenceRequest()
        completed.CopyFrom(request.request)
        completed.model_id = completed.model_id or MODEL_ID
        completed.prompt_hash = completed.prompt_hash or keccak(text="the chat, templated")
        prepared = ag.PreparedRequest(
            request=completed,
            quorum_numbers=request.quorum_numbers or b"\x00",
            threshold_bps=request.threshold_bps or 6667,
        )
        self.change(prepared)
        prepared.request_hash = compute_request_hash(DOMAIN, convert.request_from_proto(prepared.request).request)
        if self.wrong_hash:
            prepared.request_hash = keccak(text="not the digest")
        return prepared


@pytest.fixture
def served() -> Iterator[tuple[PreparingAggregator, AggregatorClient]]:
    aggregator = PreparingAggregator()
    with serve_aggregator(aggregator) as client:
        yield aggregator, client


def _prepare(client: AggregatorClient, **fields: Any) -> Any:
    return client.prepare(
        [{"role": "user", "content": "what is restaking?"}],
        requester=REQUESTER.address,
        model="tiny",
        temperature_milli=700,
        seed=7,
        max_tokens=32,
        nonce=5,
        stop_sequences=["\n\n"],
        domain=DOMAIN,
        **fields,
    )


def _set(name: str, value: Any) -> Change:
    return lambda prepared: setattr(prepared.request, name, value)


def _swap_chat(prepared: ag.PreparedRequest) -> None:
    prepared.request.messages[0].content = "something else"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_swap_chat, "messages"),
        (_set("seed", 8), "seed"),
        (_set("max_tokens", 512), "max_tokens"),
        (_set("temperature_milli", 0), "temperature_milli"),
        (_set("nonce", (6).to_bytes(32, "big")), "nonce"),
        (_set("requester", "0x" + "22" * 20), "requester"),
        (lambda p: p.request.stop_sequences.append("x"), "stop_sequences"),
    ],
)
def test_a_request_prepared_other_than_asked_is_refused(
    served: tuple[PreparingAggregator, AggregatorClient], change: Change, field: str
) -> None:
    aggregator, client = served
    assert _prepare(client).request.seed == 7  # as asked, completed: accepted
    aggregator.change = change
    with pytest.raises(InvalidInputError, match=f"changed: .*{field}"):
        _prepare(client)


def test_what_was_given_must_come_back_and_what_was_left_out_may_be_filled_in(
    served: tuple[PreparingAggregator, AggregatorClient],
) -> None:
    aggregator, client = served
    prepared = _prepare(client)
    assert prepared.request.model_id == MODEL_ID and prepared.quorums == b"\x00"  # filled in
    aggregator.change = lambda p: setattr(p, "quorum_numbers", b"\x01")
    assert _prepare(client).quorums == b"\x01"  # none asked for: the aggregator's default
    with pytest.raises(InvalidInputError, match="changed: quorum_numbers"):
        _prepare(client, quorums=b"\x00")
    aggregator.change = lambda p: setattr(p, "threshold_bps", 500)
    with pytest.raises(InvalidInputError, match="changed: threshold_bps"):
        _prepare(client, threshold_bps=9000)
    aggregator.change = _set("prompt_hash", keccak(text="another chat"))
    with pytest.raises(InvalidInputError, match="changed: prompt_hash"):
        _prepare(client, prompt_hash=keccak(text="the chat, templated"))


def test_a_hash_that_is_not_the_digest_is_refused_before_coverage_is_bought(
    served: tuple[PreparingAggregator, AggregatorClient],
) -> None:
    aggregator, client = served
    aggregator.wrong_hash = True
    with pytest.raises(InvalidInputError, match="not the digest"):
        _prepare(client)
