"""Conversions between protobuf messages and domain types, validating everything that arrives.

Incoming points are parsed strictly (length, canonical field element, on the curve, G2 subgroup),
so a servicer never hands an unchecked point to the crypto code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_utils import keccak
from google.protobuf.message import Message

from avs.calls import CallAuth
from avs.crypto.bls import parse_g2
from avs.crypto.curve import G1Point, G2Point, parse_g1
from avs.errors import EncodingError
from avs.inference.params import MAX_STOP_SEQUENCE_CHARS
from avs.merkle import BatchLeaf
from avs.messages import Attestation, BatchHeader, InferenceRequest, Verdict
from avs.rpc.common.v1 import bn254_pb2 as pb
from avs.rpc.operator.v1 import operator_pb2 as op


def _to_word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _from_word(name: str, data: bytes) -> int:
    if len(data) != 32:
        raise EncodingError(f"{name} must be 32 bytes, got {len(data)}")
    return int.from_bytes(data, "big")


def g1_to_proto(point: G1Point) -> pb.G1Point:
    return pb.G1Point(x=_to_word(point.x), y=_to_word(point.y))


def g1_from_proto(message: pb.G1Point, *, allow_identity: bool = False) -> G1Point:
    return parse_g1(_from_word("x", message.x), _from_word("y", message.y), allow_identity=allow_identity)


def g2_to_proto(point: G2Point) -> pb.G2Point:
    return pb.G2Point(
        x_im=_to_word(point.x_im), x_re=_to_word(point.x_re), y_im=_to_word(point.y_im), y_re=_to_word(point.y_re)
    )


def g2_from_proto(message: pb.G2Point) -> G2Point:
    """A G2 public key from the wire; raises ``InvalidPointError`` unless it is in the subgroup."""
    x = (_from_word("x_im", message.x_im), _from_word("x_re", message.x_re))
    y = (_from_word("y_im", message.y_im), _from_word("y_re", message.y_re))
    return parse_g2(x, y)


# --- operator API messages --------------------------------------------------------------

MAX_CHAT_MESSAGES = 256
MAX_STOP_SEQUENCES = 8
MAX_BATCH_LEAVES = 4096
# The largest operator reply an aggregator (or challenger) receives, and so the most an operator's
# grpc.max_message_bytes may be.
OPERATOR_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The aggregator's intake: the largest request it receives (a Submit of a long chat), and the largest
# reply it sends and the SDK receives (a certified status: the chat, the output twice, the signers'
# keys; the aggregator's policy is checked to fit in it).
INTAKE_MAX_REQUEST_BYTES = 4 * 1024 * 1024
INTAKE_MAX_REPLY_BYTES = 16 * 1024 * 1024
# A vocabulary's longest token decodes to a few dozen bytes; a primary's text is refused far above.
MAX_TEXT_BYTES_PER_TOKEN = 256
# What the wire costs, rounded up, for the configs' message-size checks (checked against real
# messages in tests/operator/test_servicer_auth.py).
TOKEN_ID_BYTES = 6  # a uint32 varint (5) and its share of the packed field's length
_UTF8_BYTES_PER_CHAR = 4
_CHAT_MESSAGE_BYTES = 32  # a chat message's role, tags and lengths, besides its content
_STOP_SEQUENCE_BYTES = _UTF8_BYTES_PER_CHAR * MAX_STOP_SEQUENCE_CHARS + 8
CALL_ENVELOPE_BYTES = 4096  # a call besides its chat, ids or leaves: fixed fields, signatures, headers


def compute_largest_chat_bytes(max_chat_chars: int) -> int:
    """The most a request's chat (``max_chat_chars`` characters over the most messages) and stop
    sequences take on the wire."""
    chat = _UTF8_BYTES_PER_CHAR * max_chat_chars + _CHAT_MESSAGE_BYTES * MAX_CHAT_MESSAGES
    return chat + _STOP_SEQUENCE_BYTES * MAX_STOP_SEQUENCES


def compute_largest_submit_bytes(max_chat_chars: int) -> int:
    """The most a valid Submit or Prepare of an intake that takes ``max_chat_chars`` characters
    takes on the wire: what the intake receives (a larger message is refused before it is parsed)."""
    return compute_largest_chat_bytes(max_chat_chars) + CALL_ENVELOPE_BYTES


def _bytes32(name: str, data: bytes) -> bytes:
    if len(data) != 32:
        raise EncodingError(f"{name} must be 32 bytes, got {len(data)}")
    return bytes(data)


def compute_payload_hash(message: Message) -> bytes:
    """keccak256 of ``message`` serialised deterministically with its ``auth`` field cleared."""
    copy = type(message)()
    copy.CopyFrom(message)
    copy.ClearField("auth")
    return bytes(keccak(copy.SerializeToString(deterministic=True)))


def call_auth_from_proto(auth: op.CallAuth) -> CallAuth | None:
    return CallAuth(auth.issued_at_ms, bytes(auth.signature)) if auth.signature else None


def call_auth_to_proto(auth: CallAuth) -> op.CallAuth:
    return op.CallAuth(issued_at_ms=auth.issued_at_ms, signature=auth.signature)


@dataclass(frozen=True, slots=True)
class RequestEnvelope:
    """An ``InferenceRequest`` with the chat and stop strings its hashes commit to."""

    request: InferenceRequest
    messages: tuple[dict[str, str], ...]
    stop_sequences: tuple[str, ...]


def check_request_counts(message: op.InferenceRequest) -> None:
    """The chat's and the stop sequences' counts, checked before anything walks them: an empty chat
    message is 2 bytes on the wire, so a 4 MiB request holds 2 million of them."""
    if len(message.messages) > MAX_CHAT_MESSAGES:
        raise EncodingError(f"at most {MAX_CHAT_MESSAGES} chat messages")
    if len(message.stop_sequences) > MAX_STOP_SEQUENCES:
        raise EncodingError(f"at most {MAX_STOP_SEQUENCES} stop sequences")


def request_from_proto(message: op.InferenceRequest) -> RequestEnvelope:
    check_request_counts(message)
    request = InferenceRequest(
        model_id=_bytes32("model_id", message.model_id),
        prompt_hash=_bytes32("prompt_hash", message.prompt_hash),
        temperature_milli=message.temperature_milli,
        top_k=message.top_k,
        top_p_micro=message.top_p_micro,
        seed=message.seed,
        max_tokens=message.max_tokens,
        stop_sequences_hash=_bytes32("stop_sequences_hash", message.stop_sequences_hash),
        requester=message.requester,
        nonce=int.from_bytes(_bytes32("nonce", message.nonce), "big"),
    )
    messages = tuple({"role": m.role, "content": m.content} for m in message.messages)
    return RequestEnvelope(request, messages, tuple(message.stop_sequences))


def request_to_proto(envelope: RequestEnvelope) -> op.InferenceRequest:
    r = envelope.request
    return op.InferenceRequest(
        model_id=r.model_id,
        prompt_hash=r.prompt_hash,
        temperature_milli=r.temperature_milli,
        top_k=r.top_k,
        top_p_micro=r.top_p_micro,
        seed=r.seed,
        max_tokens=r.max_tokens,
        stop_sequences_hash=r.stop_sequences_hash,
        requester=r.requester,
        nonce=r.nonce.to_bytes(32, "big"),
        messages=[op.ChatMessage(role=m["role"], content=m["content"]) for m in envelope.messages],
        stop_sequences=list(envelope.stop_sequences),
    )


def attestation_to_proto(attestation: Attestation) -> op.Attestation:
    return op.Attestation(
        request_hash=attestation.request_hash,
        output_hash=attestation.output_hash,
        verdict=op.Verdict.ValueType(int(attestation.verdict)),
    )


def attestation_from_proto(message: op.Attestation) -> Attestation:
    if int(message.verdict) not in (int(Verdict.ACCEPT), int(Verdict.REJECT)):
        raise EncodingError("verdict must be ACCEPT or REJECT")
    return Attestation(
        _bytes32("request_hash", message.request_hash),
        _bytes32("output_hash", message.output_hash),
        Verdict(int(message.verdict)),
    )


def batch_header_to_proto(header: BatchHeader) -> op.BatchHeader:
    return op.BatchHeader(
        batch_index=header.batch_index,
        leaves_root=header.leaves_root,
        reference_block=header.reference_block,
        quorum_numbers=header.quorum_numbers,
    )


def batch_header_from_proto(message: op.BatchHeader) -> BatchHeader:
    return BatchHeader(
        message.batch_index,
        _bytes32("leaves_root", message.leaves_root),
        message.reference_block,
        bytes(message.quorum_numbers),
    )


def leaves_from_proto(leaves: Sequence[op.BatchLeaf]) -> list[BatchLeaf]:
    if not 0 < len(leaves) <= MAX_BATCH_LEAVES:
        raise EncodingError(f"a batch has 1 to {MAX_BATCH_LEAVES} leaves")
    return [
        BatchLeaf(_bytes32("request_hash", leaf.request_hash), _bytes32("output_hash", leaf.output_hash))
        for leaf in leaves
    ]


def signature_to_proto(message_hash: bytes, signature: G1Point) -> pb.BlsSignature:
    return pb.BlsSignature(message_hash=message_hash, signature=g1_to_proto(signature))
