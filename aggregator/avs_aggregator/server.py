"""The intake gRPC API (``avs.aggregator.v1.AggregatorService``): servicers convert, the pipeline decides.

Errors are ``AvsError``s mapped to status codes by ``avs.rpc.status.ErrorToStatusInterceptor``
(INVALID_ARGUMENT, NOT_FOUND for unknown models, RESOURCE_EXHAUSTED when too much is pending);
an unknown request hash is NOT_FOUND. A request submitted as ``insured`` whose coverage in the
insurance pool is missing, expired, someone else's or against another quorum is FAILED_PRECONDITION
(the coverage is read through an injected ``avs.chain.insurance.CoverageReader``); a chain that
cannot be read for that check is UNAVAILABLE. Submitted again as ``insured`` (a retry), a stored
request's coverage may be in any state, but it must be its own (bought, by its requester, against
one of its quorums): an insured retry of a request first sent uninsured is checked too.

A standby aggregator (several on one database, ``avs_aggregator.leader``) serves the reads
(GetStatus, WatchStatus, GetBatch, ListModels) from the shared database and refuses Submit and
Prepare with UNAVAILABLE, naming the current leader if known: the ``IntakeGate`` says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from eth_account import Account
from grpc_health.v1 import health_pb2_grpc

from avs.chain.insurance import (
    MIN_COVERAGE_BLOCKS_LEFT,
    CoverageReader,
    compute_coverage_holder_problem,
    compute_coverage_problem,
)
from avs.errors import (
    AuthenticationError,
    InvalidInputError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    PreconditionFailedError,
    UnavailableError,
)
from avs.inference.params import SamplingParams, compute_prompt_hash, parse_chat_messages
from avs.merkle import compute_merkle_tree
from avs.messages import compute_request_hash, compute_stop_sequences_hash, is_same_address
from avs.prompts import PromptEncoder
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.aggregator.v1 import aggregator_pb2_grpc as ag_grpc
from avs.rpc.aio import ThreadedAioServer
from avs.rpc.common.v1 import bn254_pb2
from avs.rpc.health import CONNECTION_LIMIT_OPTIONS, AioBoundedHealthServicer
from avs.rpc.operator.v1 import operator_pb2 as op
from avs.rpc.status import AioErrorToStatusInterceptor
from avs_aggregator.pipeline import Pipeline, describe_pruned, g1_from_json, g2_from_json
from avs_aggregator.protocol import compute_signatory_record_hash
from avs_aggregator.store import FINAL_REQUEST_STATES, RequestRow, RequestState, load_hex_list

logger = logging.getLogger(__name__)

SERVICE_NAME = ag.DESCRIPTOR.services_by_name["AggregatorService"].full_name
STATE_TO_PROTO = {
    RequestState.RECEIVED: ag.REQUEST_STATE_RECEIVED,
    RequestState.GENERATING: ag.REQUEST_STATE_GENERATING,
    RequestState.VERIFYING: ag.REQUEST_STATE_VERIFYING,
    RequestState.ACCEPTED: ag.REQUEST_STATE_ACCEPTED,
    RequestState.BATCHED: ag.REQUEST_STATE_BATCHED,
    RequestState.CERTIFIED: ag.REQUEST_STATE_CERTIFIED,
    RequestState.FAILED: ag.REQUEST_STATE_FAILED,
}
WATCH_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ServedModel:
    name: str
    model_id: bytes
    encoder: PromptEncoder | None = None  # computes prompt hashes when requesters leave them out


@dataclass(frozen=True)
class IntakeLimits:
    max_chat_chars: int = 64 * 1024
    max_new_tokens: int = 512
    # Open WatchStatus streams (each a watch thread while it looks for a change); beyond it, clients
    # are told to poll GetStatus.
    max_watches: int = 16


class IntakeGate(Protocol):
    def get_intake_refusal(self) -> str | None:
        """None while this aggregator takes requests; otherwise why not (a standby names the leader)."""
        ...


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


Decoder = Callable[[list[int]], str]


def _output_text(row: RequestRow, decode: Decoder | None) -> str:
    """The output's text: decoded here from the signed token ids when the model's tokenizer is
    configured; otherwise the primary's own decode, which nothing checks (only the ids are signed)."""
    if decode is not None and row.output_ids:
        return decode(json.loads(row.output_ids))
    return row.output_text or ""


