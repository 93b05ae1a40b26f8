"""``verify_certificate`` on signer lists: multiplicities weigh keys by scalar multiplication, and an
absurd multiplicity or signer count is a failing verdict at once, never an exception or a long wait."""

from __future__ import annotations

import time

from avs.client import MAX_CERTIFICATE_SIGNERS, compute_signatory_record_hash, verify_certificate
from avs.crypto import bls
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import (
    BatchHeader,
    Domain,
    InferenceOutput,
    InferenceRequest,
    compute_digest,
    compute_output_hash,
    compute_request_hash,
    compute_stop_sequences_hash,
)
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.common.v1 import bn254_pb2 as pb

DOMAIN = Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
QUORUMS = b"\x00\x01"  # two quorums: a signer in both has multiplicity 2
KEYS = [bls.compute_key_pair(bls.SecretKey(s)) for s in (11, 12)]


def certificate(multiplicities: tuple[int, ...] = (2, 1), domain: Domain = DOMAIN) -> ag.Certificate:
    """A valid certificate signed by ``KEYS``, each counted ``multiplicities[i]`` times, for ``domain``
    (self-made: no chain has seen these keys; what only the on-chain check can tell)."""
    request = InferenceRequest(
        b"\x01" * 32, b"\x02" * 32, 0, 0, 1_000_000, 0, 8, compute_stop_sequences_hash([]), "0x" + "ab" * 20, 1
    )
    request_hash = compute_request_hash(domain, request)
    tokens = (5, 6, 7)
    output_hash = compute_output_hash(InferenceOutput(request_hash, request.model_id, tokens))
    tree = compute_merkle_tree([BatchLeaf(request_hash, output_hash)])
    header = BatchHeader(3, tree.root, 100, QUORUMS)
    digest = compute_digest(domain, header)
    weighted = [k for k, m in zip(KEYS, multiplicities, strict=True) for _ in range(m)]
    sigma = bls.aggregate_g1([bls.sign(k.secret, digest) for k in weighted])
    apk_g2 = bls.aggregate_g2([k.pubkey_g2 for k in weighted])
    return ag.Certificate(
        chain_id=domain.chain_id,
        task_manager=domain.verifying_contract,
        request=convert.request_to_proto(convert.RequestEnvelope(request, (), ())),
        request_hash=request_hash,
        output_token_ids=list(tokens),
        output_hash=output_hash,
        batch_header=convert.batch_header_to_proto(header),
        merkle_proof=tree.get_proof(0),
        signatory_record_hash=compute_signatory_record_hash(header.reference_block, []),
        signers=[
            ag.Signer(
                public_key=pb.BlsPublicKey(
                    g1=convert.g1_to_proto(k.pubkey_g1), g2=convert.g2_to_proto(k.pubkey_g2), operator_id=k.operator_id
                ),
                multiplicity=m,
            )
            for k, m in zip(KEYS, multiplicities, strict=True)
        ],
        apk_g2=convert.g2_to_proto(apk_g2),
        sigma=convert.g1_to_proto(sigma),
        quorum_stakes=[ag.QuorumStake(quorum_number=q, signed_stake="1", total_stake="1") for q in QUORUMS],
    )


def test_a_valid_certificate_with_multiplicities_verifies() -> None:
    check = verify_certificate(certificate(), domain=DOMAIN)
    assert check.ok, check.problems


def test_a_wrong_multiplicity_breaks_the_aggregate() -> None:
    forged = certificate()
    forged.signers[0].multiplicity = 1  # the keys no longer sum to apk_g2
    assert "apk_g2 is not the sum of the signers' keys" in verify_certificate(forged).problems


def test_an_absurd_multiplicity_is_a_failing_verdict_at_once() -> None:
    for multiplicity in (2**32 - 1, 3, 0):  # 3 > the batch's two quorums
        forged = certificate()
        forged.signers[0].multiplicity = multiplicity
        started = time.monotonic()
        check = verify_certificate(forged, domain=DOMAIN)  # a list of 2^32 keys would be 32 GiB
        assert time.monotonic() - started < 5
        assert "a signer's multiplicity is outside the batch's quorum count" in check.problems


def test_too_many_signers_are_refused_before_their_keys_are_parsed() -> None:
    forged = certificate()
    extra = forged.signers[1]
    for _ in range(4096):  # twice the cap
        forged.signers.append(extra)
    started = time.monotonic()
    check = verify_certificate(forged, domain=DOMAIN)
    assert time.monotonic() - started < 5
    assert f"the certificate lists 4098 signers; at most {MAX_CERTIFICATE_SIGNERS}" in check.problems


def test_a_share_exactly_at_the_threshold_passes_as_on_chain() -> None:
    """The contract compares integers (signed * 10,000 >= total * bps); a float share refused some
    shares exactly at the threshold."""
    signed, total = 2050316543369560420829243, 5172342440387387539932500  # exactly 39.64%
    cert = certificate()
    for stake in cert.quorum_stakes:
        stake.signed_stake, stake.total_stake = str(signed), str(total)
    assert verify_certificate(cert, min_share_bps=3964, domain=DOMAIN).ok
    cert.quorum_stakes[1].signed_stake = str(signed - 1)
    assert verify_certificate(cert, min_share_bps=3964, domain=DOMAIN).problems == (
        "quorum 1 signed 39.64%, below the 39.64% asked",
    )


def test_stake_figures_that_are_no_share_fail_whatever_the_threshold() -> None:
    """An aggregator states the signed and total stake; 5 signed of 0, more signed than the total or
    a negative figure passed any threshold (the share was computed over max(total, 1))."""
    for signed, total in (("5", "0"), ("0", "0"), ("7", "6"), ("-1", "6")):
        cert = certificate()
        cert.quorum_stakes[0].signed_stake, cert.quorum_stakes[0].total_stake = signed, total
        for threshold in (0, 6667, 10_000):
            check = verify_certificate(cert, min_share_bps=threshold, domain=DOMAIN)
            assert check.problems == (f"quorum 0 states {signed} signed of {total} in all: not a share of stake",)


def test_stop_sequences_must_be_the_ones_the_request_commits_to() -> None:
    """The stop sequences travel beside the request, which holds only their hash: edited ones (what a
    reader of the certificate takes as the request's) fail the check."""
    cert = certificate()
    cert.request.stop_sequences.append("\n\n")
    assert verify_certificate(cert, domain=DOMAIN).problems == (
        "the stop sequences are not the ones the request commits to",
    )
