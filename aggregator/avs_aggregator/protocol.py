"""The pure core of the protocol: primary selection, the stake tally, multi-quorum aggregation.

No I/O, no clock. Everything here is reproducible from its arguments, so anyone can re-derive
who had to be the primary and whether a quorum was met.

**Primary selection rule.** Candidates are the operators with stake in at least one of the
request's quorums, minus the ``excluded`` ones (earlier primaries that were rejected or failed),
ascending by operator id; the weight of a candidate is the sum of its stake over the request's
quorums. ``seed = keccak256(requestHash ‖ blockHash ‖ uint32(attempt))``; the primary is the
candidate whose cumulative-weight interval contains ``uint256(seed) mod totalWeight``. So the
chance of being picked is proportional to stake, and the choice is fixed by the request hash and
the reference block's hash (not by the aggregator's whim).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from eth_utils import keccak

from avs.chain.client import CheckSignaturesIndices, NonSignerStakesAndSignature
from avs.client import compute_signatory_record_hash as compute_signatory_record_hash
from avs.crypto import bls
from avs.crypto.curve import G1Point, G2Point
from avs.errors import InvalidInputError
from avs.messages import BPS, Attestation, Domain, Verdict, compute_digest
from avs.types import OperatorId
from avs_aggregator.ports import OperatorInfo, OperatorSet

VerdictMap = Mapping[OperatorId, Verdict] | Mapping[bytes, Verdict]
SignatureMap = Mapping[OperatorId, G1Point] | Mapping[bytes, G1Point]


class NoOperatorError(InvalidInputError):
    """No operator with stake is left to serve the request."""


def compute_selection_seed(request_hash: bytes, block_hash: bytes, attempt: int) -> int:
    return int.from_bytes(keccak(request_hash + block_hash + attempt.to_bytes(4, "big")), "big")


def compute_weight(operator: OperatorInfo, quorums: bytes) -> int:
    return sum(operator.stakes.get(q, 0) for q in quorums)


def select_primary(
    operator_set: OperatorSet,
    quorums: bytes,
    request_hash: bytes,
    attempt: int,
    excluded: Collection[bytes] = (),
) -> OperatorInfo:
    """The stake-weighted primary of the module docstring's rule; raises ``NoOperatorError``."""
    candidates = [
        op
        for op in operator_set.in_quorums(quorums)
        if op.operator_id not in excluded and compute_weight(op, quorums) > 0
    ]
    total = sum(compute_weight(op, quorums) for op in candidates)
    if total == 0:
        raise NoOperatorError("no operator with stake in the request's quorums is left to generate")
    point = compute_selection_seed(request_hash, operator_set.block_hash, attempt) % total
    for op in candidates:
        point -= compute_weight(op, quorums)
        if point < 0:
            return op
    raise AssertionError("unreachable: the point is below the total weight")  # pragma: no cover


# --- tally -----------------------------------------------------------------------------


# FaultManager.MIN_REJECTION_THRESHOLD_BPS: a REJECT certificate needs more than half of each
# quorum's stake on-chain, whatever the (possibly lower) certification threshold.
MIN_REJECTION_THRESHOLD_BPS = 5_001


@dataclass(frozen=True, slots=True)
class QuorumTally:
    quorum: int
    accept_stake: int
    reject_stake: int
    total_stake: int

    def is_met(self, stake: int, threshold_bps: int) -> bool:
        return self.total_stake > 0 and stake * BPS >= self.total_stake * threshold_bps


@dataclass(frozen=True, slots=True)
class Tally:
    quorums: tuple[QuorumTally, ...]

    def is_accepted(self, threshold_bps: int) -> bool:
        return all(q.is_met(q.accept_stake, threshold_bps) for q in self.quorums)

    def is_rejected(self, threshold_bps: int) -> bool:
        """REJECT reached the threshold in every quorum: a rejection certificate can be made."""
        return all(q.is_met(q.reject_stake, threshold_bps) for q in self.quorums)

    def rejecting_quorums(self, threshold_bps: int) -> bytes:
        """The quorums (in order) whose REJECT stake reached the threshold: each can prove the output
        wrong on its own (``proveRejectedOutput`` slashes the quorums of its certificate)."""
        return bytes(q.quorum for q in self.quorums if q.is_met(q.reject_stake, threshold_bps))

    def signing_quorums(self, threshold_bps: int) -> bytes:
        """The quorums (in order) whose signing (``accept``) stake reached the threshold."""
        return bytes(q.quorum for q in self.quorums if q.is_met(q.accept_stake, threshold_bps))


def compute_tally(operator_set: OperatorSet, quorums: bytes, verdicts: VerdictMap) -> Tally:
    """ACCEPT and REJECT stake per quorum at the operator set's reference block."""
    rows = []
    for q in quorums:
        accept = reject = 0
        for op in operator_set.operators:
            verdict = verdicts.get(op.operator_id)
            if verdict is None or q not in op.stakes:
                continue
            if verdict == Verdict.ACCEPT:
                accept += op.stakes[q]
            else:
                reject += op.stakes[q]
        rows.append(QuorumTally(q, accept, reject, operator_set.total_stakes.get(q, 0)))
    return Tally(tuple(rows))