def build_status(pipeline: Pipeline, row: RequestRow, decode: Decoder | None = None) -> ag.RequestStatus:
    status = ag.RequestStatus(
        request_hash=row.request_hash,
        state=STATE_TO_PROTO[RequestState(row.state)],
        error=row.error or "",
        attempt=row.attempt,
        primary_operator_id=row.primary_id or b"",
        output_token_ids=json.loads(row.output_ids or "[]"),
        output_text=_output_text(row, decode),
        output_hash=row.output_hash or b"",
        batch_index=row.batch_index or 0,
        prompt_tokens=row.prompt_tokens or 0,
    )
    if row.state == RequestState.CERTIFIED:
        status.certificate.CopyFrom(build_certificate(pipeline, row, decode))
    return status


def build_certificate(pipeline: Pipeline, row: RequestRow, decode: Decoder | None = None) -> ag.Certificate:
    assert row.batch_index is not None and row.output_hash is not None
    batch = pipeline.store.get_batch(row.batch_index)
    assert batch is not None and batch.certificate is not None
    data = json.loads(batch.certificate)
    leaves = pipeline.get_batch_leaves(batch)
    tree = compute_merkle_tree(leaves)
    position = [leaf.request_hash for leaf in leaves].index(row.request_hash)
    non_signers = load_hex_list(json.dumps(data["non_signer_ids"]))
    header = pipeline.get_header(batch)
    certificate = ag.Certificate(
        chain_id=pipeline.domain.chain_id,
        task_manager=pipeline.domain.verifying_contract,
        request=op.InferenceRequest.FromString(row.envelope),
        request_hash=row.request_hash,
        output_token_ids=json.loads(row.output_ids or "[]"),
        output_text=_output_text(row, decode),
        output_hash=row.output_hash,
        batch_header=convert.batch_header_to_proto(header),
        merkle_proof=list(tree.get_proof(position)),
        signatory_record_hash=compute_signatory_record_hash(batch.reference_block, non_signers),
        non_signer_ids=non_signers,
        apk_g2=convert.g2_to_proto(g2_from_json(data["apk_g2"])),
        sigma=convert.g1_to_proto(g1_from_json(data["sigma"])),
        tx_hash=batch.tx_hash or b"",
        certified_block=batch.certified_block or 0,
    )
    for signer in data["signers"]:
        g1 = g1_from_json(signer["g1"])
        certificate.signers.append(
            ag.Signer(
                public_key=bn254_pb2.BlsPublicKey(
                    g1=convert.g1_to_proto(g1),
                    g2=convert.g2_to_proto(g2_from_json(signer["g2"])),
                    operator_id=bytes.fromhex(signer["operator_id"][2:]),
                ),
                multiplicity=signer["multiplicity"],
            )
        )
    for stake in data["quorum_stakes"]:
        certificate.quorum_stakes.append(
            ag.QuorumStake(quorum_number=stake["quorum"], signed_stake=stake["signed"], total_stake=stake["total"])
        )
    return certificate


