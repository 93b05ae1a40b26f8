"""Request-side values of inference: chat messages, sampling parameters, prompt hashes.

Pure and torch-free, so the aggregator and the gateway can validate requests without a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak

from avs.errors import InvalidInputError
from avs.messages import TOP_P_ONE, InferenceRequest, compute_stop_sequences_hash
from avs.types import Bytes32

CHAT_ROLES = frozenset({"system", "user", "assistant"})
MAX_CHAT_MESSAGES = 256
MAX_TEMPERATURE_MILLI = 10_000  # temperature 10.0: beyond it sampling is noise
MAX_STOP_SEQUENCES = 8
MAX_STOP_SEQUENCE_CHARS = 64
UINT32_LIMIT = 2**32
UINT64_LIMIT = 2**64


def _require_utf8(name: str, text: str) -> None:
    """Lone surrogates (JSON allows ``"\\ud800"``) are not text: they cannot be encoded or signed."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{name} is not valid Unicode text (lone surrogate at {exc.start})") from None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or self.role not in CHAT_ROLES:
            shown = repr(self.role)  # shortened: an error echoed whole could outgrow gRPC's metadata limit
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise InvalidInputError(f"chat role must be one of {sorted(CHAT_ROLES)}, got {shown}")
        if not isinstance(self.content, str):
            raise InvalidInputError("chat message content must be a string")
        _require_utf8("chat message content", self.content)


def parse_chat_messages(raw: Any) -> tuple[ChatMessage, ...]:
    """``[{"role": ..., "content": ...}, ...]`` -> messages; raises ``InvalidInputError`` if malformed."""
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise InvalidInputError("chat messages must be a list of {role, content} objects")
    if not raw or len(raw) > MAX_CHAT_MESSAGES:
        raise InvalidInputError(f"chat needs 1 to {MAX_CHAT_MESSAGES} messages, got {len(raw)}")
    messages = []
    for index, item in enumerate(raw):
        if isinstance(item, ChatMessage):
            messages.append(item)
            continue
        if not isinstance(item, Mapping) or set(item) != {"role", "content"}:
            raise InvalidInputError(f"chat message {index} must have exactly the keys 'role' and 'content'")
        messages.append(ChatMessage(role=item["role"], content=item["content"]))
    if messages[-1].role == "assistant":
        raise InvalidInputError("the last chat message must not be the assistant's")
    return tuple(messages)


def compute_prompt_hash(token_ids: Sequence[int]) -> Bytes32:
    """``keccak256`` of the token ids as 32-byte words: EIP-712's encoding of a ``uint32[]``."""
    for token in token_ids:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < UINT32_LIMIT:
            raise InvalidInputError("token ids must be integers in [0, 2^32)")
    return Bytes32(keccak(b"".join(token.to_bytes(32, "big") for token in token_ids)))


def _require_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """The decoding parameters of one request, in the request's fixed-point units.

    ``temperature_milli == 0`` is greedy decoding (``top_k``, ``top_p_micro`` and ``seed`` are then
    ignored); ``top_k == 0`` and ``top_p_micro == TOP_P_ONE`` switch those filters off.
    """

    temperature_milli: int = 0
    top_k: int = 0
    top_p_micro: int = TOP_P_ONE
    seed: int = 0
    max_tokens: int = 128
    stop_sequences: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        _require_int("temperature_milli", self.temperature_milli, 0, MAX_TEMPERATURE_MILLI)
        _require_int("top_k", self.top_k, 0, UINT32_LIMIT - 1)
        _require_int("top_p_micro", self.top_p_micro, 1, TOP_P_ONE)
        _require_int("seed", self.seed, 0, UINT64_LIMIT - 1)
        _require_int("max_tokens", self.max_tokens, 1, UINT32_LIMIT - 1)
        if not isinstance(self.stop_sequences, tuple) or len(self.stop_sequences) > MAX_STOP_SEQUENCES:
            raise InvalidInputError(f"stop_sequences must be a tuple of at most {MAX_STOP_SEQUENCES} strings")
        for stop in self.stop_sequences:
            if not isinstance(stop, str) or not 0 < len(stop) <= MAX_STOP_SEQUENCE_CHARS:
                raise InvalidInputError(f"each stop sequence must be a string of 1 to {MAX_STOP_SEQUENCE_CHARS} chars")
            _require_utf8("a stop sequence", stop)
            if "\ufffd" in stop:  # it matches half a character: only the quadratic whole-output check finds it
                raise InvalidInputError("a stop sequence may not hold U+FFFD, the replacement character")

    @property
    def temperature(self) -> float:
        return self.temperature_milli / 1000

    @property
    def top_p(self) -> float:
        return self.top_p_micro / TOP_P_ONE

    @property
    def is_greedy(self) -> bool:
        return self.temperature_milli == 0

    @classmethod
    def from_request(cls, request: InferenceRequest, stop_sequences: Sequence[str] = ()) -> SamplingParams:
        """The request's parameters; ``stop_sequences`` must match its ``stop_sequences_hash``."""
        params = cls(  # validated first: only well-formed stop sequences are hashed
            temperature_milli=request.temperature_milli,
            top_k=request.top_k,
            top_p_micro=request.top_p_micro,
            seed=request.seed,
            max_tokens=request.max_tokens,
            stop_sequences=tuple(stop_sequences),
        )
        if compute_stop_sequences_hash(params.stop_sequences) != request.stop_sequences_hash:
            raise InvalidInputError("stop sequences do not match the request's stop_sequences_hash")
        return params
