"""The inference engine: load a committed model, generate canonically, verify by prefill.

One ``InferenceEngine`` serves one model profile. It refuses weights, tokenizer or chat
template whose hashes differ from the profile, validates every request before any compute, and
offers three operations: ``stream``/``generate`` (KV-cache decoding under the canonical rule of
``avs.inference.decoding``), ``generate_batch`` (left-padded batch of the same), and ``verify``
(one teacher-forced forward pass over prompt + output).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from avs.errors import ContextLimitError, InferenceError, InvalidInputError, ModelMismatchError, ModelNotFoundError
from avs.inference.commitment import (
    WeightsCommitment,
    count_parameters,
    get_default_cache_dir,
    get_weights_commitment,
)
from avs.inference.decoding import compute_margins, select_token
from avs.inference.params import ChatMessage, SamplingParams, compute_prompt_hash, parse_chat_messages
from avs.inference.profile import (
    ModelProfile,
    get_eos_ids,
    get_max_context,
    get_tokenizer_hashes,
    load_profile,
    load_tokenizer,
)
from avs.inference.stops import ByteLevelTable, StopScanner
from avs.messages import InferenceOutput, compute_output_hash
from avs.types import Bytes32, OutputHash

logger = logging.getLogger(__name__)


def _forward_failed(exc: RuntimeError) -> InferenceError:
    """The caller's error: what kind of failure, not torch's text (device names, paths, shapes,
    internal state go to the operator's log only)."""
    detail = str(exc)
    logger.error("model forward failed", extra={"error": detail[:2000]}, exc_info=exc)
    if "out of memory" in detail.lower():
        return InferenceError("model forward failed: out of device memory")
    return InferenceError("model forward failed (a device or runtime error; details in the operator's log)")


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_CPU_THREADS = 2


class FinishReason(StrEnum):
    EOS = "eos"
    STOP = "stop"
    LENGTH = "length"


class Failure(StrEnum):
    """Why a proposed output was rejected."""

    EMPTY = "empty_output"
    TOO_LONG = "over_max_tokens"
    TOKEN = "token_out_of_tolerance"
    FILTERED = "token_filtered_out"
    EOS_NOT_LAST = "continued_after_eos"
    STOP_NOT_LAST = "continued_after_stop_sequence"
    STOPPED_EARLY = "stopped_before_max_tokens"
    BAD_TOKEN_ID = "token_id_out_of_vocabulary"


@dataclass(frozen=True, slots=True)
class Prompt:
    token_ids: tuple[int, ...]
    prompt_hash: Bytes32


@dataclass(frozen=True, slots=True)
class StreamEvent:
    index: int
    token_id: int
    finish_reason: FinishReason | None  # set on the last event only


@dataclass(frozen=True, slots=True)
class Generation:
    token_ids: tuple[int, ...]
    finish_reason: FinishReason


@dataclass(frozen=True, slots=True)
class Verification:
    accepted: bool
    failure: Failure | None
    first_failing_position: int | None
    min_margin: float  # over checked positions; 0.0 when every token is the verifier's own choice
    mean_margin: float
    non_argmax_positions: int  # positions where the proposed token was not the verifier's choice
    margins: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class DeviceChoice:
    device: str  # "cpu", "cuda" or "auto" (accelerate device_map across GPUs)
    dtype: torch.dtype
    threads: int | None


DEVICES = ("cpu", "cuda", "auto")


def choose_device(
    profile: ModelProfile, parameters: int, threads: int | None, dtype: str | None, device: str | None = None
) -> DeviceChoice:
    """CUDA in the profile's dtype when present (sharded when ``parameters`` elements in that dtype,
    plus 20%, exceed one GPU's memory); else CPU fp32.

    ``device`` forces a choice: "cpu", "cuda" (one GPU) or "auto" (accelerate's ``device_map``).
    """
    if device is not None and device not in DEVICES:
        raise InvalidInputError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if dtype is not None and dtype not in TORCH_DTYPES:
        raise InvalidInputError(f"dtype must be one of {', '.join(TORCH_DTYPES)}, not {dtype!r}")
    cuda = torch.cuda.is_available()
    if device in ("cuda", "auto") and not cuda:
        raise InferenceError(f"device {device!r} asked for, but torch sees no CUDA device")
    if device == "cpu" or not cuda:
        return DeviceChoice("cpu", TORCH_DTYPES[dtype or "float32"], threads or DEFAULT_CPU_THREADS)
    torch_dtype = TORCH_DTYPES[dtype or profile.dtype]
    if device is not None:
        return DeviceChoice(device, torch_dtype, None)
    element = torch.tensor([], dtype=torch_dtype).element_size()
    needed = parameters * element * 1.2  # the weights in the dtype they are loaded in, plus headroom
    one_gpu = torch.cuda.get_device_properties(0).total_memory
    multi = torch.cuda.device_count() > 1 and needed > one_gpu
    return DeviceChoice("auto" if multi else "cuda", torch_dtype, None)


class InferenceEngine:
    def __init__(self, model: Any, tokenizer: Any, profile: ModelProfile, eos_ids: Iterable[int]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.profile = profile
        self.profile_hash = profile.compute_hash()
        self.eos_ids = frozenset(eos_ids)
        self.vocab_size = int(model.config.vocab_size)
        # Where inputs go: the first layer's device; offloaded parameters sit on "meta" (accelerate's
        # hooks move inputs to their execution device), so skip those.
        devices = (p.device for p in model.parameters() if p.device.type != "meta")
        self.input_device = next(devices, torch.device("cpu"))
        # transformers 5 renamed ``past_key_values`` to ``cache``; accept both.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        )
        # Text of the tokenizer's special tokens: user text holding one would tokenize to the control
        # token itself (a forged end of turn or system turn), so chat messages may not contain it.
        special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        self._control_texts = sorted(t for t in special | set(tokenizer.all_special_tokens) if t)
        self._byte_table = ByteLevelTable.from_backend(tokenizer.backend_tokenizer, self.vocab_size)

    # ---- requests -------------------------------------------------------------------------------

    def encode_chat(self, messages: Any) -> Prompt:
        """Chat messages -> the chat template -> token ids and their hash (no model compute)."""
        parsed: tuple[ChatMessage, ...] = parse_chat_messages(messages)
        if not self.tokenizer.chat_template:
            raise InvalidInputError("this model has no chat template")
        if any(token in m.content for m in parsed for token in self._control_texts):
            raise InvalidInputError("a chat message contains a special token of the model's tokenizer")
        from jinja2.exceptions import TemplateError

        chat = [{"role": m.role, "content": m.content} for m in parsed]
        try:
            ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        except TemplateError as exc:  # the template's raise_exception: "roles must alternate", say
            raise InvalidInputError(f"the chat template refused the messages: {exc}") from exc
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        token_ids = tuple(int(t) for t in ids)
        return Prompt(token_ids, compute_prompt_hash(token_ids))

    def check_request(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise before compute if the prompt or budget does not fit this model and profile."""
        if not isinstance(params, SamplingParams):
            raise InvalidInputError("params must be SamplingParams")
        if not prompt_ids:
            raise InvalidInputError("the prompt is empty")
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size for t in prompt_ids):
            raise InvalidInputError(f"prompt token ids must be integers in [0, {self.vocab_size})")
        if params.max_tokens > self.profile.max_new_tokens:
            raise ContextLimitError(
                f"max_tokens {params.max_tokens} exceeds the profile's {self.profile.max_new_tokens}"
            )
        if len(prompt_ids) + params.max_tokens > self.profile.max_context:
            raise ContextLimitError(
                f"prompt of {len(prompt_ids)} tokens + max_tokens {params.max_tokens} exceeds the "
                f"context of {self.profile.max_context}"
            )

    def compute_output_hash(self, request_hash: bytes, token_ids: Sequence[int]) -> OutputHash:
        output = InferenceOutput(request_hash, self.profile_hash, tuple(token_ids))
        return compute_output_hash(output)

    # ---- generation -----------------------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, input_ids: torch.Tensor, cache: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        try:
            kwargs[self._cache_arg] = cache
            out = self.model(input_ids=input_ids.to(self.input_device), use_cache=True, **kwargs)
        except RuntimeError as exc:  # out of memory, device errors
            raise _forward_failed(exc) from exc
        return out.logits[:, -1].to(device="cpu", dtype=torch.float64), getattr(out, self._cache_arg)

    def _finish_reason(self, output: Sequence[int], params: SamplingParams, stopped: bool) -> FinishReason | None:
        """Why ``output`` ends here, if it does; ``stopped``: its text holds a stop sequence."""
        if output[-1] in self.eos_ids:
            return FinishReason.EOS
        if stopped:
            return FinishReason.STOP
        if len(output) >= params.max_tokens:
            return FinishReason.LENGTH
        return None

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids`` (special tokens left out), as every operator of the profile has it.

        The backend's decode depends only on tokenizer.json, which the tokenizer hash covers whole;
        transformers' decode also reads tokenizer_config.json flags (clean_up_tokenization_spaces)
        that the profile does not commit to, so two operators could disagree on a stop or a text."""
        return str(self.tokenizer.backend_tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def stop_scanner(self, params: SamplingParams) -> StopScanner:
        """Says, token by token, whether the decoded output so far holds one of ``params``' stop
        sequences (in linear time for a byte-level tokenizer; see ``avs.inference.stops``)."""
        return StopScanner(params.stop_sequences, self._byte_table, self.decode)

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[StreamEvent]:
        """Yield the output tokens one at a time; the last event carries the finish reason."""
        self.check_request(prompt_ids, params)
        return self._stream(list(prompt_ids), params)

    def _stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[StreamEvent]:
        from transformers import DynamicCache

        logits, cache = self._forward(torch.tensor([prompt_ids]), DynamicCache(), logits_to_keep=1)
        output: list[int] = []
        stops = self.stop_scanner(params)
        while True:
            token = select_token(_require_judgeable(logits[0]), params, len(output))
            output.append(token)
            finish = self._finish_reason(output, params, stops.push(token))
            yield StreamEvent(len(output) - 1, token, finish)
            if finish is not None:
                return
            logits, cache = self._forward(torch.tensor([[token]]), cache)

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        tokens: list[int] = []
        for event in self.stream(prompt_ids, params):
            tokens.append(event.token_id)
            if event.finish_reason is not None:
                return Generation(tuple(tokens), event.finish_reason)
        raise InferenceError("generation ended without a finish reason")  # pragma: no cover

    def generate_batch(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> list[Generation]:
        """Several requests in one left-padded batch; each row follows the same canonical rule."""
        from transformers import DynamicCache

        if len(prompts) != len(params) or not prompts:
            raise InvalidInputError("generate_batch needs one SamplingParams per prompt, and at least one prompt")
        for prompt, p in zip(prompts, params, strict=True):
            self.check_request(prompt, p)
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + list(p) for p in prompts])
        # The mask (and the positions from it) live on the model's device: it grows every step.
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.input_device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits, cache = self._forward(
            ids, DynamicCache(), attention_mask=mask, position_ids=positions, logits_to_keep=1
        )
        outputs: list[list[int]] = [[] for _ in prompts]
        stops = [self.stop_scanner(p) for p in params]
        finished: list[FinishReason | None] = [None] * len(prompts)
        while True:
            step = []
            for row, p in enumerate(params):
                if finished[row] is None:
                    token = select_token(_require_judgeable(logits[row]), p, len(outputs[row]))
                    outputs[row].append(token)
                    finished[row] = self._finish_reason(outputs[row], p, stops[row].push(token))
                step.append(outputs[row][-1] if finished[row] is None else self.pad_id)
            if all(f is not None for f in finished):
                return [Generation(tuple(o), f) for o, f in zip(outputs, finished, strict=True) if f is not None]
            alive = torch.tensor([[int(f is None)] for f in finished], device=self.input_device)
            mask = torch.cat([mask, alive], dim=1)
            positions = positions[:, -1:] + 1
            logits, cache = self._forward(
                torch.tensor(step)[:, None], cache, attention_mask=mask, position_ids=positions
            )

    # ---- verification ---------------------------------------------------------------------------

    @torch.inference_mode()
    def compute_prefill_logits(self, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> torch.Tensor:
        """One forward pass over prompt + output[:-1]: row i holds the logits that predict output[i]."""
        ids = torch.tensor([list(prompt_ids) + list(output_ids[:-1])], device=self.input_device)
        try:
            out = self.model(input_ids=ids, use_cache=False, logits_to_keep=len(output_ids))
        except RuntimeError as exc:
            raise _forward_failed(exc) from exc
        logits: torch.Tensor = out.logits[0].to(device="cpu", dtype=torch.float64)
        return logits

    def check_rules(self, output_ids: Sequence[int], params: SamplingParams) -> tuple[Failure, int] | None:
        """Stop and length rules: (failure, position) or None."""
        if not output_ids:
            return Failure.EMPTY, 0
        if len(output_ids) > params.max_tokens:
            return Failure.TOO_LONG, params.max_tokens
        for i, token in enumerate(output_ids):
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < self.vocab_size:
                return Failure.BAD_TOKEN_ID, i
        stops = self.stop_scanner(params)
        stopped = False
        for i, token in enumerate(output_ids):
            stopped = stops.push(token)
            if i == len(output_ids) - 1:
                break
            if token in self.eos_ids:
                return Failure.EOS_NOT_LAST, i
            if stopped:
                return Failure.STOP_NOT_LAST, i
        if self._finish_reason(output_ids, params, stopped) is None:
            return Failure.STOPPED_EARLY, len(output_ids) - 1
        return None

    def verify(
        self, prompt_ids: Sequence[int], output_ids: Sequence[int], params: SamplingParams, delta: float | None = None
    ) -> Verification:
        """Verify a proposed output by one prefill; ``delta`` defaults to the profile's tolerance."""
        self.check_request(prompt_ids, params)
        tolerance = self.profile.delta if delta is None else delta
        broken = self.check_rules(output_ids, params)
        if broken is not None and broken[0] in (Failure.EMPTY, Failure.TOO_LONG, Failure.BAD_TOKEN_ID):
            return Verification(False, broken[0], broken[1], -math.inf, -math.inf, 0, ())
        logits = _require_judgeable(self.compute_prefill_logits(prompt_ids, output_ids))
        return compute_verification(logits, list(output_ids), params, tolerance, broken)


def _require_judgeable(logits: torch.Tensor) -> torch.Tensor:
    """NaN or +inf logits (a broken device, an fp16 overflow) give no token and no verdict: +inf - +inf
    is NaN, so the generator's own choice would fail verification. -inf is a masked token, kept."""
    if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
        raise InferenceError("the model's logits contain NaN or +inf; refusing to pick or judge a token")
    return logits


def compute_verification(
    logits: torch.Tensor,
    output_ids: list[int],
    params: SamplingParams,
    delta: float,
    broken: tuple[Failure, int] | None = None,
) -> Verification:
    """The verdict from prefill logits (``logits[i]`` predicts ``output_ids[i]``) and the rule check."""
    margins = compute_margins(logits, output_ids, params, delta)
    failing = [i for i, m in enumerate(margins) if not m >= -delta]  # a NaN margin fails too
    first_token = failing[0] if failing else None
    failure: Failure | None = None
    position: int | None = None
    if first_token is not None:
        failure = Failure.FILTERED if margins[first_token] == -math.inf else Failure.TOKEN
        position = first_token
    if broken is not None and (position is None or broken[1] < position):
        failure, position = broken
    finite = [m for m in margins if m != -math.inf]
    return Verification(
        accepted=failure is None,
        failure=failure,
        first_failing_position=position,
        min_margin=min(margins),
        mean_margin=sum(finite) / len(finite) if finite else -math.inf,
        non_argmax_positions=sum(1 for m in margins if m < 0),
        margins=tuple(margins),
    )


def load_engine(
    folder: Path,
    profile: ModelProfile | None = None,
    *,
    threads: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
    cache_dir: Path | None = None,
) -> InferenceEngine:
    """Load a local model folder, checking it against ``profile`` (default: its ``avs_profile.json``).

    ``dtype`` overrides the device's default (benchmarks: bf16 on CPU); ``device`` forces "cpu",
    "cuda" or "auto" (see ``choose_device``). Nothing is downloaded.
    """
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder {folder} does not exist")
    profile = profile if profile is not None else load_profile(folder)
    if profile.tolerance_micro == 0:  # see build_profile: honest operators would reject each other
        raise ModelMismatchError("the model profile's tolerance is 0: no two machines would agree on every output")
    if profile.max_context > (model_context := get_max_context(folder)):
        # Positions past the model's table fail mid-generation (an IndexError; on CUDA a broken context).
        raise ModelMismatchError(
            f"the profile's max_context {profile.max_context} exceeds the context of the model in {folder}"
            f" ({model_context})"
        )
    choice = choose_device(profile, count_parameters(folder), threads, dtype, device)  # bad options: before hashing
    _refuse_uncommitted_weight_files(folder)
    commitment = get_weights_commitment(folder, cache_dir if cache_dir is not None else get_default_cache_dir())
    if commitment.root != profile.weights_root:
        raise ModelMismatchError(f"weights in {folder} do not match the model profile's weights commitment")
    _require_loading_reads_the_committed_files(folder, commitment)
    tokenizer = load_tokenizer(folder)
    tokenizer_hash, chat_template_hash = get_tokenizer_hashes(folder, tokenizer)
    if tokenizer_hash != profile.tokenizer_hash:
        raise ModelMismatchError(f"tokenizer in {folder} does not match the model profile")
    if chat_template_hash != profile.chat_template_hash:
        raise ModelMismatchError(f"chat template in {folder} does not match the model profile")
    if choice.threads is not None:
        torch.set_num_threads(choice.threads)
    if choice.device != "cpu" and choice.dtype == torch.float32:
        # A float32 profile's small tolerance assumes true fp32 matmuls; TF32 rounds inputs to 10 bits.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    device_map: str | None = {"cpu": None, "cuda": "cuda", "auto": "auto"}[choice.device]
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=choice.dtype, device_map=device_map, local_files_only=True, use_safetensors=True
    )
    _require_committed_parameters(model, commitment.tensor_names, folder)
    model.eval()
    logger.info("loaded model", extra={"folder": str(folder), "device": choice.device, "dtype": str(choice.dtype)})
    return InferenceEngine(model, tokenizer, profile, get_eos_ids(folder, tokenizer))


# Weights that transformers could load instead of, or beside, the committed safetensors.
UNCOMMITTED_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.h5", "*.msgpack", "*.onnx")


def _refuse_uncommitted_weight_files(folder: Path) -> None:
    stray = sorted(p.name for pattern in UNCOMMITTED_WEIGHT_PATTERNS for p in folder.glob(pattern))
    if stray:
        raise ModelMismatchError(
            f"{folder} holds weight files outside the commitment (only *.safetensors is committed): {', '.join(stray)}"
        )


SINGLE_WEIGHTS_FILE = "model.safetensors"  # what transformers loads first
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # else the shards this index names


def _require_loading_reads_the_committed_files(folder: Path, commitment: WeightsCommitment) -> None:
    """transformers reads what ``model.safetensors`` or the index names, not what was hashed: a
    folder with both committed and other files, or an index that points a tensor at another file
    (a subfolder, say), would serve weights that are not the commitment's."""
    # Other indexes (pytorch_model.bin.index.json, which many folders ship) name weight files that
    # _refuse_uncommitted_weight_files keeps out, and transformers reads no other with safetensors.
    files = sorted(set(commitment.tensor_files.values()))
    if SINGLE_WEIGHTS_FILE in files:
        if len(files) > 1:
            others = ", ".join(f for f in files if f != SINGLE_WEIGHTS_FILE)
            raise ModelMismatchError(f"{folder}: transformers loads only {SINGLE_WEIGHTS_FILE}, not also {others}")
        return
    weight_map = _read_weight_map(folder / WEIGHTS_INDEX_FILE)
    if weight_map != commitment.tensor_files:
        wrong = sorted(
            n
            for n in weight_map.keys() | commitment.tensor_files.keys()
            if weight_map.get(n) != commitment.tensor_files.get(n)
        )
        raise ModelMismatchError(
            f"{folder}/{WEIGHTS_INDEX_FILE} does not name the committed file of every committed tensor "
            f"(first differences: {wrong[:3]})"
        )


def _read_weight_map(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ModelMismatchError(f"{path.parent} has neither {SINGLE_WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}")
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelMismatchError(f"{path} is not a weights index: {exc}") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelMismatchError(f"{path}: weight_map must map tensor names to file names")
    return weight_map


def _require_committed_parameters(model: Any, committed: frozenset[str], folder: Path) -> None:
    """The loaded model's parameters are exactly the committed tensors (tied copies aside): a
    config.json that drops layers would silently leave committed tensors out, one that adds layers
    would serve randomly initialised ones."""
    parameters = {name for name, _ in model.named_parameters()}  # tied weights once
    loaded = set(model.state_dict())
    unused, uncommitted = sorted(committed - loaded), sorted(parameters - committed)
    if unused or uncommitted:
        raise ModelMismatchError(
            f"the model built from {folder}/config.json does not match the committed tensors "
            f"(not loaded: {unused[:3]}, not committed: {uncommitted[:3]})"
        )


class EngineRegistry:
    """The engines an operator serves, by model id (``ModelRegistry``'s key; default: the profile hash)."""

    def __init__(self) -> None:
        self._engines: dict[bytes, InferenceEngine] = {}

    def add(self, engine: InferenceEngine, model_id: bytes | None = None) -> None:
        self._engines[engine.profile_hash if model_id is None else model_id] = engine

    def get(self, model_id: bytes) -> InferenceEngine:
        engine = self._engines.get(model_id)
        if engine is None:
            raise ModelNotFoundError(f"unknown model id 0x{bytes(model_id).hex()}")
        return engine
