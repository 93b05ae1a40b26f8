"""The requester SDK: submit a request to an aggregator, wait for it, verify its certificate.

    client = AggregatorClient("127.0.0.1:50060")
    request_hash = client.submit([{"role": "user", "content": "hi"}], model="smollm2", requester=me)
    status = client.wait(request_hash, on_progress=lambda s: print(s.state))
    check = verify_certificate(status.certificate, domain=domain, request_hash=request_hash)  # offline
    assert check.ok, check.problems

An insured request is prepared first (the aggregator completes it and answers its hash without
accepting it), covered on-chain (``avs.chain.insurance.InsuranceBuyer.buy``), then submitted
signed and ``insured``; the aggregator refuses it (FAILED_PRECONDITION) unless the coverage is
active, the requester's, and against one of the request's quorums:

    prepared = client.prepare(messages, requester=me.address, model="smollm2")
    InsuranceBuyer(w3, deployment, me).buy(prepared.request, prepared.quorums[0], amount)
    request_hash = client.submit_prepared(prepared, domain=domain, requester_key=key, insured=True)

``wait`` follows the status stream and survives aggregator restarts (reconnecting with backoff
until its deadline).

Offline verification checks everything the certificate states about itself: the request hash is
the EIP-712 digest of the request, the output hash commits to the tokens under the model, the
leaf is in the batch's Merkle root, the signatory record hash matches the non-signers, and the
aggregate BLS signature over the batch digest verifies against the listed signer keys (each
counted once per quorum it signed in, as the contract does), the non-signers are sorted, unique and
not signers, and the stake shares name exactly the batch's quorums. With ``domain`` (the chain id
and task manager you trust) the certificate must be for that deployment, and with ``request_hash``
for that request: without them anyone can make a self-consistent certificate with their own keys
on their own "task manager". That the keys were the registered operators with the stated stake is
what the chain certified: ``verify_on_chain`` asks your deployment's task manager's ``verifyLeaf``,
which proves the task manager's own threshold was met; the stake shares the certificate states are
the aggregator's word until ``check_stakes_on_chain`` counts them from the registry's history at the
reference block (``Web3AvsClient.get_signed_stakes``).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol, TypedDict, Unpack

import grpc
from eth_abi.packed import encode_packed
from eth_account import Account
from eth_utils import keccak
from google.protobuf import json_format

from avs.chain.client import find_batch_certified
from avs.crypto import bls
from avs.crypto.backends import get_backend
from avs.crypto.curve import G1Point, G2Point
from avs.errors import (
    AvsError,
    CancelledError,
    DeadlineExceededError,
    InvalidInputError,
    UnavailableError,
    UntrustedAnswerError,
)
from avs.merkle import BatchLeaf, verify_merkle_proof
from avs.messages import (
    BPS,
    MAX_QUORUMS,
    TOP_P_ONE,
    Domain,
    InferenceOutput,
    InferenceRequest,
    compute_digest,
    compute_output_hash,
    compute_request_hash,
    compute_stop_sequences_hash,
    is_same_address,
)
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.aggregator.v1 import aggregator_pb2_grpc as ag_grpc
from avs.rpc.operator.v1 import operator_pb2 as op
from avs.types import Bytes32, OperatorId

logger = logging.getLogger(__name__)

Certificate = ag.Certificate
RequestStatus = ag.RequestStatus
FINAL_STATES = frozenset({ag.REQUEST_STATE_CERTIFIED, ag.REQUEST_STATE_FAILED})
# More signers than any EigenLayer quorum admits in practice (EigenDA caps its quorums at 200): a
# longer list is refused before its keys are parsed (a G2 subgroup check each).
MAX_CERTIFICATE_SIGNERS = 2048


class RequestFailedError(AvsError):
    """The aggregator could not certify the request (see the message)."""


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request completed by the aggregator's ``Prepare``: the EIP-712 request (what coverage is
    bought for), its protobuf form (what is submitted), its hash, quorums and threshold."""

    request: InferenceRequest
    message: op.InferenceRequest
    request_hash: bytes
    quorums: bytes
    threshold_bps: int


def compute_signatory_record_hash(reference_block: int, non_signer_ids: Sequence[bytes]) -> Bytes32:
    """``keccak256(abi.encodePacked(uint32 referenceBlock, bytes32[] nonSignerIds))``."""
    return Bytes32(keccak(encode_packed(["uint32", "bytes32[]"], [reference_block, list(non_signer_ids)])))


def get_state_name(state: int) -> str:
    return ag.RequestState.Name(state).removeprefix("REQUEST_STATE_")  # type: ignore[arg-type]


