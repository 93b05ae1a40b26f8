"""The chain side of the aggregator over web3: the operator set at a reference block, certifyBatch,
and rejected-output proofs.

Operators are discovered from the registry's ``OperatorRegistered`` events (scanned once, then
incrementally, the last ``REORG_RESCAN_BLOCKS`` again each time: a reorg can move a registration
into a block already scanned); their keys never change (read once with ``getOperatorPubkeys``);
bitmaps, stakes, totals and sockets are read *at the reference block* (``eth_call`` with a block
number), so the stake the pipeline tallies is the stake the contract checks. Operator sets are
cached per block and block hash (a reorged block is read again).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from web3 import Web3
from web3.exceptions import BlockNotFound

from avs.chain.client import (
    CheckSignaturesIndices,
    NonSignerStakesAndSignature,
    Web3AvsClient,
    encode_batch_header,
    encode_signatures,
)
from avs.chain.faults import SignedAttestation, Web3FaultClient
from avs.crypto import bls
from avs.crypto.curve import G1Point, G2Point
from avs.messages import Attestation, BatchHeader, Verdict
from avs.types import OperatorId
from avs_aggregator.ports import OperatorInfo, OperatorSet

MAX_QUORUM_BITS = 192
CACHE_SIZE = 64
LOG_CHUNK_BLOCKS = 10_000
REORG_RESCAN_BLOCKS = 128
HISTORY_READ_CHUNK = 256  # operator ids per getQuorumBitmapsAtBlockNumber call (eth_call gas caps)


class Web3OperatorSetReader:
    def __init__(self, client: Web3AvsClient, reference_lag: int = 1) -> None:
        self.client = client
        self.w3: Web3 = client.w3
        self.reference_lag = reference_lag
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, OperatorSet] = OrderedDict()
        self._known: dict[bytes, tuple[str, G1Point, G2Point]] = {}  # id -> (address, g1, g2)
        self._scanned_to = client.deployment.start_block - 1

    def get_reference_block(self) -> tuple[int, bytes]:
        latest = int(self.w3.eth.block_number)
        number = max(latest - self.reference_lag, self.client.deployment.start_block)
        block = self.w3.eth.get_block(number)
        return number, bytes(block["hash"])

    def get_operator_set(self, reference_block: int) -> OperatorSet:
        with self._lock:
            block_hash = bytes(self.w3.eth.get_block(reference_block)["hash"])
            cached = self._cache.get(reference_block)
            if cached is not None and cached.block_hash == block_hash:
                self._cache.move_to_end(reference_block)
                return cached
            self._scan(reference_block)
            operator_set = self._read(reference_block, block_hash)
            self._cache[reference_block] = operator_set
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return operator_set

    def get_quorum_members(self, block: int, quorum_numbers: bytes) -> frozenset[OperatorId]:
        """The operators in any of ``quorum_numbers`` at ``block``, from the registry's history read
        at the latest block (``getQuorumBitmapsAtBlockNumber``): however old ``block`` is, no archive
        state is needed (a full node keeps 128 blocks; the challenger resolves batches from further
        back). Checked against the registry's count of each quorum then, so an operator the event
        scan missed fails the read rather than passing for a non-member."""
        with self._lock:
            self._scan(block)
            known = sorted(self._known)
        registry = self.client.registry.functions
        head = int(self.w3.eth.block_number)  # every read at one block: nodes behind a balancer may differ
        bitmaps: list[int] = []
        for start in range(0, len(known), HISTORY_READ_CHUNK):
            chunk = known[start : start + HISTORY_READ_CHUNK]
            read = registry.getQuorumBitmapsAtBlockNumber(chunk, block).call(block_identifier=head)
            bitmaps += [int(b) for b in read]
        for quorum in quorum_numbers:
            found = sum(1 for bitmap in bitmaps if bitmap >> quorum & 1)
            expected = int(registry.getOperatorCountAtBlockNumber(quorum, block).call(block_identifier=head))
            if found != expected:
                raise RuntimeError(f"found {found} operators of quorum {quorum} at block {block}, expected {expected}")
        in_quorums = [any(bitmap >> q & 1 for q in quorum_numbers) for bitmap in bitmaps]
        return frozenset(OperatorId(i) for i, member in zip(known, in_quorums, strict=True) if member)

    def _scan(self, to_block: int) -> None:
        event = self.client.registry.events.OperatorRegistered
        start = max(self._scanned_to + 1 - REORG_RESCAN_BLOCKS, self.client.deployment.start_block)
        while start <= to_block:
            end = min(start + LOG_CHUNK_BLOCKS - 1, to_block)
            for log in event.get_logs(from_block=start, to_block=end):
                operator_id = bytes(log["args"]["operatorId"])
                if operator_id not in self._known:
                    g1, g2 = self.client.registry.functions.getOperatorPubkeys(operator_id).call()
                    self._known[operator_id] = (
                        str(log["args"]["operator"]),
                        G1Point(int(g1[0]), int(g1[1])),
                        G2Point(int(g2[0][0]), int(g2[0][1]), int(g2[1][0]), int(g2[1][1])),
                    )
            start = end + 1
        self._scanned_to = max(self._scanned_to, to_block)

    def _read(self, block: int, block_hash: bytes) -> OperatorSet:
        registry = self.client.registry.functions
        operators = []
        quorums: set[int] = set()
        for operator_id, (address, g1, g2) in sorted(self._known.items()):
            bitmap = int(registry.getCurrentQuorumBitmap(operator_id).call(block_identifier=block))
            if bitmap == 0:
                continue
            in_quorums = [q for q in range(MAX_QUORUM_BITS) if bitmap >> q & 1]
            quorums.update(in_quorums)
            stakes = {q: int(registry.getCurrentStake(operator_id, q).call(block_identifier=block)) for q in in_quorums}
            socket = str(registry.operatorSocket(operator_id).call(block_identifier=block))
            operators.append(OperatorInfo(OperatorId(operator_id), address, g1, g2, socket, stakes))
        totals = {q: int(registry.getCurrentTotalStake(q).call(block_identifier=block)) for q in sorted(quorums)}
        return OperatorSet(block, block_hash, tuple(operators), totals)


class Web3ChainWriter:
    """``ChainWriter`` over ``Web3AvsClient`` (its account must be an authorised aggregator).

    Transactions go through the client's ``sender`` (nonces, fee bumps, confirmations) when it has
    one, as every transaction of the client's account does."""

    def __init__(self, client: Web3AvsClient) -> None:
        self.client = client

    def get_block_number(self) -> int:
        return int(self.client.w3.eth.block_number)

    def get_check_signatures_indices(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> CheckSignaturesIndices:
        return self.client.get_check_signatures_indices(reference_block, quorum_numbers, non_signer_ids)

    def certify_batch(self, header: BatchHeader, signatures: NonSignerStakesAndSignature) -> tuple[bytes, int]:
        self._verify_full_key_pair(signatures)
        fn = self.client.task_manager.functions.certifyBatch(encode_batch_header(header), encode_signatures(signatures))
        # Its receipt only: the pipeline waits for the confirmations itself (``_confirm_batch``, which
        # certifies the batch again if a reorg drops it) without holding the batch thread or the
        # sender, which every other transaction needs, for ``confirmations`` blocks per batch.
        sent = self.client.send(fn, confirm=False)
        return sent.tx_hash, sent.gas_used

    def _verify_full_key_pair(self, signatures: NonSignerStakesAndSignature) -> None:
        """With every operator signing, records the quorums' (apk, apkG2) once (one pairing, ~165k
        gas per membership change) so that each later certificate skips the γ step (~14k less)."""
        if signatures.non_signer_pubkeys:
            return
        apk = bls.aggregate_g1(signatures.quorum_apks)
        if self.client.is_key_pair_verified(apk, signatures.apk_g2):
            return
        self.client.transact(self.client.verify_key_pair_function(apk, signatures.apk_g2), confirm=False)

    def get_block_hash(self, block_number: int) -> bytes | None:
        try:
            return bytes(self.client.w3.eth.get_block(block_number)["hash"])
        except BlockNotFound:
            return None

    def get_threshold_bps(self) -> int:
        return self.client.get_threshold_bps()

    def get_max_reference_age(self) -> int:
        return self.client.get_max_reference_age()

    def is_certified(self, header: BatchHeader, signatory_record_hash: bytes) -> bool:
        if self.client.is_certified(header, signatory_record_hash):
            return True
        held, block = self.client.get_ring_slot(header.batch_index)
        if block == 0 or held <= header.batch_index:
            return False
        event = self.client.find_certified_event(header.batch_index, header.reference_block)  # slot reused
        return event is not None and event.describes(header, signatory_record_hash)

    def get_certification(self, batch_index: int, from_block: int = 0) -> tuple[int, bytes] | None:
        """From the index's record, or from its ``BatchCertified`` event once the task manager's
        record ring has reused its slot (an empty record is then no reorg)."""
        held, block = self.client.get_ring_slot(batch_index)
        if block == 0 or held < batch_index:
            return None
        if held > batch_index:
            event = self.client.find_certified_event(batch_index, from_block)
            return (event.block_number, event.tx_hash) if event is not None else None
        event_type = self.client.task_manager.events.BatchCertified
        logs: Any = event_type.get_logs(from_block=block, to_block=block, argument_filters={"batchIndex": batch_index})
        tx_hash = bytes(logs[0]["transactionHash"]) if logs else b"\0" * 32
        return block, tx_hash

    def get_ring_slot(self, batch_index: int) -> tuple[int, int]:
        return self.client.get_ring_slot(batch_index)


class Web3RejectionReporter:
    """Proves a rejected output on-chain (``FaultManager.proveRejectedOutput``): slashes the primary.
    Also the pipeline's ``EquivocationReporter`` (``FaultManager.proveEquivocation``). Transactions
    go through the client's ``sender`` when it has one."""

    def __init__(self, faults: Web3FaultClient) -> None:
        self.faults = faults

    def report_rejected_output(
        self,
        primary: OperatorId,
        request_hash: bytes,
        output_hash: bytes,
        primary_signature: G1Point,
        quorum_numbers: bytes,
        reference_block: int,
        certificate: NonSignerStakesAndSignature,
    ) -> bytes:
        accept = SignedAttestation(Attestation(request_hash, output_hash, Verdict.ACCEPT), primary_signature)
        return self.faults.prove_rejected_output(primary, accept, quorum_numbers, reference_block, certificate)

    def prove_equivocation(self, operator_id: OperatorId, a: SignedAttestation, b: SignedAttestation) -> bytes:
        return self.faults.prove_equivocation(operator_id, a, b)
