"""OpenAI's request and response formats, mapped to and from the AVS (pure: no I/O, no clock).

``parse_chat_request`` and ``parse_completion_request`` turn a JSON body into a ``CompletionJob``
(or raise a ``RequestParameterError`` naming the field); the ``build_*`` functions turn an
aggregator ``RequestStatus`` into OpenAI's response objects, each with an extra ``verification``
object (``build_verification``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from avs.client import RequestStatus, certificate_to_json, get_state_name
from avs.errors import InvalidInputError
from avs.gateway.errors import RequestParameterError, UnknownParameterError, UnsupportedParameterError
from avs.inference.params import MAX_TEMPERATURE_MILLI, UINT64_LIMIT, ChatMessage, SamplingParams, parse_chat_messages
from avs.messages import TOP_P_ONE
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag

OWNER = "verifiable-inference-avs"
VERIFICATION_PATH = "/v1/verification/"
# Accepted only with these values (their defaults): anything else is a 400 naming the parameter.
ONLY_DEFAULTS: dict[str, tuple[object, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
}
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options"})
SAMPLING_PARAMS = frozenset({"model", "stream", "stream_options", "user", "max_tokens", "temperature", "top_p", "seed"})
CHAT_PARAMS = (
    SAMPLING_PARAMS
    | IGNORED
    | {"messages", "max_completion_tokens", "stop"}
    | (set(ONLY_DEFAULTS) - {"echo", "suffix", "best_of"})
)
COMPLETION_PARAMS = SAMPLING_PARAMS | {
    "prompt",
    "stop",
    "n",
    "logprobs",
    "echo",
    "best_of",
    "suffix",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
}
# ``name`` only when empty: OpenAI puts it into the prompt, the chat template here has no place for it,
# and dropping it would certify another conversation than the one sent.
MESSAGE_KEYS = frozenset({"role", "content"})
ROLE_ALIASES = {"developer": "system"}
OUTPUT_STATES = frozenset({ag.REQUEST_STATE_ACCEPTED, ag.REQUEST_STATE_BATCHED, ag.REQUEST_STATE_CERTIFIED})
_PIECE = re.compile(r"\s*\S+|\s+")


class JobKind(Enum):
    CHAT = "chat"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class RequestDefaults:
    """What an omitted parameter means; ``seed`` is drawn by the caller (OpenAI's is random)."""

    max_tokens: int = 128
    temperature: float = 1.0
    seed: int = 0


@dataclass(frozen=True, slots=True)
class CompletionJob:
    kind: JobKind
    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False
    nonce: int | None = None  # None: a random one (each POST a new request); see GatewayService.parse


# --- requests -----------------------------------------------------------------------------


def parse_chat_request(body: object, defaults: RequestDefaults) -> CompletionJob:
    """``POST /v1/chat/completions`` body -> job; raises ``RequestParameterError``."""
    fields = _require_object(body)
    _check_params(fields, CHAT_PARAMS)
    if "messages" not in fields:
        raise RequestParameterError("'messages' is required", param="messages", code="missing_required_parameter")
    messages = parse_openai_messages(fields["messages"])
    max_tokens = _parse_max_tokens(fields)
    return _build_job(JobKind.CHAT, fields, messages, max_tokens, defaults)


def parse_completion_request(body: object, defaults: RequestDefaults) -> CompletionJob:
    """``POST /v1/completions`` body -> job: the prompt becomes a single user message."""
    fields = _require_object(body)
    _check_params(fields, COMPLETION_PARAMS)
    prompt = fields.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise UnsupportedParameterError("'prompt' must be one string (no batches, no token arrays)", param="prompt")
    messages = _parse_chat([{"role": "user", "content": prompt}], "prompt")
    max_tokens = _parse_int(fields, "max_tokens", 1, 2**32 - 1)
    return _build_job(JobKind.TEXT, fields, messages, max_tokens, defaults)


def _require_object(body: object) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise RequestParameterError("the request body must be a JSON object")
    return body


def _check_params(fields: Mapping[str, Any], known: frozenset[str] | set[str]) -> None:
    for name, value in fields.items():
        if name not in known:
            raise UnknownParameterError(f"unrecognized request argument supplied: {name}", param=name)
        if name in ONLY_DEFAULTS and not _is_one_of(value, ONLY_DEFAULTS[name]):
            raise UnsupportedParameterError(
                f"'{name}' = {json.dumps(value)[:80]} is not supported by this gateway "
                f"(verified inference returns one greedy-or-seeded text completion)",
                param=name,
            )


def _is_one_of(value: object, allowed: tuple[object, ...]) -> bool:
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def parse_openai_messages(raw: object) -> tuple[ChatMessage, ...]:
    """OpenAI chat messages -> AVS chat messages: text content only; ``developer`` is ``system``."""
    if not isinstance(raw, list):
        raise RequestParameterError("'messages' must be a list of message objects", param="messages")
    chat = []
    for index, message in enumerate(raw):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestParameterError(f"{param} must be an object", param=param)
        # A reply sent back as history carries its empty fields ("refusal": null, "tool_calls": []).
        extra = {key for key in set(message) - MESSAGE_KEYS if message[key] not in (None, [], "")}
        if extra:
            raise UnsupportedParameterError(f"{param} has unsupported fields: {sorted(extra)}", param=param)
        role = message.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ("system", "user", "assistant"):
            raise UnsupportedParameterError(
                f"{param}.role must be system, developer, user or assistant", param=f"{param}.role"
            )
        chat.append({"role": role, "content": _parse_content(message.get("content"), f"{param}.content")})
    return _parse_chat(chat, "messages")


def _parse_content(content: object, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        texts = [p.get("text") for p in content]
        if all(isinstance(t, str) for t in texts):
            return "".join(str(t) for t in texts)
    raise UnsupportedParameterError(f"{param} must be a string or a list of text parts", param=param)


def _parse_chat(chat: Sequence[Mapping[str, str]], param: str) -> tuple[ChatMessage, ...]:
    try:
        return parse_chat_messages(chat)
    except InvalidInputError as exc:
        raise RequestParameterError(str(exc), param=param) from exc


def _parse_max_tokens(fields: Mapping[str, Any]) -> int | None:
    legacy = _parse_int(fields, "max_tokens", 1, 2**32 - 1)
    current = _parse_int(fields, "max_completion_tokens", 1, 2**32 - 1)
    if legacy is not None and current is not None and legacy != current:
        raise RequestParameterError(
            "'max_tokens' and 'max_completion_tokens' differ; give one", param="max_completion_tokens"
        )
    return current if current is not None else legacy


def _parse_int(fields: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestParameterError(f"'{name}' must be an integer in [{low}, {high}]", param=name)
    return value


def _parse_number(fields: Mapping[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = fields.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestParameterError(f"'{name}' must be a number in [{low:g}, {high:g}]", param=name)
    return float(value)


def _parse_stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise RequestParameterError("'stop' must be a string or a list of strings", param="stop")


def _build_job(
    kind: JobKind,
    fields: Mapping[str, Any],
    messages: tuple[ChatMessage, ...],
    max_tokens: int | None,
    defaults: RequestDefaults,
) -> CompletionJob:
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise RequestParameterError("'model' is required: one of GET /v1/models", param="model")
    stream = fields.get("stream")
    if stream not in (None, True, False):
        raise RequestParameterError("'stream' must be a boolean", param="stream")
    temperature = _parse_number(fields, "temperature", 0.0, MAX_TEMPERATURE_MILLI / 1000, defaults.temperature)
    # top_p 0 keeps only the most likely token, as OpenAI takes it: the smallest nucleus, 1e-6.
    top_p = _parse_number(fields, "top_p", 0.0, 1.0, 1.0)
    # OpenAI's seed is a signed 64-bit integer (some clients send -1): a negative one is its 64 bits.
    seed = _parse_int(fields, "seed", -(2**63), UINT64_LIMIT - 1)
    seed = None if seed is None else seed % UINT64_LIMIT
    try:
        sampling = SamplingParams(
            temperature_milli=round(temperature * 1000),
            top_p_micro=max(1, round(top_p * TOP_P_ONE)),
            seed=defaults.seed if seed is None else seed,
            max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
            stop_sequences=_parse_stop(fields.get("stop")),
        )
    except InvalidInputError as exc:
        raise RequestParameterError(str(exc), param="stop") from exc
    options = fields.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return CompletionJob(kind, model, messages, sampling, bool(stream), include_usage)


# --- responses ----------------------------------------------------------------------------


def compute_completion_id(kind: JobKind, request_hash: bytes) -> str:
    return ("chatcmpl-" if kind is JobKind.CHAT else "cmpl-") + request_hash.hex()


def compute_visible_text(text: str, stop_sequences: Sequence[str]) -> str:
    """The output text up to the first stop sequence (OpenAI leaves the stop sequence out)."""
    cuts = [text.find(stop) for stop in stop_sequences if stop in text]
    return text[: min(cuts)] if cuts else text


def compute_finish_reason(
    text: str, token_ids: Sequence[int], sampling: SamplingParams, eos_ids: Collection[int]
) -> str:
    """``stop`` (an end-of-sequence token or a stop sequence ended the output, even as its last
    allowed token) or ``length`` (the token budget ran out first)."""
    if (token_ids and token_ids[-1] in eos_ids) or any(stop in text for stop in sampling.stop_sequences):
        return "stop"
    return "length" if len(token_ids) >= sampling.max_tokens else "stop"


def compute_text_pieces(text: str) -> list[str]:
    """The text in word-sized pieces (with their leading whitespace) for streaming; they join to it."""
    return _PIECE.findall(text)


def _hex(value: bytes) -> str | None:
    return "0x" + value.hex() if value else None


def build_verification(status: RequestStatus) -> dict[str, object]:
    """The ``verification`` object: the state, where to fetch the certificate and, once certified, it."""
    certified = status.state == ag.REQUEST_STATE_CERTIFIED
    batched = status.state in (ag.REQUEST_STATE_BATCHED, ag.REQUEST_STATE_CERTIFIED)
    certificate = status.certificate
    # Once certified, the output and batch are the certificate's (the checked ones), not the status's
    output_hash = certificate.output_hash if certified else status.output_hash
    batch_index = certificate.batch_header.batch_index if certified else status.batch_index
    return {
        "request_hash": _hex(status.request_hash),
        "state": get_state_name(status.state),
        "output_hash": _hex(output_hash),
        "batch_index": batch_index if batched else None,
        "tx_hash": _hex(certificate.tx_hash) if certified else None,
        "certified_block": certificate.certified_block if certified else None,
        "error": status.error or None,
        "certificate_url": VERIFICATION_PATH + "0x" + status.request_hash.hex(),
        "certificate": json.loads(certificate_to_json(certificate)) if certified else None,
    }


def build_usage(status: RequestStatus) -> dict[str, int]:
    """Completion tokens are the certified output's; prompt tokens are the status's ``prompt_tokens``
    (the gateway counts them itself: ``GatewayService`` puts its own count there)."""
    completion = len(status.output_token_ids)
    prompt = status.prompt_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def build_completion(
    job: CompletionJob, status: RequestStatus, created: int, eos_ids: Collection[int]
) -> dict[str, object]:
    """The non-streamed response: ``chat.completion`` or ``text_completion``."""
    text = compute_visible_text(status.output_text, job.sampling.stop_sequences)
    finish = compute_finish_reason(status.output_text, status.output_token_ids, job.sampling, eos_ids)
    if job.kind is JobKind.CHAT:
        choice: dict[str, object] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "finish_reason": finish,
            "logprobs": None,
        }
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {
        **_envelope(job, status.request_hash, created, chunk=False),
        "choices": [choice],
        "usage": build_usage(status),
        "verification": build_verification(status),
    }


def _envelope(job: CompletionJob, request_hash: bytes, created: int, chunk: bool) -> dict[str, object]:
    chat_object = "chat.completion.chunk" if chunk else "chat.completion"
    return {
        "id": compute_completion_id(job.kind, request_hash),
        "object": chat_object if job.kind is JobKind.CHAT else "text_completion",
        "created": created,
        "model": job.model,
        "system_fingerprint": None,
    }


def build_chunk(
    job: CompletionJob,
    status: RequestStatus,
    created: int,
    *,
    content: str | None = None,
    role: bool = False,
    finish_reason: str | None = None,
    verification: bool = True,
) -> dict[str, object]:
    """One streamed chunk: a delta (role, content, or nothing) and, when asked, the verification so far."""
    if job.kind is JobKind.CHAT:
        delta: dict[str, str] = {"role": "assistant", "content": ""} if role else {}
        if content is not None:
            delta["content"] = content
        choice: dict[str, object] = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": content or "", "finish_reason": finish_reason, "logprobs": None}
    chunk = {**_envelope(job, status.request_hash, created, chunk=True), "choices": [choice]}
    if verification:
        chunk["verification"] = build_verification(status)
    return chunk


def build_usage_chunk(job: CompletionJob, status: RequestStatus, created: int) -> dict[str, object]:
    """``stream_options.include_usage``: a last chunk with no choices and the usage."""
    return {**_envelope(job, status.request_hash, created, chunk=True), "choices": [], "usage": build_usage(status)}


def build_model(name: str, model_id: bytes, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER, "model_id": "0x" + model_id.hex()}


def build_model_list(models: Mapping[str, bytes], created: int) -> dict[str, object]:
    return {"object": "list", "data": [build_model(name, mid, created) for name, mid in sorted(models.items())]}


def is_output_accepted(status: RequestStatus) -> bool:
    """Whether the status carries an output the quorum accepted (streamed from then on)."""
    return status.state in OUTPUT_STATES and len(status.output_token_ids) > 0