class RequestFields(TypedDict, total=False):
    """What a request may state besides its chat and requester; every key is optional. ``model``
    names a model the aggregator serves (or ``model_id`` gives its id); ``prompt_hash`` may be left
    out when the aggregator has the tokenizer; ``quorums``/``threshold_bps`` empty/0 take the
    aggregator's defaults; ``nonce`` is random when left out."""

    model: str
    model_id: bytes
    max_tokens: int  # default 64
    temperature_milli: int  # default 0: greedy
    top_k: int
    top_p_micro: int  # default TOP_P_ONE: no top-p
    seed: int
    stop_sequences: Sequence[str]
    nonce: int | None
    prompt_hash: bytes
    quorums: bytes
    threshold_bps: int


# What the aggregator's Prepare may fill in (model id from the name, prompt hash from the chat,
# default quorums and threshold); every other field of the request must come back as asked.
PREPARED_FIELDS_AS_ASKED = (
    "temperature_milli",
    "top_k",
    "top_p_micro",
    "seed",
    "max_tokens",
    "stop_sequences_hash",
    "requester",
    "nonce",
    "messages",
    "stop_sequences",
)


def _is_below_share(signed: int, total: int, min_share_bps: int) -> bool:
    """Whether ``signed`` is under ``min_share_bps`` of ``total`` (integers: a float share refused
    some shares exactly at the threshold, which the contract accepts)."""
    return signed * BPS < min_share_bps * max(total, 1)


def _stated_stake_problem(stake: ag.QuorumStake) -> str | None:
    """Why a quorum's stated stake figures cannot be a share (no total stake, a negative figure, more
    signed than the total), or None. A share of nothing proves nothing, whatever the threshold."""
    signed, total = int(stake.signed_stake), int(stake.total_stake)
    if total <= 0 or not 0 <= signed <= total:
        return f"quorum {stake.quorum_number} states {signed} signed of {total} in all: not a share of stake"
    return None


def _is_stated_below(stake: ag.QuorumStake, min_share_bps: int) -> bool:
    """Whether a stated quorum share is below ``min_share_bps`` (figures that are no share count as below)."""
    if _stated_stake_problem(stake) is not None:
        return True
    return _is_below_share(int(stake.signed_stake), int(stake.total_stake), min_share_bps)


def _changed_fields(want: op.InferenceRequest, got: op.InferenceRequest) -> list[str]:
    """The fields of ``got`` other than in ``want``: every one the requester chooses, and the model id
    and prompt hash where ``want`` gives them (the aggregator fills them in otherwise)."""
    changed = [name for name in PREPARED_FIELDS_AS_ASKED if getattr(want, name) != getattr(got, name)]
    if want.model_id and want.model_id != got.model_id:
        changed.append("model_id")
    if want.prompt_hash and want.prompt_hash != got.prompt_hash:
        changed.append("prompt_hash")
    return changed


def _check_prepared(asked: ag.SubmitRequest, answered: ag.PreparedRequest) -> None:
    """The prepared request is the one asked for: an aggregator must not have coverage bought for,
    or the requester sign, another prompt, budget or seed. (A prompt hash it computed is checked
    against the chat by every operator before any compute.)"""
    changed = _changed_fields(asked.request, answered.request)
    if asked.quorum_numbers and asked.quorum_numbers != answered.quorum_numbers:
        changed.append("quorum_numbers")
    if asked.threshold_bps and asked.threshold_bps != answered.threshold_bps:
        changed.append("threshold_bps")
    if changed:
        raise InvalidInputError(f"the aggregator prepared another request than asked (changed: {', '.join(changed)})")


def _check_prepared_hash(prepared: PreparedRequest, domain: Domain) -> bytes:
    digest = compute_request_hash(domain, prepared.request)
    if digest != prepared.request_hash:
        raise InvalidInputError("the aggregator's request hash is not the digest of the prepared request")
    return digest


def _check_answered_hash(response: ag.SubmitResponse, digest: bytes) -> bytes:
    """The hash ``Submit`` answered is the digest the requester signed: following another hash would
    wait for, and accept the certificate of, another request."""
    if bytes(response.request_hash) != digest:
        raise InvalidInputError("the aggregator answered the hash of another request than the one signed")
    return digest


