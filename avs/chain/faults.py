"""Bindings of the fault manager and the insurance pool (see docs/contracts.md, "Faults").

``FaultProver`` and ``InsuranceClient`` are the Protocols the watcher/challenger and requesters
program against; ``Web3FaultClient`` implements both over a ``Web3AvsClient`` (its account, nonce
handling and custom-error decoding). ABIs come from forge's build output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import (
    NonSignerStakesAndSignature,
    Web3AvsClient,
    encode_batch_header,
    encode_g1,
    encode_signatures,
)
from avs.crypto.curve import G1Point
from avs.errors import AvsError
from avs.messages import Attestation, BatchHeader, InferenceRequest, Verdict
from avs.types import OperatorId


class ChallengeStatus(IntEnum):
    """``IFaultManagerTypes.ChallengeStatus``."""

    NONE = 0
    OPEN = 1
    UPHELD = 2
    DISMISSED = 3
    EXPIRED = 4


class CoverageStatus(IntEnum):
    """``IInsurancePoolTypes.CoverageStatus``."""

    NONE = 0
    ACTIVE = 1
    CLAIMABLE = 2
    CLAIMED = 3
    EXPIRED = 4


@dataclass(frozen=True, slots=True)
class SignedAttestation:
    """An attestation and its signer's BLS signature over ``compute_digest(domain, attestation)``."""

    attestation: Attestation
    signature: G1Point


@dataclass(frozen=True, slots=True)
class BatchSigners:
    """``IFaultManagerTypes.BatchSigners``: the certified non-signers and every other operator of
    the batch's quorums at its reference block (both ascending), with history indices."""

    header: BatchHeader
    non_signer_ids: tuple[OperatorId, ...]
    non_signer_bitmap_indices: tuple[int, ...]
    signer_ids: tuple[OperatorId, ...]
    signer_bitmap_indices: tuple[int, ...]
    quorum_apk_indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Challenge:
    challenger: str
    bond: int
    request_hash: bytes
    output_hash: bytes
    batch_index: int
    opened_block: int
    status: ChallengeStatus
    resolution_window: int  # blocks after opened_block it may be resolved in (fixed when it was opened)


@dataclass(frozen=True, slots=True)
class PendingSlashing:
    """``IFaultManagerTypes.PendingSlashing``: where the slashing of an upheld challenge stopped
    (the contract slashes at most ``maxSlashesPerCall`` (signer, quorum) pairs per transaction)."""

    signers_hash: bytes
    next_signer: int
    signer_count: int
    fraud_wad: int
    progress_block: int  # the last call that slashed; governance may abandon only ``stall_blocks`` after it
    stall_blocks: int  # the resolution window when the challenge was upheld
    slashed_amount: int

    @property
    def is_pending(self) -> bool:
        """Whether signers are left for ``continueSlashing``."""
        return any(self.signers_hash)


@dataclass(frozen=True, slots=True)
class Coverage:
    beneficiary: str
    quorum_number: int
    status: CoverageStatus
    expires_at_block: int
    amount: int
    payout: int


EMPTY_SIGNERS = BatchSigners(BatchHeader(0, b"\0" * 32, 0, b"\0"), (), (), (), (), ())


def encode_attestation(attestation: Attestation) -> tuple[bytes, bytes, int]:
    return (attestation.request_hash, attestation.output_hash, int(attestation.verdict))


def encode_signed_attestation(signed: SignedAttestation) -> tuple[Any, ...]:
    return (encode_attestation(signed.attestation), encode_g1(signed.signature))


def encode_batch_signers(signers: BatchSigners) -> tuple[Any, ...]:
    return (
        encode_batch_header(signers.header),
        list(signers.non_signer_ids),
        list(signers.non_signer_bitmap_indices),
        list(signers.signer_ids),
        list(signers.signer_bitmap_indices),
        list(signers.quorum_apk_indices),
    )


def encode_inference_request(request: InferenceRequest) -> tuple[Any, ...]:
    return (
        request.model_id,
        request.prompt_hash,
        request.temperature_milli,
        request.top_k,
        request.top_p_micro,
        request.seed,
        request.max_tokens,
        request.stop_sequences_hash,
        Web3.to_checksum_address(request.requester),
        request.nonce,
    )


class FaultProver(Protocol):
    def prove_equivocation(self, operator_id: OperatorId, a: SignedAttestation, b: SignedAttestation) -> bytes: ...

    def prove_rejected_output(
        self,
        operator_id: OperatorId,
        accept: SignedAttestation,
        quorum_numbers: bytes,
        reference_block: int,
        certificate: NonSignerStakesAndSignature,
    ) -> bytes: ...

    def challenge(
        self, header: BatchHeader, signatory_record_hash: bytes, leaf: tuple[bytes, bytes], proof: Sequence[bytes]
    ) -> bytes: ...

    def resolve_challenge(
        self,
        challenge_id: int,
        verdict: Verdict,
        reference_block: int,
        certificate: NonSignerStakesAndSignature,
        signers: BatchSigners = EMPTY_SIGNERS,
    ) -> bytes: ...

    def continue_slashing(self, challenge_id: int, signers: BatchSigners) -> bytes: ...

    def expire_challenge(self, challenge_id: int) -> bytes: ...


class InsuranceClient(Protocol):
    def buy_coverage(self, request: InferenceRequest, quorum_number: int, amount: int) -> bytes: ...

    def claim(self, request_hash: bytes) -> bytes: ...

    def get_coverage(self, request_hash: bytes) -> Coverage: ...


