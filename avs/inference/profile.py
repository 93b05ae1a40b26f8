"""The model profile: everything a verifier must agree on, hashed into one registered value.

``profile_hash = keccak256(abi.encode(MODEL_PROFILE_TYPEHASH, weightsRoot, tokenizerHash,
chatTemplateHash, keccak256(dtype), toleranceMicro, decodingRuleVersion, maxContext,
maxNewTokens))`` with the type string below (EIP-712 ``hashStruct``), the value that
``contracts/src/ModelRegistry.sol`` stores for a model id. Tokenizer and chat-template hashes
are computed from the loaded tokenizer, not from file bytes, so re-saving a tokenizer does not
change them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_abi import encode
from eth_utils import keccak

from avs.eip712 import compute_typehash
from avs.errors import InvalidInputError, ModelMismatchError, ModelNotFoundError
from avs.types import Bytes32

MODEL_PROFILE_TYPE = (
    "ModelProfile(bytes32 weightsRoot,bytes32 tokenizerHash,bytes32 chatTemplateHash,string dtype,"
    "uint32 toleranceMicro,uint32 decodingRuleVersion,uint32 maxContext,uint32 maxNewTokens)"
)
MODEL_PROFILE_TYPEHASH = compute_typehash(MODEL_PROFILE_TYPE)
DECODING_RULE_VERSION = 1
PROFILE_FILE = "avs_profile.json"
DTYPES = frozenset({"float32", "bfloat16", "float16"})
DELTA_SCALE = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelProfile:
    weights_root: bytes
    tokenizer_hash: bytes
    chat_template_hash: bytes
    dtype: str
    tolerance_micro: int
    max_context: int
    max_new_tokens: int
    decoding_rule_version: int = DECODING_RULE_VERSION

    def __post_init__(self) -> None:
        for name in ("weights_root", "tokenizer_hash", "chat_template_hash"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise InvalidInputError(f"{name} must be 32 bytes")
        if self.dtype not in DTYPES:
            raise InvalidInputError(f"dtype must be one of {sorted(DTYPES)}")
        for name in ("tolerance_micro", "max_context", "max_new_tokens", "decoding_rule_version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
                raise InvalidInputError(f"{name} must be an integer in [0, 2^32)")
        if self.decoding_rule_version != DECODING_RULE_VERSION:
            raise InvalidInputError(f"decoding rule version {self.decoding_rule_version} is not supported")

    @property
    def delta(self) -> float:
        """The verification tolerance, in logits."""
        return self.tolerance_micro / DELTA_SCALE

    def compute_hash(self) -> Bytes32:
        return Bytes32(
            keccak(
                encode(
                    ["bytes32", "bytes32", "bytes32", "bytes32", "bytes32", "uint32", "uint32", "uint32", "uint32"],
                    [
                        MODEL_PROFILE_TYPEHASH,
                        self.weights_root,
                        self.tokenizer_hash,
                        self.chat_template_hash,
                        keccak(text=self.dtype),
                        self.tolerance_micro,
                        self.decoding_rule_version,
                        self.max_context,
                        self.max_new_tokens,
                    ],
                )
            )
        )


def compute_tokenizer_hash(
    backend_json: str, special_token_ids: dict[str, int | None], eos_ids: Iterable[int]
) -> Bytes32:
    """keccak256 of canonical JSON: the tokenizer model (vocab, merges, normalizer ...) + special ids."""
    canonical = {
        "backend": json.loads(backend_json),
        "special": special_token_ids,
        "eos": sorted(set(eos_ids)),
    }
    return Bytes32(keccak(json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()))


def compute_chat_template_hash(chat_template: str | dict[str, str] | None) -> Bytes32:
    """keccak256 of the template; of canonical JSON of all of them when the model names several
    (transformers loads ``additional_chat_templates/`` beside the default as a dict)."""
    if isinstance(chat_template, dict):
        return Bytes32(keccak(json.dumps(chat_template, sort_keys=True, separators=(",", ":")).encode()))
    return Bytes32(keccak(text=chat_template or ""))


def get_eos_ids(folder: Path, tokenizer: Any) -> tuple[int, ...]:
    """End-of-sequence ids: the tokenizer's ``eos_token_id`` plus ``generation_config.json``'s."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_path = Path(folder) / "generation_config.json"
    if config_path.is_file():
        value = json.loads(config_path.read_text()).get("eos_token_id")
        ids.update(int(v) for v in (value if isinstance(value, list) else [value] if value is not None else []))
    return tuple(sorted(ids))


