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
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A model the gateway serves: its id (the profile hash) and its tokenizer."""

    model_id: bytes
    codec: TextCodec


def load_local_models(folders: Sequence[Path]) -> dict[str, LocalModel]:
    """The served models by name, each named after its folder: the name a user asks for is bound to
    a model id here, never by the aggregator (whose ``ListModels`` could map a name to a cheaper
    model). Two folders of one model or of one name are refused (a likely typo)."""
    models: dict[str, LocalModel] = {}
    for folder in folders:
        model_id, encoder = load_local_model(folder)
        name = Path(folder).resolve().name
        if any(m.model_id == model_id for m in models.values()):
            raise InvalidInputError(f"{folder} is a model already given (model id 0x{model_id.hex()})")
        if name in models:
            raise InvalidInputError(f"two model folders are named {name!r}: the folder's name is the model's name")
        models[name] = LocalModel(model_id, encoder)
    return models
