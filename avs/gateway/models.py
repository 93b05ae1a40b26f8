"""The models the gateway serves, from local model folders: their tokenizers bind what it shows.

Operators sign token ids, not text, and the aggregator completes an unsigned request's model id and
prompt hash. So the gateway computes each request's prompt hash itself and submits it with the
model id, which makes ``check_certified_as_sent`` bind the certified model and prompt to what the
user asked; and it decodes the certified output ids itself, so the text it answers is the one the
certificate commits to, whatever the aggregator's ``output_text`` says.

A folder is a prepared model folder: ``avs_profile.json`` (its hash is the model id) and the
tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, ``generation_config.json``); the
weights are not needed. Its tokenizer and chat template must be the ones the profile commits to.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from avs.errors import InvalidInputError, ModelMismatchError, ModelNotFoundError
from avs.inference.profile import get_tokenizer_hashes, load_profile, load_tokenizer
from avs.prompts import PromptEncoder


class TextCodec(Protocol):
    """What the gateway needs of a model's tokenizer (``avs.prompts.PromptEncoder``)."""

    def encode_chat(self, messages: Sequence[Any]) -> tuple[int, ...]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


def load_local_model(folder: Path) -> tuple[bytes, PromptEncoder]:
    """(model id, tokenizer) of a prepared model folder; raises if its tokenizer is not the profile's."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"the model folder {folder} does not exist")
    profile = load_profile(folder)
    tokenizer_hash, chat_template_hash = get_tokenizer_hashes(folder, load_tokenizer(folder))
    if tokenizer_hash != profile.tokenizer_hash:
        raise ModelMismatchError(f"the tokenizer in {folder} is not the one its avs_profile.json commits to")
    if chat_template_hash != profile.chat_template_hash:
        raise ModelMismatchError(f"the chat template in {folder} is not the one its avs_profile.json commits to")
    return profile.compute_hash(), PromptEncoder(folder)


def load_local_models(folders: Sequence[Path]) -> dict[bytes, TextCodec]:
    """The tokenizers by model id; two folders of one model are refused (a likely typo)."""
    models: dict[bytes, TextCodec] = {}
    for folder in folders:
        model_id, encoder = load_local_model(folder)
        if model_id in models:
            raise InvalidInputError(f"{folder} is a model already given (model id 0x{model_id.hex()})")
        models[model_id] = encoder
    return models