def get_tokenizer_hashes(folder: Path, tokenizer: Any) -> tuple[Bytes32, Bytes32]:
    """(tokenizer hash, chat-template hash) of a loaded transformers fast tokenizer."""
    special = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")}
    backend = tokenizer.backend_tokenizer.to_str()
    tokenizer_hash = compute_tokenizer_hash(backend, special, get_eos_ids(folder, tokenizer))
    return tokenizer_hash, compute_chat_template_hash(tokenizer.chat_template)


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    if not Path(folder).is_dir():
        raise ModelNotFoundError(f"model folder {folder} does not exist")
    if not (Path(folder) / "tokenizer.json").is_file():  # only fast tokenizers: their file is what is hashed
        raise ModelNotFoundError(f"no tokenizer.json in {folder}")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def get_max_context(folder: Path) -> int:
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"no config.json in {folder}")
    config = json.loads(config_path.read_text())
    value = config.get("max_position_embeddings") or config.get("n_positions")
    if not isinstance(value, int) or value <= 0:
        raise ModelMismatchError(f"{config_path} names no context length (max_position_embeddings)")
    return value


def build_profile(
    folder: Path,
    dtype: str,
    delta: float,
    max_new_tokens: int,
    max_context: int | None = None,
    cache_dir: Path | None = None,
) -> ModelProfile:
    """Compute the profile of a local model folder (what its owner registers on-chain)."""
    from avs.inference.commitment import get_weights_commitment

    if not (isinstance(delta, int | float) and math.isfinite(delta) and round(delta * DELTA_SCALE) >= 1):
        # Even fp32 on two machines differs in the last bits (libm's log in the sampling noise, the
        # order of a matmul's sums): with no tolerance honest operators would reject each other.
        raise InvalidInputError(f"the tolerance (delta) must be a finite number of at least 1e-6 logits, not {delta!r}")

    model_context = get_max_context(Path(folder))
    if max_context is not None and max_context > model_context:
        raise InvalidInputError(f"max_context {max_context} exceeds the model's own context of {model_context}")
    commitment = get_weights_commitment(Path(folder), cache_dir)
    tokenizer_hash, chat_template_hash = get_tokenizer_hashes(Path(folder), load_tokenizer(Path(folder)))
    return ModelProfile(
        weights_root=commitment.root,
        tokenizer_hash=tokenizer_hash,
        chat_template_hash=chat_template_hash,
        dtype=dtype,
        tolerance_micro=round(delta * DELTA_SCALE),
        max_context=max_context if max_context is not None else model_context,
        max_new_tokens=max_new_tokens,
    )


def save_profile(profile: ModelProfile, folder: Path) -> Path:
    record = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in asdict(profile).items()}
    record["profile_hash"] = profile.compute_hash().hex()
    path = Path(folder) / PROFILE_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def parse_profile(record: dict[str, Any]) -> ModelProfile:
    """A profile from its JSON form; raises if a field is missing or ``profile_hash`` disagrees."""
    try:
        profile = ModelProfile(
            weights_root=bytes.fromhex(record["weights_root"]),
            tokenizer_hash=bytes.fromhex(record["tokenizer_hash"]),
            chat_template_hash=bytes.fromhex(record["chat_template_hash"]),
            dtype=record["dtype"],
            tolerance_micro=record["tolerance_micro"],
            max_context=record["max_context"],
            max_new_tokens=record["max_new_tokens"],
            decoding_rule_version=record["decoding_rule_version"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"malformed model profile: {exc}") from exc
    if "profile_hash" in record and bytes.fromhex(record["profile_hash"]) != profile.compute_hash():
        raise InvalidInputError("model profile's profile_hash does not match its fields")
    return profile


def load_profile(folder: Path) -> ModelProfile:
    path = Path(folder) / PROFILE_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"no {PROFILE_FILE} in {folder}: run python -m avs.inference.prepare_model")
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise InvalidInputError(f"{path} is not valid JSON: {exc}") from exc
    return parse_profile(record)
