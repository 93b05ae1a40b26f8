"""The challenger's logic over small Protocols: watch certified batches, re-verify a sample of
their leaves through an operator (prefill), and escalate a leaf found wrong within the challenge
window (``FaultManager.challenge``, which locks the challenger's bond).

For each ``BatchCertified`` event it fetches the batch's leaves and each sampled leaf's certificate
from the aggregator, checks that the certificate matches what was certified on-chain (header,
signatory record hash, Merkle proof), and asks an operator to verify the output. A REJECT opens a
challenge; its resolution by the escalation quorum is ``FaultManager.resolveChallenge`` (not done
here yet).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from avs.client import verify_certificate
from avs.messages import BatchHeader, Verdict
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CertifiedBatch:
    """One ``BatchCertified`` event."""

    header: BatchHeader
    signatory_record_hash: bytes
    block: int


@dataclass(frozen=True, slots=True)
class Finding:
    batch_index: int
    request_hash: bytes  # empty when the batch's leaves could not be fetched
    output_hash: bytes
    verdict: Verdict | None  # None: could not be checked
    detail: str = ""
    challenge_tx: bytes | None = None


class BatchFeed(Protocol):
    def get_block_number(self) -> int: ...

    def get_certified_batches(self, from_block: int, to_block: int) -> list[CertifiedBatch]: ...


class LeafSource(Protocol):
    def get_batch_requests(self, batch_index: int) -> list[bytes]: ...

    def get_certificate(self, request_hash: bytes) -> ag.Certificate: ...


class LeafChecker(Protocol):
    def check(self, certificate: ag.Certificate) -> Verdict:
        """Re-verify the certified output by prefill (through an operator or an own engine)."""
        ...


class Escalator(Protocol):
    def challenge(
        self, header: BatchHeader, signatory_record_hash: bytes, leaf: tuple[bytes, bytes], proof: Sequence[bytes]
    ) -> bytes: ...


@dataclass
class Challenger:
    feed: BatchFeed
    leaves: LeafSource
    checker: LeafChecker
    escalator: Escalator | None
    sample_rate: float = 0.1
    next_block: int = 0
    rng: random.Random = field(default_factory=random.Random)
    findings: list[Finding] = field(default_factory=list)

    def poll(self) -> list[Finding]:
        """Process the batches certified since the last poll; returns the new findings."""
        to_block = self.feed.get_block_number()
        if to_block < self.next_block:
            return []
        found: list[Finding] = []
        for batch in self.feed.get_certified_batches(self.next_block, to_block):
            found += self.process_batch(batch)
        self.next_block = to_block + 1
        self.findings += found
        return found

    def process_batch(self, batch: CertifiedBatch) -> list[Finding]:
        try:
            request_hashes = self.leaves.get_batch_requests(batch.header.batch_index)
        except Exception as exc:  # another aggregator's batch, or the aggregator is down
            logger.warning(
                "cannot fetch the batch's leaves", extra={"batch_index": batch.header.batch_index, "error": str(exc)}
            )
            return [Finding(batch.header.batch_index, b"", b"", None, f"leaves unavailable: {exc}")]
        sampled = [h for h in request_hashes if self.rng.random() < self.sample_rate]
        return [self.process_leaf(batch, h) for h in sampled]

    def process_leaf(self, batch: CertifiedBatch, request_hash: bytes) -> Finding:
        index = batch.header.batch_index
        certificate = self.leaves.get_certificate(request_hash)
        problem = self._check_against_chain(batch, certificate)
        if problem:
            logger.warning("certificate does not match the chain", extra={"batch_index": index, "problem": problem})
            return Finding(index, request_hash, bytes(certificate.output_hash), None, problem)
        verdict = self.checker.check(certificate)
        if verdict == Verdict.ACCEPT or self.escalator is None:
            return Finding(index, request_hash, bytes(certificate.output_hash), verdict)
        output_hash = bytes(certificate.output_hash)
        proof = [bytes(p) for p in certificate.merkle_proof]
        tx = self.escalator.challenge(batch.header, batch.signatory_record_hash, (request_hash, output_hash), proof)
        logger.warning("leaf escalated", extra={"batch_index": index, "request": "0x" + request_hash.hex()})
        return Finding(index, request_hash, output_hash, verdict, "challenged", tx)

    @staticmethod
    def _check_against_chain(batch: CertifiedBatch, certificate: ag.Certificate) -> str:
        if convert.batch_header_from_proto(certificate.batch_header) != batch.header:
            return "the certificate's batch header is not the certified one"
        if bytes(certificate.signatory_record_hash) != batch.signatory_record_hash:
            return "the certificate's signatory record hash is not the certified one"
        check = verify_certificate(certificate)
        return "; ".join(check.problems)