# --- aggregation -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Aggregate:
    """A checked aggregate signature in the contract's multi-quorum form."""

    signer_ids: tuple[OperatorId, ...]  # ascending
    multiplicity: dict[bytes, int]  # signer -> number of the quorums it is in
    non_signers: tuple[OperatorInfo, ...]  # ascending by operator id
    quorum_apks: tuple[G1Point, ...]
    apk_g1: G1Point
    apk_g2: G2Point
    sigma: G1Point
    tally: Tally

    def to_signatures(self, indices: CheckSignaturesIndices) -> NonSignerStakesAndSignature:
        return NonSignerStakesAndSignature(
            non_signer_pubkeys=tuple(op.pubkey_g1 for op in self.non_signers),
            quorum_apks=self.quorum_apks,
            apk_g2=self.apk_g2,
            sigma=self.sigma,
            indices=indices,
        )

    @property
    def non_signer_ids(self) -> tuple[OperatorId, ...]:
        return tuple(op.operator_id for op in self.non_signers)


def compute_multiplicity(operator: OperatorInfo, quorums: bytes) -> int:
    return sum(1 for q in quorums if operator.is_in(q))


def compute_quorum_apk(operator_set: OperatorSet, quorum: int) -> G1Point:
    """The registry's aggregate G1 key of ``quorum`` at the reference block: the sum of its members' keys."""
    return bls.aggregate_g1([op.pubkey_g1 for op in operator_set.operators if op.is_in(quorum)])


def find_invalid_signers(operator_set: OperatorSet, digest: bytes, signatures: SignatureMap) -> list[OperatorId]:
    """Signers whose individual signature over ``digest`` does not verify (bisection over batch checks)."""
    by_id: dict[bytes, G1Point] = dict(signatures.items())
    ids = sorted(by_id)
    items = []
    for operator_id in ids:
        op = operator_set.get(operator_id)
        if op is None:
            return [OperatorId(i) for i in ids if operator_set.get(i) is None]
        items.append(bls.SignedMessage(op.pubkey_g2, digest, by_id[operator_id]))
    return [OperatorId(ids[i]) for i in bls.find_invalid_signatures(items)]


def compute_aggregate(
    operator_set: OperatorSet, quorums: bytes, digest: bytes, signatures: SignatureMap
) -> Aggregate | None:
    """Aggregate ``signatures`` over ``digest`` as ``checkSignatures`` expects, or None if the
    aggregate does not verify (then use ``find_invalid_signers`` and drop them).

    A signer in k of ``quorums`` is counted k times in ``apkG2`` and ``sigma``: the contract's
    apk is the sum of quorum apks minus each non-signer times its quorum count.
    """
    members = operator_set.in_quorums(quorums)
    signers = [op for op in members if op.operator_id in signatures]
    if not signers:
        return None
    g1_keys: list[G1Point] = []
    g2_keys: list[G2Point] = []
    sigs: list[G1Point] = []
    multiplicity: dict[bytes, int] = {}
    for op in signers:
        k = compute_multiplicity(op, quorums)
        multiplicity[op.operator_id] = k
        g1_keys += [op.pubkey_g1] * k
        g2_keys += [op.pubkey_g2] * k
        sigs += [signatures[op.operator_id]] * k
    apk_g1, apk_g2, sigma = bls.aggregate_g1(g1_keys), bls.aggregate_g2(g2_keys), bls.aggregate_g1(sigs)
    if not bls.verify_aggregate(digest, apk_g1, apk_g2, sigma):
        return None
    verdicts: dict[bytes, Verdict] = {op.operator_id: Verdict.ACCEPT for op in signers}
    return Aggregate(
        signer_ids=tuple(op.operator_id for op in signers),
        multiplicity=multiplicity,
        non_signers=tuple(op for op in members if op.operator_id not in signatures),
        quorum_apks=tuple(compute_quorum_apk(operator_set, q) for q in quorums),
        apk_g1=apk_g1,
        apk_g2=apk_g2,
        sigma=sigma,
        tally=compute_tally(operator_set, quorums, verdicts),
    )


def compute_checked_aggregate(
    operator_set: OperatorSet, quorums: bytes, digest: bytes, signatures: SignatureMap
) -> tuple[Aggregate | None, tuple[OperatorId, ...]]:
    """``compute_aggregate``, and if it does not verify, again without the signers whose own
    signature is invalid. Returns the aggregate (None if no valid signature is left) and the ids
    dropped. Batch certificates, rejection proofs and escalation certificates are all made here."""
    if not signatures:
        return None, ()
    aggregate = compute_aggregate(operator_set, quorums, digest, signatures)
    if aggregate is not None:
        return aggregate, ()
    invalid = tuple(find_invalid_signers(operator_set, digest, signatures))
    rest = {k: v for k, v in signatures.items() if k not in invalid}
    return (compute_aggregate(operator_set, quorums, digest, rest) if rest else None), invalid


def select_certified_verdict(tally: Tally, threshold_bps: int) -> Verdict | None:
    """The verdict whose stake reaches ``threshold_bps`` in every quorum (REJECT first), or None."""
    if tally.is_rejected(threshold_bps):
        return Verdict.REJECT
    if tally.is_accepted(threshold_bps):
        return Verdict.ACCEPT
    return None


def is_valid_attestation(domain: Domain, operator: OperatorInfo, attestation: Attestation, signature: G1Point) -> bool:
    """Whether ``operator`` signed ``attestation`` (``signature`` over its typed digest)."""
    return bls.verify(operator.pubkey_g2, compute_digest(domain, attestation), signature)
