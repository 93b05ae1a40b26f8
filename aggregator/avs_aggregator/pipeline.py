"""The aggregator's pipeline: a state machine over persisted requests and batches.

Request: RECEIVED -> GENERATING (primary picked) -> VERIFYING (output stored) -> ACCEPTED ->
BATCHED -> CERTIFIED, or FAILED. A REJECT quorum records the rejection (and, with a
``RejectionReporter``, proves it on-chain, which slashes the primary), excludes that primary and
goes back to RECEIVED with ``attempt + 1``. Verdicts short of both thresholds while some verifiers
did not answer: VERIFYING again (``verify_rounds``), asking only those.

Batch: SIGNING -> SUBMITTING -> CERTIFIED, or ABANDONED (its requests go back to ACCEPTED for a
new batch index when the reference block went stale). Signers short of the threshold: SIGNING
again after a backoff, up to ``sign_rounds`` rounds; then a batch of several is ABANDONED and each
of its requests is batched again alone, and a batch of one fails its request.

Every checked attestation goes to the evidence book (``avs_aggregator.evidence``): an operator's
conflicting attestations for one request are proven on-chain (``proveEquivocation``) once.
A CERTIFIED batch is first *confirming* (``confirmed_block`` NULL): once its certified block is
``confirmations`` blocks deep (at least one) the chain is asked again (``getCertifiedBlock`` and the
block's hash); still there -> final, gone (a reorg) -> back to SUBMITTING with its requests back to
BATCHED, so the same batch index is certified again (or, with a stale reference block, abandoned
and its requests re-batched under a new index).

Every step reads its input from the store and commits its result before the next step, so the
process can be killed anywhere: ``advance_*`` on a fresh ``Pipeline`` over the same database picks
up where it stopped. A batch index is submitted only after the chain says it is not certified,
and the contract refuses a second certification, so no batch is certified twice.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from avs.chain.client import CheckSignaturesIndices, ContractRevertError, NonSignerStakesAndSignature
from avs.chain.faults import SignedAttestation
from avs.crypto.curve import G1Point, G2Point
from avs.errors import InvalidInputError, OverloadedError, PreconditionFailedError
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import (
    Attestation,
    BatchHeader,
    Domain,
    InferenceOutput,
    Verdict,
    compute_digest,
    compute_output_hash,
    compute_request_hash,
    validate_quorum_numbers,
)
from avs.rpc import convert
from avs.rpc.operator.v1 import operator_pb2 as op
from avs.rpc.status import describe_call_error, is_message_too_large
from avs.types import OperatorId, RequestHash
from avs_aggregator import protocol
from avs_aggregator.evidence import (
    MAX_PROOF_ATTEMPTS,
    TRANSIENT_CHAIN_ERRORS,
    EquivocationReporter,
    EvidenceBook,
    InFlight,
    ProofState,
    send_proof,
)
from avs_aggregator.metrics import AggregatorMetrics
from avs_aggregator.ports import (
    BlockHashReader,
    CertificationChecker,
    ChainWriter,
    GenerateReply,
    OperatorCaller,
    OperatorInfo,
    OperatorSet,
    OperatorSetReader,
    ReferenceAgeReader,
    RejectionReporter,
    RingSlotReader,
    ThresholdReader,
    VerifyReply,
)
from avs_aggregator.store import (
    AttestationRow,
    BatchRow,
    BatchState,
    EquivocationRow,
    PrunedRequestRow,
    RejectionRow,
    RequestRow,
    RequestState,
    StaleRowError,
    Store,
    dump_hex_list,
    load_hex_list,
)

logger = logging.getLogger(__name__)
# proveRejectedOutput reverts after which sending the same proof again cannot succeed
# (StaleReferenceBlock is not one: the next try rebuilds the proof at a fresh reference block).
REJECTION_FINAL_REVERTS = frozenset(
    {
        "InvalidAttestationSignature",
        "UnknownOperator",
        "NotSlashable",
        "ThresholdNotMet",
        "InvalidBLSSignature",
        "InvalidVerdict",
    }
)

ACTIVE_REQUEST_STATES = (RequestState.RECEIVED, RequestState.GENERATING, RequestState.VERIFYING)
ACTIVE_BATCH_STATES = (BatchState.SIGNING, BatchState.SUBMITTING)
# What max_pending bounds: every request not final yet, batched ones included (a chain that takes no
# certificates must not let them pile up).
PENDING_REQUEST_STATES = (*ACTIVE_REQUEST_STATES, RequestState.ACCEPTED, RequestState.BATCHED)
EVIDENCE_RETRY_SECONDS = 60.0
# certifyBatch reverts after which the batch is formed again (alone) and signed again: the chain changed under it
# (a reorg at the reference block, a threshold raised after signing).
# Each counts on the request's ``rebatched``; after MAX_REBATCHES the request fails instead of
# cycling for ever on a revert that does not go away.
# (StaleStakes: the keeper refreshes the quorum; a new reference block after it is fresh)
REBATCH_REVERTS = frozenset({"InvalidQuorumApkHash", "InvalidHistoryIndex", "ThresholdNotMet", "StaleStakes"})
MAX_REBATCHES = 3
# Chain reads at most per new batch to find a free index (galloping with a ring: 2^64 in 64 reads).
MAX_INDEX_SKIPS = 64


SIGN_CALL_THREADS = 64
# Verify calls of every request in flight: enough threads that a call seldom waits in the queue (its
# wait counts against the round's deadline), created only as needed.
VERIFY_CALL_THREADS = 256
# How long past an operator call's own deadline its round waits for the answer to arrive.
CALL_GRACE_SECONDS = 5.0
# How long a round waits for the other answers once those in decide it (a batch's signers hold its
# threshold; a verification is settled): a hung operator costs this, not the whole deadline, and a
# prompt one still counts (its signature in the certificate, its attestation as evidence).
STRAGGLER_SECONDS = 1.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    default_quorums: bytes = b"\x00"
    default_threshold_bps: int = 6667
    min_threshold_bps: int = 6667  # the task manager's thresholdBps: no certificate below it
    max_threshold_bps: int = 10_000
    allowed_quorums: frozenset[int] = frozenset({0})
    max_attempts: int = 3
    generate_timeout: float = 120.0
    verify_timeout: float = 60.0
    sign_timeout: float = 30.0
    batch_max_size: int = 16
    batch_max_latency: float = 2.0  # seconds an accepted request waits for others
    first_batch_index: int = 1
    max_reference_age: int = 100  # the task manager's maxReferenceAge
    max_pending: int = 10_000
    workers: int = 8
    confirmations: int = 0  # blocks on top of a certification before it is final (at least 1 is used)
    verify_rounds: int = 2  # Verify rounds for an output whose verdicts fall short because verifiers did not answer
    sign_rounds: int = 3  # SignBatch rounds for a batch whose signers fall short of the threshold
    sign_backoff: float = 1.0  # seconds before the second round, doubled for each further one
    # A primary whose Generate timed out or could not be reached is not picked again for this long,
    # for any request (``_pick_primary``): each pick would hold a request worker for generate_timeout.
    primary_bench_seconds: float = 60.0
    # An operator at its concurrency limit answers busy (RESOURCE_EXHAUSTED) having computed nothing:
    # the request asks again after ``busy_backoff`` seconds, without using an attempt or a verification
    # round, for up to ``busy_wait`` seconds from the first busy answer; then busy is a failure as any.
    busy_backoff: float = 0.5
    busy_wait: float = 60.0


NO_PROOFS = "rejection proofs are off (prove_rejections: false, or no fault manager in the deployment)"


class PipelineError(InvalidInputError):
    """A request the pipeline refuses (quorums or threshold outside the AVS's limits)."""


@dataclass
class BusyWait:
    """A request waiting on busy operators: since when, its last busy answer, when its next step may
    run, and how many verification rounds busy verifiers left short (not counted as rounds)."""

    first: float
    last: float = 0.0
    not_before: float = 0.0
    rounds: int = 0


def is_operator_busy(error: BaseException) -> bool:
    """An operator's "busy, retry later": at its concurrency limit (RESOURCE_EXHAUSTED, not a message
    over a size limit), it computed nothing."""
    if isinstance(error, OverloadedError):
        return True
    code = getattr(error, "code", None)  # a channel's RpcErrors are grpc.Call objects
    return (
        isinstance(error, grpc.RpcError)
        and callable(code)
        and code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        and not is_message_too_large(error)
    )


def g1_to_json(point: G1Point) -> list[str]:
    return [hex(point.x), hex(point.y)]


def g1_from_json(value: Sequence[str]) -> G1Point:
    return G1Point(int(value[0], 16), int(value[1], 16))


def g2_to_json(point: G2Point) -> list[str]:
    return [hex(point.x_im), hex(point.x_re), hex(point.y_im), hex(point.y_re)]


def g2_from_json(value: Sequence[str]) -> G2Point:
    return G2Point(*(int(v, 16) for v in value))


def gather_calls(
    calls: Mapping[Future[T], OperatorInfo],
    timeout: float,
    on_answer: Callable[[OperatorInfo, Future[T]], None],
    is_settled: Callable[[], bool],
) -> list[OperatorInfo]:
    """Wait for a round of operator calls (each with its own ``timeout``) within one deadline for the
    round; ``on_answer`` sees each call as it ends. Once ``is_settled()``, the calls still out get
    ``STRAGGLER_SECONDS`` more. Returns the operators whose calls were still out at the end (the
    caller counts them as not answering): a queued call is cancelled, a running one ends at its own
    gRPC deadline, its answer unused."""
    deadline = time.monotonic() + timeout + CALL_GRACE_SECONDS
    pending = set(calls)
    while pending:
        if is_settled():
            deadline = min(deadline, time.monotonic() + STRAGGLER_SECONDS)
        done, pending = wait(pending, timeout=max(deadline - time.monotonic(), 0.0), return_when=FIRST_COMPLETED)
        if not done:
            break
        for future in done:
            on_answer(calls[future], future)
    for future in pending:
        future.cancel()
    return [calls[future] for future in pending]


def _count_verdicts(
    answers: Mapping[bytes, SignedAttestation], primary_id: bytes, equivocators: set[bytes]
) -> dict[bytes, Verdict]:
    """The verifiers' checked verdicts, and the primary's ACCEPT unless it equivocated."""
    verdicts = {i: signed.attestation.verdict for i, signed in answers.items()}
    if primary_id not in equivocators:
        verdicts[primary_id] = Verdict.ACCEPT
    return verdicts


def _check_same_submission(row: RequestRow, envelope: convert.RequestEnvelope, quorums: bytes, threshold: int) -> None:
    """A request is accepted once: submitting it again answers its hash, unless the second submission
    asks other quorums or another threshold, or carries other messages (none of which the hash
    covers): those are refused, not silently dropped."""
    if (row.quorum_numbers, row.threshold_bps) != (quorums, threshold):
        raise PipelineError(
            f"this request was submitted already, with quorums {list(row.quorum_numbers)} and threshold "
            f"{row.threshold_bps} bps; a new request (another nonce) can ask for others"
        )
    stored = envelope_from_row(row)  # its request is this one (the same hash), maybe spelled otherwise
    if (stored.messages, stored.stop_sequences) != (envelope.messages, envelope.stop_sequences):
        raise PipelineError("this request was submitted already, with other messages or stop sequences")


def describe_pruned(row: PrunedRequestRow) -> str:
    """What is known of a request whose record retention deleted."""
    done = f"was certified in batch {row.batch_index}" if row.state == RequestState.CERTIFIED else "failed"
    return f"this request {done}; its record was deleted (retention.keep_finished_hours)"


def envelope_from_row(row: RequestRow) -> convert.RequestEnvelope:
    message = op.InferenceRequest()
    message.ParseFromString(row.envelope)
    return convert.request_from_proto(message)


class Pipeline:
    def __init__(
        self,
        domain: Domain,
        store: Store,
        reader: OperatorSetReader,
        caller: OperatorCaller,
        writer: ChainWriter,
        settings: PipelineSettings = PipelineSettings(),
        metrics: AggregatorMetrics | None = None,
        reporter: RejectionReporter | None = None,
        clock: Callable[[], float] = time.time,
        equivocation_reporter: EquivocationReporter | None = None,
    ) -> None:
        self.domain = domain
        self.store = store
        self.reader = reader
        self.caller = caller
        self.writer = writer
        self.settings = settings
        self.metrics = metrics
        self.reporter = reporter
        self.clock = clock
        self.changed = threading.Condition()
        self._pool = ThreadPoolExecutor(
            max_workers=max(settings.workers, VERIFY_CALL_THREADS), thread_name_prefix="operator-call"
        )
        # SignBatch calls have their own threads: queued behind Verify calls (up to verify_timeout
        # each) they outlived the round's wait and healthy batches were abandoned. One batch is
        # signed at a time, so this many operators are asked at once.
        self._sign_pool = ThreadPoolExecutor(
            max_workers=max(settings.workers, SIGN_CALL_THREADS), thread_name_prefix="sign-call"
        )
        self._batch_lock = threading.Lock()
        self._responding: dict[bytes, bool] = {}  # operator id -> answered its last call
        self._responding_lock = threading.Lock()
        self._benched: dict[bytes, float] = {}  # operator id -> until when it is not picked as primary
        self._busy: dict[bytes, BusyWait] = {}  # request hash -> its wait on busy operators
        self._sending = InFlight()  # rejection proofs being sent now (a worker and the retry tick)
        if equivocation_reporter is None and isinstance(reporter, EquivocationReporter):
            equivocation_reporter = reporter  # Web3RejectionReporter proves both
        self.evidence = EvidenceBook(store.session, AttestationRow, EquivocationRow, equivocation_reporter, clock)
        self._evidence_checked_at: float | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sign_pool.shutdown(wait=True, cancel_futures=True)

    # --- intake ------------------------------------------------------------------------

    def check_request_policy(self, quorums: bytes, threshold_bps: int) -> tuple[bytes, int]:
        quorums = quorums or self.settings.default_quorums
        threshold = threshold_bps or self.settings.default_threshold_bps
        validate_quorum_numbers(quorums)
        outside = sorted(set(quorums) - self.settings.allowed_quorums)
        if outside:
            raise PipelineError(f"quorums {outside} are not served; allowed: {sorted(self.settings.allowed_quorums)}")
        low, high = self.settings.min_threshold_bps, self.settings.max_threshold_bps
        if not low <= threshold <= high:
            raise PipelineError(f"threshold_bps must be in [{low}, {high}], got {threshold}")
        return quorums, threshold

    def submit(
        self,
        envelope: convert.RequestEnvelope,
        quorums: bytes = b"",
        threshold_bps: int = 0,
        prompt_tokens: int | None = None,
    ) -> RequestHash:
        """Store a validated request (idempotent: the same request answers the same hash);
        ``prompt_tokens`` is its chat-templated prompt's length when the intake tokenized it."""
        quorums, threshold = self.check_request_policy(quorums, threshold_bps)
        request_hash = compute_request_hash(self.domain, envelope.request)
        existing = self.store.get_request(request_hash)
        if existing is not None:
            _check_same_submission(existing, envelope, quorums, threshold)
            return request_hash
        pruned = self.store.get_pruned_request(request_hash)
        if pruned is not None:  # finished long ago: taking it again would run and certify it twice
            raise PreconditionFailedError(f"{describe_pruned(pruned)}; a new request needs another nonce")
        if self.store.count_requests(PENDING_REQUEST_STATES) >= self.settings.max_pending:
            raise OverloadedError("too many requests pending; retry later")
        row = RequestRow(
            request_hash=request_hash,
            state=RequestState.RECEIVED,
            envelope=convert.request_to_proto(envelope).SerializeToString(deterministic=True),
            quorum_numbers=quorums,
            threshold_bps=threshold,
            attempt=0,
            excluded="[]",
            prompt_tokens=prompt_tokens,
        )
        if self.store.add_request(row):
            self._count(RequestState.RECEIVED)
            self._notify()
        else:  # a concurrent submit of the same hash stored it first: the same check as above
            stored = self.store.get_request(request_hash)
            if stored is not None:
                _check_same_submission(stored, envelope, quorums, threshold)
        return request_hash

    # --- requests ----------------------------------------------------------------------

    def advance_request(self, request_hash: bytes) -> bool:
        """Run one step of the request's state machine; False if there was nothing to do."""
        if self._is_backing_off(request_hash):
            return False
        row = self.store.get_request(request_hash)
        if row is None or row.state not in ACTIVE_REQUEST_STATES:
            return False
        started, stage = time.monotonic(), row.state.lower()
        step = {
            RequestState.RECEIVED: self._pick_primary,
            RequestState.GENERATING: self._generate,
            RequestState.VERIFYING: self._verify,
        }[RequestState(row.state)]
        try:
            step(row)
        except StaleRowError as exc:  # e.g. this process lost the leader lease mid-step
            logger.warning("request moved on elsewhere; this step's result is dropped", extra={"error": str(exc)})
            return True
        if self.metrics is not None:
            self.metrics.stage_seconds.labels(stage).observe(time.monotonic() - started)
        self._notify()
        return True

    def _operator_set(self, row: RequestRow) -> OperatorSet | None:
        """The operator set at the request's reference block; None if that block went stale and its
        state cannot be read any more (a node that keeps recent state only, after an outage): the
        request then moves to a fresh block instead of failing the same read forever."""
        assert row.reference_block is not None
        try:
            return self.reader.get_operator_set(row.reference_block)
        except Exception:
            if not self._is_stale(row.reference_block):
                raise  # an outage: the step is tried again
        reason = f"reference block {row.reference_block} went stale before the request was decided"
        logger.warning("moving the request to a fresh reference block", extra={"request": _hex(row.request_hash)})
        if row.state == RequestState.GENERATING:  # the primary is picked again, at a fresh block
            self._set_state(row, RequestState.RECEIVED, primary_id=None, error=reason)
        else:  # attestations are bound to no block: the output is verified and counted at a fresh one
            self.store.update_request(
                row.request_hash,
                expect=(row.state, row.attempt),
                expect_verify_rounds=row.verify_rounds,
                reference_block=self.reader.get_reference_block()[0],
                error=reason,
            )
        return None

    def _pick_primary(self, row: RequestRow) -> None:
        reference_block, _ = self.reader.get_reference_block()
        operator_set = self.reader.get_operator_set(reference_block)
        excluded = set(load_hex_list(row.excluded))
        benched = self._benched_primaries() - excluded
        select = functools.partial(protocol.select_primary, operator_set, row.quorum_numbers, row.request_hash)
        try:
            try:
                primary = select(row.attempt, excluded | benched)
            except protocol.NoOperatorError:  # no one else: a benched operator may have recovered
                primary = select(row.attempt, excluded)
        except protocol.NoOperatorError as exc:
            self._fail(row, f"{exc}; last error: {row.error}" if row.error else str(exc))
            return
        if benched:  # not in the request's excluded list: a bench ends, an exclusion does not
            skipped = sorted("0x" + o.hex()[:8] for o in benched)
            logger.info("benched primaries skipped", extra={"request": _hex(row.request_hash), "benched": skipped})
        self._set_state(row, RequestState.GENERATING, primary_id=primary.operator_id, reference_block=reference_block)

    def _benched_primaries(self) -> set[bytes]:
        now = self.clock()
        with self._responding_lock:
            return {operator_id for operator_id, until in self._benched.items() if until > now}

    def _wait_for_busy(self, row: RequestRow, verify_round: bool = False) -> bool:
        """An operator answered busy: the request's next step waits ``busy_backoff`` (the operator's
        calls in progress end meanwhile), for up to ``busy_wait`` from its first busy answer; False
        once that has passed (then busy counts as a failure). ``verify_round``: the round to run
        again is one that busy verifiers left short, not counted against ``verify_rounds``."""
        now = self.clock()
        with self._responding_lock:
            self._forget_stale_busy_waits(now)
            wait = self._busy.get(row.request_hash) or BusyWait(first=now)
            if now - wait.first >= self.settings.busy_wait:
                return False
            wait.last, wait.not_before = now, now + self.settings.busy_backoff
            wait.rounds += verify_round
            self._busy[row.request_hash] = wait
        return True

    def _forget_stale_busy_waits(self, now: float) -> None:
        """Waits whose request moved on by another path (another process, a stale reference block),
        or was left by a demoted leader, are forgotten once quiet for ``busy_wait``."""
        stale = [h for h, wait in self._busy.items() if now - wait.last > self.settings.busy_wait]
        for request_hash in stale:
            del self._busy[request_hash]

    def _busy_rounds(self, request_hash: bytes) -> int:
        with self._responding_lock:
            wait = self._busy.get(request_hash)
        return wait.rounds if wait is not None else 0

    def _is_backing_off(self, request_hash: bytes) -> bool:
        with self._responding_lock:
            wait = self._busy.get(request_hash)
        return wait is not None and self.clock() < wait.not_before

    def _bench(self, primary: OperatorInfo, error: BaseException) -> None:
        """Bench a primary that hung or was unreachable (not one that refused this request)."""
        code = error.code() if isinstance(error, grpc.Call) else None
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE) or isinstance(error, OSError):
            with self._responding_lock:
                self._benched[bytes(primary.operator_id)] = self.clock() + self.settings.primary_bench_seconds

    def _generate(self, row: RequestRow) -> None:
        operator_set = self._operator_set(row)
        if operator_set is None:
            return
        primary = operator_set.get(row.primary_id or b"")
        envelope = envelope_from_row(row)
        if primary is None:
            self._retry(row, "the primary is no longer registered")
            return
        try:
            reply = self.caller.generate(primary, envelope, self.settings.generate_timeout)
            signed = self._check_generate(row, envelope, primary, reply)
        except Exception as exc:
            if is_operator_busy(exc) and self._wait_for_busy(row):
                self._operator_outcome(primary, "generate", "busy")
                logger.info("primary busy; asking it again shortly", extra={"request": _hex(row.request_hash)})
                return
            self._operator_outcome(primary, "generate", "error")
            self._bench(primary, exc)
            error = describe_call_error(exc)
            logger.warning("primary failed", extra={"request": _hex(row.request_hash), "error": error})
            self._retry(row, f"primary 0x{primary.operator_id.hex()[:8]} failed: {error}")
            return
        self._operator_outcome(primary, "generate", "ok")
        self._record_attestations([(primary.operator_id, signed)])  # a store error is ours, not the primary's
        self._set_state(
            row,
            RequestState.VERIFYING,
            output_ids=json.dumps(list(reply.token_ids)),
            output_text=reply.text,
            output_hash=reply.output_hash,
            primary_signature=json.dumps(g1_to_json(reply.signature)),
        )

    def _check_generate(
        self, row: RequestRow, envelope: convert.RequestEnvelope, primary: OperatorInfo, reply: GenerateReply
    ) -> SignedAttestation:
        """The primary's ACCEPT of its output, once its tokens, text, hash and signature are checked."""
        if not 0 < len(reply.token_ids) <= envelope.request.max_tokens:  # before hashing or storing them
            raise InvalidInputError(
                f"the primary returned {len(reply.token_ids)} tokens for max_tokens {envelope.request.max_tokens}"
            )
        # In bytes: 256 four-byte characters a token made a 512-token status 1 MB of text (twice)
        if len(reply.text.encode("utf-8", "surrogatepass")) > convert.MAX_TEXT_BYTES_PER_TOKEN * len(reply.token_ids):
            raise InvalidInputError("the primary's text is far longer than its tokens can decode to")
        expected = compute_output_hash(InferenceOutput(row.request_hash, envelope.request.model_id, reply.token_ids))
        if reply.output_hash != expected:
            raise InvalidInputError("the primary's output hash does not match its tokens")
        attestation = Attestation(row.request_hash, expected, Verdict.ACCEPT)
        if not protocol.is_valid_attestation(self.domain, primary, attestation, reply.signature):
            raise InvalidInputError("the primary's attestation signature does not verify")
        return SignedAttestation(attestation, reply.signature)

    def _verify(self, row: RequestRow) -> None:
        operator_set = self._operator_set(row)
        if operator_set is None:
            return
        assert row.output_hash is not None and row.primary_id is not None
        # An operator that equivocated on this request, or whose output for it the quorum rejected,
        # is neither asked nor counted. A primary that merely failed (late, down, busy too long: ``excluded``
        # keeps it from being the primary again) still verifies: leaving its stake out could fail a
        # request that the rest of the quorum accepts.
        equivocators = self.evidence.find_equivocators(row.request_hash)
        rejected = {r.primary_id for r in self.store.list_rejections(row.request_hash)}
        verifiers = [
            o
            for o in operator_set.in_quorums(row.quorum_numbers)
            if o.operator_id != row.primary_id and o.operator_id not in rejected | equivocators
        ]
        # A later round asks only the verifiers without a checked attestation on this output yet.
        recorded = self.evidence.find_attestations(row.request_hash, row.output_hash) if row.verify_rounds else {}
        answers: dict[bytes, SignedAttestation] = {
            o.operator_id: recorded[o.operator_id] for o in verifiers if o.operator_id in recorded
        }
        asked = [o for o in verifiers if o.operator_id not in recorded]
        known = _count_verdicts(answers, row.primary_id, equivocators)
        # The chain's threshold too, read once before any operator is asked (a failed read then costs
        # no verification): an output accepted below it could never be signed into a batch.
        accept_threshold = max(row.threshold_bps, self._chain_threshold())
        settles = self._settles(row, operator_set, known, asked, accept_threshold)
        busy: set[bytes] = set()
        checked = self._ask_verifiers(row, operator_set, asked, settles, busy)
        if self._record_attestations(checked):  # one transaction for the round; it found equivocators
            equivocators = self.evidence.find_equivocators(row.request_hash)
        answers |= {i: signed for i, signed in checked if i not in equivocators}
        verdicts = _count_verdicts(answers, row.primary_id, equivocators)
        reject_signatures = {i: s.signature for i, s in answers.items() if s.attestation.verdict == Verdict.REJECT}
        unanswered = [o.operator_id for o in asked if o.operator_id not in verdicts.keys() | equivocators]
        self._decide(row, operator_set, verdicts, reject_signatures, unanswered, accept_threshold, busy)

    def _settles(
        self,
        row: RequestRow,
        operator_set: OperatorSet,
        known: dict[bytes, Verdict],
        asked: Sequence[OperatorInfo],
        accept_threshold: int,
    ) -> Callable[[dict[bytes, Verdict]], bool]:
        """Whether the checked replies so far decide the round: ACCEPT reaches ``accept_threshold`` and no
        provable REJECT is possible even if every verifier still out rejects. Then the round stops
        waiting, so that a slow or hung operator with little stake does not hold up every request."""
        floor = self._rejection_floor()

        def settles(replies: dict[bytes, Verdict]) -> bool:
            verdicts = known | replies
            if not protocol.compute_tally(operator_set, row.quorum_numbers, verdicts).is_accepted(accept_threshold):
                return False
            out = dict.fromkeys((o.operator_id for o in asked if o.operator_id not in replies), Verdict.REJECT)
            worst = protocol.compute_tally(operator_set, row.quorum_numbers, verdicts | out)
            return not worst.rejecting_quorums(floor)

        return settles

    def _ask_verifiers(
        self,
        row: RequestRow,
        operator_set: OperatorSet,
        asked: Sequence[OperatorInfo],
        settles: Callable[[dict[bytes, Verdict]], bool],
        busy: set[bytes],
    ) -> list[tuple[bytes, SignedAttestation]]:
        """One verification round on ``asked``, in parallel: the attestations of the output whose
        signatures verify. A verifier that is down, late (one deadline for the whole round), answers
        another output or signs badly has not answered. Once the replies so far ``settles`` the round
        (counting only replies whose signatures were checked: a fast bad signature must not cut off
        a slower honest verifier), the rest get ``STRAGGLER_SECONDS`` more. The verifiers that answered
        busy are added to ``busy``."""
        assert row.output_hash is not None
        envelope = envelope_from_row(row)
        output_ids = tuple(json.loads(row.output_ids or "[]"))
        timeout = self.settings.verify_timeout
        owners = {self._pool.submit(self.caller.verify, o, envelope, output_ids, timeout): o for o in asked}
        unchecked: dict[bytes, VerifyReply] = {}
        checked: dict[bytes, SignedAttestation] = {}

        def on_answer(operator: OperatorInfo, answer: Future[VerifyReply]) -> None:
            try:
                reply = answer.result()
                if reply.output_hash != row.output_hash:
                    raise InvalidInputError("the verifier attested another output hash")
                unchecked[operator.operator_id] = reply
            except Exception as exc:
                if is_operator_busy(exc):
                    busy.add(operator.operator_id)
                self._verifier_failed(row, operator, exc)

        def check_signatures() -> None:  # one batch check for the replies come in since the last
            checked.update(self._check_verify_signatures(row, operator_set, unchecked))
            unchecked.clear()

        def checked_verdicts() -> dict[bytes, Verdict]:
            return {i: signed.attestation.verdict for i, signed in checked.items()}

        def is_settled() -> bool:
            # The new replies' signatures are checked (one batch) once they would settle the round.
            if unchecked and settles(checked_verdicts() | {i: r.verdict for i, r in unchecked.items()}):
                check_signatures()
            return settles(checked_verdicts())

        for operator in gather_calls(owners, timeout, on_answer, is_settled):
            self._verifier_failed(row, operator, TimeoutError("no answer by the end of the round"))
        check_signatures()
        for operator_id, signed in checked.items():
            self._operator_outcome(operator_set.get(operator_id), "verify", signed.attestation.verdict.name.lower())
        return list(checked.items())

    def _decide(
        self,
        row: RequestRow,
        operator_set: OperatorSet,
        verdicts: dict[bytes, Verdict],
        reject_signatures: dict[bytes, G1Point],
        unanswered: Sequence[bytes],
        accept_threshold: int,
        busy: set[bytes],
    ) -> None:
        """Rejected, accepted (at ``accept_threshold``: the request's and the chain's), another round,
        or failed, from the verdicts counted so far (``busy``: the verifiers that answered busy)."""
        tally = protocol.compute_tally(operator_set, row.quorum_numbers, verdicts)
        # A provable rejection (a majority of the stake, and at least the AVS minimum) wins over a
        # low requested threshold: an output could reach its requested ACCEPT share while most of
        # the stake rejects it. A REJECT by a minority of every quorum cannot slash the primary (nor
        # can it on-chain). One quorum is enough: its majority proves the output wrong for the stake
        # in that quorum (the contract slashes the quorums of the certificate), whatever the other
        # quorums said; so every allowed quorum is trusted to have an honest majority (docs).
        # The config's floor first: the chain's threshold is read again only for a rejection.
        floor = self._rejection_floor()
        rejecting = tally.rejecting_quorums(floor)
        if rejecting:
            rejecting = tally.rejecting_quorums(max(floor, self._rejection_threshold()))
        if rejecting:
            self._reject(row, operator_set, reject_signatures, rejecting)
        elif tally.is_accepted(accept_threshold):
            self._set_state(row, RequestState.ACCEPTED, accepted_at=self.clock())
        elif unanswered and self._is_worth_another_round(
            row, operator_set, verdicts, unanswered, floor, busy=bool(busy.intersection(unanswered))
        ):
            self._verify_again(row, len(unanswered))
        else:
            self._fail_verification(row, tally)

    def _is_worth_another_round(
        self,
        row: RequestRow,
        operator_set: OperatorSet,
        verdicts: dict[bytes, Verdict],
        unanswered: Sequence[bytes],
        rejection_floor: int,
        busy: bool = False,
    ) -> bool:
        """The verifiers that gave no valid answer hold enough stake to carry the output either way
        (were they all to ACCEPT, or all to REJECT): otherwise another round would only delay the
        failure; and rounds are left, or some of them answered busy (asked again after a backoff,
        whatever the rounds, within ``busy_wait``)."""
        quorums = row.quorum_numbers
        if_accepted = protocol.compute_tally(
            operator_set, quorums, verdicts | dict.fromkeys(unanswered, Verdict.ACCEPT)
        )
        if_rejected = protocol.compute_tally(
            operator_set, quorums, verdicts | dict.fromkeys(unanswered, Verdict.REJECT)
        )
        # The local floor, not the chain's (possibly higher) threshold: at worst one round too many.
        if not (if_accepted.is_accepted(row.threshold_bps) or if_rejected.rejecting_quorums(rejection_floor)):
            return False
        if busy and self._wait_for_busy(row, verify_round=True):
            return True
        return row.verify_rounds - self._busy_rounds(row.request_hash) + 1 < self.settings.verify_rounds

    def _fail_verification(self, row: RequestRow, tally: protocol.Tally) -> None:
        shares = ", ".join(f"quorum {q.quorum}: accept {q.accept_stake}/{q.total_stake}" for q in tally.quorums)
        self._fail(row, f"not enough stake verified the output ({shares})")

    def _verify_again(self, row: RequestRow, missing: int) -> None:
        """Neither accepted nor rejected, and ``missing`` verifiers gave no valid answer (down, slow, a
        network blip): another round asks those, keeping the answers already checked, rather than
        failing a request that a verifier a few seconds late would have carried."""
        reason = f"{missing} verifier(s) did not answer in verification round {row.verify_rounds + 1}"
        logger.info("verifying again", extra={"request": _hex(row.request_hash), "reason": reason})
        self.store.update_request(
            row.request_hash,
            expect=(row.state, row.attempt),
            expect_verify_rounds=row.verify_rounds,
            verify_rounds=row.verify_rounds + 1,
            error=reason,
        )

    def _check_verify_signatures(
        self, row: RequestRow, operator_set: OperatorSet, replies: dict[bytes, VerifyReply]
    ) -> list[tuple[bytes, SignedAttestation]]:
        """The verifiers' attestations whose signatures verify, checked in one batch per verdict
        (n + 1 pairings, not 2n; bisection names a bad one). ``replies`` loses the others: their
        verifiers count as not having answered."""
        assert row.output_hash is not None
        checked: list[tuple[bytes, SignedAttestation]] = []
        for verdict in (Verdict.ACCEPT, Verdict.REJECT):
            attestation = Attestation(row.request_hash, row.output_hash, verdict)
            signatures = {i: reply.signature for i, reply in replies.items() if reply.verdict == verdict}
            if not signatures:
                continue
            digest = compute_digest(self.domain, attestation)
            for operator_id in protocol.find_invalid_signers(operator_set, digest, signatures):
                del replies[operator_id]
                error = InvalidInputError("the verifier's attestation signature does not verify")
                self._verifier_failed(row, operator_set.get(operator_id), error)
            checked += [(i, SignedAttestation(attestation, signatures[i])) for i in signatures if i in replies]
        return checked

    def _verifier_failed(self, row: RequestRow, operator: OperatorInfo | None, error: Exception) -> None:
        self._operator_outcome(operator, "verify", "busy" if is_operator_busy(error) else "error")
        logger.info("verifier failed", extra={"request": _hex(row.request_hash), "error": str(error)})

    def _record_attestations(self, checked: Sequence[tuple[bytes, SignedAttestation]]) -> int:
        """Keeps checked attestations as equivocation evidence (and proves any equivocation found).
        Returns how many new equivocations it found."""
        equivocations = self.evidence.record_all(checked)
        if equivocations and self.metrics is not None:
            self.metrics.equivocations.inc(equivocations)
        return equivocations

    def _reject(
        self, row: RequestRow, operator_set: OperatorSet, signatures: dict[bytes, G1Point], quorums: bytes
    ) -> None:
        """``quorums``: those whose majority rejected the output (the proof's certificate)."""
        assert row.output_hash is not None and row.primary_id is not None and row.reference_block is not None
        evidence: dict[str, Any] = {
            "primary_signature": json.loads(row.primary_signature or "null"),
            "reject_signatures": {_hex(k): g1_to_json(v) for k, v in signatures.items()},
            "quorum_numbers": quorums.hex(),
        }
        named = ", ".join(str(q) for q in quorums)
        if not self._is_rejection_recorded(row):
            rejection_id = self.store.add_rejection(
                RejectionRow(
                    request_hash=row.request_hash,
                    attempt=row.attempt,
                    primary_id=row.primary_id,
                    output_hash=row.output_hash,
                    reference_block=row.reference_block,
                    evidence=json.dumps(evidence),
                    # No reporter, no proof: settled at once (a PENDING one would keep the request from pruning)
                    **({} if self.reporter is not None else {"state": ProofState.FAILED, "error": NO_PROOFS}),
                )
            )
            if self.metrics is not None:
                self.metrics.rejections.inc()
            logger.warning(
                "output rejected",
                extra={"request": _hex(row.request_hash), "primary": _hex(row.primary_id), "quorums": named},
            )
            if self.reporter is not None:
                self._report_rejection(rejection_id, operator_set)
        self._retry(row, f"quorum {named} rejected the primary's output")

    def _is_rejection_recorded(self, row: RequestRow) -> bool:
        """Whether this attempt's output is rejected already: a crash after the rejection was written
        and before the retry verifies the same output again (its proof, if still PENDING, is sent by
        ``report_pending_rejections``). The rejection is recorded, counted and proven once."""
        return any(
            r.attempt == row.attempt and r.primary_id == row.primary_id and r.output_hash == row.output_hash
            for r in self.store.list_rejections(row.request_hash)
        )

    def report_pending_rejections(self, max_attempts: int = MAX_PROOF_ATTEMPTS) -> int:
        """Send the rejected-output proofs still PENDING: not sent yet after a restart, the chain was
        unreachable, or a leader lost its lease while sending (its successor sends them from the shared
        database). Returns how many were proven now."""
        if self.reporter is None:
            return 0
        proven = 0
        for rejection in self.store.list_rejections(state=ProofState.PENDING):
            if rejection.attempts >= max_attempts:
                continue
            try:  # one proof that cannot be rebuilt now (e.g. the node is down) does not hold up the rest
                # A stale one is rebuilt at a fresh block (``_send_rejection``): its own block's state
                # may be gone from a node that keeps only recent state.
                operator_set = None
                if not self._is_stale(rejection.reference_block):
                    operator_set = self.reader.get_operator_set(rejection.reference_block)
            except Exception as exc:
                logger.warning("rejected-output proof not sent yet", extra={"error": str(exc)})
                continue
            proven += self._report_rejection(rejection.id, operator_set, max_attempts)
        return proven

    def _report_rejection(
        self, rejection_id: int, operator_set: OperatorSet | None, max_attempts: int = MAX_PROOF_ATTEMPTS
    ) -> int:
        """One try at ``FaultManager.proveRejectedOutput`` for a stored rejection (its evidence: the
        primary's signed ACCEPT and the REJECT signatures); 1 if it is proven now. Never raises: what
        went wrong is in the row. A proof another thread is sending now is left to it."""
        with self._sending.hold(rejection_id) as mine:
            if not mine:
                return 0
            try:
                return self._send_rejection(rejection_id, operator_set, max_attempts)
            except TRANSIENT_CHAIN_ERRORS as exc:
                # A chain read while rebuilding the proof failed (the node down or erring, a lost lease):
                # like an outage while sending, it stays PENDING with no attempt counted. Giving up here
                # let a cheating primary escape its slash over one failed read.
                logger.warning("rejected-output proof not sent yet", extra={"error": str(exc)})
                return 0
            except Exception as exc:  # a bug or a corrupt row: recorded, and the proof is not retried
                logger.exception("rejected-output proof failed", extra={"error": str(exc)})
                self.store.update_rejection(rejection_id, state=ProofState.FAILED, error=str(exc)[:2000])
                return 0

    def _send_rejection(self, rejection_id: int, operator_set: OperatorSet | None, max_attempts: int) -> int:
        """``operator_set``: at the rejection's reference block (None: read here, or at a fresh block
        if that one is stale)."""
        assert self.reporter is not None
        reporter = self.reporter
        rejection = self.store.get_rejection(rejection_id)
        if rejection.state != ProofState.PENDING:  # settled since it was listed
            return 0
        evidence = json.loads(rejection.evidence)
        if evidence.get("primary_signature") is None:
            self.store.update_rejection(
                rejection_id, state=ProofState.FAILED, error="no signed ACCEPT of the primary: nothing to prove"
            )
            return 0
        request = self.store.get_request(rejection.request_hash)
        assert request is not None
        reference_block = rejection.reference_block
        if self._is_stale(reference_block):
            # Sent late (an outage, a backlog): the REJECT signatures are bound to no block, so the proof
            # is built at a fresh one, with the stake the signers hold there.
            reference_block = self.reader.get_reference_block()[0]
            operator_set = self.reader.get_operator_set(reference_block)
        elif operator_set is None:
            operator_set = self.reader.get_operator_set(reference_block)
        signatures = {bytes.fromhex(k[2:]): g1_from_json(v) for k, v in evidence["reject_signatures"].items()}
        # Rows written before the quorums were recorded were rejected by every quorum of the request.
        quorums = bytes.fromhex(evidence.get("quorum_numbers", request.quorum_numbers.hex()))
        aggregate, error = self._rejection_aggregate(rejection, operator_set, quorums, signatures, reference_block)
        if aggregate is None:
            self.store.update_rejection(rejection_id, state=ProofState.FAILED, error=error)
            return 0
        proven_quorums = bytes(q.quorum for q in aggregate.tally.quorums)

        def send() -> bytes:
            indices = self.writer.get_check_signatures_indices(
                reference_block, proven_quorums, aggregate.non_signer_ids
            )
            return reporter.report_rejected_output(
                OperatorId(rejection.primary_id),
                rejection.request_hash,
                rejection.output_hash,
                g1_from_json(evidence["primary_signature"]),
                proven_quorums,
                reference_block,
                aggregate.to_signatures(indices),
            )

        values = send_proof(send, rejection.attempts, max_attempts, REJECTION_FINAL_REVERTS, "rejected output")
        try:
            self.store.update_rejection(rejection_id, expect_attempts=rejection.attempts, **values)
        except StaleRowError as exc:  # another process (a new leader) settled it meanwhile
            logger.warning(
                "rejected-output proof settled elsewhere; this outcome is dropped", extra={"error": str(exc)}
            )
            return 0
        return 1 if values.get("state") == ProofState.PROVEN else 0

    def _rejection_aggregate(
        self,
        rejection: RejectionRow,
        operator_set: OperatorSet,
        quorums: bytes,
        signatures: dict[bytes, G1Point],
        reference_block: int,
    ) -> tuple[protocol.Aggregate | None, str]:
        """The REJECT certificate over those of ``quorums`` where the signers reach the chain's
        rejection threshold at ``reference_block`` (a proof rebuilt at a fresh block proves the
        quorums still carried there), or None and why not."""
        digest = compute_digest(self.domain, Attestation(rejection.request_hash, rejection.output_hash, Verdict.REJECT))
        aggregate, _ = protocol.compute_checked_aggregate(operator_set, quorums, digest, signatures)
        if aggregate is None:
            return None, "the REJECT signatures do not aggregate"
        threshold = self._rejection_threshold()
        carried = aggregate.tally.signing_quorums(threshold)
        if not carried:
            shares = ", ".join(f"quorum {q.quorum}: {q.accept_stake}/{q.total_stake}" for q in aggregate.tally.quorums)
            return None, f"the REJECT signers hold {shares} at block {reference_block}, below {threshold} bps"
        if carried != quorums:  # the same valid signatures, fewer quorums: it aggregates
            aggregate, _ = protocol.compute_checked_aggregate(operator_set, carried, digest, signatures)
        return aggregate, ""

    def _retry(self, row: RequestRow, reason: str) -> None:
        excluded = load_hex_list(row.excluded)
        if row.primary_id is not None and row.primary_id not in excluded:
            excluded.append(row.primary_id)
        if row.attempt + 1 >= self.settings.max_attempts:
            self._fail(row, f"{reason}; gave up after {row.attempt + 1} attempts", excluded=dump_hex_list(excluded))
            return
        self._set_state(
            row,
            RequestState.RECEIVED,
            attempt=row.attempt + 1,
            excluded=dump_hex_list(excluded),
            verify_rounds=0,
            primary_id=None,
            output_ids=None,
            output_text=None,
            output_hash=None,
            primary_signature=None,
            error=reason,
        )

    def _fail(self, row: RequestRow, reason: str, **values: Any) -> None:
        logger.warning("request failed", extra={"request": _hex(row.request_hash), "reason": reason})
        self._set_state(row, RequestState.FAILED, error=reason, **values)

    def _set_state(self, row: RequestRow, state: RequestState, **values: Any) -> None:
        """Move the request on from the state, attempt and verification round this step read it in
        (``StaleRowError`` if another process moved it meanwhile: then this step's result is dropped)."""
        self.store.update_request(
            row.request_hash,
            expect=(row.state, row.attempt),
            expect_verify_rounds=row.verify_rounds,
            state=state,
            **values,
        )
        with self._responding_lock:  # a busy wait ends with the state it was in
            self._busy.pop(row.request_hash, None)
        row.state, row.attempt = state, values.get("attempt", row.attempt)
        row.verify_rounds = values.get("verify_rounds", row.verify_rounds)
        self._count(state)

    # --- batches -----------------------------------------------------------------------

    def process_evidence(self) -> int:
        """Send the equivocation and rejected-output proofs still pending (a restart, an unreachable
        chain, a demoted leader); how many were proven. New ones are proven when they are found."""
        self._evidence_checked_at = self.clock()
        return self.evidence.report_pending() + self.report_pending_rejections()

    def form_batches(self, force: bool = False) -> list[int]:
        """Put ACCEPTED requests into new batches when a batch is full or has waited long enough.
        (The daemon's periodic tick: it also retries pending equivocation proofs now and then.)"""
        last = self._evidence_checked_at
        if last is None or self.clock() - last >= EVIDENCE_RETRY_SECONDS:
            try:
                self.process_evidence()
            except Exception as exc:  # never let evidence stop batching
                logger.warning("equivocation proofs not sent", extra={"error": str(exc)})
        with self._batch_lock:
            created: list[int] = []
            try:
                self._form(force, created)
            except StaleRowError as exc:  # another process batched some of them meanwhile: next tick
                logger.warning("requests moved on elsewhere; batching stopped here", extra={"error": str(exc)})
            if created:
                self._notify()
            return created

    def _form(self, force: bool, created: list[int]) -> None:
        """Batches the ACCEPTED requests that are due, appending each new index to ``created``."""
        accepted = self.store.list_requests([RequestState.ACCEPTED], limit=100_000, payload=False)
        # By quorums and threshold: a batch is signed to the highest threshold of its requests, so one
        # request asking 100% would hold its batch-mates to it (their signing rounds, their rebatches).
        groups: dict[tuple[bytes, int], list[RequestRow]] = {}
        for row in accepted:
            if (row.rebatched or 0) >= MAX_REBATCHES:
                self._fail(row, f"batched {row.rebatched} times and never certified")
            elif row.rebatched:  # its last batch fell short of the threshold: a batch of its own
                created.append(self._create_batch(row.quorum_numbers, [row]))
            else:
                groups.setdefault((row.quorum_numbers, row.threshold_bps), []).append(row)
        now = self.clock()
        for (quorums, _), rows in groups.items():
            while rows:
                oldest = min(r.accepted_at or now for r in rows)
                full = len(rows) >= self.settings.batch_max_size
                if not (force or full or now - oldest >= self.settings.batch_max_latency):
                    break
                chunk, rows = rows[: self.settings.batch_max_size], rows[self.settings.batch_max_size :]
                created.append(self._create_batch(quorums, chunk))

    def _create_batch(self, quorums: bytes, rows: Sequence[RequestRow]) -> int:
        reference_block, _ = self.reader.get_reference_block()
        leaves = [BatchLeaf(r.request_hash, r.output_hash or b"") for r in rows]
        index = self._first_free_index(self.store.get_next_batch_index(self.settings.first_batch_index))
        batch = BatchRow(
            batch_index=index,
            state=BatchState.SIGNING,
            quorum_numbers=quorums,
            reference_block=reference_block,
            leaves_root=compute_merkle_tree(leaves).root,
            request_hashes=dump_hex_list([r.request_hash for r in rows]),
        )
        self.store.create_batch(batch, [r.request_hash for r in rows])  # StaleRowError: none formed
        for _ in rows:
            self._count(RequestState.BATCHED)
        logger.info("batch formed", extra={"batch_index": index, "leaves": len(rows)})
        return index

    def _first_free_index(self, index: int) -> int:
        """Skips indices certified on-chain (by another aggregator, or before a lost database) and,
        with the task manager's record ring, indices whose slot a later index holds: those can never
        be certified, and a batch formed under one would be signed for nothing."""
        step = 1
        for _ in range(MAX_INDEX_SKIPS):
            if isinstance(self.writer, RingSlotReader):
                held, block = self.writer.get_ring_slot(index)
                if block == 0 or held < index:
                    return index
                # Galloping: a run of indices another aggregator certified is crossed in log steps
                # (an index skipped is never used; there are plenty).
                index, step = max(held + 1, index + step), step * 2
            elif self.writer.get_certification(index) is not None:
                index += 1
            else:
                return index
        return index  # certifyBatch will tell (the batch is then formed again, further on)

    def get_batch_leaves(self, batch: BatchRow) -> list[BatchLeaf]:
        request_hashes = load_hex_list(batch.request_hashes)
        outputs = self.store.get_output_hashes(request_hashes)
        leaves = []
        for request_hash in request_hashes:
            output_hash = outputs.get(request_hash)
            assert output_hash is not None, "a batched request keeps its output"
            leaves.append(BatchLeaf(request_hash, output_hash))
        return leaves

    @staticmethod
    def get_header(batch: BatchRow) -> BatchHeader:
        return BatchHeader(batch.batch_index, batch.leaves_root, batch.reference_block, batch.quorum_numbers)

    def advance_batch(self, batch_index: int) -> bool:
        batch = self.store.get_batch(batch_index)
        if batch is not None and batch.state == BatchState.CERTIFIED and batch.confirmed_block is None:
            try:
                return self._confirm_batch(batch)
            except StaleRowError as exc:
                logger.warning("batch moved on elsewhere; this check is dropped", extra={"error": str(exc)})
                return True
        if batch is None or batch.state not in ACTIVE_BATCH_STATES:
            return False
        if batch.state == BatchState.SIGNING and batch.retry_at is not None and self.clock() < batch.retry_at:
            return False  # backing off before the next signing round
        started = time.monotonic()
        stage = "sign_batch" if batch.state == BatchState.SIGNING else "certify"
        try:
            if batch.state == BatchState.SIGNING and self._is_stale(batch.reference_block):
                # Not certifiable any more (a long outage): and its operator set may be state a
                # full node has pruned, which would fail this batch's every signing round.
                self._abandon_stale(batch)
            elif batch.state == BatchState.SIGNING:
                self._sign_batch(batch)
            elif not self._submit_batch(batch):
                return False  # waiting for the chain
        except StaleRowError as exc:
            logger.warning("batch moved on elsewhere; this step's result is dropped", extra={"error": str(exc)})
            return True
        if self.metrics is not None:
            self.metrics.stage_seconds.labels(stage).observe(time.monotonic() - started)
        self._notify()
        return True

    def _chain_threshold(self) -> int:
        """The threshold the contracts check: the task manager's, if governance raised it above the config's."""
        if isinstance(self.writer, ThresholdReader):
            return max(self.settings.min_threshold_bps, self.writer.get_threshold_bps())
        return self.settings.min_threshold_bps

    def _rejection_floor(self) -> int:
        """The least a provable rejection needs, known without the chain: the config's threshold and
        more than half the stake (``_rejection_threshold`` adds the chain's)."""
        return max(self.settings.min_threshold_bps, protocol.MIN_REJECTION_THRESHOLD_BPS)

    def _rejection_threshold(self) -> int:
        """What ``FaultManager.proveRejectedOutput`` needs: the threshold, and more than half the stake."""
        return max(self._chain_threshold(), protocol.MIN_REJECTION_THRESHOLD_BPS)

    def _max_reference_age(self) -> int:
        """The task manager's ``maxReferenceAge`` (what the contracts enforce) when the writer reads it."""
        if isinstance(self.writer, ReferenceAgeReader):
            return self.writer.get_max_reference_age()
        return self.settings.max_reference_age

    def _is_stale(self, reference_block: int) -> bool:
        """Whether the contracts refuse ``reference_block`` in every block still to come."""
        return reference_block + self._max_reference_age() < self.writer.get_block_number() + 1

    def _batch_threshold(self, batch: BatchRow) -> int:
        thresholds = [self._chain_threshold()]  # what certifyBatch will check
        for request_hash in load_hex_list(batch.request_hashes):
            row = self.store.get_request(request_hash)
            if row is not None:
                thresholds.append(row.threshold_bps)
        return max(thresholds)

    def _sign_batch(self, batch: BatchRow) -> None:
        operator_set = self.reader.get_operator_set(batch.reference_block)
        header = self.get_header(batch)
        leaves = self.get_batch_leaves(batch)
        digest = compute_digest(self.domain, header)
        threshold = self._batch_threshold(batch)
        signatures = self._collect_batch_signatures(batch, operator_set, header, leaves, digest, threshold)
        aggregate, invalid = protocol.compute_checked_aggregate(operator_set, batch.quorum_numbers, digest, signatures)
        for bad in invalid:
            self._operator_outcome(operator_set.get(bad), "sign_batch", "bad_signature")
        if aggregate is None or not aggregate.tally.is_accepted(threshold):
            self._signers_short(batch, aggregate, operator_set, threshold)
            return
        indices = self.writer.get_check_signatures_indices(
            batch.reference_block, batch.quorum_numbers, aggregate.non_signer_ids
        )
        certificate = encode_certificate(aggregate, operator_set, indices)
        self.store.update_batch(
            batch.batch_index,
            expect_state=batch.state,
            state=BatchState.SUBMITTING,
            certificate=json.dumps(certificate),
        )
        if self.metrics is not None:
            for q in aggregate.tally.quorums:
                self.metrics.signed_stake_ratio.labels(str(q.quorum)).set(q.accept_stake / max(q.total_stake, 1))

    def _collect_batch_signatures(
        self,
        batch: BatchRow,
        operator_set: OperatorSet,
        header: BatchHeader,
        leaves: Sequence[BatchLeaf],
        digest: bytes,
        threshold: int,
    ) -> dict[bytes, G1Point]:
        """Every member's SignBatch in parallel, within one deadline for the round. Once the signers so
        far hold ``threshold`` with signatures that verify (a fast bad one must not cut off a slower
        honest signer), the rest get ``STRAGGLER_SECONDS`` more: a slow or hung operator with little
        stake does not hold every batch for the whole deadline, and a prompt one still makes it into
        the certificate."""
        members = operator_set.in_quorums(batch.quorum_numbers)
        timeout = self.settings.sign_timeout
        owners = {self._sign_pool.submit(self.caller.sign_batch, o, header, leaves, timeout): o for o in members}
        signatures: dict[bytes, G1Point] = {}

        def on_answer(operator: OperatorInfo, answer: Future[G1Point]) -> None:
            try:
                signatures[operator.operator_id] = answer.result()
                self._operator_outcome(operator, "sign_batch", "ok")
            except Exception as exc:
                self._operator_outcome(operator, "sign_batch", "error")
                extra = {"batch_index": batch.batch_index, "error": str(exc)}
                logger.info("operator did not sign the batch", extra=extra)

        def holds_threshold() -> bool:
            signed = dict.fromkeys(signatures, Verdict.ACCEPT)
            if not protocol.compute_tally(operator_set, batch.quorum_numbers, signed).is_accepted(threshold):
                return False
            aggregate, _ = protocol.compute_checked_aggregate(operator_set, batch.quorum_numbers, digest, signatures)
            return aggregate is not None and aggregate.tally.is_accepted(threshold)

        for operator in gather_calls(owners, timeout, on_answer, holds_threshold):
            self._operator_outcome(operator, "sign_batch", "error")
        return signatures

    def _signers_short(
        self, batch: BatchRow, aggregate: protocol.Aggregate | None, operator_set: OperatorSet, threshold: int
    ) -> None:
        """The valid batch signatures fall short of ``threshold``: sign again after a backoff (operators
        that were down or slow may be back); after ``sign_rounds`` rounds, give the batch up and batch
        each request again on its own (an operator refuses a whole batch over one leaf it did not
        accept); a batch of one still short fails its request."""
        if aggregate is not None:
            shares = ", ".join(f"quorum {q.quorum}: {q.accept_stake}/{q.total_stake}" for q in aggregate.tally.quorums)
        else:
            totals = (f"quorum {q}: 0/{operator_set.total_stakes.get(q, 0)}" for q in batch.quorum_numbers)
            shares = ", ".join(totals)
        rounds = batch.sign_attempts + 1
        reason = (
            f"the operators' valid batch signatures do not reach the stake threshold of {threshold} bps "
            f"({shares} signed) after {rounds} signing round{'s' if rounds > 1 else ''}"
        )
        if rounds < self.settings.sign_rounds:
            backoff = self.settings.sign_backoff * 2 ** (rounds - 1)
            self.store.update_batch(
                batch.batch_index,
                expect_state=batch.state,
                sign_attempts=rounds,
                retry_at=self.clock() + backoff,
                error=reason,
            )
            logger.info("batch signers short; signing again", extra={"batch_index": batch.batch_index})
            return
        if len(load_hex_list(batch.request_hashes)) == 1:
            self._fail_batch(batch, reason, sign_attempts=rounds)
            return
        logger.warning("batch given up; its requests are batched again alone", extra={"batch_index": batch.batch_index})
        self._requeue(batch, reason, rebatch=True, sign_attempts=rounds)

    def _fail_batch(self, batch: BatchRow, reason: str, **values: Any) -> None:
        """Abandon the batch and fail its requests (the other end of ``_requeue``)."""
        self.store.finish_batch(
            batch.batch_index,
            BatchState.ABANDONED,
            RequestState.FAILED,
            error=reason,
            expect_state=batch.state,
            **values,
        )
        for request_hash in load_hex_list(batch.request_hashes):
            self.store.update_request(request_hash, error=reason)
            self._count(RequestState.FAILED)

    def _submit_batch(self, batch: BatchRow) -> bool:
        """Sends certifyBatch once; False when nothing moved (the batch's ring slot is still busy)."""
        certified = self.writer.get_certification(batch.batch_index, batch.reference_block)
        if certified is not None and not self._is_ours(batch):
            self._index_taken(batch)
            return True
        if certified is not None:  # sent before a crash, or by a previous run: never send again
            self._certified(batch, certified[0], certified[1], None)
            return True
        if self._is_stale(batch.reference_block):  # no certifyBatch of it can be mined any more
            self._abandon_stale(batch)
            return True
        signatures = decode_certificate(json.loads(batch.certificate or "{}"))
        try:
            tx_hash, gas_used = self.writer.certify_batch(self.get_header(batch), signatures)
        except ContractRevertError as exc:
            return self._submit_reverted(batch, exc)
        certified = self.writer.get_certification(batch.batch_index, batch.reference_block)
        self._certified(batch, certified[0] if certified else 0, tx_hash, gas_used)
        return True

    def _submit_reverted(self, batch: BatchRow, exc: ContractRevertError) -> bool:
        """Acts on a certifyBatch revert; False when nothing moved (sent again at the next poll)."""
        if exc.name == "BatchAlreadyCertified":
            again = self.writer.get_certification(batch.batch_index, batch.reference_block)
            if again is not None and not self._is_ours(batch):
                self._index_taken(batch)
            elif again is not None:
                self._certified(batch, again[0], again[1], None)
            else:
                # Not mined, yet the pending state has it: a certifyBatch for this index is in the mempool
                # (ours, sent before a timeout, a restart or a failover; or another aggregator's). Batching
                # the requests again could certify them twice: wait until it is mined (then recorded, or
                # found to be another batch), or until the reference block is stale (then it can never be).
                logger.warning(
                    "a certifyBatch for this index is pending; waiting for it", extra={"batch_index": batch.batch_index}
                )
                return False
            return True
        if exc.name == "BatchSlotNotFinal":  # the record ring is full for now: send again at the next poll
            logger.warning(
                "batch record slot still in its challenge window; retrying", extra={"batch_index": batch.batch_index}
            )
            return False
        if exc.name == "BatchIndexSuperseded":  # a later index holds the slot: this one can never be certified
            self._index_taken(batch)
        elif exc.name == "StaleReferenceBlock":
            self._abandon_stale(batch)
        elif exc.name in REBATCH_REVERTS:
            self._requeue(batch, f"certifyBatch reverted: {exc}", rebatch=True)
        else:
            self._fail_batch(batch, f"certifyBatch reverted: {exc}")
        return True

    def _is_ours(self, batch: BatchRow) -> bool:
        """Whether the index's on-chain certification is this batch (header and signer record)."""
        if not isinstance(self.writer, CertificationChecker) or not batch.certificate:
            return True
        non_signers = load_hex_list(json.dumps(json.loads(batch.certificate)["non_signer_ids"]))
        record = protocol.compute_signatory_record_hash(batch.reference_block, non_signers)
        return self.writer.is_certified(self.get_header(batch), record)

    def _index_taken(self, batch: BatchRow) -> None:
        """Another batch holds this index on-chain (or a later index holds its record ring slot): ours
        was never certified, so its requests go back to be batched under a new, higher index
        (``_create_batch`` skips the taken ones)."""
        logger.warning(
            "batch index taken on-chain (by another batch, or a later one holds its record slot); re-batching",
            extra={"batch_index": batch.batch_index},
        )
        self._requeue(batch, "index certified by another batch")
        self._notify()

    def _certified(self, batch: BatchRow, block: int, tx_hash: bytes, gas_used: int | None) -> None:
        self.store.finish_batch(
            batch.batch_index,
            BatchState.CERTIFIED,
            RequestState.CERTIFIED,
            tx_hash=tx_hash,
            certified_block=block,
            certified_hash=self._block_hash(block) if block else None,
            confirmed_block=None,
            gas_used=gas_used,
            expect_state=batch.state,
        )
        leaves = load_hex_list(batch.request_hashes)
        for _ in leaves:
            self._count(RequestState.CERTIFIED)
        if self.metrics is not None:
            self.metrics.batches_certified.inc()
            if gas_used is not None:
                self.metrics.batch_gas.observe(gas_used)
        now = self.clock()
        for request_hash in leaves:
            row = self.store.get_request(request_hash)
            if row is not None and self.metrics is not None:
                self.metrics.request_seconds.observe(now - row.created_at)
        logger.info("batch certified", extra={"batch_index": batch.batch_index, "tx": _hex(tx_hash)})

    def _confirm_batch(self, batch: BatchRow) -> bool:
        """A confirming batch: once ``confirmations`` deep, re-read its certification from the chain."""
        recorded = batch.certified_block or 0
        head = self.writer.get_block_number()
        if head < recorded + max(self.settings.confirmations, 1):
            return False
        certified = self.writer.get_certification(batch.batch_index, batch.reference_block)
        if certified is None:  # a reorg removed the certification: certify the batch again
            logger.warning("certification removed by a reorg; re-submitting", extra={"batch_index": batch.batch_index})
            self.store.reopen_batch(batch.batch_index, error="certification removed by a reorg")
            for _ in load_hex_list(batch.request_hashes):
                self._count(RequestState.BATCHED)
            self._notify()
            return True
        if not self._is_ours(batch):  # after the reorg another batch took the index
            self.store.reopen_batch(batch.batch_index, error="index certified by another batch after a reorg")
            batch.state = BatchState.SUBMITTING
            self._index_taken(batch)
            return True
        block, tx_hash = certified
        block_hash = self._block_hash(block)
        if block != recorded or (block_hash is not None and block_hash != batch.certified_hash):
            # re-included in another block: record it and wait for that block's confirmations
            values: dict[str, Any] = {"certified_block": block, "certified_hash": block_hash}
            if any(tx_hash):
                values["tx_hash"] = tx_hash
            self.store.update_batch(batch.batch_index, expect_state=batch.state, **values)
        else:
            self.store.update_batch(batch.batch_index, expect_state=batch.state, confirmed_block=head)
        self._notify()
        return True

    def _block_hash(self, block: int) -> bytes | None:
        if isinstance(self.writer, BlockHashReader):
            return self.writer.get_block_hash(block)
        return None

    def _abandon_stale(self, batch: BatchRow) -> None:
        self._requeue(batch, "stale reference block")

    def _requeue(self, batch: BatchRow, error: str, rebatch: bool = False, **values: Any) -> None:
        """Abandon the batch and put its requests back to ACCEPTED for a new index (``rebatch``:
        counted on each request, which is then batched alone)."""
        self.store.finish_batch(
            batch.batch_index,
            BatchState.ABANDONED,
            RequestState.ACCEPTED,
            rebatch=rebatch,
            error=error,
            expect_state=batch.state,
            **values,
        )

    # --- driving -----------------------------------------------------------------------

    def active_request_hashes(self) -> list[bytes]:
        return self.store.list_request_hashes(ACTIVE_REQUEST_STATES)

    def active_batch_indices(self) -> list[int]:
        """Batches still moving: signing, submitting, and certified ones still confirming."""
        batches = [*self.store.list_batches(ACTIVE_BATCH_STATES), *self.store.list_confirming_batches()]
        return sorted(b.batch_index for b in batches)

    def run_until_idle(self, force_batches: bool = True, max_rounds: int = 100) -> None:
        """Drive everything synchronously until nothing moves (tests and one-shot tools)."""
        for _ in range(max_rounds):
            progressed = False
            for request_hash in self.active_request_hashes():
                progressed |= self.advance_request(request_hash)
            progressed |= bool(self.form_batches(force=force_batches))
            for index in self.active_batch_indices():
                progressed |= self.advance_batch(index)
            if not progressed:
                return

    def wait_for_change(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)

    # --- helpers -----------------------------------------------------------------------

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _count(self, state: RequestState) -> None:
        if self.metrics is not None:
            self.metrics.requests.labels(state.value.lower()).inc()

    def _operator_outcome(self, operator: OperatorInfo | None, call: str, outcome: str) -> None:
        if self.metrics is not None and operator is not None:
            self.metrics.operator_calls.labels("0x" + operator.operator_id.hex()[:8], call, outcome).inc()
            with self._responding_lock:  # "error": no valid answer within the deadline
                self._responding[bytes(operator.operator_id)] = outcome != "error"
                self.metrics.operators_responding.set(sum(self._responding.values()))