class AggregatorServicer(ag_grpc.AggregatorServiceServicer):
    def __init__(
        self,
        pipeline: Pipeline,
        models: Mapping[bytes, ServedModel],
        limits: IntakeLimits,
        coverage: CoverageReader | None = None,
        gate: IntakeGate | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._models = dict(models)
        self._limits = limits
        self._coverage = coverage  # None: insured requests are refused (no insurance pool to read)
        self._gate = gate  # None: always takes requests (a lone aggregator)
        self._watch_slots = threading.BoundedSemaphore(limits.max_watches)
        # WatchStatus streams wait on the loop; each look (a wait for a change, a read) takes one of these.
        self._watch_threads = ThreadPoolExecutor(max_workers=limits.max_watches, thread_name_prefix="watch")

    def close(self) -> None:
        """Ends the watch threads once the server has stopped: the looks still running (each at most
        ``WATCH_POLL_SECONDS``) finish first, so none reads a store closed after this."""
        self._watch_threads.shutdown(wait=True, cancel_futures=True)

    @property
    def max_chat_chars(self) -> int:
        return self._limits.max_chat_chars

    def _check_intake(self) -> None:
        refusal = None if self._gate is None else self._gate.get_intake_refusal()
        if refusal is not None:
            raise UnavailableError(refusal)

    def _resolve_model(self, message: ag.SubmitRequest) -> ServedModel:
        if message.model_name and not message.request.model_id:
            for model in self._models.values():
                if model.name == message.model_name:
                    return model
            raise ModelNotFoundError(f"no model named {message.model_name!r} is served")
        if len(message.request.model_id) != 32:
            raise InvalidInputError(f"model_id must be 32 bytes, not {len(message.request.model_id)}")
        found = self._models.get(bytes(message.request.model_id))
        if found is None:
            raise ModelNotFoundError("no model with this id is served (ListModels lists them)")
        return found

    def _encode(self, message: ag.SubmitRequest) -> tuple[convert.RequestEnvelope, int | None]:
        """The validated, completed request and its prompt's token count (None without a tokenizer)."""
        if not message.HasField("request"):
            raise InvalidInputError("request is required")
        convert.check_request_counts(message.request)  # before the copy and the walks below
        model = self._resolve_model(message)
        request = op.InferenceRequest()
        request.CopyFrom(message.request)
        request.model_id = model.model_id
        chars = sum(len(m.content) for m in request.messages)
        if chars > self._limits.max_chat_chars:
            raise InvalidInputError(f"the chat has {chars} characters; at most {self._limits.max_chat_chars}")
        if request.max_tokens > self._limits.max_new_tokens:
            raise InvalidInputError(f"max_tokens must be at most {self._limits.max_new_tokens}")
        # The operators' limits (sampling ranges, stop sequences' count and length), checked before
        # the request is tokenized, stored or sent to any operator.
        SamplingParams(
            temperature_milli=request.temperature_milli,
            top_k=request.top_k,
            top_p_micro=request.top_p_micro,
            seed=request.seed,
            max_tokens=request.max_tokens,
            stop_sequences=tuple(request.stop_sequences),
        )
        chat = [{"role": m.role, "content": m.content} for m in request.messages]
        prompt_tokens: int | None = None
        if not request.prompt_hash:
            if model.encoder is None:
                raise InvalidInputError("prompt_hash is required for this model (no tokenizer configured)")
            prompt_ids = model.encoder.encode_chat(chat)
            request.prompt_hash = compute_prompt_hash(prompt_ids)
            prompt_tokens = len(prompt_ids)
        elif model.encoder is not None:
            prompt_tokens = self._count_prompt_tokens(model.encoder, chat, bytes(request.prompt_hash))
        envelope = convert.request_from_proto(request)
        parse_chat_messages(list(envelope.messages))
        if compute_stop_sequences_hash(envelope.stop_sequences) != envelope.request.stop_sequences_hash:
            raise InvalidInputError("stop_sequences_hash does not match the stop sequences")
        return envelope, prompt_tokens

    @staticmethod
    def _count_prompt_tokens(encoder: PromptEncoder, chat: list[dict[str, str]], prompt_hash: bytes) -> int | None:
        """The prompt's length when the requester hashed it itself: counted only if our encoding gives
        the same hash (else the operators judge the prompt, and its length is not ours to report)."""
        try:
            prompt_ids = encoder.encode_chat(chat)
        except Exception:  # e.g. a special token in a message: the requester's hash stands unchecked here
            return None
        return len(prompt_ids) if compute_prompt_hash(prompt_ids) == prompt_hash else None

    def Prepare(self, request: ag.SubmitRequest, context: grpc.ServicerContext) -> ag.PreparedRequest:
        """Validate and complete the request as Submit would, without accepting it."""
        self._check_intake()
        envelope, _ = self._encode(request)
        quorums, threshold = self._pipeline.check_request_policy(bytes(request.quorum_numbers), request.threshold_bps)
        return ag.PreparedRequest(
            request=convert.request_to_proto(envelope),
            request_hash=compute_request_hash(self._pipeline.domain, envelope.request),
            quorum_numbers=quorums,
            threshold_bps=threshold,
        )

    def Submit(self, request: ag.SubmitRequest, context: grpc.ServicerContext) -> ag.SubmitResponse:
        self._check_intake()
        envelope, prompt_tokens = self._encode(request)
        digest = compute_request_hash(self._pipeline.domain, envelope.request)
        if request.requester_signature:
            try:
                signer = Account._recover_hash(digest, signature=bytes(request.requester_signature))
            except Exception as exc:  # INVALID_ARGUMENT: malformed; UNAUTHENTICATED is for a wrong signer
                raise InvalidInputError("the requester signature is malformed (65 bytes r || s || v)") from exc
            if not is_same_address(signer, envelope.request.requester):
                raise AuthenticationError("the requester signature is not by the request's requester")
        if request.insured:
            stored = self._pipeline.store.get_request(digest)
            if stored is None:
                quorums, _ = self._pipeline.check_request_policy(bytes(request.quorum_numbers), request.threshold_bps)
                self._check_coverage(digest, envelope.request.requester, quorums)
            else:
                # Submitted again (a retry). Once final its coverage may have moved on (expired after
                # the certificate, claimable after a fraud), but it must be the request's; still in
                # flight, it must still be active (no margin: the request is on its way). An insured
                # retry of a request first sent uninsured, with no coverage, was answered as accepted.
                final = stored.state in FINAL_REQUEST_STATES
                self._check_coverage(
                    digest, envelope.request.requester, stored.quorum_numbers, holder_only=final, min_blocks_left=0
                )
        request_hash = self._pipeline.submit(
            envelope, bytes(request.quorum_numbers), request.threshold_bps, prompt_tokens=prompt_tokens
        )
        row = self._pipeline.store.get_request(request_hash)
        state = STATE_TO_PROTO[RequestState(row.state)] if row else ag.REQUEST_STATE_RECEIVED
        return ag.SubmitResponse(request_hash=request_hash, state=state)

    def _check_coverage(
        self,
        request_hash: bytes,
        requester: str,
        quorums: bytes,
        holder_only: bool = False,
        min_blocks_left: int = MIN_COVERAGE_BLOCKS_LEFT,
    ) -> None:
        if self._coverage is None:
            raise PreconditionFailedError(
                "this aggregator cannot check insurance (its deployment has no insurance pool)"
            )
        try:
            coverage = self._coverage.get_coverage(request_hash)
            block = self._coverage.get_block_number()
        except Exception as exc:
            logger.exception("coverage read failed", extra={"request": "0x" + request_hash.hex()})
            raise UnavailableError("the insurance pool could not be read; retry later") from exc
        if holder_only:
            problem = compute_coverage_holder_problem(coverage, requester, quorums)
        else:
            problem = compute_coverage_problem(coverage, requester, quorums, block, min_blocks_left)
        if problem is not None:
            raise PreconditionFailedError(problem)

    def _row(self, request: ag.GetStatusRequest) -> RequestRow:
        if len(request.request_hash) != 32:  # malformed, not merely unknown
            raise InvalidInputError(f"request_hash must be 32 bytes, not {len(request.request_hash)}")
        row = self._pipeline.store.get_request(bytes(request.request_hash))
        if row is None:
            pruned = self._pipeline.store.get_pruned_request(bytes(request.request_hash))
            raise NotFoundError("no request with this hash" if pruned is None else describe_pruned(pruned))
        return row

    def _decoder(self, row: RequestRow) -> Decoder | None:
        model = self._models.get(bytes(op.InferenceRequest.FromString(row.envelope).model_id))
        if model is None or model.encoder is None:
            return None
        return model.encoder.decode

    def GetStatus(self, request: ag.GetStatusRequest, context: grpc.ServicerContext) -> ag.RequestStatus:
        row = self._row(request)
        return build_status(self._pipeline, row, self._decoder(row))

    async def WatchStatus(
        self, request: ag.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ag.RequestStatus]:
        """The request's status, then each change until it is final. Runs on the server's loop: the
        stream holds no intake thread while it waits, only a watch thread for each look."""
        if not self._watch_slots.acquire(blocking=False):
            raise OverloadedError(
                f"{self._limits.max_watches} WatchStatus streams are open already; retry later or poll GetStatus"
            )
        loop = asyncio.get_running_loop()
        try:
            last: tuple[str, int] | None = None
            while True:
                change = await loop.run_in_executor(self._watch_threads, self._look, request, last)
                if change is not None:
                    last, status = change
                    yield status
                if last is not None and last[0] in FINAL_REQUEST_STATES:
                    return
        finally:
            self._watch_slots.release()

    def _look(
        self, request: ag.GetStatusRequest, last: tuple[str, int] | None
    ) -> tuple[tuple[str, int], ag.RequestStatus] | None:
        """The request's status if it moved on from ``last`` (waiting up to WATCH_POLL_SECONDS for a
        change first, unless it is the first look); None if it did not."""
        if last is not None:
            self._pipeline.wait_for_change(WATCH_POLL_SECONDS)
        row = self._row(request)
        if (row.state, row.attempt) == last:
            return None
        return (row.state, row.attempt), build_status(self._pipeline, row, self._decoder(row))

    def GetBatch(self, request: ag.GetBatchRequest, context: grpc.ServicerContext) -> ag.BatchInfo:
        # Beyond the store's signed 64-bit column no batch can exist (and the query would overflow).
        batch = self._pipeline.store.get_batch(request.batch_index) if request.batch_index < 2**63 else None
        if batch is None:
            raise NotFoundError("no batch with this index")
        assert batch is not None
        leaves = self._pipeline.get_batch_leaves(batch)
        info = ag.BatchInfo(
            header=convert.batch_header_to_proto(self._pipeline.get_header(batch)),
            state=batch.state,
            request_hashes=[leaf.request_hash for leaf in leaves],
            output_hashes=[leaf.output_hash for leaf in leaves],  # a watcher rebuilds the certified root
            tx_hash=batch.tx_hash or b"",
            certified_block=batch.certified_block or 0,
        )
        if batch.certificate:
            non_signers = load_hex_list(json.dumps(json.loads(batch.certificate)["non_signer_ids"]))
            info.signatory_record_hash = compute_signatory_record_hash(batch.reference_block, non_signers)
        return info

    def ListModels(self, request: ag.ListModelsRequest, context: grpc.ServicerContext) -> ag.ListModelsResponse:
        return ag.ListModelsResponse(
            models=[ag.ServedModel(name=m.name, model_id=m.model_id) for m in self._models.values()]
        )


def build_server(
    servicer: AggregatorServicer, listen: str, max_workers: int = 32
) -> tuple[ThreadedAioServer, int, AioBoundedHealthServicer]:
    """The intake on a ``grpc.aio`` server (``avs.rpc.aio``): the port is public, and a call waits for
    its request on the event loop, so clients that never finish sending cannot take the
    ``max_workers`` threads that serve complete requests."""
    # Receive no more than the largest valid Submit: parsing costs memory before any check runs (a
    # 4 MiB message of empty chat messages is ~100 MiB of Python objects, on every intake thread).
    receive = min(convert.INTAKE_MAX_REQUEST_BYTES, convert.compute_largest_submit_bytes(servicer.max_chat_chars))
    server = ThreadedAioServer(
        max_workers=max_workers,
        thread_name="intake",
        interceptors=[AioErrorToStatusInterceptor()],
        options=[
            ("grpc.max_receive_message_length", receive),
            ("grpc.max_send_message_length", convert.INTAKE_MAX_REPLY_BYTES),
            *CONNECTION_LIMIT_OPTIONS,
        ],
    )
    try:  # the server's loop thread runs from here: a port that cannot be bound must not leave it
        ag_grpc.add_AggregatorServiceServicer_to_server(servicer, server.server)  # type: ignore[no-untyped-call]
        health_servicer = AioBoundedHealthServicer((SERVICE_NAME,))
        health_servicer.attach(server.loop)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server.server)
        port = server.add_insecure_port(listen)
    except BaseException:
        server.stop(None).wait(10)
        raise
    health_servicer.set_serving(True)
    return server, port, health_servicer
