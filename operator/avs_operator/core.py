"""What an operator does, without the wire: prepare a request, generate, verify, sign batches.

Every signature goes through ``_attest``/``sign_batch``, which record it in slashing protection
*before* signing, so no signature can leave the process unrecorded. All validation happens in
``prepare`` before any model compute: unknown model, a prompt hash that does not match the chat,
stop sequences that do not match their hash, budgets beyond the profile or this node's limits.

The caller's deadline is checked before the engine is waited for, bounds that wait (a call queued
behind another gives up when its deadline passes), and is checked again once the engine is this
call's and before anything is recorded or signed: a late call never signs what nobody will receive
(a ``SignBatch`` too: checked after its leaves are hashed, before its header is recorded).
Generation also checks, at every token, that the caller is still there: a client that cancels (or
disconnects) frees the engine at once instead of holding it for up to ``max_tokens`` more tokens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from avs.crypto import bls
from avs.crypto.curve import G1Point
from avs.errors import (
    CancelledError,
    ContextLimitError,
    DeadlineExceededError,
    InvalidInputError,
    SlashingProtectionError,
)
from avs.inference.engine import EngineRegistry, FinishReason, InferenceEngine, Verification
from avs.inference.params import SamplingParams
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import (
    Attestation,
    BatchHeader,
    Domain,
    InferenceRequest,
    Verdict,
    compute_digest,
    compute_request_hash,
)
from avs.rpc import convert
from avs.types import OutputHash, RequestHash
from avs_operator.config import LimitsConfig
from avs_operator.metrics import OperatorMetrics
from avs_operator.slashing_protection import SlashingProtection, check_batch_index

DEADLINE_PASSED = "the caller's deadline passed"
CALLER_GONE = "the caller cancelled the call"


class Caller(Protocol):
    """The call being served (a ``grpc.ServicerContext``): its deadline and whether it is still waiting."""

    def time_remaining(self) -> float | None: ...

    def is_active(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    request: InferenceRequest
    request_hash: RequestHash
    engine: InferenceEngine
    prompt_ids: tuple[int, ...]
    params: SamplingParams


@dataclass(frozen=True, slots=True)
class SignedAttestation:
    attestation: Attestation
    digest: bytes
    signature: G1Point


@dataclass(frozen=True, slots=True)
class GenerateResult:
    token_ids: tuple[int, ...]
    text: str
    output_hash: OutputHash
    profile_hash: bytes
    finish_reason: FinishReason
    attestation: SignedAttestation


REPLY_ENVELOPE_BYTES = 1024  # a Generate reply besides its ids and text: hashes, finish reason, signature


@dataclass(frozen=True, slots=True)
class VerifyResult:
    verification: Verification
    attestation: SignedAttestation


class OperatorCore:
    def __init__(
        self,
        domain: Domain,
        key_pair: bls.KeyPair,
        engines: EngineRegistry,
        protection: SlashingProtection,
        metrics: OperatorMetrics,
        limits: LimitsConfig,
        model_names: dict[bytes, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_reply_bytes: int | None = None,
    ) -> None:
        """``max_reply_bytes``: grpc.max_message_bytes; a generated output whose reply would not fit
        is refused before it is signed."""
        self.domain = domain
        self.key_pair = key_pair
        self.engines = engines
        self._protection = protection
        self._metrics = metrics
        self._limits = limits
        self._clock = clock
        self._max_reply_bytes = max_reply_bytes
        self._model_names = dict(model_names or {})
        self.ready = threading.Event()  # set once every configured model is loaded and warm
        self._engine_lock = threading.Lock()  # one forward pass at a time: CPU threads are shared

    @property
    def operator_id(self) -> bytes:
        return self.key_pair.operator_id

    def add_model(self, name: str, engine: InferenceEngine) -> None:
        """Start serving ``engine`` (its model id is its profile hash) under ``name``."""
        self.engines.add(engine)
        self._model_names[bytes(engine.profile_hash)] = name

    def served_models(self) -> dict[bytes, str]:
        """Model id (= profile hash) -> configured name."""
        return dict(self._model_names)

    def model_name(self, engine: InferenceEngine) -> str:
        return self._model_names.get(engine.profile_hash, "0x" + engine.profile_hash.hex()[:8])

    # --- requests -------------------------------------------------------------------------

    def prepare(
        self, request: InferenceRequest, messages: Sequence[Any], stop_sequences: Sequence[str]
    ) -> PreparedRequest:
        """Validate everything about a request, cheaply, before any model compute."""
        engine = self.engines.get(request.model_id)
        chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        if chars > self._limits.max_chat_chars:
            raise ContextLimitError(f"the chat has {chars} characters; this node accepts {self._limits.max_chat_chars}")
        params = SamplingParams.from_request(request, tuple(stop_sequences))
        if params.max_tokens > self._limits.max_new_tokens:
            raise ContextLimitError(f"max_tokens {params.max_tokens} exceeds this node's {self._limits.max_new_tokens}")
        with self._metrics.inference_seconds.labels("tokenize").time():
            prompt = engine.encode_chat(list(messages))
        if len(prompt.token_ids) > self._limits.max_prompt_tokens:
            raise ContextLimitError(
                f"the prompt has {len(prompt.token_ids)} tokens; this node accepts {self._limits.max_prompt_tokens}"
            )
        if prompt.prompt_hash != request.prompt_hash:
            raise InvalidInputError("prompt_hash does not match the chat messages under this model's chat template")
        engine.check_request(prompt.token_ids, params)
        return PreparedRequest(request, compute_request_hash(self.domain, request), engine, prompt.token_ids, params)

    # --- generation (as the primary) ------------------------------------------------------

    def stream(self, prepared: PreparedRequest, caller: Caller | None = None) -> Iterator[int | GenerateResult]:
        """Yield token ids as they are produced, then the signed ``GenerateResult``."""
        tokens: list[int] = []
        finish: FinishReason | None = None
        with self._engine_turn(caller) as started:
            for event in prepared.engine.stream(prepared.prompt_ids, prepared.params):
                _check_caller(caller)
                tokens.append(event.token_id)
                finish = event.finish_reason
                yield event.token_id
        self._metrics.inference_seconds.labels("generate").observe(self._clock() - started)
        self._metrics.tokens_generated.labels(self.model_name(prepared.engine)).inc(len(tokens))
        if finish is None:  # pragma: no cover - the engine always ends with a finish reason
            raise InvalidInputError("generation ended without a finish reason")
        output_hash = prepared.engine.compute_output_hash(prepared.request_hash, tokens)
        text = prepared.engine.decode(tokens)
        self._check_reply_fits(tokens, text)
        _check_caller(caller)
        signed = self._attest(Attestation(prepared.request_hash, output_hash, Verdict.ACCEPT))
        yield GenerateResult(tuple(tokens), text, output_hash, prepared.engine.profile_hash, finish, signed)

    def _check_reply_fits(self, tokens: Sequence[int], text: str) -> None:
        """gRPC would fail to send a reply over its message limit after the attestation was signed and
        recorded, with RESOURCE_EXHAUSTED, which callers read as "overloaded, retry"."""
        if self._max_reply_bytes is None:
            return
        text_bytes = len(text.encode("utf-8", "surrogatepass"))
        size = convert.TOKEN_ID_BYTES * len(tokens) + text_bytes + REPLY_ENVELOPE_BYTES
        if size > self._max_reply_bytes:
            raise ContextLimitError(
                f"the output ({len(tokens)} tokens, {text_bytes} bytes of text) does not fit in one reply of"
                f" {self._max_reply_bytes} bytes (grpc.max_message_bytes); it was not signed"
            )

    def generate(self, prepared: PreparedRequest, caller: Caller | None = None) -> GenerateResult:
        for item in self.stream(prepared, caller):
            if isinstance(item, GenerateResult):
                return item
        raise AssertionError("stream ended without a result")  # pragma: no cover

    # --- verification ---------------------------------------------------------------------

    def verify(
        self, prepared: PreparedRequest, output_ids: Sequence[int], caller: Caller | None = None
    ) -> VerifyResult:
        # Longer than any output this node would generate: refused before the copy, the hash and the
        # signature it would otherwise cost (a 4 MB message holds ~4M one-byte ids).
        if len(output_ids) > self._limits.max_new_tokens:
            raise ContextLimitError(
                f"the output has {len(output_ids)} tokens; this node verifies at most {self._limits.max_new_tokens}"
            )
        output_ids = list(output_ids)
        with self._engine_turn(caller) as started:
            verification = prepared.engine.verify(prepared.prompt_ids, list(output_ids), prepared.params)
        self._metrics.inference_seconds.labels("prefill").observe(self._clock() - started)
        verdict = Verdict.ACCEPT if verification.accepted else Verdict.REJECT
        output_hash = prepared.engine.compute_output_hash(prepared.request_hash, output_ids)
        _check_caller(caller)
        signed = self._attest(Attestation(prepared.request_hash, output_hash, verdict))
        self._metrics.verdicts.labels(self.model_name(prepared.engine), verdict.name).inc()  # signed, not refused
        return VerifyResult(verification, signed)

    @contextmanager
    def _engine_turn(self, caller: Caller | None) -> Iterator[float]:
        """Hold the engine, waiting for it at most until the caller's deadline, which is checked again
        once held; yields when it was taken (the stage's time starts there: the wait is ``engine_wait``)."""
        asked = self._clock()
        _check_caller(caller)
        remaining = None if caller is None else caller.time_remaining()
        # gRPC answers a call without a deadline with a huge time_remaining (~9e18 s), which
        # Lock.acquire refuses (OverflowError): anything beyond its maximum is no deadline.
        if remaining is not None and remaining >= threading.TIMEOUT_MAX:
            remaining = None
        if not self._engine_lock.acquire(timeout=-1 if remaining is None else max(remaining, 0.0)):
            raise DeadlineExceededError(DEADLINE_PASSED)
        try:
            held = self._clock()
            self._metrics.inference_seconds.labels("engine_wait").observe(held - asked)
            _check_caller(caller)
            yield held
        finally:
            self._engine_lock.release()

    # --- signing --------------------------------------------------------------------------

    def _attest(self, attestation: Attestation) -> SignedAttestation:
        with self._counting_refusals("attestation"):
            self._protection.record_attestation(self.domain.separator, attestation)
        digest = compute_digest(self.domain, attestation)
        signature = bls.sign(self.key_pair.secret, digest)
        self._metrics.signatures.labels("attestation").inc()
        return SignedAttestation(attestation, digest, signature)

    def sign_batch(
        self, header: BatchHeader, leaves: Sequence[BatchLeaf], caller: Caller | None = None
    ) -> tuple[bytes, G1Point]:
        """Sign ``header`` if ``leaves`` build its root and every leaf is an accepted output."""
        check_batch_index(header)  # bad input (INVALID_ARGUMENT), before any hashing or protection work
        if compute_merkle_tree(leaves).root != header.leaves_root:
            raise InvalidInputError("the leaves do not build the header's leaves_root")
        _check_caller(caller)  # a batch recorded for a caller that gave up would bind its index for nothing
        with self._counting_refusals("batch"):
            self._protection.record_batch(self.domain.separator, header, leaves)
        digest = compute_digest(self.domain, header)
        signature = bls.sign(self.key_pair.secret, digest)
        self._metrics.signatures.labels("batch").inc()
        return digest, signature

    @contextmanager
    def _counting_refusals(self, kind: str) -> Iterator[None]:
        """Count what slashing protection refuses (``SlashingProtectionError``) in
        ``avs_signing_refusals_total``, which pages someone; a history busy or unreachable
        (``UnavailableError``: nothing recorded, retry), bad input or a bug refused nothing."""
        try:
            yield
        except SlashingProtectionError:
            self._metrics.refusals.labels(kind).inc()
            raise


def _check_caller(caller: Caller | None) -> None:
    """Raise if the caller's deadline passed or the caller cancelled: nobody would receive the result."""
    if caller is None:
        return
    remaining = caller.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceededError(DEADLINE_PASSED)
    if not caller.is_active():
        raise CancelledError(CALLER_GONE)