def encode_certificate(
    aggregate: protocol.Aggregate, operator_set: OperatorSet, indices: CheckSignaturesIndices
) -> dict[str, Any]:
    """The JSON stored with a signed batch: what certifyBatch needs and what certificates show."""
    return {
        "signers": [
            {
                "operator_id": _hex(i),
                "multiplicity": aggregate.multiplicity[i],
                "g1": g1_to_json((operator_set.get(i) or _missing(i)).pubkey_g1),
                "g2": g2_to_json((operator_set.get(i) or _missing(i)).pubkey_g2),
            }
            for i in aggregate.signer_ids
        ],
        "non_signer_ids": [_hex(o.operator_id) for o in aggregate.non_signers],
        "non_signer_pubkeys": [g1_to_json(o.pubkey_g1) for o in aggregate.non_signers],
        "quorum_apks": [g1_to_json(p) for p in aggregate.quorum_apks],
        "apk_g2": g2_to_json(aggregate.apk_g2),
        "sigma": g1_to_json(aggregate.sigma),
        "quorum_stakes": [
            {"quorum": q.quorum, "signed": str(q.accept_stake), "total": str(q.total_stake)}
            for q in aggregate.tally.quorums
        ],
        "indices": {
            "non_signer_quorum_bitmap_indices": list(indices.non_signer_quorum_bitmap_indices),
            "quorum_apk_indices": list(indices.quorum_apk_indices),
            "total_stake_indices": list(indices.total_stake_indices),
            "non_signer_stake_indices": [list(r) for r in indices.non_signer_stake_indices],
        },
    }


def decode_certificate(data: dict[str, Any]) -> NonSignerStakesAndSignature:
    idx = data["indices"]
    return NonSignerStakesAndSignature(
        non_signer_pubkeys=tuple(g1_from_json(p) for p in data["non_signer_pubkeys"]),
        quorum_apks=tuple(g1_from_json(p) for p in data["quorum_apks"]),
        apk_g2=g2_from_json(data["apk_g2"]),
        sigma=g1_from_json(data["sigma"]),
        indices=CheckSignaturesIndices(
            non_signer_quorum_bitmap_indices=tuple(idx["non_signer_quorum_bitmap_indices"]),
            quorum_apk_indices=tuple(idx["quorum_apk_indices"]),
            total_stake_indices=tuple(idx["total_stake_indices"]),
            non_signer_stake_indices=tuple(tuple(r) for r in idx["non_signer_stake_indices"]),
        ),
    )


def _missing(operator_id: bytes) -> OperatorInfo:
    raise AssertionError(f"signer 0x{operator_id.hex()} is not in the operator set")


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()
