"""The challenger's real adapters: ``BatchCertified`` events, the aggregator's API, operators'
Verify (``OperatorLeafChecker``, over the operator set reader and caller Protocols), and the fault
manager (``challenge`` after approving the bond, ``resolveChallenge``, ``expireChallenge``,
``proveEquivocation``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import BadFunctionCallOutput, ContractLogicError
from web3.logs import DISCARD

from avs.chain.abi import load_abi
from avs.chain.client import (
    LOG_CHUNK_BLOCKS,
    ChallengeWindow,
    CheckSignaturesIndices,
    NonSignerStakesAndSignature,
    Web3AvsClient,
)
from avs.chain.faults import BatchSigners, Challenge, PendingSlashing, SignedAttestation, Web3FaultClient
from avs.client import AggregatorClient
from avs.errors import InvalidInputError
from avs.merkle import BatchLeaf
from avs.messages import BatchHeader, Domain, Verdict
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.convert import RequestEnvelope
from avs.types import OperatorId
from avs_aggregator.challenger.core import (
    CertifiedBatch,
    CheckerAnswer,
    LeafCheck,
    OpenedChallenge,
    compute_checker_order,
)
from avs_aggregator.challenger.resolution import EscalationConfig, is_valid_leaf_reply
from avs_aggregator.evidence import EvidenceBook
from avs_aggregator.ports import MembersReader, OperatorInfo, VerifyReply

MAX_UINT256 = 2**256 - 1


class Web3BatchFeed:
    def __init__(self, client: Web3AvsClient) -> None:
        self.client = client

    def get_block_number(self) -> int:
        return int(self.client.w3.eth.block_number)

    def get_certified_batches(self, from_block: int, to_block: int) -> list[CertifiedBatch]:
        """In chunks of LOG_CHUNK_BLOCKS: after a long downtime the range can exceed what a provider
        answers in one ``eth_getLogs``."""
        batches = []
        for start in range(from_block, to_block + 1, LOG_CHUNK_BLOCKS):
            batches += self._certified_batches(start, min(start + LOG_CHUNK_BLOCKS - 1, to_block))
        return batches

    def _certified_batches(self, from_block: int, to_block: int) -> list[CertifiedBatch]:
        event = self.client.task_manager.events.BatchCertified
        batches = []
        for log in event.get_logs(from_block=from_block, to_block=to_block):
            args = log["args"]
            header = BatchHeader(
                int(args["batchIndex"]),
                bytes(args["leavesRoot"]),
                int(args["referenceBlock"]),
                bytes(args["quorumNumbers"]),
            )
            batches.append(CertifiedBatch(header, bytes(args["signatoryRecordHash"]), int(log["blockNumber"])))
        return batches


class AggregatorLeafSource:
    def __init__(self, client: AggregatorClient) -> None:
        self.client = client

    def get_batch_leaves(self, batch_index: int) -> list[BatchLeaf]:
        info = self.client.get_batch(batch_index)
        if len(info.request_hashes) != len(info.output_hashes):
            raise InvalidInputError(
                f"the aggregator lists {len(info.request_hashes)} requests and {len(info.output_hashes)} outputs"
            )
        return [BatchLeaf(bytes(r), bytes(o)) for r, o in zip(info.request_hashes, info.output_hashes, strict=True)]

    def get_certificate(self, request_hash: bytes) -> ag.Certificate:
        return self.client.get_status(request_hash).certificate


class VerifyCaller(Protocol):
    """What the checker needs of ``GrpcOperatorCaller``: operators' Verify and the signing domain."""

    @property
    def domain(self) -> Domain: ...

    def verify(
        self, operator: OperatorInfo, envelope: RequestEnvelope, output_ids: Sequence[int], timeout: float
    ) -> VerifyReply: ...


