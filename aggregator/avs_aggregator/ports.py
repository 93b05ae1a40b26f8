"""The aggregator's domain types and the small Protocols its logic runs over.

The pipeline never touches web3 or gRPC: it takes an ``OperatorSetReader`` (who is registered, with
which keys and stake, at a reference block), an ``OperatorCaller`` (the operator API) and a
``ChainWriter`` (certifyBatch and what it needs). Tests pass fakes; ``chain.py`` and
``operators.py`` hold the real ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from avs.chain.client import CheckSignaturesIndices, NonSignerStakesAndSignature
from avs.crypto.curve import G1Point, G2Point
from avs.merkle import BatchLeaf
from avs.messages import BatchHeader, Verdict
from avs.rpc.convert import RequestEnvelope
from avs.types import OperatorId, OutputHash


@dataclass(frozen=True, slots=True)
class OperatorInfo:
    """One registered operator at a reference block."""

    operator_id: OperatorId
    address: str
    pubkey_g1: G1Point
    pubkey_g2: G2Point
    socket: str
    stakes: dict[int, int] = field(hash=False)  # quorum -> stake, only the quorums it is in

    def is_in(self, quorum: int) -> bool:
        return quorum in self.stakes


@dataclass(frozen=True, slots=True)
class OperatorSet:
    """Every operator of the AVS at ``reference_block`` (sorted by operator id) and quorum totals."""

    reference_block: int
    block_hash: bytes
    operators: tuple[OperatorInfo, ...]
    total_stakes: dict[int, int] = field(hash=False)  # quorum -> total stake

    def get(self, operator_id: bytes) -> OperatorInfo | None:
        for operator in self.operators:
            if operator.operator_id == operator_id:
                return operator
        return None

    def in_quorums(self, quorums: bytes) -> tuple[OperatorInfo, ...]:
        """The operators in at least one of ``quorums``, ascending by operator id."""
        return tuple(op for op in self.operators if any(op.is_in(q) for q in quorums))


@dataclass(frozen=True, slots=True)
class GenerateReply:
    token_ids: tuple[int, ...]
    text: str
    output_hash: OutputHash
    signature: G1Point  # the primary's ACCEPT attestation


@dataclass(frozen=True, slots=True)
class VerifyReply:
    output_hash: OutputHash
    verdict: Verdict
    signature: G1Point
    reason: str = ""


class OperatorSetReader(Protocol):
    def get_reference_block(self) -> tuple[int, bytes]:
        """A recent block (number, hash) that is final enough to read stakes at."""
        ...

    def get_operator_set(self, reference_block: int) -> OperatorSet: ...


class MembersReader(OperatorSetReader, Protocol):
    """What the challenger reads: also a past block's quorum members, without archive state."""

    def get_quorum_members(self, block: int, quorum_numbers: bytes) -> frozenset[OperatorId]:
        """The operators in any of ``quorum_numbers`` at ``block``, however old ``block`` is."""
        ...


class OperatorCaller(Protocol):
    """The operator API. Every method raises on failure (down, slow, refused)."""

    def generate(self, operator: OperatorInfo, envelope: RequestEnvelope, timeout: float) -> GenerateReply: ...

    def verify(
        self, operator: OperatorInfo, envelope: RequestEnvelope, output_ids: Sequence[int], timeout: float
    ) -> VerifyReply: ...

    def sign_batch(
        self, operator: OperatorInfo, header: BatchHeader, leaves: Sequence[BatchLeaf], timeout: float
    ) -> G1Point: ...


class ChainWriter(Protocol):
    def get_block_number(self) -> int: ...

    def get_check_signatures_indices(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> CheckSignaturesIndices: ...

    def certify_batch(self, header: BatchHeader, signatures: NonSignerStakesAndSignature) -> tuple[bytes, int]:
        """Send certifyBatch and wait for it; (tx hash, gas used). Raises ``ContractRevertError``."""
        ...

    def get_certification(self, batch_index: int, from_block: int = 0) -> tuple[int, bytes] | None:
        """(certified block, tx hash) if ``batch_index`` is certified on-chain, else None.
        ``from_block`` (the batch's reference block): where its ``BatchCertified`` event is searched
        from, should the task manager's record ring have reused the index's slot."""
        ...


@runtime_checkable
class BlockHashReader(Protocol):
    """Optional on a ``ChainWriter``: the hash of a block, so a certified batch's block can be
    re-checked before the batch is final (writers without it are checked by block number only)."""

    def get_block_hash(self, block_number: int) -> bytes | None:
        """The canonical block's hash, or None if the chain has no such block (any more)."""
        ...


@runtime_checkable
class ThresholdReader(Protocol):
    """Optional on a ``ChainWriter``: the task manager's current ``thresholdBps``, so that governance
    raising it is followed without a config change (writers without it: the config's minimum)."""

    def get_threshold_bps(self) -> int: ...


@runtime_checkable
class ReferenceAgeReader(Protocol):
    """Optional on a ``ChainWriter``: the task manager's ``maxReferenceAge``, what the contract enforces,
    so that a batch or proof is given up only once the chain would refuse it (writers without it: the
    config's ``max_reference_age_blocks``)."""

    def get_max_reference_age(self) -> int: ...


@runtime_checkable
class CertificationChecker(Protocol):
    """Optional on a ``ChainWriter``: whether a batch index is certified with *this* header and
    signer record (``InferenceTaskManager.isCertified``). Another aggregator, or a run that lost its
    database, may certify the same index with another batch; without this, certified means ours."""

    def is_certified(self, header: BatchHeader, signatory_record_hash: bytes) -> bool: ...


@runtime_checkable
class RingSlotReader(Protocol):
    """Optional on a ``ChainWriter``: what the task manager's batch record ring slot of an index
    holds (``InferenceTaskManager.getRingSlot``): (held batch index, its certified block), (0, 0)
    when empty. New batches skip indices that are held or whose slot a later index holds."""

    def get_ring_slot(self, batch_index: int) -> tuple[int, int]: ...


class RejectionReporter(Protocol):
    """Sends the rejected-output proof that slashes a primary (``FaultManager.proveRejectedOutput``)."""

    def report_rejected_output(
        self,
        primary: OperatorId,
        request_hash: bytes,
        output_hash: bytes,
        primary_signature: G1Point,
        quorum_numbers: bytes,
        reference_block: int,
        certificate: NonSignerStakesAndSignature,
    ) -> bytes: ...
