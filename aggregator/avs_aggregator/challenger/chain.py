"""The challenger's real adapters: ``BatchCertified`` events, the aggregator's API, an operator's
Verify, and ``FaultManager.challenge`` (approving the bond first)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient
from avs.chain.faults import Web3FaultClient
from avs.client import AggregatorClient
from avs.messages import BatchHeader, Verdict
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs_aggregator.chain import Web3OperatorSetReader
from avs_aggregator.challenger.core import CertifiedBatch
from avs_aggregator.operators import GrpcOperatorCaller

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
    sampling several over time is the defence)."""

    def __init__(
        self, reader: Web3OperatorSetReader, caller: GrpcOperatorCaller, timeout: float = 60.0, seed: int | None = None
    ) -> None:
        self.reader = reader
        self.caller = caller
        self.timeout = timeout
        self._rng = random.Random(seed)

    def check(self, certificate: ag.Certificate) -> Verdict:
        reference_block, _ = self.reader.get_reference_block()
        header = certificate.batch_header
        operators = self.reader.get_operator_set(reference_block).in_quorums(bytes(header.quorum_numbers))
        operator = self._rng.choice(operators)
        envelope = convert.request_from_proto(certificate.request)
        reply = self.caller.verify(operator, envelope, list(certificate.output_token_ids), self.timeout)
        return reply.verdict


class Web3Escalator:
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
    ) -> bytes:
        if not self._approved:
            self._approve_bond()
        return self.faults.challenge(header, signatory_record_hash, leaf, proof)