class OperatorLeafChecker:
    """Re-verifies a leaf through ``checkers`` operators of the batch's quorums, chosen by
    ``core.compute_checker_order``: the operators that did not sign the batch first (a signer would
    vouch for its own output), then its signers, stake-weighted. It asks ``checkers`` at a time (in
    parallel) until that many gave a validly signed answer over the certified output (BLS against
    the registered key, ``protocol.is_valid_attestation``), one of them REJECTs (no need to ask
    more), or nobody is left. With ``evidence``, every validly signed answer is kept as
    equivocation evidence, and an operator whose answer on this output is already there is not
    asked again: a retry of a leaf only its signers accepted asks the others, not the signers."""

    def __init__(
        self,
        reader: MembersReader,
        caller: VerifyCaller,
        timeout: float = 60.0,
        seed: int | None = None,
        evidence: EvidenceBook | None = None,
        checkers: int = 2,
    ) -> None:
        self.reader = reader
        self.caller = caller
        self.timeout = timeout
        self.evidence = evidence
        self.checkers = checkers
        self._rng = random.Random(seed)
        self._pool = ThreadPoolExecutor(max_workers=checkers, thread_name_prefix="leaf-check")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def check(self, certificate: ag.Certificate) -> LeafCheck:
        header = convert.batch_header_from_proto(certificate.batch_header)
        members = self.reader.get_quorum_members(header.reference_block, header.quorum_numbers)
        signer_ids = members - {bytes(i) for i in certificate.non_signer_ids}
        reference_block, _ = self.reader.get_reference_block()
        operators = self.reader.get_operator_set(reference_block).in_quorums(header.quorum_numbers)
        order = compute_checker_order(operators, signer_ids, header.quorum_numbers, self._rng)
        known = self._recorded_answers(certificate, order, signer_ids)
        known_ids = {a.operator_id for a in known}
        queue = [o for o in order if o.operator_id not in known_ids]
        answers: list[CheckerAnswer] = []
        while queue and sum(a.verdict is not None for a in answers) < self.checkers:
            if any(a.verdict == Verdict.REJECT for a in (*known, *answers)):
                break
            wanted = self.checkers - sum(a.verdict is not None for a in answers)
            batch, queue = queue[:wanted], queue[wanted:]
            answers += self._ask(batch, signer_ids, certificate)
        has_independent = any(o.operator_id not in signer_ids for o in operators)
        return LeafCheck((*known, *answers), has_independent)

    def _recorded_answers(
        self, certificate: ag.Certificate, operators: Sequence[OperatorInfo], signer_ids: frozenset[bytes]
    ) -> list[CheckerAnswer]:
        """The answers on this output already in the evidence book (checked when they came), in order."""
        if self.evidence is None:
            return []
        request_hash = bytes(certificate.request_hash)
        verdicts = self.evidence.find_verdicts(request_hash, bytes(certificate.output_hash))
        return [
            CheckerAnswer(o.operator_id, o.operator_id in signer_ids, verdicts[o.operator_id])
            for o in operators
            if o.operator_id in verdicts
        ]

    def _ask(
        self, operators: Sequence[OperatorInfo], signer_ids: frozenset[bytes], certificate: ag.Certificate
    ) -> list[CheckerAnswer]:
        envelope = convert.request_from_proto(certificate.request)
        output_ids = list(certificate.output_token_ids)
        futures = [self._pool.submit(self.caller.verify, o, envelope, output_ids, self.timeout) for o in operators]
        return [
            self._judge(operator, operator.operator_id in signer_ids, future, certificate)
            for operator, future in zip(operators, futures, strict=True)
        ]

    def _judge(
        self, operator: OperatorInfo, is_signer: bool, future: Future[VerifyReply], certificate: ag.Certificate
    ) -> CheckerAnswer:
        try:
            reply = future.result(timeout=self.timeout + 5)
        except Exception as exc:  # down, slow, refused: not an answer
            return CheckerAnswer(operator.operator_id, is_signer, None, str(exc)[:200])
        if not is_valid_leaf_reply(self.caller.domain, operator, certificate, reply, self.evidence):
            return CheckerAnswer(operator.operator_id, is_signer, None, "not a valid attestation of the output")
        return CheckerAnswer(operator.operator_id, is_signer, reply.verdict)


