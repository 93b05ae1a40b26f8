"""``GrpcOperatorCaller``'s reading of an operator's reply (its calls over real gRPC are in the
anvil and resilience tests)."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest

from avs.errors import InvalidInputError
from avs.rpc.operator.v1 import operator_pb2 as op
from avs.rpc.status import describe_call_error
from avs_aggregator.operators import GrpcOperatorCaller
from tests.aggregator.fakes import DOMAIN, FakeNetwork, make_envelope


def test_a_reply_of_more_tokens_than_asked_is_refused_before_it_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16 MiB reply holds millions of ids: copying them into a tuple took ~280 MB and over a
    second of the GIL before the pipeline's own length check refused them."""
    envelope = make_envelope(1)
    reply = op.GenerateResponse(output_token_ids=[7] * (envelope.request.max_tokens + 1))
    caller = GrpcOperatorCaller(DOMAIN, b"\x01" * 32)
    monkeypatch.setattr(caller, "_client", lambda operator: SimpleNamespace(generate=lambda envelope, timeout: reply))
    operator = FakeNetwork([{0: 1}]).operators[0].info
    expected = f"{len(reply.output_token_ids)} tokens for max_tokens {envelope.request.max_tokens}"
    with pytest.raises(InvalidInputError, match=expected):
        caller.generate(operator, envelope, timeout=1.0)


def test_a_failed_call_is_described_in_one_line_without_the_debug_string() -> None:
    """What the requester's status says about a primary that failed: the code and the details, not
    gRPC's multi-line text with the peer's address, a timestamp and ``debug_error_string``."""
    with grpc.insecure_channel("127.0.0.1:1") as channel:  # nothing listens there
        method = "/avs.operator.v1.OperatorService/Generate"
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        with pytest.raises(grpc.RpcError) as failed:
            call(b"", timeout=5)
    described = describe_call_error(failed.value)
    assert described.startswith("UNAVAILABLE: ") and "\n" not in described and "debug_error_string" not in described
    assert "debug_error_string" in str(failed.value)  # what was stored before
    assert describe_call_error(InvalidInputError("bad reply")) == "bad reply"
