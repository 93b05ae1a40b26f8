"""DEMO ONLY: an operator that cheats, so that ``make demo`` can show the AVS catching it.

It is a normal ``avs-operator`` except for its engine: the registered model's profile, tokenizer
and chat template, but other weights (the honest model with most of its layers dropped), the way
an operator might try to serve a cheaper model. The honest engine refuses such weights; this one
skips that check on purpose. Asked to verify, it runs the prefill with its own (wrong) weights, so
it REJECTs honest outputs: harmless, since a rejection needs a majority of the stake. Nothing else
in the project imports this module except ``avs.devnet``, which starts it for the demo's cheater.

    python -m avs.demo_cheater --config operator.yaml --honest MODEL_DIR --weights CHEAP_DIR
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from types import FrameType

from avs.inference.engine import InferenceEngine
from avs.inference.profile import get_eos_ids, load_profile, load_tokenizer
from avs_operator.app import OperatorApp
from avs_operator.config import load_config, load_secrets


def make_cheap_weights(honest_dir: Path, out_dir: Path, keep_layers: int) -> Path:
    """The honest model with only its first ``keep_layers`` decoder layers (cheaper, and wrong)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # the demo tells its own story
    model = AutoModelForCausalLM.from_pretrained(str(honest_dir), dtype=torch.float32, local_files_only=True)
    model.model.layers = model.model.layers[:keep_layers]
    model.config.num_hidden_layers = keep_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:keep_layers]
    model.save_pretrained(str(out_dir))
    return out_dir


def load_cheating_engine(honest_dir: Path, weights_dir: Path, threads: int | None) -> InferenceEngine:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads or 1)
    model = AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=torch.float32, local_files_only=True)
    model.eval()  # type: ignore[no-untyped-call]
    tokenizer = load_tokenizer(honest_dir)
    return InferenceEngine(model, tokenizer, load_profile(honest_dir), get_eos_ids(honest_dir, tokenizer))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--honest", type=Path, required=True, help="the registered model folder")
    parser.add_argument("--weights", type=Path, required=True, help="the weights actually served")
    args = parser.parse_args(argv)
    app = OperatorApp(
        load_config(args.config),
        load_secrets(),
        engine_loader=lambda _path, config: load_cheating_engine(args.honest, args.weights, config.threads),
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        app.stop(5)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        app.start()
        print(json.dumps({"event": "ready", "grpc_port": app.ports.grpc}), flush=True)
        app.wait()
    finally:
        app.stop(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