def check_certified_as_sent(sent: ag.SubmitRequest, status: ag.RequestStatus) -> None:
    """The certified request is the one sent (every field the requester chose, the nonce included, and
    the model id and prompt hash when it gave them), in a batch of the quorums asked for, each stated
    to have signed the threshold asked for, and the status's output tokens are the certified ones;
    raises ``UntrustedAnswerError`` otherwise. ``AggregatorClient.wait`` runs it for the requests its
    client submitted. (The request hash covers neither quorums nor threshold: an aggregator could
    otherwise certify the request in a quorum of little stake.)"""
    certificate = status.certificate
    changed = _changed_fields(sent.request, certificate.request)
    if changed:
        raise UntrustedAnswerError(
            f"the aggregator certified another request than the one sent (changed: {', '.join(changed)})"
        )
    certified_quorums = sorted(certificate.batch_header.quorum_numbers)
    if sent.quorum_numbers and certified_quorums != sorted(sent.quorum_numbers):
        raise UntrustedAnswerError(
            f"the request was certified by quorums {certified_quorums}, not the {sorted(sent.quorum_numbers)} asked"
        )
    try:
        below = [q.quorum_number for q in certificate.quorum_stakes if _is_stated_below(q, sent.threshold_bps)]
    except ValueError:
        raise UntrustedAnswerError("the certificate's stake figures are not numbers") from None
    if below:
        raise UntrustedAnswerError(f"quorums {below} signed less than the {sent.threshold_bps} bps asked")
    if bytes(status.certificate.request_hash) != bytes(status.request_hash):
        raise UntrustedAnswerError("the certificate is for another request than the status")
    if list(status.output_token_ids) != list(status.certificate.output_token_ids):
        raise UntrustedAnswerError("the status's output tokens are not the certified ones")


