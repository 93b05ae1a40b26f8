"""Fakes of the aggregator's Protocols: operators with real BLS keys, a chain that checks like the contract."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from eth_utils import keccak

from avs.chain.client import ChallengeWindow, CheckSignaturesIndices, ContractRevertError, NonSignerStakesAndSignature
from avs.chain.faults import BatchSigners, Challenge, ChallengeStatus, PendingSlashing, SignedAttestation
from avs.crypto import bls
from avs.crypto.curve import G1_IDENTITY, G1Point, negate_g1
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import (
    Attestation,
    BatchHeader,
    Domain,
    InferenceOutput,
    InferenceRequest,
    Verdict,
    compute_digest,
    compute_output_hash,
    compute_request_hash,
    compute_stop_sequences_hash,
)
from avs.rpc.convert import RequestEnvelope
from avs.types import OperatorId, OutputHash
from avs_aggregator.challenger.core import OpenedChallenge
from avs_aggregator.challenger.resolution import EscalationConfig
from avs_aggregator.ports import GenerateReply, OperatorInfo, OperatorSet, VerifyReply
from avs_aggregator.protocol import compute_signatory_record_hash

DOMAIN = Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
MODEL_ID = keccak(text="model")


def canonical_tokens(request: InferenceRequest) -> tuple[int, ...]:
    return tuple(b % 50 for b in request.prompt_hash[: min(request.max_tokens, 6)])


def make_envelope(nonce: int, text: str = "hello") -> RequestEnvelope:
    request = InferenceRequest(
        model_id=MODEL_ID,
        prompt_hash=keccak(text=text),
        temperature_milli=0,
        top_k=0,
        top_p_micro=1_000_000,
        seed=0,
        max_tokens=8,
        stop_sequences_hash=compute_stop_sequences_hash([]),
        requester="0x" + "ab" * 20,
        nonce=nonce,
    )
    return RequestEnvelope(request, ({"role": "user", "content": text},), ())


@dataclass
class FakeOperator:
    keys: bls.KeyPair
    stakes: dict[int, int]
    behaviour: str = (
        "honest"  # honest | down | sign_down | cheat | accept_all | bad_batch_signature | wrong_output_hash
        # | mislabelled_output_hash | too_many_tokens | huge_text | wide_text | nul_text | nul_error
        # | verify_down_once
    )
    signed_batches: list[int] = field(default_factory=list)
    refuses_leaves: set[bytes] = field(default_factory=set)  # request hashes it will not sign a batch over

    @property
    def info(self) -> OperatorInfo:
        return OperatorInfo(
            operator_id=self.keys.operator_id,
            address="0x" + self.keys.operator_id[:20].hex(),
            pubkey_g1=self.keys.pubkey_g1,
            pubkey_g2=self.keys.pubkey_g2,
            socket="fake",
            stakes=dict(self.stakes),
        )

    def attest(self, request_hash: bytes, output_hash: bytes, verdict: Verdict) -> G1Point:
        return bls.sign(self.keys.secret, compute_digest(DOMAIN, Attestation(request_hash, output_hash, verdict)))


class FakeNetwork:
    """Operators, their stake, the operator API and the chain, all in memory."""

    def __init__(self, stakes: Sequence[dict[int, int]], block: int = 100) -> None:
        self.operators = [
            FakeOperator(bls.compute_key_pair(bls.SecretKey(1000 + i)), dict(s)) for i, s in enumerate(stakes)
        ]
        self.block = block
        self.certified: dict[int, tuple[int, bytes]] = {}
        self.certified_as: dict[int, tuple[BatchHeader, bytes]] = {}  # what isCertified compares
        self.certify_calls: list[int] = []
        self.calls: list[tuple[str, bytes]] = []
        self.crash_after_certify = False
        self.fork = b""  # changes every block's hash (a reorg that keeps the block numbers)

    def by_id(self, operator_id: bytes) -> FakeOperator:
        return next(o for o in self.operators if o.keys.operator_id == operator_id)

    # --- OperatorSetReader --------------------------------------------------------------

    def get_reference_block(self) -> tuple[int, bytes]:
        return self.block - 1, keccak(self.block.to_bytes(8, "big"))

    def get_operator_set(self, reference_block: int) -> OperatorSet:
        infos = sorted((o.info for o in self.operators), key=lambda i: i.operator_id)
        totals: dict[int, int] = {}
        for info in infos:
            for q, s in info.stakes.items():
                totals[q] = totals.get(q, 0) + s
        return OperatorSet(reference_block, keccak((reference_block + 1).to_bytes(8, "big")), tuple(infos), totals)

    def get_quorum_members(self, block: int, quorum_numbers: bytes) -> frozenset[OperatorId]:
        return frozenset(o.operator_id for o in self.get_operator_set(block).in_quorums(quorum_numbers))

    # --- OperatorCaller -----------------------------------------------------------------

    def generate(self, operator: OperatorInfo, envelope: RequestEnvelope, timeout: float) -> GenerateReply:
        op = self.by_id(operator.operator_id)
        self.calls.append(("generate", operator.operator_id))
        if op.behaviour in ("down", "generate_down"):  # generate_down: verifies and signs honestly
            raise ConnectionError("operator down")
        if op.behaviour == "nul_error":  # gRPC passes a NUL in an error's details through to str(exc)
            raise ConnectionError('details = "operator\x00down"')
        request_hash = compute_request_hash(DOMAIN, envelope.request)
        tokens = canonical_tokens(envelope.request)
        if op.behaviour == "cheat":
            tokens = (*tokens[:-1], 49)
        if op.behaviour == "too_many_tokens":  # signed and hashed correctly, over the request's max_tokens
            tokens = tuple(range(envelope.request.max_tokens + 1))
        output_hash = compute_output_hash(InferenceOutput(request_hash, envelope.request.model_id, tokens))
        signed_hash = output_hash
        if op.behaviour == "wrong_output_hash":
            output_hash = signed_hash = OutputHash(keccak(text="wrong"))
        if op.behaviour == "mislabelled_output_hash":  # signs the right output, reports another hash
            output_hash = OutputHash(keccak(text="wrong"))
        wide = "\U0001f600" * 65 * len(tokens)  # 260 bytes a token, in 65 characters
        text = {"huge_text": "x" * 100_000, "wide_text": wide, "nul_text": "te\x00xt"}.get(op.behaviour, "text")
        return GenerateReply(tokens, text, output_hash, op.attest(request_hash, signed_hash, Verdict.ACCEPT))

    def verify(
        self, operator: OperatorInfo, envelope: RequestEnvelope, output_ids: Sequence[int], timeout: float
    ) -> VerifyReply:
        op = self.by_id(operator.operator_id)
        self.calls.append(("verify", operator.operator_id))
        if op.behaviour == "down":
            raise ConnectionError("operator down")
        if op.behaviour == "hung":  # accepts the connection, never answers: the call's deadline ends it
            time.sleep(timeout)
            raise TimeoutError("deadline exceeded")
        if op.behaviour == "slow":  # an honest verifier on slower hardware
            time.sleep(2.0)
        if op.behaviour == "verify_down_once":  # missed one verification (a deadline, a blip), then honest
            op.behaviour = "honest"
            raise TimeoutError("deadline exceeded")
        request_hash = compute_request_hash(DOMAIN, envelope.request)
        output_hash = compute_output_hash(InferenceOutput(request_hash, envelope.request.model_id, tuple(output_ids)))
        honest = tuple(output_ids) == canonical_tokens(envelope.request)
        verdict = Verdict.ACCEPT if honest == (op.behaviour != "cheat") else Verdict.REJECT
        if op.behaviour == "accept_all":  # signs ACCEPT of anything: equivocates across retries
            verdict = Verdict.ACCEPT
        if op.behaviour in ("bad_verify_signature", "fast_bad_verify_signature"):  # claims ACCEPT, signs REJECT
            return VerifyReply(output_hash, Verdict.ACCEPT, op.attest(request_hash, output_hash, Verdict.REJECT))
        return VerifyReply(output_hash, verdict, op.attest(request_hash, output_hash, verdict))

    def sign_batch(
        self, operator: OperatorInfo, header: BatchHeader, leaves: Sequence[BatchLeaf], timeout: float
    ) -> G1Point:
        op = self.by_id(operator.operator_id)
        self.calls.append(("sign_batch", operator.operator_id))
        if op.behaviour in ("down", "sign_down"):
            raise ConnectionError("operator down")
        if op.behaviour == "hung":
            time.sleep(timeout)
            raise TimeoutError("deadline exceeded")
        if any(leaf.request_hash in op.refuses_leaves for leaf in leaves):
            raise ConnectionError("slashing protection: did not accept a leaf")
        assert compute_merkle_tree(leaves).root == header.leaves_root
        op.signed_batches.append(header.batch_index)
        digest: bytes = compute_digest(DOMAIN, header)
        if op.behaviour == "bad_batch_signature":
            digest = keccak(text="something else")
        return bls.sign(op.keys.secret, digest)

    # --- ChainWriter --------------------------------------------------------------------

    def get_block_number(self) -> int:
        return self.block

    def get_check_signatures_indices(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> CheckSignaturesIndices:
        assert list(non_signer_ids) == sorted(non_signer_ids)
        return CheckSignaturesIndices((0,) * len(non_signer_ids), (0,) * len(quorum_numbers), (0,), ((),))

    def certify_batch(self, header: BatchHeader, signatures: NonSignerStakesAndSignature) -> tuple[bytes, int]:
        """Checks like ``BLSSignatureChecker``: apk = Σ quorum apks − Σ non-signer keys × their quorum count."""
        self.certify_calls.append(header.batch_index)
        if header.batch_index in self.certified:
            raise ContractRevertError("BatchAlreadyCertified", (header.batch_index,))
        if header.reference_block + 100 < self.block + 1:
            raise ContractRevertError("StaleReferenceBlock", (header.reference_block,))
        self.check_certificate(
            compute_digest(DOMAIN, header), header.quorum_numbers, header.reference_block, signatures
        )
        tx = keccak(header.batch_index.to_bytes(8, "big"))
        self.certified[header.batch_index] = (self.block, tx)
        non_signers = sorted(bls.compute_operator_id(key) for key in signatures.non_signer_pubkeys)
        self.certified_as[header.batch_index] = (
            header,
            compute_signatory_record_hash(header.reference_block, non_signers),
        )
        if self.crash_after_certify:
            raise KeyboardInterrupt("crash after the transaction was mined")
        return tx, 190_000

    def check_certificate(
        self, digest: bytes, quorums: bytes, reference_block: int, signatures: NonSignerStakesAndSignature
    ) -> dict[int, tuple[int, int]]:
        """Like ``checkSignatures``: apk = Σ quorum apks − Σ non-signer keys × their quorum count;
        returns quorum -> (signed stake, total stake)."""
        operator_set = self.get_operator_set(reference_block)
        apk = G1_IDENTITY
        for apk_q in signatures.quorum_apks:
            apk = bls.aggregate_g1([apk, apk_q])
        negated = []
        non_signers = []
        for key in signatures.non_signer_pubkeys:
            info = next(o for o in operator_set.operators if o.pubkey_g1 == key)
            non_signers.append(info)
            count = sum(1 for q in quorums if q in info.stakes)
            negated += [negate_g1(key)] * count
        apk = bls.aggregate_g1([apk, *negated])
        if not bls.verify_aggregate(digest, apk, signatures.apk_g2, signatures.sigma):
            raise ContractRevertError("InvalidBLSSignature", ())
        stakes = {}
        for q in quorums:
            total = operator_set.total_stakes.get(q, 0)
            stakes[q] = (total - sum(o.stakes.get(q, 0) for o in non_signers), total)
        return stakes

    def get_certification(self, batch_index: int, from_block: int = 0) -> tuple[int, bytes] | None:
        return self.certified.get(batch_index)

    def is_certified(self, header: BatchHeader, signatory_record_hash: bytes) -> bool:
        """``isCertified``: this exact header and signer record (an index certified without a record,
        by a test, is nobody's)."""
        return self.certified_as.get(header.batch_index) == (header, signatory_record_hash)

    def certify_foreign(self, batch_index: int) -> None:
        """Another aggregator certifies ``batch_index`` with a batch of its own."""
        self.certified[batch_index] = (self.block, keccak(text=f"foreign {batch_index}"))
        self.certified_as.pop(batch_index, None)

    def get_block_hash(self, block_number: int) -> bytes | None:
        return keccak(self.fork + block_number.to_bytes(8, "big")) if block_number <= self.block else None


class FakeFaultManager:
    """``FaultManager`` in memory: challenge, resolveChallenge, continueSlashing, expireChallenge and proveEquivocation,
    checking certificates and batch signers like the contract does."""

    def __init__(
        self,
        network: FakeNetwork,
        escalation_quorums: bytes = b"\x00",
        threshold_bps: int = 8000,
        window: int = 10,
        challenge_window: int | None = None,  # blocks after certification a leaf can be challenged (None: any)
    ) -> None:
        self.network = network
        self.config = EscalationConfig(escalation_quorums, threshold_bps, window)
        self.challenge_window = challenge_window
        self.lowered_window = (0, 0)  # loweredWindow(): (kept blocks, lowered at)
        self.challenges: dict[int, Challenge] = {}
        self.leaves: dict[tuple[int, bytes, bytes], int] = {}
        self.slashed: dict[int, tuple[bytes, ...]] = {}  # challenge id -> slashed signer ids
        self.max_slashes_per_call = 64  # one slash per signer here (the fake's quorums are disjoint)
        self.pending: dict[int, tuple[BatchSigners, int]] = {}  # challenge id -> (signers, next signer)
        self.fail_continues = 0  # the next this many continueSlashing calls fail (an RPC outage)
        # Someone else's resolveChallenge lands first (and leaves its slashing halfway): ours reverts.
        self.front_run_resolve = False
        self.equivocations: list[tuple[bytes, bytes]] = []  # (operator id, request hash)
        self.calls: list[str] = []
        self.crash_after_challenge = False

    def _next_block(self) -> int:
        """A transaction sent now runs in the next block, and mines it when it succeeds (anvil's
        automine; a revert is caught by the gas estimate and sends nothing): a check made at the head
        is one block stale when the transaction runs."""
        return self.network.block + 1

    # --- Escalator ----------------------------------------------------------------------

    def challenge(
        self, header: BatchHeader, signatory_record_hash: bytes, leaf: tuple[bytes, bytes], proof: Sequence[bytes]
    ) -> OpenedChallenge:
        self.calls.append("challenge")
        mined_block = self._next_block()
        deadline = self.get_challenge_window().deadline(self.network.certified[header.batch_index][0])
        if mined_block > deadline:
            raise ContractRevertError("ChallengeWindowClosed", (header.batch_index,))
        key = (header.batch_index, leaf[0], leaf[1])
        previous = self.leaves.get(key)
        if previous is not None and self.challenges[previous].status != ChallengeStatus.EXPIRED:
            raise ContractRevertError("LeafAlreadyChallenged", (previous,))
        challenge_id = len(self.challenges) + 1
        self.challenges[challenge_id] = Challenge(
            "0x" + "cc" * 20,
            10**18,
            leaf[0],
            leaf[1],
            header.batch_index,
            mined_block,
            ChallengeStatus.OPEN,
            self.config.resolution_window,
        )
        self.leaves[key] = challenge_id
        self.network.block = mined_block
        tx = keccak(b"challenge" + challenge_id.to_bytes(8, "big"))
        if self.crash_after_challenge:
            raise KeyboardInterrupt("crash after the challenge was mined")
        return OpenedChallenge(challenge_id, mined_block, tx)

    def get_challenge(self, challenge_id: int) -> Challenge:
        return self.challenges.get(
            challenge_id, Challenge("0x" + "00" * 20, 0, b"", b"", 0, 0, ChallengeStatus.NONE, 0)
        )

    def find_leaf_challenge(self, batch_index: int, request_hash: bytes, output_hash: bytes) -> int:
        return self.leaves.get((batch_index, request_hash, output_hash), 0)

    def get_challenge_window(self) -> ChallengeWindow:
        blocks = self.challenge_window if self.challenge_window is not None else 2**32
        return ChallengeWindow(blocks, *self.lowered_window)

    def get_certified_block(self, batch_index: int) -> int:
        return self.network.certified.get(batch_index, (0, b""))[0]

    # --- ChallengeChain -----------------------------------------------------------------

    def get_block_number(self) -> int:
        return self.network.block

    def get_escalation_config(self) -> EscalationConfig:
        return self.config

    def get_check_signatures_indices(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> CheckSignaturesIndices:
        return self.network.get_check_signatures_indices(reference_block, quorum_numbers, non_signer_ids)

    def resolve_challenge(
        self,
        challenge_id: int,
        verdict: Verdict,
        reference_block: int,
        certificate: NonSignerStakesAndSignature,
        signers: BatchSigners,
    ) -> bytes:
        self.calls.append("resolve")
        mined_block = self._next_block()
        c = self.challenges[challenge_id]
        if c.status != ChallengeStatus.OPEN:
            raise ContractRevertError("ChallengeNotOpen", (challenge_id,))
        if mined_block > c.opened_block + c.resolution_window:
            raise ContractRevertError("ChallengeExpired", (challenge_id,))
        if reference_block < c.opened_block:
            raise ContractRevertError("ReferenceBlockBeforeChallenge", (reference_block,))
        digest = compute_digest(DOMAIN, Attestation(c.request_hash, c.output_hash, verdict))
        signed = self.network.check_certificate(digest, self.config.quorum_numbers, reference_block, certificate)
        for quorum, (stake, total) in signed.items():
            if total == 0 or stake * 10_000 < total * self.config.threshold_bps:
                raise ContractRevertError("ThresholdNotMet", (quorum, stake, total))
        status = ChallengeStatus.DISMISSED
        if verdict == Verdict.REJECT:
            header = signers.header
            members = self.network.get_operator_set(header.reference_block).in_quorums(header.quorum_numbers)
            expected = tuple(o.operator_id for o in members if o.operator_id not in signers.non_signer_ids)
            if signers.signer_ids != expected or header.batch_index != c.batch_index:
                raise ContractRevertError("SignerSetIncomplete", (header.quorum_numbers[0],))
            self.slashed[challenge_id] = ()
            self.pending[challenge_id] = (signers, 0)
            status = ChallengeStatus.UPHELD
        self.challenges[challenge_id] = dataclasses.replace(c, status=status)
        self.network.block = mined_block
        if status == ChallengeStatus.UPHELD:
            self._slash_next(challenge_id)
        if self.front_run_resolve:
            raise ContractRevertError("ChallengeNotOpen", (challenge_id,))
        return keccak(b"resolve" + challenge_id.to_bytes(8, "big"))

    def continue_slashing(self, challenge_id: int, signers: BatchSigners) -> bytes:
        self.calls.append("continue")
        if self.fail_continues:
            self.fail_continues -= 1
            raise ConnectionError("the RPC endpoint went away")
        if challenge_id not in self.pending:
            raise ContractRevertError("NoSlashingPending", (challenge_id,))
        if signers != self.pending[challenge_id][0]:
            raise ContractRevertError("SignersMismatch", ())
        self._slash_next(challenge_id)
        return keccak(
            b"continue" + challenge_id.to_bytes(8, "big") + len(self.slashed[challenge_id]).to_bytes(8, "big")
        )

    def get_pending_slashing(self, challenge_id: int) -> PendingSlashing:
        if challenge_id not in self.pending:
            return PendingSlashing(b"\0" * 32, 0, 0, 0, 0, 0, 0)
        signers, next_signer = self.pending[challenge_id]
        return PendingSlashing(
            keccak(repr(signers).encode()),
            next_signer,
            len(signers.signer_ids),
            5 * 10**17,
            self.network.block,
            self.config.resolution_window,
            0,
        )

    def _slash_next(self, challenge_id: int) -> None:
        signers, start = self.pending.pop(challenge_id)
        end = start + self.max_slashes_per_call
        self.slashed[challenge_id] += signers.signer_ids[start:end]
        if end < len(signers.signer_ids):
            self.pending[challenge_id] = (signers, end)

    def expire_challenge(self, challenge_id: int) -> bytes:
        self.calls.append("expire")
        mined_block = self._next_block()
        c = self.challenges[challenge_id]
        if c.status != ChallengeStatus.OPEN:
            raise ContractRevertError("ChallengeNotOpen", (challenge_id,))
        if mined_block <= c.opened_block + c.resolution_window:
            raise ContractRevertError("ChallengeNotExpired", (challenge_id,))
        self.challenges[challenge_id] = dataclasses.replace(c, status=ChallengeStatus.EXPIRED)
        self.network.block = mined_block
        return keccak(b"expire" + challenge_id.to_bytes(8, "big"))

    # --- EquivocationReporter -----------------------------------------------------------

    def prove_equivocation(self, operator_id: OperatorId, a: SignedAttestation, b: SignedAttestation) -> bytes:
        self.calls.append("prove_equivocation")
        if not a.attestation.is_conflicting(b.attestation):
            raise ContractRevertError("NotConflicting", ())
        g2 = self.network.by_id(operator_id).keys.pubkey_g2
        for signed in (a, b):
            if not bls.verify(g2, compute_digest(DOMAIN, signed.attestation), signed.signature):
                raise ContractRevertError("InvalidAttestationSignature", ())
        if (operator_id, a.attestation.request_hash) in self.equivocations:
            raise ContractRevertError("FaultAlreadySlashed", (keccak(operator_id + a.attestation.request_hash),))
        self.equivocations.append((operator_id, a.attestation.request_hash))
        return keccak(b"equivocation" + operator_id)