class Web3Escalator:
    """``Escalator`` and ``resolution.ChallengeChain`` over ``Web3FaultClient`` (its account sends the
    challenge, resolve and expire transactions and holds the bond)."""

    def __init__(self, faults: Web3FaultClient) -> None:
        self.faults = faults
        self._approved = False

    def _approve_bond(self) -> None:
        avs = self.faults.avs
        token = avs.w3.eth.contract(
            address=Web3.to_checksum_address(avs.deployment.stake_token), abi=load_abi("TestToken")
        )
        avs.transact(token.functions.approve(self.faults.fault_manager.address, MAX_UINT256))
        self._approved = True

    def challenge(
        self, header: BatchHeader, signatory_record_hash: bytes, leaf: tuple[bytes, bytes], proof: Sequence[bytes]
    ) -> OpenedChallenge:
        if not self._approved:
            self._approve_bond()
        tx_hash = self.faults.challenge(header, signatory_record_hash, leaf, proof)
        receipt = self.faults.avs.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
        [event] = self.faults.fault_manager.events.ChallengeOpened().process_receipt(receipt, errors=DISCARD)
        return OpenedChallenge(int(event["args"]["challengeId"]), int(receipt["blockNumber"]), tx_hash)

    def get_challenge(self, challenge_id: int) -> Challenge:
        return self.faults.get_challenge(challenge_id)

    def find_leaf_challenge(self, batch_index: int, request_hash: bytes, output_hash: bytes) -> int:
        return self.faults.find_leaf_challenge(batch_index, request_hash, output_hash)

    def get_challenge_window(self) -> ChallengeWindow:
        """The task manager's challenge window, read from the chain at every call (the challenger asks
        once per poll): governance may change it."""
        return self.faults.avs.get_challenge_window()

    def get_certified_block(self, batch_index: int) -> int:
        """The block the batch was certified in (``getBatch``); 0 if it is not certified."""
        return self.faults.avs.get_certified_block(batch_index)

    def find_challenge_tx(self, challenge_id: int, opened_block: int) -> bytes | None:
        """The transaction that opened challenge ``challenge_id``: its ``ChallengeOpened`` log (the id
        is an indexed topic) in block ``opened_block``, one ``eth_getLogs``; None if not there."""
        event = self.faults.fault_manager.events.ChallengeOpened
        logs = event.get_logs(
            argument_filters={"challengeId": challenge_id}, from_block=opened_block, to_block=opened_block
        )
        for log in logs:
            if int(log["args"]["challengeId"]) == challenge_id:
                return bytes(log["transactionHash"])
        return None

    def get_block_number(self) -> int:
        return int(self.faults.avs.w3.eth.block_number)

    def get_escalation_config(self) -> EscalationConfig:
        """Read from the chain at every call (the resolver asks once per poll): governance may change it."""
        manager = self.faults.fault_manager.functions
        config = manager.config().call()
        return EscalationConfig(
            quorum_numbers=bytes(manager.escalationQuorumNumbers().call()),
            threshold_bps=self._get_escalation_threshold(manager, int(config[3])),
            resolution_window=int(config[4]),
        )

    @staticmethod
    def _get_escalation_threshold(manager: Any, configured: int) -> int:
        """What ``resolveChallenge`` checks: the configured share raised to the batch threshold and a
        majority (``escalationThresholdBps()``); a FaultManager deployed before that view resolves at
        the configured share."""
        try:
            return int(manager.escalationThresholdBps().call())
        except (ContractLogicError, BadFunctionCallOutput):
            return configured

    def get_check_signatures_indices(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> CheckSignaturesIndices:
        return self.faults.avs.get_check_signatures_indices(reference_block, quorum_numbers, non_signer_ids)

    def resolve_challenge(
        self,
        challenge_id: int,
        verdict: Verdict,
        reference_block: int,
        certificate: NonSignerStakesAndSignature,
        signers: BatchSigners,
    ) -> bytes:
        return self.faults.resolve_challenge(challenge_id, verdict, reference_block, certificate, signers)

    def get_pending_slashing(self, challenge_id: int) -> PendingSlashing:
        return self.faults.get_pending_slashing(challenge_id)

    def continue_slashing(self, challenge_id: int, signers: BatchSigners) -> bytes:
        return self.faults.continue_slashing(challenge_id, signers)

    def expire_challenge(self, challenge_id: int) -> bytes:
        return self.faults.expire_challenge(challenge_id)

    def prove_equivocation(self, operator_id: OperatorId, a: SignedAttestation, b: SignedAttestation) -> bytes:
        return self.faults.prove_equivocation(operator_id, a, b)
