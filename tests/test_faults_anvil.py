"""Integration: fault proofs signed with ``avs.crypto.bls`` are accepted by the deployed fault
manager on anvil and slash through the local restaking core into the insurance pool; tampered
proofs are rejected with the contracts' custom errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from eth_abi import encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import ContractRevertError, NonSignerStakesAndSignature
from avs.chain.faults import BatchSigners, ChallengeStatus, CoverageStatus, SignedAttestation, Web3FaultClient
from avs.crypto import bls
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import (
    Attestation,
    BatchHeader,
    InferenceRequest,
    Verdict,
    compute_digest,
    compute_request_hash,
)
from tests.test_contracts_anvil import (  # noqa: F401  (anvil, devnet: fixtures)
    QUORUMS,
    STAKE,
    Devnet,
    Operator,
    anvil,
    devnet,
)

EQUIVOCATION_WAD = 10**17  # Deploy.s.sol default


@pytest.fixture(scope="module")
def faults(devnet: Devnet) -> Iterator[Web3FaultClient]:  # noqa: F811
    yield Web3FaultClient(devnet.client)


def _sign(devnet: Devnet, op: Operator, attestation: Attestation) -> SignedAttestation:  # noqa: F811
    digest = compute_digest(devnet.client.get_domain(), attestation)
    return SignedAttestation(attestation, bls.sign(op.keys.secret, digest))


def _pool_balance(devnet: Devnet) -> int:  # noqa: F811
    token = devnet.w3.eth.contract(
        address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken")
    )
    return int(token.functions.balanceOf(devnet.deployment.insurance_pool).call())


def _equivocation_fault_id(op: Operator, request_hash: bytes) -> bytes:
    return bytes(
        Web3.keccak(
            encode(
                ["bytes32", "bytes32", "bytes32"], [b"EQUIVOCATION".ljust(32, b"\0"), op.keys.operator_id, request_hash]
            )
        )
    )


def test_attestation_digest_matches_python(devnet: Devnet, faults: Web3FaultClient) -> None:  # noqa: F811
    attestation = Attestation(Web3.keccak(text="req"), Web3.keccak(text="out"), Verdict.REJECT)
    assert faults.get_attestation_digest(attestation) == compute_digest(devnet.client.get_domain(), attestation)


def test_the_aggregator_uses_the_contracts_rejection_majority(faults: Web3FaultClient) -> None:
    from avs_aggregator.protocol import MIN_REJECTION_THRESHOLD_BPS

    assert faults.fault_manager.functions.MIN_REJECTION_THRESHOLD_BPS().call() == MIN_REJECTION_THRESHOLD_BPS


def test_equivocation_signed_in_python_slashes_operator(devnet: Devnet, faults: Web3FaultClient) -> None:  # noqa: F811
    op = devnet.operators[0]
    request = Web3.keccak(text="equivocated request")
    a = _sign(devnet, op, Attestation(request, Web3.keccak(text="output A"), Verdict.ACCEPT))
    b = _sign(devnet, op, Attestation(request, Web3.keccak(text="output B"), Verdict.ACCEPT))
    assert a.attestation.is_conflicting(b.attestation)
    before = _pool_balance(devnet)
    faults.prove_equivocation(op.keys.operator_id, a, b)
    assert _pool_balance(devnet) - before == STAKE * EQUIVOCATION_WAD // 10**18
    assert faults.is_fault_slashed(_equivocation_fault_id(op, request))
    with pytest.raises(ContractRevertError) as info:
        faults.prove_equivocation(op.keys.operator_id, b, a)
    assert info.value.name == "FaultAlreadySlashed"


def test_equivocation_tampered_rejected(devnet: Devnet, faults: Web3FaultClient) -> None:  # noqa: F811
    op = devnet.operators[1]
    request = Web3.keccak(text="tampered request")
    a = _sign(devnet, op, Attestation(request, Web3.keccak(text="output A"), Verdict.ACCEPT))
    signed_b = _sign(devnet, op, Attestation(request, Web3.keccak(text="output B"), Verdict.REJECT))
    # The operator rejected B (honest); the prover claims it accepted B.
    tampered = SignedAttestation(
        Attestation(request, signed_b.attestation.output_hash, Verdict.ACCEPT), signed_b.signature
    )
    with pytest.raises(ContractRevertError) as info:
        faults.prove_equivocation(op.keys.operator_id, a, tampered)
    assert info.value.name == "InvalidAttestationSignature"
    with pytest.raises(ContractRevertError) as info:
        faults.prove_equivocation(op.keys.operator_id, a, signed_b)
    assert info.value.name == "NotConflicting"


def _token(devnet: Devnet) -> Any:  # noqa: F811
    return devnet.w3.eth.contract(
        address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken")
    )


def _funded_account(devnet: Devnet, spender: str, amount: int) -> LocalAccount:  # noqa: F811
    account: LocalAccount = Account.create()
    devnet.w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])  # type: ignore[arg-type]
    token = _token(devnet)
    devnet.client.transact(token.functions.mint(account.address, amount), account)
    devnet.client.transact(token.functions.approve(spender, amount), account)
    return account


def _quorum_certificate(devnet: Devnet, digest: bytes, reference_block: int) -> NonSignerStakesAndSignature:  # noqa: F811
    """Every operator of quorum 0 signs ``digest`` (no non-signers)."""
    ops = devnet.operators
    return NonSignerStakesAndSignature(
        non_signer_pubkeys=(),
        quorum_apks=(devnet.client.get_apk(0),),
        apk_g2=bls.aggregate_g2([op.keys.pubkey_g2 for op in ops]),
        sigma=bls.aggregate_g1([bls.sign(op.keys.secret, digest) for op in ops]),
        indices=devnet.client.get_check_signatures_indices(reference_block, QUORUMS, []),
    )


def _batch_signers(devnet: Devnet, header: BatchHeader, signers: list[Operator]) -> BatchSigners:  # noqa: F811
    ids = tuple(sorted(op.keys.operator_id for op in signers))
    idx = devnet.client.get_check_signatures_indices(header.reference_block, header.quorum_numbers, ids)
    return BatchSigners(header, (), (), ids, idx.non_signer_quorum_bitmap_indices, idx.quorum_apk_indices)


def test_escalated_fraud_slashes_signers_and_pays_insured_requester(
    devnet: Devnet,  # noqa: F811
    faults: Web3FaultClient,
) -> None:
    w3, domain = devnet.w3, devnet.client.get_domain()
    requester = _funded_account(devnet, devnet.deployment.insurance_pool or "", 10**18)
    request = InferenceRequest(
        Web3.keccak(text="model"), Web3.keccak(text="prompt"), 0, 0, 1_000_000, 1, 16, b"\0" * 32, requester.address, 1
    )
    request_hash = compute_request_hash(domain, request)
    coverage = 2 * 10**18
    faults.buy_coverage(request, 0, coverage, requester)
    assert faults.get_coverage(request_hash).status == CoverageStatus.ACTIVE

    # A certified batch whose leaf 0 is a wrong output for the insured request.
    bad_output = Web3.keccak(text="wrong output")
    leaves = [BatchLeaf(request_hash, bad_output)] + [
        BatchLeaf(Web3.keccak(text=f"r{i}"), Web3.keccak(text=f"o{i}")) for i in range(7)
    ]
    tree = compute_merkle_tree(leaves)
    header = BatchHeader(77, tree.root, w3.eth.block_number - 1, QUORUMS)
    digest = devnet.client.get_batch_digest(header)
    ops = list(devnet.operators)
    devnet.client.certify_batch(
        header,
        NonSignerStakesAndSignature(
            (),
            (devnet.client.get_apk(0),),
            bls.aggregate_g2([op.keys.pubkey_g2 for op in ops]),
            bls.aggregate_g1([bls.sign(op.keys.secret, digest) for op in ops]),
            devnet.client.get_check_signatures_indices(header.reference_block, QUORUMS, []),
        ),
    )
    record = Web3.keccak(header.reference_block.to_bytes(4, "big"))

    # The deployer challenges it with a bond.
    token = _token(devnet)
    devnet.client.transact(token.functions.mint(devnet.client.account.address, 10**19))  # type: ignore[union-attr]
    devnet.client.transact(token.functions.approve(devnet.deployment.fault_manager, 10**19))
    faults.challenge(header, record, (request_hash, bad_output), tree.get_proof(0))
    challenge_id = faults.get_challenge_count()
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    # The escalation quorum certifies REJECT of that output.
    reference = w3.eth.block_number - 1
    reject = compute_digest(domain, Attestation(request_hash, bad_output, Verdict.REJECT))
    certificate = _quorum_certificate(devnet, reject, reference)

    with pytest.raises(ContractRevertError) as info:  # one signer left out
        faults.resolve_challenge(
            challenge_id, Verdict.REJECT, reference, certificate, _batch_signers(devnet, header, ops[1:])
        )
    assert info.value.name == "SignerSetIncomplete"

    pool_before = int(token.functions.balanceOf(devnet.deployment.insurance_pool).call())
    signers = _batch_signers(devnet, header, ops)
    with pytest.raises(ContractRevertError) as info:
        faults.set_max_slashes_per_call(0)
    assert info.value.name == "InvalidConfig"
    faults.set_max_slashes_per_call(2)  # the batch's 4 signers take resolve + one continueSlashing
    try:
        faults.resolve_challenge(challenge_id, Verdict.REJECT, reference, certificate, signers)
        assert faults.get_challenge(challenge_id).status == ChallengeStatus.UPHELD
        pending = faults.get_pending_slashing(challenge_id)
        assert pending.is_pending and (pending.next_signer, pending.signer_count) == (2, len(ops))
        assert pending.progress_block == w3.eth.block_number  # the resolution's block: abandonable a window later
        assert pending.stall_blocks == faults.fault_manager.functions.config().call()[4]  # resolutionWindowBlocks
        assert faults.get_coverage(request_hash).status == CoverageStatus.ACTIVE  # not before every slash
        with pytest.raises(ContractRevertError) as info:
            faults.continue_slashing(challenge_id, _batch_signers(devnet, header, ops[1:]))
        assert info.value.name == "SignersMismatch"
        faults.continue_slashing(challenge_id, signers)
    finally:
        faults.set_max_slashes_per_call(64)
    assert not faults.get_pending_slashing(challenge_id).is_pending
    assert int(token.functions.balanceOf(devnet.deployment.insurance_pool).call()) > pool_before
    assert faults.get_coverage(request_hash).status == CoverageStatus.CLAIMABLE
    with pytest.raises(ContractRevertError) as info:
        faults.continue_slashing(challenge_id, signers)
    assert info.value.name == "NoSlashingPending"

    before = int(token.functions.balanceOf(requester.address).call())
    faults.claim(request_hash)
    assert int(token.functions.balanceOf(requester.address).call()) == before + coverage
    with pytest.raises(ContractRevertError) as info:
        faults.claim(request_hash)
    assert info.value.name == "AlreadyClaimed"