def build_submit_request(
    messages: Sequence[Mapping[str, str]], *, requester: str, **fields: Unpack[RequestFields]
) -> ag.SubmitRequest:
    """The ``Submit`` message of a request (what ``AggregatorClient.submit`` sends, unsigned): a caller
    that keeps it can check a certificate against it (``check_certified_as_sent``)."""
    model, model_id = fields.get("model", ""), fields.get("model_id", b"")
    nonce = fields.get("nonce")
    if not model and not model_id:
        raise InvalidInputError("name a model (model=...) or give its id (model_id=...)")
    stop_sequences = list(fields.get("stop_sequences", ()))
    request = op.InferenceRequest(
        model_id=model_id,
        prompt_hash=fields.get("prompt_hash", b""),
        temperature_milli=fields.get("temperature_milli", 0),
        top_k=fields.get("top_k", 0),
        top_p_micro=fields.get("top_p_micro", TOP_P_ONE),
        seed=fields.get("seed", 0),
        max_tokens=fields.get("max_tokens", 64),
        stop_sequences_hash=compute_stop_sequences_hash(stop_sequences),
        requester=requester,
        nonce=(secrets.randbits(256) if nonce is None else nonce).to_bytes(32, "big"),
        messages=[op.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        stop_sequences=stop_sequences,
    )
    quorums, threshold_bps = fields.get("quorums", b""), fields.get("threshold_bps", 0)
    return ag.SubmitRequest(request=request, model_name=model, quorum_numbers=quorums, threshold_bps=threshold_bps)


# How many submitted requests a client remembers to check their certificates against in ``wait``.
MAX_REMEMBERED_REQUESTS = 4096


class AggregatorClient:
    def __init__(self, target: str, timeout: float = 30.0, channel: grpc.Channel | None = None) -> None:
        """A client of the aggregator at ``target`` (plaintext gRPC). ``channel`` replaces the one it
        would open (TLS, say): build it with ``CHANNEL_OPTIONS`` among its options, or a certified
        status over gRPC's 4 MiB default is refused (RESOURCE_EXHAUSTED)."""
        self._channel = channel or grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = ag_grpc.AggregatorServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        # Sent requests until their wait ends (then their certificate was checked against them): only
        # the waits in flight and ones abandoned are kept, so a busy client never evicts a live one.
        self._sent: OrderedDict[bytes, ag.SubmitRequest] = OrderedDict()
        self._sent_lock = threading.Lock()  # a gateway submits and waits from many threads

    def _remember(self, request_hash: bytes, message: ag.SubmitRequest) -> bytes:
        with self._sent_lock:
            self._sent[request_hash] = message
            while len(self._sent) > MAX_REMEMBERED_REQUESTS:
                self._sent.popitem(last=False)
        return request_hash

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AggregatorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def list_models(self) -> dict[str, bytes]:
        response: ag.ListModelsResponse = self._stub.ListModels(ag.ListModelsRequest(), timeout=self._timeout)
        return {m.name: bytes(m.model_id) for m in response.models}

    def submit(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        requester: str,
        domain: Domain | None = None,
        requester_key: bytes | None = None,
        **fields: Unpack[RequestFields],
    ) -> bytes:
        """Submit; returns the request hash. With ``requester_key`` (and ``domain``), the request is
        signed by the requester; the aggregator then checks that signature."""
        message = build_submit_request(messages, requester=requester, **fields)
        digest = None
        if requester_key is not None:
            if domain is None or not fields.get("model_id") or not fields.get("prompt_hash"):
                raise InvalidInputError("signing a request needs the domain, model_id and prompt_hash")
            digest = compute_request_hash(domain, convert.request_from_proto(message.request).request)
            message.requester_signature = bytes(Account.unsafe_sign_hash(digest, requester_key).signature)
        response: ag.SubmitResponse = self._stub.Submit(message, timeout=self._timeout)
        answered = bytes(response.request_hash) if digest is None else _check_answered_hash(response, digest)
        return self._remember(answered, message)

    def prepare(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        requester: str,
        domain: Domain | None = None,
        **fields: Unpack[RequestFields],
    ) -> PreparedRequest:
        """The request as the aggregator completes it (model id, prompt hash, default quorums and
        threshold) and its request hash, without submitting it: what an insured requester buys
        coverage for before ``submit_prepared``. Refused unless every field asked for comes back
        unchanged, and, with ``domain``, unless the hash is the request's digest: check both
        before paying for coverage."""
        message = build_submit_request(messages, requester=requester, **fields)
        response: ag.PreparedRequest = self._stub.Prepare(message, timeout=self._timeout)
        _check_prepared(message, response)
        prepared = _read_prepared(response)
        if domain is not None:
            _check_prepared_hash(prepared, domain)
        return prepared

    def submit_prepared(
        self,
        prepared: PreparedRequest,
        *,
        domain: Domain,
        requester_key: bytes | None = None,
        insured: bool = False,
    ) -> bytes:
        """Submit a prepared request (its quorums and threshold as prepared), signed by the requester
        when ``requester_key`` is given, and flagged ``insured`` (the aggregator then checks the
        coverage). The request hash is recomputed here: a prepared request whose hash is not the
        digest of its request under ``domain`` is refused before anything is signed."""
        digest = _check_prepared_hash(prepared, domain)
        message = ag.SubmitRequest(
            request=prepared.message,
            quorum_numbers=prepared.quorums,
            threshold_bps=prepared.threshold_bps,
            insured=insured,
        )
        if requester_key is not None:
            message.requester_signature = bytes(Account.unsafe_sign_hash(digest, requester_key).signature)
        response: ag.SubmitResponse = self._stub.Submit(message, timeout=self._timeout)
        return self._remember(_check_answered_hash(response, digest), message)

    def get_status(self, request_hash: bytes) -> ag.RequestStatus:
        status: ag.RequestStatus = self._stub.GetStatus(
            ag.GetStatusRequest(request_hash=request_hash), timeout=self._timeout
        )
        return status

    def get_batch(self, batch_index: int) -> ag.BatchInfo:
        info: ag.BatchInfo = self._stub.GetBatch(ag.GetBatchRequest(batch_index=batch_index), timeout=self._timeout)
        return info

    def wait(
        self,
        request_hash: bytes,
        timeout: float = 600.0,
        on_progress: Callable[[ag.RequestStatus], None] | None = None,
        cancellation: Cancellation | None = None,
    ) -> ag.RequestStatus:
        """Follow the request until CERTIFIED (returned) or FAILED (``RequestFailedError``). For a
        request this client submitted, the certificate must be for the request sent, with the
        status's tokens (``check_certified_as_sent``; ``UntrustedAnswerError`` otherwise).

        Watches the status stream; when the stream breaks (the aggregator restarted, the network
        dropped) or is refused (RESOURCE_EXHAUSTED: the aggregator's watch slots are taken), it
        reconnects with exponential backoff, asking ``GetStatus`` meanwhile, until
        ``timeout`` seconds have passed (``DeadlineExceededError``). ``on_progress`` sees each
        (state, attempt) once, however many reconnections there were. ``cancellation.cancel()``,
        from another thread, ends the wait at once with ``CancelledError`` (the request goes on)."""
        deadline = time.monotonic() + timeout
        follower = _StatusFollower(on_progress)
        cancellation = cancellation or Cancellation()
        delay = RECONNECT_INITIAL_SECONDS
        query = ag.GetStatusRequest(request_hash=request_hash)
        while True:
            try:
                stream = self._stub.WatchStatus(query, timeout=_remaining(deadline, timeout))
                with cancellation.cancelling(stream):
                    for status in stream:
                        delay = RECONNECT_INITIAL_SECONDS
                        if follower.see(status):
                            return self._finish(request_hash, status)
            except grpc.RpcError as exc:
                cancellation.raise_if_cancelled(request_hash)
                # A busy aggregator (its WatchStatus streams all taken) says to poll GetStatus: the
                # request is submitted and goes on, so it is followed, never given up (and resent).
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    _raise_unless_retryable(exc)
            logger.info("the status stream broke; reconnecting", extra={"delay_seconds": delay})
            cancellation.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            cancellation.raise_if_cancelled(request_hash)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)
            try:
                call = self._stub.GetStatus.future(query, timeout=min(self._timeout, _remaining(deadline, timeout)))
                with cancellation.cancelling(call):
                    status = call.result()
            except grpc.FutureCancelledError:
                cancellation.raise_if_cancelled(request_hash)
                raise
            except grpc.RpcError as exc:
                _raise_unless_retryable(exc)
                continue
            if follower.see(status):
                return self._finish(request_hash, status)

    def _finish(self, request_hash: bytes, status: ag.RequestStatus) -> ag.RequestStatus:
        if status.state == ag.REQUEST_STATE_FAILED:
            with self._sent_lock:  # final: an aggregator failing requests must not evict live ones
                self._sent.pop(bytes(request_hash), None)
            raise RequestFailedError(status.error or "the request failed")
        if bytes(status.request_hash) != bytes(request_hash):
            raise UntrustedAnswerError("the aggregator answered the status of another request")
        with self._sent_lock:
            sent = self._sent.get(bytes(request_hash))
        if sent is not None:
            check_certified_as_sent(sent, status)  # failed: kept, so that a second wait fails too
            with self._sent_lock:
                self._sent.pop(bytes(request_hash), None)
        return status


