"""Tiny models for the inference tests: built from a config with a fixed seed, saved to a temp
folder, and loaded through the same path as a real model. Nothing is downloaded."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from avs.inference.profile import build_profile, save_profile

if TYPE_CHECKING:
    from avs.inference.engine import InferenceEngine

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a verifier checks every position of the output against its own prefill",
    "operators sign the same output hash on different hardware",
    "hello world, this is a tiny model for tests; numbers 0123456789 and symbols !?.,",
] * 4
TINY_DELTA = 0.05
LOGIT_SCALE = 40.0  # spreads the random model's logits well beyond the tolerance


def build_tokenizer(folder: Path) -> None:
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    fast_tokenizer: Any = PreTrainedTokenizerFast
    tokenizer = fast_tokenizer(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|pad|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(folder))


def build_tiny_model(folder: Path, seed: int = 0, noise: float = 0.0, tokenizer_from: Path | None = None) -> Path:
    """A 2-layer Llama with random weights (``seed``); ``noise`` perturbs every weight after init."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is None:
        build_tokenizer(folder)
    else:
        AutoTokenizer.from_pretrained(str(tokenizer_from)).save_pretrained(str(folder))
    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(LOGIT_SCALE)
        if noise:
            generator = torch.Generator().manual_seed(seed + 1000)
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * noise * param.std())
    model.save_pretrained(str(folder))
    profile = build_profile(folder, dtype="float32", delta=TINY_DELTA, max_new_tokens=64)
    save_profile(profile, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> InferenceEngine:
    from avs.inference.engine import load_engine

    return load_engine(tiny_model_dir, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def perturbed_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> InferenceEngine:
    from avs.inference.engine import load_engine

    folder = build_tiny_model(tmp_path_factory.mktemp("perturbed") / "model", noise=0.2, tokenizer_from=tiny_model_dir)
    return load_engine(folder, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def other_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> InferenceEngine:
    from avs.inference.engine import load_engine

    folder = build_tiny_model(tmp_path_factory.mktemp("other") / "model", seed=1, tokenizer_from=tiny_model_dir)
    return load_engine(folder, cache_dir=tmp_path_factory.mktemp("cache"))
