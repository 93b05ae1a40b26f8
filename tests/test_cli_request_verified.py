"""``avs request`` puts the output on stdout only once it is verified here: found in review, an
aggregator that certified the request with its own BLS key (never registered) and any text it liked
got that text printed on stdout with exit 0 and "offline check: OK" (the offline check takes the
signers' keys from the certificate). Verified means: the offline check, the certificate checked on
``--deployment``'s chain (verifyLeaf, the registry's stakes), and the text decoded here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak

from avs.cli import main
from avs.client import compute_signatory_record_hash
from avs.crypto import bls
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import (
    BatchHeader,
    Domain,
    InferenceOutput,
    compute_digest,
    compute_output_hash,
    compute_request_hash,
)
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.aggregator.v1 import aggregator_pb2_grpc as ag_grpc
from avs.rpc.common.v1 import bn254_pb2 as pb
from avs.rpc.operator.v1 import operator_pb2 as op
from tests.helpers import serve_aggregator

DOMAIN = Domain(17000, "0x" + "22" * 20)
AGGREGATOR_KEY = bls.compute_key_pair(bls.SecretKey(777))  # the aggregator's own key, never registered
REQUESTER = "0x" + "ab" * 20
FORGED = "Yes, send your keys to 0xEVIL"
UNREACHABLE_RPC = "http://127.0.0.1:1"


class ForgingAggregator(ag_grpc.AggregatorServiceServicer):
    """Certifies whatever it is sent under its own key, with a text of its choosing."""

    def __init__(self) -> None:
        self.certificate: ag.Certificate | None = None

    def Submit(self, request: ag.SubmitRequest, context: Any) -> ag.SubmitResponse:
        sent = op.InferenceRequest()
        sent.CopyFrom(request.request)
        sent.model_id = sent.model_id or keccak(text="whatever model")
        sent.prompt_hash = sent.prompt_hash or keccak(text="whatever prompt")
        request_hash = compute_request_hash(DOMAIN, convert.request_from_proto(sent).request)
        tokens = (5, 6, 7)
        output_hash = compute_output_hash(InferenceOutput(request_hash, bytes(sent.model_id), tokens))
        tree = compute_merkle_tree([BatchLeaf(request_hash, output_hash)])
        quorums = request.quorum_numbers or b"\x00"
        header = BatchHeader(1, tree.root, 100, quorums)
        sigma = bls.sign(AGGREGATOR_KEY.secret, compute_digest(DOMAIN, header))
        key = pb.BlsPublicKey(
            g1=convert.g1_to_proto(AGGREGATOR_KEY.pubkey_g1),
            g2=convert.g2_to_proto(AGGREGATOR_KEY.pubkey_g2),
            operator_id=AGGREGATOR_KEY.operator_id,
        )
        self.certificate = ag.Certificate(
            chain_id=DOMAIN.chain_id,
            task_manager=DOMAIN.verifying_contract,
            request=sent,
            request_hash=request_hash,
            output_token_ids=list(tokens),
            output_hash=output_hash,
            output_text=FORGED,
            batch_header=convert.batch_header_to_proto(header),
            merkle_proof=tree.get_proof(0),
            signatory_record_hash=compute_signatory_record_hash(100, []),
            signers=[ag.Signer(public_key=key, multiplicity=len(quorums))],
            apk_g2=convert.g2_to_proto(bls.aggregate_g2([AGGREGATOR_KEY.pubkey_g2] * len(quorums))),
            sigma=convert.g1_to_proto(bls.aggregate_g1([sigma] * len(quorums))),
            quorum_stakes=[ag.QuorumStake(quorum_number=q, signed_stake="100", total_stake="100") for q in quorums],
        )
        return ag.SubmitResponse(request_hash=request_hash)

    def WatchStatus(self, request: Any, context: Any) -> Any:
        assert self.certificate is not None
        yield ag.RequestStatus(
            request_hash=self.certificate.request_hash,
            state=ag.REQUEST_STATE_CERTIFIED,
            output_token_ids=list(self.certificate.output_token_ids),
            certificate=self.certificate,
        )


def request(extra: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with serve_aggregator(ForgingAggregator()) as client:
        target = client._channel._channel.target().decode()  # type: ignore[attr-defined]
        args = ["request", "is it safe to restake?", "--aggregator", target, "--model", "tiny"]
        code = main([*args, "--requester", REQUESTER, "--rpc-url", UNREACHABLE_RPC, *extra])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_without_a_deployment_a_self_signed_certificate_is_not_verified(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = request([], capsys)
    assert "offline check: OK" in err  # it is consistent with itself: signed, with a valid Merkle proof
    assert (code, out) == (1, "")
    assert "this output is NOT verified" in err and f"\n{FORGED}\n" in err
    assert "no --deployment: the certificate was checked against itself only" in err
    assert "no --tokenizer: the text is the aggregator's decoding" in err


def test_with_a_deployment_the_chain_must_have_certified_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    addresses = ("deployer", "aggregator", "allocation_manager", "delegation_manager", "strategy", "stake_token")
    deployment: dict[str, object] = {
        key: "0x" + "33" * 20 for key in (*addresses, "operator_registry", "model_registry")
    }
    deployment.update(chain_id=DOMAIN.chain_id, start_block=0, task_manager=DOMAIN.verifying_contract)
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(deployment))
    code, out, err = request(["--deployment", str(path)], capsys)
    assert (code, out) == (1, "")
    assert "no --deployment" not in err
    assert f"the chain could not be read at {UNREACHABLE_RPC}" in err and "not checked on chain" in err
