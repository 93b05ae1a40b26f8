"""The gateway's local models: a prepared folder's tokenizer, bound to its profile, decoding as the
operators' engine does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avs.errors import InvalidInputError, ModelMismatchError, ModelNotFoundError
from avs.gateway.models import load_local_model, load_local_models
from avs.inference.profile import ModelProfile, get_tokenizer_hashes, load_tokenizer, save_profile
from tests.inference.conftest import build_tokenizer


def prepare(folder: Path, tokenizer_hash: bytes | None = None) -> ModelProfile:
    """A prepared folder without weights (the gateway needs none): the tokenizer and its profile."""
    build_tokenizer(folder)
    actual, chat_template_hash = get_tokenizer_hashes(folder, load_tokenizer(folder))
    profile = ModelProfile(b"\x01" * 32, tokenizer_hash or actual, chat_template_hash, "float32", 50_000, 256, 64)
    save_profile(profile, folder)
    return profile


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gateway-model") / "tiny"
    prepare(path)
    return path


def test_the_model_id_is_the_profile_hash_and_the_prompt_is_the_chat_template(folder: Path) -> None:
    model = load_local_model(folder)
    model_id, encoder = model.model_id, model.codec
    assert model.eos_ids and load_tokenizer(folder).eos_token_id in model.eos_ids
    profile_hash = bytes.fromhex(json.loads((folder / "avs_profile.json").read_text())["profile_hash"])
    assert model_id == profile_hash
    tokenizer = load_tokenizer(folder)
    messages = [{"role": "user", "content": "the quick brown fox"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert list(encoder.encode_chat(messages)) == list(expected)


@settings(max_examples=50, deadline=None)
@given(ids=st.lists(st.integers(0, 319), max_size=40))
def test_decoding_is_the_operators_engines(folder: Path, ids: list[int]) -> None:
    """``InferenceEngine.decode``: tokenizer.json's own decode, special tokens left out."""
    encoder = load_local_model(folder).codec
    engine_decode = load_tokenizer(folder).backend_tokenizer.decode(ids, skip_special_tokens=True)
    assert encoder.decode(ids) == engine_decode


def test_a_tokenizer_other_than_the_profiles_is_refused(tmp_path: Path) -> None:
    prepare(tmp_path / "m", tokenizer_hash=b"\x02" * 32)
    with pytest.raises(ModelMismatchError, match="tokenizer"):
        load_local_model(tmp_path / "m")


def test_a_chat_template_other_than_the_profiles_is_refused(folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(folder, tmp_path / "m")
    config_path = copy / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if "chat_template" in config:
        config["chat_template"] = "{{ 'always the same prompt' }}"
        config_path.write_text(json.dumps(config))
    (copy / "chat_template.jinja").write_text("{{ 'always the same prompt' }}")
    with pytest.raises(ModelMismatchError, match="chat template"):
        load_local_model(copy)


def test_a_folder_without_a_profile_or_given_twice_is_refused(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"avs_profile\.json"):
        load_local_model(tmp_path)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_local_models([folder, tmp_path / "absent"])
    with pytest.raises(InvalidInputError, match="already given"):
        load_local_models([folder, folder])