class Web3FaultClient:
    """``FaultProver`` and ``InsuranceClient`` over web3.py, sending through ``avs`` (its account)."""

    def __init__(self, avs: Web3AvsClient) -> None:
        deployment = avs.deployment
        if deployment.fault_manager is None or deployment.insurance_pool is None:
            raise AvsError("the deployment has no fault manager / insurance pool")
        self.avs = avs
        self.fault_manager = avs.w3.eth.contract(
            address=Web3.to_checksum_address(deployment.fault_manager), abi=load_abi("FaultManager")
        )
        self.pool = avs.w3.eth.contract(
            address=Web3.to_checksum_address(deployment.insurance_pool), abi=load_abi("InsurancePool")
        )

    # --- reads -------------------------------------------------------------------------

    def get_attestation_digest(self, attestation: Attestation) -> bytes:
        fn = self.fault_manager.functions.attestationDigest(encode_attestation(attestation))
        return bytes(self.avs._call(fn))

    def is_fault_slashed(self, fault_id: bytes) -> bool:
        return bool(self.avs._call(self.fault_manager.functions.isFaultSlashed(fault_id)))

    def find_leaf_challenge(self, batch_index: int, request_hash: bytes, output_hash: bytes) -> int:
        """``latestChallengeOfLeaf[keccak256(abi.encode(batchIndex, requestHash, outputHash))]`` (0: none)."""
        key = keccak(abi_encode(["uint64", "bytes32", "bytes32"], [batch_index, request_hash, output_hash]))
        return int(self.avs._call(self.fault_manager.functions.latestChallengeOfLeaf(key)))

    def get_challenge(self, challenge_id: int) -> Challenge:
        raw = self.avs._call(self.fault_manager.functions.getChallenge(challenge_id))
        status = ChallengeStatus(raw[6])
        return Challenge(raw[0], raw[1], bytes(raw[2]), bytes(raw[3]), raw[4], raw[5], status, int(raw[8]))

    def get_pending_slashing(self, challenge_id: int) -> PendingSlashing:
        raw = self.avs._call(self.fault_manager.functions.getPendingSlashing(challenge_id))
        return PendingSlashing(bytes(raw[0]), *(int(value) for value in raw[1:]))

    def get_challenge_count(self) -> int:
        return int(self.avs._call(self.fault_manager.functions.challengeCount()))

    def get_coverage(self, request_hash: bytes) -> Coverage:
        raw = self.avs._call(self.pool.functions.getCoverage(request_hash))
        return Coverage(raw[0], raw[1], CoverageStatus(raw[2]), raw[3], raw[4], raw[5])

    # --- faults ------------------------------------------------------------------------

    def prove_equivocation(
        self, operator_id: OperatorId, a: SignedAttestation, b: SignedAttestation, account: LocalAccount | None = None
    ) -> bytes:
        fn = self.fault_manager.functions.proveEquivocation(
            operator_id, encode_signed_attestation(a), encode_signed_attestation(b)
        )
        return self.avs.transact(fn, account)

    def prove_rejected_output(
        self,
        operator_id: OperatorId,
        accept: SignedAttestation,
        quorum_numbers: bytes,
        reference_block: int,
        certificate: NonSignerStakesAndSignature,
    ) -> bytes:
        fn = self.fault_manager.functions.proveRejectedOutput(
            operator_id,
            encode_signed_attestation(accept),
            quorum_numbers,
            reference_block,
            encode_signatures(certificate),
        )
        return self.avs.transact(fn)

    def challenge(
        self, header: BatchHeader, signatory_record_hash: bytes, leaf: tuple[bytes, bytes], proof: Sequence[bytes]
    ) -> bytes:
        fn = self.fault_manager.functions.challenge(
            encode_batch_header(header), signatory_record_hash, leaf[0], leaf[1], list(proof)
        )
        return self.avs.transact(fn)

    def resolve_challenge(
        self,
        challenge_id: int,
        verdict: Verdict,
        reference_block: int,
        certificate: NonSignerStakesAndSignature,
        signers: BatchSigners = EMPTY_SIGNERS,
    ) -> bytes:
        fn = self.fault_manager.functions.resolveChallenge(
            challenge_id, int(verdict), reference_block, encode_signatures(certificate), encode_batch_signers(signers)
        )
        return self.avs.transact(fn)

    def continue_slashing(self, challenge_id: int, signers: BatchSigners) -> bytes:
        """Slashes the next signers of an upheld challenge (the ``signers`` it was resolved with)."""
        fn = self.fault_manager.functions.continueSlashing(challenge_id, encode_batch_signers(signers))
        return self.avs.transact(fn)

    def expire_challenge(self, challenge_id: int) -> bytes:
        return self.avs.transact(self.fault_manager.functions.expireChallenge(challenge_id))

    # --- governance (the fault manager's owner) -----------------------------------------

    def set_max_slashes_per_call(self, max_slashes: int) -> bytes:
        """``setConfig`` with ``maxSlashesPerCall`` changed and the rest as it is: how many
        (signer, quorum) slashes one transaction of an upheld challenge makes (size it to the
        chain's block gas limit, ~146k gas each). Only the owner may; 0 is ``InvalidConfig``."""
        functions = self.fault_manager.functions
        config = list(self.avs._call(functions.config()))
        config[-1] = max_slashes  # IFaultManagerTypes.Config.maxSlashesPerCall
        quorums = bytes(self.avs._call(functions.escalationQuorumNumbers()))
        return self.avs.transact(functions.setConfig(tuple(config), quorums))

    # --- insurance ---------------------------------------------------------------------

    def buy_coverage(
        self, request: InferenceRequest, quorum_number: int, amount: int, account: LocalAccount | None = None
    ) -> bytes:
        fn = self.pool.functions.buyCoverage(encode_inference_request(request), quorum_number, amount)
        return self.avs.transact(fn, account)

    def claim(self, request_hash: bytes) -> bytes:
        return self.avs.transact(self.pool.functions.claim(request_hash))
