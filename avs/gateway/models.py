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
from avs.inference.profile import get_eos_ids, get_tokenizer_hashes, load_profile, load_tokenizer
from avs.prompts import PromptEncoder


class TextCodec(Protocol):
    """What the gateway needs of a model's tokenizer (``avs.prompts.PromptEncoder``)."""

    def encode_chat(self, messages: Sequence[Any]) -> tuple[int, ...]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A model the gateway serves: its id (the profile hash), its tokenizer and its end-of-sequence
    ids (an output ending with one stopped there, whatever its length)."""

    model_id: bytes
    codec: TextCodec
    eos_ids: frozenset[int]


def load_local_model(folder: Path) -> LocalModel:
    """The model of a prepared model folder; raises if its tokenizer is not the profile's."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"the model folder {folder} does not exist")
    profile = load_profile(folder)
    tokenizer = load_tokenizer(folder)
    tokenizer_hash, chat_template_hash = get_tokenizer_hashes(folder, tokenizer)
    if tokenizer_hash != profile.tokenizer_hash:
        raise ModelMismatchError(f"the tokenizer in {folder} is not the one its avs_profile.json commits to")
    if chat_template_hash != profile.chat_template_hash:
        raise ModelMismatchError(f"the chat template in {folder} is not the one its avs_profile.json commits to")
    # the tokenizer hash commits to the end-of-sequence ids too
    return LocalModel(profile.compute_hash(), PromptEncoder(folder), frozenset(get_eos_ids(folder, tokenizer)))


def load_local_models(folders: Sequence[Path]) -> dict[str, LocalModel]:
    """The served models by name, each named after its folder: the name a user asks for is bound to
    a model id here, never by the aggregator (whose ``ListModels`` could map a name to a cheaper
    model). Two folders of one model or of one name are refused (a likely typo)."""
    models: dict[str, LocalModel] = {}
    for folder in folders:
        model = load_local_model(folder)
        name = Path(folder).resolve().name
        if any(m.model_id == model.model_id for m in models.values()):
            raise InvalidInputError(f"{folder} is a model already given (model id 0x{model.model_id.hex()})")
        if name in models:
            raise InvalidInputError(f"two model folders are named {name!r}: the folder's name is the model's name")
        models[name] = model
    return models
