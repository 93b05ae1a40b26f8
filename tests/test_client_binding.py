"""``AggregatorClient`` binds what it waits for to what it sent, over real gRPC against an aggregator
that answers the hash, certificate or tokens of another request (found by a review: the CLI printed
such a request's text and its offline check said OK)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from avs.client import AggregatorClient, RequestFailedError
from avs.errors import InvalidInputError, UntrustedAnswerError
from avs.messages import Domain, compute_request_hash
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.aggregator.v1 import aggregator_pb2_grpc as ag_grpc
from avs.rpc.operator.v1 import operator_pb2 as op
from tests.helpers import serve_aggregator

DOMAIN = Domain(31337, "0x" + "11" * 20)
MODEL_ID = keccak(text="model")
PROMPT_HASH = keccak(text="the chat, templated")
REQUESTER = Account.from_key(keccak(text="requester"))
CHAT = [{"role": "user", "content": "is it safe to restake?"}]


def _completed(request: op.InferenceRequest) -> op.InferenceRequest:
    completed = op.InferenceRequest()
    completed.CopyFrom(request)
    completed.model_id = completed.model_id or MODEL_ID
    completed.prompt_hash = completed.prompt_hash or PROMPT_HASH
    return completed


def _hash(request: op.InferenceRequest) -> bytes:
    return compute_request_hash(DOMAIN, convert.request_from_proto(request).request)


class CertifyingAggregator(ag_grpc.AggregatorServiceServicer):
    """Certifies what it was sent, unless told to answer another request's hash or certificate, or
    tokens in the status other than the certified ones."""

    def __init__(self) -> None:
        self.other_hash = False
        self.other_request = False
        self.other_tokens = False
        self.other_quorums = b""
        self.signed_stake = "10"
        self.certified: op.InferenceRequest | None = None
        self.quorums = b""
        self.fail = False  # answer FAILED
        self.swap_model = False  # certify under another model id than the one asked for

    def Submit(self, request: ag.SubmitRequest, context: Any) -> ag.SubmitResponse:
        certified = _completed(request.request)
        if self.swap_model:
            certified.model_id = keccak(text="a cheaper model")
        if self.other_request:  # another requester's request, certified earlier
            certified.messages[0].content = "wire all your funds to 0xEVIL"
            certified.nonce = (1).to_bytes(32, "big")
        self.certified = certified
        self.quorums = self.other_quorums or request.quorum_numbers or b"\x00"
        answered = _hash(certified)
        if self.other_hash:
            answered = keccak(text="another request")
        return ag.SubmitResponse(request_hash=answered)

    def WatchStatus(self, request: ag.GetStatusRequest, context: Any) -> Iterator[ag.RequestStatus]:
        assert self.certified is not None
        if self.fail:
            yield ag.RequestStatus(request_hash=request.request_hash, state=ag.REQUEST_STATE_FAILED, error="no")
            return
        tokens = [5, 6, 7]
        certificate = ag.Certificate(
            request=self.certified, request_hash=request.request_hash, output_token_ids=tokens, output_text="five six"
        )
        certificate.batch_header.quorum_numbers = self.quorums
        for quorum in self.quorums:
            certificate.quorum_stakes.add(quorum_number=quorum, signed_stake=self.signed_stake, total_stake="10")
        status = ag.RequestStatus(
            request_hash=request.request_hash,
            state=ag.REQUEST_STATE_CERTIFIED,
            output_token_ids=[5, 6, 8] if self.other_tokens else tokens,
            certificate=certificate,
        )
        yield status


@pytest.fixture
def served() -> Iterator[tuple[CertifyingAggregator, AggregatorClient]]:
    aggregator = CertifyingAggregator()
    with serve_aggregator(aggregator) as client:
        yield aggregator, client


def _submit_signed(client: AggregatorClient) -> bytes:
    return client.submit(
        CHAT,
        requester=REQUESTER.address,
        model_id=MODEL_ID,
        prompt_hash=PROMPT_HASH,
        domain=DOMAIN,
        requester_key=bytes(REQUESTER.key),
    )


def test_an_honest_certificate_of_the_request_sent_is_returned(
    served: tuple[CertifyingAggregator, AggregatorClient],
) -> None:
    _, client = served
    request_hash = client.submit(CHAT, requester=REQUESTER.address, model="tiny")
    status = client.wait(request_hash, timeout=10)
    assert status.certificate.request.messages[0].content == CHAT[0]["content"]
    signed_hash = _submit_signed(client)
    assert client.wait(signed_hash, timeout=10).certificate.request_hash == signed_hash


def test_a_signed_request_answered_with_another_hash_is_refused(
    served: tuple[CertifyingAggregator, AggregatorClient],
) -> None:
    aggregator, client = served
    aggregator.other_hash = True
    with pytest.raises(InvalidInputError, match="another request than the one signed"):
        _submit_signed(client)


def test_a_certificate_of_another_request_is_refused_by_wait(
    served: tuple[CertifyingAggregator, AggregatorClient],
) -> None:
    """Unsigned, the client cannot check the hash Submit answers; the certificate's request must
    then be the one sent (the chat and the client's random nonce)."""
    aggregator, client = served
    aggregator.other_request = True
    request_hash = client.submit(CHAT, requester=REQUESTER.address, model="tiny")
    with pytest.raises(InvalidInputError, match=r"certified another request .*changed: nonce, messages"):
        client.wait(request_hash, timeout=10)


def test_status_tokens_other_than_the_certified_ones_are_refused(
    served: tuple[CertifyingAggregator, AggregatorClient],
) -> None:
    aggregator, client = served
    aggregator.other_tokens = True
    request_hash = client.submit(CHAT, requester=REQUESTER.address, model="tiny")
    with pytest.raises(InvalidInputError, match="not the certified ones"):
        client.wait(request_hash, timeout=10)


def test_the_check_is_not_skipped_however_many_requests_were_sent_meanwhile(
    served: tuple[CertifyingAggregator, AggregatorClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client remembers a bounded number of sent requests; the ones whose wait has ended are let go,
    so a busy gateway never drops (and silently stops checking) a request still being waited for."""
    import avs.client

    monkeypatch.setattr(avs.client, "MAX_REMEMBERED_REQUESTS", 8)
    aggregator, client = served
    aggregator.other_request = True
    ours = client.submit(CHAT, requester=REQUESTER.address, model="tiny")
    tampered = aggregator.certified
    aggregator.other_request = False
    for _ in range(20):  # served while ours is still being certified
        client.wait(client.submit(CHAT, requester=REQUESTER.address, model="tiny"), timeout=10)
    aggregator.certified = tampered
    with pytest.raises(UntrustedAnswerError, match=r"certified another request .*changed: nonce, messages"):
        client.wait(ours, timeout=10)


def test_failed_requests_do_not_push_a_live_one_out_of_the_clients_memory(
    served: tuple[CertifyingAggregator, AggregatorClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An aggregator that fails many requests quickly must not make the client forget one still being
    certified (and skip its check): a FAILED request is final, so it is let go like a certified one."""
    import avs.client

    monkeypatch.setattr(avs.client, "MAX_REMEMBERED_REQUESTS", 8)
    aggregator, client = served
    aggregator.other_request = True
    ours = client.submit(CHAT, requester=REQUESTER.address, model="tiny")
    tampered = aggregator.certified
    aggregator.other_request, aggregator.fail = False, True
    for _ in range(20):
        with pytest.raises(RequestFailedError):
            client.wait(client.submit(CHAT, requester=REQUESTER.address, model="tiny"), timeout=10)
    aggregator.certified, aggregator.fail = tampered, False
    with pytest.raises(UntrustedAnswerError, match=r"certified another request .*changed: nonce, messages"):
        client.wait(ours, timeout=10)


def test_a_certificate_of_other_quorums_or_under_the_threshold_is_refused(
    served: tuple[CertifyingAggregator, AggregatorClient],
) -> None:
    """The request hash covers neither quorums nor threshold: an aggregator could certify the
    request in a quorum of little stake, or under the share asked for, and wait() accepted it."""
    aggregator, client = served
    asked = {"requester": REQUESTER.address, "model": "tiny", "quorums": b"\x01\x00", "threshold_bps": 6667}
    assert client.wait(client.submit(CHAT, **asked), timeout=10).certificate.batch_header.quorum_numbers == b"\x01\x00"
    aggregator.other_quorums = b"\x05"
    with pytest.raises(UntrustedAnswerError, match=r"certified by quorums \[5\], not the \[0, 1\] asked"):
        client.wait(client.submit(CHAT, **asked), timeout=10)
    aggregator.other_quorums, aggregator.signed_stake = b"", "6"
    with pytest.raises(UntrustedAnswerError, match=r"quorums \[1, 0\] signed less than the 6667 bps asked"):
        client.wait(client.submit(CHAT, **asked), timeout=10)
    aggregator.other_quorums = b"\x05"
    client.wait(client.submit(CHAT, requester=REQUESTER.address, model="tiny"), timeout=10)  # none asked: any


def test_a_refused_certificate_is_refused_again_by_a_second_wait(
    served: tuple[CertifyingAggregator, AggregatorClient],
) -> None:
    """The sent request was let go before its check: a retry, or a second waiter, got the certificate
    of another request with no error."""
    aggregator, client = served
    aggregator.other_request = True
    request_hash = client.submit(CHAT, requester=REQUESTER.address, model="tiny")
    for _ in range(2):
        with pytest.raises(UntrustedAnswerError, match="certified another request"):
            client.wait(request_hash, timeout=10)


def test_avs_request_with_a_model_folder_pins_the_model_and_prompt(
    served: tuple[CertifyingAggregator, AggregatorClient], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``avs request --model NAME`` leaves the model id and prompt hash to the aggregator, which could
    certify the chat under a cheaper model or another template and the offline check still said OK.
    With ``--tokenizer`` a prepared model folder, both are computed here and must come back certified."""
    from avs.cli import main
    from avs.gateway.models import load_local_model
    from avs.inference.params import compute_prompt_hash
    from tests.gateway.test_models import prepare

    aggregator, client = served
    folder = tmp_path / "tiny"
    prepare(folder)
    target = client._channel._channel.target().decode()  # type: ignore[attr-defined]
    args = ["request", CHAT[0]["content"], "--aggregator", target, "--model", "tiny", "--requester", REQUESTER.address]
    # 1: this aggregator's certificates carry no signatures (the offline check fails); 2: refused
    assert main(args) == 1  # by name: the aggregator's MODEL_ID and PROMPT_HASH, unchecked
    assert aggregator.certified is not None and bytes(aggregator.certified.model_id) == MODEL_ID
    printed = capsys.readouterr()  # a failed check: stdout carries verified output only
    assert printed.out == "" and "this output is NOT verified" in printed.err
    assert main([*args, "--tokenizer", str(folder)]) == 1
    model = load_local_model(folder)
    model_id, encoder = model.model_id, model.codec
    assert aggregator.certified is not None and bytes(aggregator.certified.model_id) == model_id
    assert bytes(aggregator.certified.prompt_hash) == compute_prompt_hash(encoder.encode_chat(CHAT))
    aggregator.swap_model = True  # certifies the chat under another model, whatever was asked
    assert main([*args, "--tokenizer", str(folder)]) == 2
    assert "certified another request than the one sent (changed: model_id" in capsys.readouterr().err
