"""The signed messages of the protocol: one EIP-712 definition each, shared with Solidity.

Every digest is bound to the chain id and the task manager's address through the domain, so a
signature made for one deployment cannot be replayed on another. The type strings below are
the single source of truth; ``contracts/src/libraries`` mirrors them and the shared vectors in
``tests/vectors/messages.json`` hold both sides to the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise

from eth_abi import encode
from eth_utils import is_address, keccak, to_canonical_address, to_checksum_address

from avs.eip712 import compute_domain_separator, compute_typed_digest, compute_typehash
from avs.errors import InvalidInputError
from avs.types import Bytes32, OutputHash, RequestHash

DOMAIN_NAME = "VerifiableInferenceAVS"
DOMAIN_VERSION = "1"

INFERENCE_REQUEST_TYPE = (
    "InferenceRequest(bytes32 modelId,bytes32 promptHash,uint32 temperatureMilli,uint32 topK,"
    "uint32 topPMicro,uint64 seed,uint32 maxTokens,bytes32 stopSequencesHash,address requester,"
    "uint256 nonce)"
)
ATTESTATION_TYPE = "Attestation(bytes32 requestHash,bytes32 outputHash,uint8 verdict)"
BATCH_HEADER_TYPE = "BatchHeader(uint64 batchIndex,bytes32 leavesRoot,uint32 referenceBlock,bytes quorumNumbers)"
INFERENCE_OUTPUT_TYPE = "InferenceOutput(bytes32 requestHash,bytes32 modelProfileHash,uint32[] tokenIds)"

INFERENCE_REQUEST_TYPEHASH = compute_typehash(INFERENCE_REQUEST_TYPE)
ATTESTATION_TYPEHASH = compute_typehash(ATTESTATION_TYPE)
BATCH_HEADER_TYPEHASH = compute_typehash(BATCH_HEADER_TYPE)
INFERENCE_OUTPUT_TYPEHASH = compute_typehash(INFERENCE_OUTPUT_TYPE)

TYPE_STRINGS = {
    "InferenceRequest": INFERENCE_REQUEST_TYPE,
    "Attestation": ATTESTATION_TYPE,
    "BatchHeader": BATCH_HEADER_TYPE,
    "InferenceOutput": INFERENCE_OUTPUT_TYPE,
}

MAX_QUORUMS = 192  # EigenLayer's quorum bitmap width
BPS = 10_000  # basis points in a whole: thresholds, shares and premiums are in them
TOP_P_ONE = 1_000_000  # topPMicro of 1.0: nucleus filtering off


class Verdict(IntEnum):
    ACCEPT = 1
    REJECT = 2


def _require_bytes32(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidInputError(f"{name} must be 32 bytes")


def _require_uint(name: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise InvalidInputError(f"{name} must be an integer in [0, 2^{bits})")


def is_same_address(a: str, b: str) -> bool:
    """Whether two hex addresses name one account, whatever their case or ``0x`` prefix."""
    return is_address(a) and is_address(b) and to_canonical_address(a) == to_canonical_address(b)


def _require_address(name: str, value: str) -> None:
    if not isinstance(value, str) or not is_address(value):
        raise InvalidInputError(f"{name} must be a 20-byte hex address")


@dataclass(frozen=True, slots=True)
class Domain:
    """The EIP-712 domain: this AVS's task manager on one chain."""

    chain_id: int
    verifying_contract: str
    name: str = DOMAIN_NAME
    version: str = DOMAIN_VERSION

    def __post_init__(self) -> None:
        _require_uint("chain_id", self.chain_id, 256)
        _require_address("verifying_contract", self.verifying_contract)

    @property
    def separator(self) -> Bytes32:
        return Bytes32(compute_domain_separator(self.name, self.version, self.chain_id, self.verifying_contract))


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """What a requester asks for. Its digest is the request hash everyone else refers to."""

    model_id: bytes
    prompt_hash: bytes
    temperature_milli: int
    top_k: int
    top_p_micro: int
    seed: int
    max_tokens: int
    stop_sequences_hash: bytes
    requester: str
    nonce: int

    def __post_init__(self) -> None:
        for name in ("model_id", "prompt_hash", "stop_sequences_hash"):
            _require_bytes32(name, getattr(self, name))
        for name, bits in (("temperature_milli", 32), ("top_k", 32), ("seed", 64), ("max_tokens", 32), ("nonce", 256)):
            _require_uint(name, getattr(self, name), bits)
        _require_uint("top_p_micro", self.top_p_micro, 32)
        if not 0 < self.top_p_micro <= TOP_P_ONE:
            raise InvalidInputError(f"top_p_micro must be in (0, {TOP_P_ONE}]")
        if self.max_tokens == 0:
            raise InvalidInputError("max_tokens must be at least 1")
        _require_address("requester", self.requester)

    def compute_struct_hash(self) -> Bytes32:
        return Bytes32(
            keccak(
                encode(
                    [
                        "bytes32",
                        "bytes32",
                        "bytes32",
                        "uint32",
                        "uint32",
                        "uint32",
                        "uint64",
                        "uint32",
                        "bytes32",
                        "address",
                        "uint256",
                    ],
                    [
                        INFERENCE_REQUEST_TYPEHASH,
                        self.model_id,
                        self.prompt_hash,
                        self.temperature_milli,
                        self.top_k,
                        self.top_p_micro,
                        self.seed,
                        self.max_tokens,
                        self.stop_sequences_hash,
                        to_canonical_address(self.requester),
                        self.nonce,
                    ],
                )
            )
        )


