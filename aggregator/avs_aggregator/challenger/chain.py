"""The challenger's real adapters: ``BatchCertified`` events, the aggregator's API, an operator's
Verify, and the fault manager (``challenge`` after approving the bond, ``resolveChallenge``,
``expireChallenge``, ``proveEquivocation``)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from hexbytes import HexBytes
from web3 import Web3
from web3.logs import DISCARD

from avs.chain.abi import load_abi
from avs.chain.client import CheckSignaturesIndices, NonSignerStakesAndSignature, Web3AvsClient
from avs.chain.faults import BatchSigners, Challenge, SignedAttestation, Web3FaultClient
from avs.client import AggregatorClient
from avs.messages import Attestation, BatchHeader, Verdict
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.types import OperatorId
from avs_aggregator.chain import Web3OperatorSetReader
from avs_aggregator.challenger.core import CertifiedBatch, OpenedChallenge
from avs_aggregator.challenger.resolution import EscalationConfig
from avs_aggregator.evidence import EvidenceBook
from avs_aggregator.operators import GrpcOperatorCaller
from avs_aggregator.protocol import is_valid_attestation

MAX_UINT256 = 2**256 - 1


class Web3BatchFeed:
    def __init__(self, client: Web3AvsClient) -> None:
        self.client = client

    def get_block_number(self) -> int:
        return int(self.client.w3.eth.block_number)

    def get_certified_batches(self, from_block: int, to_block: int) -> list[CertifiedBatch]:
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

    def get_batch_requests(self, batch_index: int) -> list[bytes]:
        return [bytes(h) for h in self.client.get_batch(batch_index).request_hashes]

    def get_certificate(self, request_hash: bytes) -> ag.Certificate:
        return self.client.get_status(request_hash).certificate


class OperatorLeafChecker:
    """Re-verifies through a randomly chosen operator of the batch's quorums (not necessarily honest:
    sampling several over time is the defence). With ``evidence``, the operator's signed answer is
    kept as equivocation evidence (when its signature verifies)."""

    def __init__(
        self,
        reader: Web3OperatorSetReader,
        caller: GrpcOperatorCaller,
        timeout: float = 60.0,
        seed: int | None = None,
        evidence: EvidenceBook | None = None,
    ) -> None:
        self.reader = reader
        self.caller = caller
        self.timeout = timeout
        self.evidence = evidence
        self._rng = random.Random(seed)

    def check(self, certificate: ag.Certificate) -> Verdict:
        reference_block, _ = self.reader.get_reference_block()
        header = certificate.batch_header
        operators = self.reader.get_operator_set(reference_block).in_quorums(bytes(header.quorum_numbers))
        operator = self._rng.choice(operators)
        envelope = convert.request_from_proto(certificate.request)
        reply = self.caller.verify(operator, envelope, list(certificate.output_token_ids), self.timeout)
        attestation = Attestation(bytes(certificate.request_hash), reply.output_hash, reply.verdict)
        if self.evidence is not None and is_valid_attestation(
            self.caller.domain, operator, attestation, reply.signature
        ):
            self.evidence.record(operator.operator_id, SignedAttestation(attestation, reply.signature))
        return reply.verdict


class Web3Escalator:
    """``Escalator`` and ``resolution.ChallengeChain`` over ``Web3FaultClient`` (its account sends the
    challenge, resolve and expire transactions and holds the bond)."""

    def __init__(self, faults: Web3FaultClient) -> None:
        self.faults = faults
        self._approved = False
        self._escalation: EscalationConfig | None = None

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

    def get_block_number(self) -> int:
        return int(self.faults.avs.w3.eth.block_number)

    def get_escalation_config(self) -> EscalationConfig:
        if self._escalation is None:
            manager = self.faults.fault_manager.functions
            config = manager.config().call()
            self._escalation = EscalationConfig(
                quorum_numbers=bytes(manager.escalationQuorumNumbers().call()),
                threshold_bps=int(config[3]),
                resolution_window=int(config[4]),
            )
        return self._escalation

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

    def expire_challenge(self, challenge_id: int) -> bytes:
        return self.faults.expire_challenge(challenge_id)

    def prove_equivocation(self, operator_id: OperatorId, a: SignedAttestation, b: SignedAttestation) -> bytes:
        return self.faults.prove_equivocation(operator_id, a, b)
