"""Prompt hashes and output text without torch: the model's tokenizer (``tokenizers``) and chat
template (jinja2), for the aggregator's intake and the gateway.

The engine computes ``compute_prompt_hash(apply_chat_template(messages, add_generation_prompt=True))``
with transformers, which imports torch. The aggregator must not, so this module renders the chat
template the way transformers does (a sandboxed jinja2 environment with ``trim_blocks`` and
``lstrip_blocks``, the ``tojson`` filter, ``raise_exception``, the special tokens as variables)
and encodes the text with the fast tokenizer, without adding special tokens. Messages that
contain a special token's text are refused, so user text cannot change how the prompt
tokenises. The operators check the hash again before any compute.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from avs.errors import InvalidInputError, ModelNotFoundError
from avs.inference.params import compute_prompt_hash, parse_chat_messages
from avs.types import Bytes32

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class PromptEncoder:
    """Chat messages -> chat-templated token ids and their hash, for one model folder."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelNotFoundError(f"no tokenizer.json in {folder}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        config_file = folder / "tokenizer_config.json"
        config: dict[str, Any] = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template_file = folder / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        if not isinstance(template, str) or not template:
            raise InvalidInputError(f"the model in {folder} has no chat template")
        self.special_tokens = {k: t for k in SPECIAL_TOKEN_KEYS if (t := _token_text(config.get(k))) is not None}
        self._control = sorted(
            {t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special}
            | set(self.special_tokens.values())
        )
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(template)

    def encode_chat(self, messages: Sequence[Any]) -> tuple[int, ...]:
        parsed = parse_chat_messages(list(messages))
        for message in parsed:
            if any(token and token in message.content for token in self._control):
                raise InvalidInputError("a chat message contains a special token of the model's tokenizer")
        chat = [{"role": m.role, "content": m.content} for m in parsed]
        try:
            text = self._template.render(messages=chat, add_generation_prompt=True, **self.special_tokens)
        except jinja2.exceptions.TemplateError as exc:
            raise InvalidInputError(f"the chat template refused the messages: {exc}") from exc
        return tuple(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def compute_prompt_hash(self, messages: Sequence[Any]) -> Bytes32:
        return compute_prompt_hash(self.encode_chat(messages))

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of output tokens as every operator's engine has it (``InferenceEngine.decode``:
        tokenizer.json's own decode, special tokens left out)."""
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))