@dataclass(frozen=True, slots=True)
class Attestation:
    """An operator's statement that ``output_hash`` is (ACCEPT) or is not (REJECT) the output."""

    request_hash: bytes
    output_hash: bytes
    verdict: Verdict

    def __post_init__(self) -> None:
        _require_bytes32("request_hash", self.request_hash)
        _require_bytes32("output_hash", self.output_hash)
        if not isinstance(self.verdict, Verdict):
            raise InvalidInputError("verdict must be Verdict.ACCEPT or Verdict.REJECT")

    def compute_struct_hash(self) -> Bytes32:
        return Bytes32(
            keccak(
                encode(
                    ["bytes32", "bytes32", "bytes32", "uint8"],
                    [ATTESTATION_TYPEHASH, self.request_hash, self.output_hash, int(self.verdict)],
                )
            )
        )

    def is_conflicting(self, other: Attestation) -> bool:
        """True if one operator signing both is a slashable equivocation.

        For one request: two different verdicts on the same output, or ACCEPT of two different
        outputs. Rejecting several outputs, or rejecting one and accepting another (a retry with a
        new primary), is honest.
        """
        if self.request_hash != other.request_hash:
            return False
        if self.output_hash == other.output_hash:
            return self.verdict != other.verdict
        return self.verdict == other.verdict == Verdict.ACCEPT


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """What a batch certificate covers: a Merkle root of attested leaves at a reference block."""

    batch_index: int
    leaves_root: bytes
    reference_block: int
    quorum_numbers: bytes

    def __post_init__(self) -> None:
        _require_uint("batch_index", self.batch_index, 64)
        _require_bytes32("leaves_root", self.leaves_root)
        _require_uint("reference_block", self.reference_block, 32)
        validate_quorum_numbers(self.quorum_numbers)

    def compute_struct_hash(self) -> Bytes32:
        return Bytes32(
            keccak(
                encode(
                    ["bytes32", "uint64", "bytes32", "uint32", "bytes32"],
                    [
                        BATCH_HEADER_TYPEHASH,
                        self.batch_index,
                        self.leaves_root,
                        self.reference_block,
                        keccak(self.quorum_numbers),
                    ],
                )
            )
        )


@dataclass(frozen=True, slots=True)
class InferenceOutput:
    """The output of one request under one model profile; its struct hash is the output hash.

    The output hash is a *struct hash*, not a digest: it is a value inside an ``Attestation``,
    whose digest carries the domain.
    """

    request_hash: bytes
    model_profile_hash: bytes
    token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        _require_bytes32("request_hash", self.request_hash)
        _require_bytes32("model_profile_hash", self.model_profile_hash)
        if not isinstance(self.token_ids, tuple):
            raise InvalidInputError("token_ids must be a tuple of ints")
        for token in self.token_ids:
            _require_uint("token id", token, 32)

    def compute_struct_hash(self) -> Bytes32:
        tokens_hash = keccak(b"".join(token.to_bytes(32, "big") for token in self.token_ids))
        return Bytes32(
            keccak(
                encode(
                    ["bytes32", "bytes32", "bytes32", "bytes32"],
                    [INFERENCE_OUTPUT_TYPEHASH, self.request_hash, self.model_profile_hash, tokens_hash],
                )
            )
        )


Message = InferenceRequest | Attestation | BatchHeader | InferenceOutput


def validate_quorum_numbers(quorum_numbers: bytes) -> None:
    """EigenLayer's rule: non-empty, strictly ascending, each below ``MAX_QUORUMS``."""
    if not isinstance(quorum_numbers, bytes) or not quorum_numbers:
        raise InvalidInputError("quorum_numbers must be a non-empty byte string")
    if any(q >= MAX_QUORUMS for q in quorum_numbers):
        raise InvalidInputError(f"quorum numbers must be below {MAX_QUORUMS}")
    if any(a >= b for a, b in pairwise(quorum_numbers)):
        raise InvalidInputError("quorum numbers must be strictly ascending")


def compute_digest(domain: Domain, message: Message) -> Bytes32:
    """The EIP-712 digest that operators BLS-sign for ``message`` in ``domain``."""
    return Bytes32(compute_typed_digest(domain.separator, message.compute_struct_hash()))


def compute_request_hash(domain: Domain, request: InferenceRequest) -> RequestHash:
    return RequestHash(compute_digest(domain, request))


def compute_output_hash(output: InferenceOutput) -> OutputHash:
    """``hashStruct(InferenceOutput)``: binds request, model profile and the exact token ids."""
    return OutputHash(output.compute_struct_hash())


def compute_stop_sequences_hash(stop_sequences: Sequence[str]) -> Bytes32:
    """EIP-712's encoding of a ``string[]``: ``keccak256(keccak256(s_0) ‖ keccak256(s_1) ‖ ...)``."""
    return Bytes32(keccak(b"".join(keccak(text=s) for s in stop_sequences)))


def checksum(address: str) -> str:
    _require_address("address", address)
    return str(to_checksum_address(address))
