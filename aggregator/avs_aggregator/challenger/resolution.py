"""Resolving the challenges the challenger opened.

For an open challenge of leaf (requestHash, outputHash) of batch B:

1. Read the challenge on-chain. Ended (by anyone, or by us before a crash) -> record how it ended.
2. At or past ``openedBlock +`` the challenge's own ``resolutionWindowBlocks`` (copied when it
   opened) -> ``expireChallenge`` (the bond comes back): a transaction sent at the head runs in the
   next block, past the window.
3. Otherwise pick a reference block (the reader's ``latest - lag``); it must be at or after the
   challenge's ``openedBlock`` (the contract refuses older ones), so wait a block if it is not.
4. Ask every operator of the escalation quorums (``FaultManager.escalationQuorumNumbers``) at that
   block to verify the request/output by prefill (their Verify RPC: a BLS-signed
   ``Attestation(requestHash, outputHash, verdict)``), all at once and within one deadline for the
   round; a down, slow or badly signing operator does not count. Signed attestations go to the
   evidence book (equivocations).
5. Tally ACCEPT and REJECT stake per escalation quorum (``protocol.compute_tally``); the verdict that
   reaches ``escalationThresholdBps`` in every quorum (``protocol.select_certified_verdict``) is
   aggregated like a batch certificate (``protocol.compute_checked_aggregate``).
6. ``resolveChallenge(challengeId, verdict, referenceBlock, certificate, signers)``. For REJECT,
   ``signers`` are B's signers: the operators of B's quorums at B's reference block less its
   certified non-signers (from the leaf's certificate), with history indices; the members are read
   from the registry's history at the latest block, so no archive node is needed. REJECT slashes them,
   returns the bond and rewards the challenger; ACCEPT gives the bond to the insurance pool.
7. REJECT slashes at most ``maxSlashesPerCall`` (signer, quorum) pairs per transaction: while
   ``getPendingSlashing`` says signers are left, ``continueSlashing`` with the same signers. The row
   stays OPEN until the last one, so a challenger stopped in between (or one that finds a challenge
   someone else upheld halfway) finishes the slashing at its next poll.

No verdict reaches the threshold -> try again at the next poll (operators may come back) until the
window ends, then expire. Every outcome is written to the store before the next challenge.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from avs.chain.client import ChallengeWindow, CheckSignaturesIndices, ContractRevertError, NonSignerStakesAndSignature
from avs.chain.faults import EMPTY_SIGNERS, BatchSigners, Challenge, ChallengeStatus, PendingSlashing, SignedAttestation
from avs.crypto.curve import G1Point
from avs.logs import redact_urls
from avs.messages import Attestation, Domain, Verdict, compute_digest
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.types import OperatorId
from avs_aggregator import protocol
from avs_aggregator.challenger.core import CHALLENGE_GONE_DEPTH
from avs_aggregator.challenger.store import ChallengeRow, ChallengerStore, ChallengeState
from avs_aggregator.evidence import EvidenceBook
from avs_aggregator.pipeline import CALL_GRACE_SECONDS
from avs_aggregator.ports import MembersReader, OperatorCaller, OperatorInfo, OperatorSet, VerifyReply

logger = logging.getLogger(__name__)

# Threads for an escalation round's Verify calls, created as needed: one per member, so that members
# that take the call and never answer each hold their own thread, not the others' turn (8 threads made
# 24 hung members cost three verify_timeouts a round). Deploy.s.sol caps a quorum at 64 operators
# (maxOperatorCount): this is four full escalation quorums. The round's one deadline bounds it anyway.
ESCALATION_CALL_THREADS = 256


STATE_OF_STATUS = {
    ChallengeStatus.OPEN: ChallengeState.OPEN,
    ChallengeStatus.UPHELD: ChallengeState.UPHELD,
    ChallengeStatus.DISMISSED: ChallengeState.DISMISSED,
    ChallengeStatus.EXPIRED: ChallengeState.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class EscalationConfig:
    """``FaultManager.escalationQuorumNumbers`` and the parts of ``config()`` resolution needs."""

    quorum_numbers: bytes
    threshold_bps: int
    resolution_window: int


class ChallengeChain(Protocol):
    def get_block_number(self) -> int: ...

    def get_escalation_config(self) -> EscalationConfig: ...

    def get_challenge(self, challenge_id: int) -> Challenge: ...

    def get_check_signatures_indices(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> CheckSignaturesIndices: ...

    def resolve_challenge(
        self,
        challenge_id: int,
        verdict: Verdict,
        reference_block: int,
        certificate: NonSignerStakesAndSignature,
        signers: BatchSigners,
    ) -> bytes:
        """Send ``resolveChallenge`` and wait for it. Raises ``ContractRevertError``."""
        ...

    def expire_challenge(self, challenge_id: int) -> bytes: ...

    def find_leaf_challenge(self, batch_index: int, request_hash: bytes, output_hash: bytes) -> int:
        """The latest challenge of the leaf in the mined state (``latestChallengeOfLeaf``); 0 if none."""
        ...

    def get_challenge_window(self) -> ChallengeWindow: ...

    def get_certified_block(self, batch_index: int) -> int:
        """The block the batch was certified in (``getBatch``); 0 if it is not certified."""
        ...

    def get_pending_slashing(self, challenge_id: int) -> PendingSlashing: ...

    def continue_slashing(self, challenge_id: int, signers: BatchSigners) -> bytes:
        """Send ``continueSlashing`` and wait for it. Raises ``ContractRevertError``."""
        ...


@dataclass(frozen=True, slots=True)
class EscalationCertificate:
    verdict: Verdict
    reference_block: int
    certificate: NonSignerStakesAndSignature
    tally: protocol.Tally


def is_valid_leaf_reply(
    domain: Domain,
    operator: OperatorInfo,
    certificate: ag.Certificate,
    reply: VerifyReply,
    evidence: EvidenceBook | None,
) -> bool:
    """Whether ``reply`` is ``operator``'s validly signed verdict on the certified output; a valid
    one goes to the evidence book (equivocations are proven from there)."""
    attestation = Attestation(bytes(certificate.request_hash), reply.output_hash, reply.verdict)
    if reply.output_hash != bytes(certificate.output_hash) or not protocol.is_valid_attestation(
        domain, operator, attestation, reply.signature
    ):
        return False
    if evidence is not None:
        evidence.record(operator.operator_id, SignedAttestation(attestation, reply.signature))
    return True


def _certificate_of(row: ChallengeRow) -> ag.Certificate:
    """The certificate of the challenged leaf, as the challenger stored it."""
    return ag.Certificate.FromString(row.certificate)


def describe_tally(tally: protocol.Tally) -> str:
    return ", ".join(
        f"quorum {q.quorum}: accept {q.accept_stake} reject {q.reject_stake} of {q.total_stake}" for q in tally.quorums
    )


class Resolver:
    def __init__(
        self,
        domain: Domain,
        store: ChallengerStore,
        chain: ChallengeChain,
        reader: MembersReader,
        caller: OperatorCaller,
        verify_timeout: float = 60.0,
        evidence: EvidenceBook | None = None,
        workers: int = ESCALATION_CALL_THREADS,
    ) -> None:
        self.domain = domain
        self.store = store
        self.chain = chain
        self.reader = reader
        self.caller = caller
        self.verify_timeout = verify_timeout
        self.evidence = evidence
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="escalation-verify")
        self._config: EscalationConfig | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def config(self) -> EscalationConfig:
        if self._config is None:
            self._config = self.chain.get_escalation_config()
        return self._config

    def advance_all(self) -> list[ChallengeRow]:
        """One step for every open challenge; returns the ones that ended in this call (not one given
        up to a reorg: its leaf's challenge goes on, under the id the chain gives it or sent again)."""
        self._config = None  # read once per poll: governance may change quorums, threshold or window
        ended = []
        for row in self.store.list_challenges([ChallengeState.OPEN]):
            try:
                state = self.advance(row)
            except Exception as exc:  # the chain or the operators are unreachable: next poll
                logger.warning("challenge not advanced", extra={"challenge_id": row.challenge_id, "error": str(exc)})
                self.store.update_challenge(row.challenge_id, error=redact_urls(str(exc))[:2000])
                continue
            if state is not None and state != ChallengeState.OPEN:
                ended.append(self.store.get_challenge(row.challenge_id) or row)
        return ended

    def _requeue(self, row: ChallengeRow, reason: str) -> None:
        """A reorg took the challenge away from its id: the fraud is still there, so the leaf goes back
        to "to challenge", where its challenge is adopted under the id the chain gives it now (with our
        bond in it), or sent again while the window is open. The row ends EXPIRED, but the leaf's
        challenge did not end (``advance`` returns None: not counted as ended)."""
        self.store.requeue_challenge(row.challenge_id, reason)
        logger.warning("challenge lost to a reorg", extra={"challenge_id": row.challenge_id, "error": reason})

    def advance(self, row: ChallengeRow) -> ChallengeState | None:
        """One step for ``row``: its state after it, or None when it was given up to a reorg."""
        on_chain = self.chain.get_challenge(row.challenge_id)
        state = STATE_OF_STATUS.get(on_chain.status)
        if state is None:  # not on-chain: a lagging node, or a reorg
            if not self._is_gone(row):
                self.store.update_challenge(row.challenge_id, error="not on-chain (yet); checked again")
                return ChallengeState.OPEN
            self._requeue(row, "not on-chain")
            return None
        if (on_chain.request_hash, on_chain.output_hash, on_chain.batch_index) != (
            bytes(row.request_hash),
            bytes(row.output_hash),
            row.batch_index,
        ):  # after a reorg the id may name another leaf's challenge: never resolve that one as ours
            self._requeue(row, "the challenge id names another leaf now (a reorg); not ours to resolve")
            return None
        if state == ChallengeState.UPHELD:
            self._finish_slashing(row)
        if state != ChallengeState.OPEN:
            self.store.update_challenge(row.challenge_id, state=state, error=None)
            return state
        opened = on_chain.opened_block
        # A transaction sent now runs in the next block: at the window's last block a resolve would
        # revert ChallengeExpired, while an expire is already valid.
        if self.chain.get_block_number() >= opened + on_chain.resolution_window:
            return self._expire(row)
        reference_block, _ = self.reader.get_reference_block()
        if reference_block < opened:  # the certificate must be from the challenge's block on
            return ChallengeState.OPEN
        escalation = self.collect_certificate(row, reference_block)
        if escalation is None:
            return ChallengeState.OPEN
        return self._resolve(row, escalation)

    def _is_gone(self, row: ChallengeRow) -> bool:
        """Whether our challenge, which the chain does not show, is given up now: its leaf goes back to
        "to challenge", where the challenge the chain names for the leaf is adopted, or ours sent
        again. Once the node is at our challenge's block, that is as soon as the chain names another
        live challenge of the leaf (a reorg renumbered ours), or while a challenge sent now can still
        be mined in the batch's window: sending again risks no bond (ours still pending makes the gas
        estimate revert ``LeafAlreadyChallenged``), while waiting ``CHALLENGE_GONE_DEPTH`` blocks
        outlasted the deployed 50-block window. Otherwise only that deep: given up then, a challenge
        a reorg mines again would go unresolved."""
        head = self.chain.get_block_number()
        if head >= row.opened_block + CHALLENGE_GONE_DEPTH:
            return True
        if head < row.opened_block:  # the node is behind the block our receipt came from
            return False
        latest = self.chain.find_leaf_challenge(row.batch_index, bytes(row.request_hash), bytes(row.output_hash))
        if latest == row.challenge_id:  # the node names it after all: reads answered at different heights
            return False
        if latest and self.chain.get_challenge(latest).status != ChallengeStatus.EXPIRED:
            return True
        return self._is_challenge_window_open(row.batch_index, head)

    def _is_challenge_window_open(self, batch_index: int, head: int) -> bool:
        """Whether a challenge of the batch sent now (it runs in the next block) is in its window."""
        certified_block = self.chain.get_certified_block(batch_index)
        return certified_block != 0 and head < self.chain.get_challenge_window().deadline(certified_block)

    def collect_certificate(self, row: ChallengeRow, reference_block: int) -> EscalationCertificate | None:
        """Ask the escalation quorums to verify the leaf; the certificate of the verdict that
        reaches the threshold, or None (recorded in the row's ``error``)."""
        config = self.config
        certificate = _certificate_of(row)
        operator_set = self.reader.get_operator_set(reference_block)
        verdicts, signatures = self._ask(
            operator_set, config.quorum_numbers, certificate, f"challenge {row.challenge_id}"
        )
        tally = protocol.compute_tally(operator_set, config.quorum_numbers, verdicts)
        verdict = protocol.select_certified_verdict(tally, config.threshold_bps)
        if verdict is None:
            shares = describe_tally(tally)
            self.store.update_challenge(
                row.challenge_id, attempts=row.attempts + 1, error=f"no escalation certificate yet ({shares})"
            )
            return None
        digest = compute_digest(self.domain, Attestation(row.request_hash, row.output_hash, verdict))
        aggregate, _ = protocol.compute_checked_aggregate(
            operator_set, config.quorum_numbers, digest, signatures[verdict]
        )
        if aggregate is None or not aggregate.tally.is_accepted(config.threshold_bps):
            self.store.update_challenge(
                row.challenge_id, attempts=row.attempts + 1, error="the escalation signatures do not aggregate"
            )
            return None
        indices = self.chain.get_check_signatures_indices(
            reference_block, config.quorum_numbers, aggregate.non_signer_ids
        )
        return EscalationCertificate(verdict, reference_block, aggregate.to_signatures(indices), tally)

    def predict_verdict(self, certificate: ag.Certificate) -> tuple[Verdict | None, str]:
        """What the escalation quorums would certify for this leaf now (asked off-chain, at the
        reader's reference block), and the stake shares: the challenger bonds a challenge only when
        it would be upheld, so one operator's mistaken or malicious REJECT costs it no bond."""
        config = self.config
        reference_block, _ = self.reader.get_reference_block()
        operator_set = self.reader.get_operator_set(reference_block)
        verdicts, _ = self._ask(operator_set, config.quorum_numbers, certificate, "confirmation")
        tally = protocol.compute_tally(operator_set, config.quorum_numbers, verdicts)
        return protocol.select_certified_verdict(tally, config.threshold_bps), describe_tally(tally)

    def _ask(
        self, operator_set: OperatorSet, quorums: bytes, certificate: ag.Certificate, label: str
    ) -> tuple[dict[bytes, Verdict], dict[Verdict, dict[bytes, G1Point]]]:
        envelope = convert.request_from_proto(certificate.request)
        output_ids = [int(t) for t in certificate.output_token_ids]
        members = operator_set.in_quorums(quorums)
        futures = {
            o.operator_id: self._pool.submit(self.caller.verify, o, envelope, output_ids, self.verify_timeout)
            for o in members
        }
        # One deadline for the whole round, not one per call in turn: the calls run at once, so hung
        # members cost one verify_timeout together. A call still out then does not count: a queued one
        # is cancelled, a running one ends at its own gRPC deadline, its answer unused.
        _, late = wait(futures.values(), timeout=self.verify_timeout + CALL_GRACE_SECONDS)
        for future in late:
            future.cancel()
        verdicts: dict[bytes, Verdict] = {}
        signatures: dict[Verdict, dict[bytes, G1Point]] = {Verdict.ACCEPT: {}, Verdict.REJECT: {}}
        for operator in members:
            reply = self._get_valid_reply(operator, futures[operator.operator_id], certificate, label)
            if reply is not None:
                verdicts[operator.operator_id] = reply.verdict
                signatures[reply.verdict][operator.operator_id] = reply.signature
        return verdicts, signatures

    def _get_valid_reply(
        self, operator: OperatorInfo, future: Future[VerifyReply], certificate: ag.Certificate, label: str
    ) -> VerifyReply | None:
        """The operator's answer if it came within the round and is its validly signed verdict on the output."""
        if not future.done() or future.cancelled():  # still out at the round's deadline
            return None
        try:
            reply = future.result()
        except Exception as exc:  # down, refused, its own deadline
            logger.info("escalation verifier failed", extra={"about": label, "error": str(exc)})
            return None
        if not is_valid_leaf_reply(self.domain, operator, certificate, reply, self.evidence):
            return None
        return reply

    def get_batch_signers(self, certificate: ag.Certificate) -> BatchSigners:
        """The certified batch's signers (``IFaultManagerTypes.BatchSigners``): its quorums' operators
        at its reference block less the certified non-signers, both ascending, with history indices.
        The members come from the registry's history, so a batch older than a full node's state
        still resolves."""
        header = convert.batch_header_from_proto(certificate.batch_header)
        non_signers = tuple(OperatorId(bytes(i)) for i in certificate.non_signer_ids)
        members = self.reader.get_quorum_members(header.reference_block, header.quorum_numbers)
        signers = tuple(sorted(members.difference(non_signers)))
        signer_indices = self.chain.get_check_signatures_indices(header.reference_block, header.quorum_numbers, signers)
        non_signer_bitmap_indices: tuple[int, ...] = ()
        if non_signers:
            non_signer_bitmap_indices = self.chain.get_check_signatures_indices(
                header.reference_block, header.quorum_numbers, non_signers
            ).non_signer_quorum_bitmap_indices
        return BatchSigners(
            header=header,
            non_signer_ids=non_signers,
            non_signer_bitmap_indices=non_signer_bitmap_indices,
            signer_ids=signers,
            signer_bitmap_indices=signer_indices.non_signer_quorum_bitmap_indices,
            quorum_apk_indices=signer_indices.quorum_apk_indices,
        )

    def _resolve(self, row: ChallengeRow, escalation: EscalationCertificate) -> ChallengeState:
        verdict = escalation.verdict
        signers = EMPTY_SIGNERS
        if verdict == Verdict.REJECT:
            signers = self.get_batch_signers(_certificate_of(row))
        try:
            tx = self.chain.resolve_challenge(
                row.challenge_id, verdict, escalation.reference_block, escalation.certificate, signers
            )
        except ContractRevertError as exc:
            return self._after_revert(row, exc)
        resolved = {"verdict": int(verdict), "reference_block": escalation.reference_block, "close_tx": tx}
        if verdict == Verdict.REJECT:
            self.store.update_challenge(row.challenge_id, **resolved)  # still OPEN: signers may be left
            self._finish_slashing(row, signers)
        state = ChallengeState.UPHELD if verdict == Verdict.REJECT else ChallengeState.DISMISSED
        self.store.update_challenge(row.challenge_id, state=state, error=None, **resolved)
        logger.warning(
            "challenge resolved",
            extra={"challenge_id": row.challenge_id, "verdict": verdict.name, "tx": "0x" + tx.hex()},
        )
        return state

    def _finish_slashing(self, row: ChallengeRow, signers: BatchSigners | None = None) -> None:
        """``continueSlashing`` until no signer of the upheld challenge is left (``signers``: those
        it was resolved with; by default computed again from the row's certificate). Each
        transaction slashes at least one signer, so this ends; a revert because someone else slashed
        the last ones first is fine, any other is raised (the row stays OPEN: next poll)."""
        challenge_id = row.challenge_id
        pending = self.chain.get_pending_slashing(challenge_id)
        if not pending.is_pending:
            return
        signers = signers or self.get_batch_signers(_certificate_of(row))
        for _ in range(pending.signer_count):
            logger.info(
                "slashing the next signers",
                extra={"challenge_id": challenge_id, "next": pending.next_signer, "of": pending.signer_count},
            )
            try:
                self.chain.continue_slashing(challenge_id, signers)
            except ContractRevertError:
                if self.chain.get_pending_slashing(challenge_id).is_pending:
                    raise
                return
            pending = self.chain.get_pending_slashing(challenge_id)
            if not pending.is_pending:
                return
        raise RuntimeError(f"challenge {challenge_id}: slashing made no progress")

    def _expire(self, row: ChallengeRow) -> ChallengeState:
        try:
            tx = self.chain.expire_challenge(row.challenge_id)
        except ContractRevertError as exc:
            return self._after_revert(row, exc)
        self.store.update_challenge(row.challenge_id, state=ChallengeState.EXPIRED, close_tx=tx)
        logger.warning("challenge expired unresolved", extra={"challenge_id": row.challenge_id})
        return ChallengeState.EXPIRED

    def _after_revert(self, row: ChallengeRow, exc: ContractRevertError) -> ChallengeState:
        """Someone else ended it first (``ChallengeNotOpen``): record how (upheld: after slashing
        the signers its resolution left); else keep it open."""
        on_chain = self.chain.get_challenge(row.challenge_id)
        state = STATE_OF_STATUS.get(on_chain.status, ChallengeState.OPEN)
        if state == ChallengeState.UPHELD:
            self._finish_slashing(row)
        self.store.update_challenge(row.challenge_id, state=state, error=redact_urls(str(exc))[:2000])
        logger.warning("challenge transaction reverted", extra={"challenge_id": row.challenge_id, "error": str(exc)})
        return state