RECONNECT_INITIAL_SECONDS = 0.25
RECONNECT_MAX_SECONDS = 5.0
# A broken connection (the aggregator restarting) shows as one of these; anything else is an answer.
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}
)
CHANNEL_OPTIONS = (
    # gRPC's default is 4 MiB; a certified status can be larger (the aggregator's policy keeps it
    # within INTAKE_MAX_REPLY_BYTES)
    ("grpc.max_receive_message_length", convert.INTAKE_MAX_REPLY_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
)


class Cancellation:
    """Ends an ``AggregatorClient.wait`` from another thread (a gateway whose HTTP client went away):
    ``cancel()`` cancels the status stream the wait is reading, so it returns at once, not at the
    next status change, and raises ``CancelledError``. The request itself goes on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._stream: grpc.Future[Any] | None = None

    def cancel(self) -> None:
        with self._lock:
            self._cancelled.set()
            stream = self._stream
        if stream is not None:
            stream.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @contextmanager
    def cancelling(self, stream: grpc.Future[Any]) -> Iterator[None]:
        """``cancel()`` cancels ``stream`` while in this block (at once if it already was called)."""
        with self._lock:
            self._stream = stream
        if self.cancelled:
            stream.cancel()
        try:
            yield
        finally:
            with self._lock:
                self._stream = None

    def sleep(self, seconds: float) -> None:
        self._cancelled.wait(seconds)

    def raise_if_cancelled(self, request_hash: bytes) -> None:
        if self.cancelled:
            raise CancelledError(f"stopped following request 0x{request_hash.hex()} (it goes on)")


class _StatusFollower:
    """Passes each new (state, attempt) to ``on_progress``; says when a status is final."""

    def __init__(self, on_progress: Callable[[ag.RequestStatus], None] | None) -> None:
        self._on_progress = on_progress
        self._last: tuple[int, int] | None = None

    def see(self, status: ag.RequestStatus) -> bool:
        key = (int(status.state), int(status.attempt))
        if key != self._last:
            self._last = key
            if self._on_progress is not None:
                self._on_progress(status)
        return status.state in FINAL_STATES


def _remaining(deadline: float, timeout: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceededError(f"the request was not certified within {timeout} s")
    return remaining


def _raise_unless_retryable(exc: grpc.RpcError) -> None:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or code in RETRYABLE_CODES:
        return  # the next _remaining() says whether the caller's deadline has passed
    raise exc


# --- certificates ---------------------------------------------------------------------


def _read_prepared(response: ag.PreparedRequest) -> PreparedRequest:
    envelope = convert.request_from_proto(response.request)
    return PreparedRequest(
        envelope.request,
        response.request,
        bytes(response.request_hash),
        bytes(response.quorum_numbers),
        response.threshold_bps,
    )


def prepared_to_json(prepared: PreparedRequest) -> str:
    """The prepared request as protobuf's canonical JSON of ``PreparedRequest`` (what an insured
    requester keeps to resume a submission); ``prepared_from_json`` reads it back."""
    message = ag.PreparedRequest(
        request=prepared.message,
        request_hash=prepared.request_hash,
        quorum_numbers=prepared.quorums,
        threshold_bps=prepared.threshold_bps,
    )
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)


def prepared_from_json(text: str, domain: Domain) -> PreparedRequest:
    """A prepared request saved by ``prepared_to_json``, refused unless its hash is the digest of its
    request under ``domain`` (an edited or another deployment's file is never signed)."""
    try:
        prepared = _read_prepared(json_format.Parse(text, ag.PreparedRequest()))
    except (json_format.ParseError, AvsError) as exc:
        raise InvalidInputError(f"not a prepared request: {exc}") from exc
    if compute_request_hash(domain, prepared.request) != prepared.request_hash:
        raise InvalidInputError(
            "the saved request hash is not the digest of its request under this deployment (edited, or saved for"
            " another deployment)"
        )
    return prepared


def certificate_to_json(certificate: ag.Certificate) -> str:
    """Protobuf's canonical JSON (bytes as base64); ``certificate_from_json`` reads it back."""
    return json_format.MessageToJson(certificate, preserving_proto_field_name=True, indent=2)


def certificate_from_json(text: str) -> ag.Certificate:
    try:
        return json_format.Parse(text, ag.Certificate())
    except json_format.ParseError as exc:
        raise InvalidInputError(f"not a certificate: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CertificateCheck:
    problems: tuple[str, ...]
    stake_shares: dict[int, float]  # quorum -> signed share, as the certificate states it

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_signer_list(certificate: ag.Certificate) -> list[str]:
    """What makes the signer list unusable before any key is parsed: its length, a multiplicity."""
    if len(certificate.signers) > MAX_CERTIFICATE_SIGNERS:
        return [f"the certificate lists {len(certificate.signers)} signers; at most {MAX_CERTIFICATE_SIGNERS}"]
    quorum_count = min(len(certificate.batch_header.quorum_numbers), MAX_QUORUMS)
    if any(not 1 <= signer.multiplicity <= quorum_count for signer in certificate.signers):
        return ["a signer's multiplicity is outside the batch's quorum count"]
    return []


def _check_signers(certificate: ag.Certificate) -> tuple[G1Point, G2Point, list[str]]:
    """The signers' aggregate keys, each weighted by its multiplicity (``_check_signer_list`` first)."""
    backend = get_backend()
    problems = []
    g1_keys: list[G1Point] = []
    g2_keys: list[G2Point] = []
    for signer in certificate.signers:
        g1 = convert.g1_from_proto(signer.public_key.g1)
        g2 = convert.g2_from_proto(signer.public_key.g2)
        if bls.compute_operator_id(g1) != signer.public_key.operator_id:
            problems.append("a signer's operator id is not the hash of its G1 key")
        weight = signer.multiplicity  # public: variable-time multiplication is fine
        g1_keys.append(g1 if weight == 1 else backend.g1_mul(g1, weight))
        g2_keys.append(g2 if weight == 1 else backend.g2_mul(g2, weight))
    return bls.aggregate_g1(g1_keys), bls.aggregate_g2(g2_keys), problems


def _check_claims(
    certificate: ag.Certificate, domain: Domain | None, request_hash: bytes | None, signer_ids: set[bytes]
) -> list[str]:
    """What the certificate claims beyond its own consistency: for whom, and who did not sign."""
    problems = []
    if domain is not None and (
        certificate.chain_id != domain.chain_id
        or not is_same_address(certificate.task_manager, domain.verifying_contract)
    ):
        problems.append(
            f"the certificate is for chain {certificate.chain_id} / {certificate.task_manager}, "
            f"not {domain.chain_id} / {domain.verifying_contract}"
        )
    if request_hash is not None and bytes(certificate.request_hash) != bytes(request_hash):
        problems.append("the certificate is for another request")
    non_signers = [bytes(i) for i in certificate.non_signer_ids]
    if any(a >= b for a, b in pairwise(non_signers)):
        problems.append("the non-signers are not strictly ascending")
    if signer_ids & set(non_signers):
        problems.append("an operator is listed as signer and as non-signer")
    stated = sorted(q.quorum_number for q in certificate.quorum_stakes)
    if stated != sorted(certificate.batch_header.quorum_numbers):
        problems.append("the stake shares do not name exactly the batch's quorums")
    return problems


def verify_certificate(
    certificate: ag.Certificate,
    min_share_bps: int = 0,
    domain: Domain | None = None,
    request_hash: bytes | None = None,
) -> CertificateCheck:
    """Check a certificate offline (see the module docstring); never raises for a bad certificate.

    ``domain``: the deployment you trust (chain id, task manager); ``request_hash``: the request you
    sent. Pass both: only then is a self-made certificate of someone else's deployment refused."""
    problems: list[str] = []
    shares: dict[int, float] = {}
    try:
        shares = {q.quorum_number: int(q.signed_stake) / max(int(q.total_stake), 1) for q in certificate.quorum_stakes}
        signer_ids = {bytes(s.public_key.operator_id) for s in certificate.signers}
        problems += _check_claims(certificate, domain, request_hash, signer_ids)
        domain = Domain(certificate.chain_id, certificate.task_manager)
        request = convert.request_from_proto(certificate.request).request
        request_hash = compute_request_hash(domain, request)
        if request_hash != certificate.request_hash:
            problems.append("the request hash is not the digest of the request")
        if compute_stop_sequences_hash(list(certificate.request.stop_sequences)) != request.stop_sequences_hash:
            problems.append("the stop sequences are not the ones the request commits to")
        output = InferenceOutput(request_hash, request.model_id, tuple(int(t) for t in certificate.output_token_ids))
        output_hash = compute_output_hash(output)
        if output_hash != certificate.output_hash:
            problems.append("the output hash does not commit to the output tokens")
        header = convert.batch_header_from_proto(certificate.batch_header)
        leaf = BatchLeaf(request_hash, output_hash)
        if not verify_merkle_proof(header.leaves_root, leaf, [bytes(p) for p in certificate.merkle_proof]):
            problems.append("the Merkle proof does not lead to the batch's leaves root")
        record = compute_signatory_record_hash(header.reference_block, [bytes(i) for i in certificate.non_signer_ids])
        if record != certificate.signatory_record_hash:
            problems.append("the signatory record hash does not match the non-signers")
        unusable = _check_signer_list(certificate)
        if unusable:
            return CertificateCheck((*problems, *unusable), shares)
        apk_g1, apk_g2, signer_problems = _check_signers(certificate)
        problems += signer_problems
        if apk_g2 != convert.g2_from_proto(certificate.apk_g2):
            problems.append("apk_g2 is not the sum of the signers' keys")
        sigma = convert.g1_from_proto(certificate.sigma)
        if not bls.verify_aggregate(compute_digest(domain, header), apk_g1, apk_g2, sigma):
            problems.append("the aggregate signature does not verify over the batch digest")
        for stake in certificate.quorum_stakes:
            impossible = _stated_stake_problem(stake)
            if impossible is not None:
                problems.append(impossible)
            elif _is_below_share(int(stake.signed_stake), int(stake.total_stake), min_share_bps):
                share = shares[stake.quorum_number]
                problems.append(
                    f"quorum {stake.quorum_number} signed {share:.2%}, below the {min_share_bps / 100:.2f}% asked"
                )
    except (AvsError, ValueError) as exc:
        problems.append(f"malformed certificate: {exc}")
    return CertificateCheck(tuple(problems), shares)


def verify_on_chain(certificate: ag.Certificate, task_manager: object, from_block: int = 0) -> bool:
    """Whether the chain certified the certificate's leaf: ``InferenceTaskManager.verifyLeaf`` on
    ``task_manager`` (a web3 contract of the deployment you trust).

    The task manager keeps batch records in a ring (docs/contracts.md): once a final batch's slot is
    reused, ``verifyLeaf`` no longer knows it and its ``BatchCertified`` event is the record. So when
    a later batch holds its slot (``getRingSlot``), its event (searched from ``from_block``, the
    deployment's start block, or its reference block if later) must match the header and signatory
    record exactly, and the Merkle proof is checked here against the event's root."""
    header = certificate.batch_header
    functions = task_manager.functions  # type: ignore[attr-defined]
    fn = functions.verifyLeaf(
        (header.batch_index, bytes(header.leaves_root), header.reference_block, bytes(header.quorum_numbers)),
        bytes(certificate.signatory_record_hash),
        bytes(certificate.request_hash),
        bytes(certificate.output_hash),
        [bytes(p) for p in certificate.merkle_proof],
    )
    if fn.call():
        return True
    held, _ = functions.getRingSlot(header.batch_index).call()
    if int(held) <= header.batch_index:
        return False  # its record is there, or it was never certified: verifyLeaf's answer stands
    return _certified_by_event(certificate, task_manager, from_block)


def _certified_by_event(certificate: ag.Certificate, task_manager: object, from_block: int) -> bool:
    header = certificate.batch_header
    event = find_batch_certified(task_manager, header.batch_index, max(from_block, header.reference_block))
    if event is None or not event.describes(header, bytes(certificate.signatory_record_hash)):
        return False
    leaf = BatchLeaf(bytes(certificate.request_hash), bytes(certificate.output_hash))
    return verify_merkle_proof(event.leaves_root, leaf, [bytes(p) for p in certificate.merkle_proof])


class SignedStakeReader(Protocol):
    def get_signed_stakes(
        self, reference_block: int, quorum_numbers: bytes, non_signer_ids: Sequence[OperatorId]
    ) -> dict[int, tuple[int, int]]: ...


def check_stakes_on_chain(
    certificate: ag.Certificate, reader: SignedStakeReader, min_share_bps: int = 0
) -> tuple[dict[int, float], list[str]]:
    """Each quorum's signed share as the registry recorded it at the reference block (the
    certificate's stake figures are the aggregator's word; ``verifyLeaf`` proves only the task
    manager's own threshold), and what is wrong: a stated figure the chain does not have, a share
    under ``min_share_bps``. Run it after ``verify_on_chain``: the non-signers are the certified ones
    only if the signatory record hash is."""
    header = certificate.batch_header
    non_signers = [OperatorId(bytes(i)) for i in certificate.non_signer_ids]
    stakes = reader.get_signed_stakes(header.reference_block, bytes(header.quorum_numbers), non_signers)
    stated = {q.quorum_number: (q.signed_stake, q.total_stake) for q in certificate.quorum_stakes}
    shares: dict[int, float] = {}
    problems: list[str] = []
    for quorum, (signed, total) in stakes.items():
        shares[quorum] = signed / total if total else 0.0
        if stated.get(quorum) != (str(signed), str(total)):
            problems.append(
                f"quorum {quorum}: the certificate states {'/'.join(stated.get(quorum, ('none',)))} signed, "
                f"the chain has {signed}/{total}"
            )
        if _is_below_share(signed, total, min_share_bps):
            problems.append(
                f"quorum {quorum} signed {shares[quorum]:.2%} on chain, below the {min_share_bps / 100:.2f}% asked"
            )
    return shares, problems


# IFaultManager.ChallengeStatus, by value (avs.chain.faults.ChallengeStatus, lower case)
CHALLENGE_STATUSES = ("none", "open", "upheld", "dismissed", "expired")


@dataclass(frozen=True, slots=True)
class OnChainCheck:
    certified: bool  # verifyLeaf (or the BatchCertified event of a batch whose ring slot moved on)
    stake_shares: dict[int, float]  # quorum -> signed share as the registry recorded it (when certified)
    problems: tuple[str, ...]
    # Past its challenge window (isBatchFinal): until then a reorg or an upheld challenge can still
    # take the certification back.
    final: bool = False
    # The leaf's latest challenge (FaultManager.latestChallengeOfLeaf): one of CHALLENGE_STATUSES;
    # "unknown" when the deployment names no fault manager. "upheld" is a problem: proven fraud.
    challenge: str = "none"

    @property
    def ok(self) -> bool:
        return self.certified and not self.problems


def check_on_chain(certificate: ag.Certificate, w3: Any, deployment: Any, min_share_bps: int = 0) -> OnChainCheck:
    """What the chain says of ``certificate`` on ``deployment`` (the one you trust; ``w3`` a web3 of
    its chain): whether its task manager certified the leaf, and each quorum's signed share at the
    reference block, the stated figures checked against it; whether the batch is final, and what
    became of a challenge of the leaf (an upheld one is a problem: the escalation quorum certified
    REJECT, and the task manager's record of the leaf stays). The offline check cannot tell a
    certificate signed with keys that are not the operators' (an aggregator's own, listed under the
    operators' ids): the chain checked the signers against the registry. Chain errors raise, and so
    does a node still behind the certificate's block (``UnavailableError``: a lagging node is no
    proof the leaf was never certified)."""
    from web3 import Web3

    from avs.chain.abi import load_abi
    from avs.chain.client import Web3AvsClient

    address = Web3.to_checksum_address(deployment.task_manager)
    task_manager = w3.eth.contract(address=address, abi=load_abi("InferenceTaskManager"))
    if not verify_on_chain(certificate, task_manager, from_block=deployment.start_block):
        head = int(w3.eth.block_number)
        if head < certificate.certified_block:  # a node behind the aggregator's: no answer yet, not a "no"
            raise UnavailableError(
                f"the chain node is at block {head}, before the certificate's block {certificate.certified_block}:"
                " ask again once it has caught up"
            )
        return OnChainCheck(False, {}, ("the chain has not certified this leaf (verifyLeaf)",))
    # certified: its non-signers are the certified ones, so the stake they left out can be counted
    shares, problems = check_stakes_on_chain(certificate, Web3AvsClient(w3, deployment), min_share_bps)
    challenge = read_leaf_challenge(certificate, w3, deployment)
    if challenge == "upheld":
        problems.append("a challenge of this leaf was upheld: the escalation quorum certified REJECT (proven fraud)")
    index = certificate.batch_header.batch_index
    # final, or its ring slot moved on (which only a final batch's does; isBatchFinal then knows it no more)
    functions = task_manager.functions
    final = bool(functions.isBatchFinal(index).call()) or int(functions.getRingSlot(index).call()[0]) > index
    return OnChainCheck(True, shares, tuple(problems), final, challenge)


def read_leaf_challenge(certificate: ag.Certificate, w3: Any, deployment: Any) -> str:
    """The status of the certificate's leaf's latest challenge (``CHALLENGE_STATUSES``), "unknown"
    without a fault manager in ``deployment``. A leaf is challenged again only once the previous
    challenge expired, so the latest one says it all."""
    if getattr(deployment, "fault_manager", None) is None or getattr(deployment, "insurance_pool", None) is None:
        return "unknown"
    from avs.chain.client import Web3AvsClient
    from avs.chain.faults import Web3FaultClient

    faults = Web3FaultClient(Web3AvsClient(w3, deployment))
    index, request_hash, output_hash = (
        certificate.batch_header.batch_index,
        certificate.request_hash,
        certificate.output_hash,
    )
    challenge_id = faults.find_leaf_challenge(index, bytes(request_hash), bytes(output_hash))
    return "none" if challenge_id == 0 else faults.get_challenge(challenge_id).status.name.lower()
