"""How far honest fp32 logits drift: the floor under a float32 profile's tolerance.

    python -m bench.logit_drift [--model models/smollm2-135m] [--prompts 20] [--max-new-tokens 64]
                                [--threads 2] [--no-record]

A verifier recomputes the logits of an output by prefill; honest parties differ only by rounding.
For honest greedy and sampled outputs of the fp32 engine (batch of 1, ``--threads``), this compares
the prefill logits of other honest settings with fp32's own: fp64 (the size of fp32 rounding
itself), 1 thread, and the output's own incremental (KV-cache) logits from generation. Per
setting it reports the largest absolute logit difference over every row and token, and the largest
change of the gap between the chosen token and any other (what decides a verdict: a token passes
when its gap to the best is within the tolerance). The baseline in the same process is the
registered tolerance: ``tolerance_over_max_gap_drift`` says how many times the largest drift fits
in it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from avs.inference.engine import InferenceEngine, load_engine
from avs.inference.params import SamplingParams
from bench.inference import PROMPTS, make_float64
from bench.results import report_results


def compute_drift(reference: torch.Tensor, other: torch.Tensor, tokens: list[int]) -> tuple[float, float]:
    """(largest |logit difference|, largest change of any gap ``z[token] - z[t]``), over all rows."""
    diff = other.to(torch.float64) - reference.to(torch.float64)
    rows = torch.arange(len(tokens))
    own = diff[rows, torch.tensor(tokens)]
    gap_change = (own[:, None] - diff).abs().max()
    return float(diff.abs().max()), float(gap_change)


def incremental_logits(engine: InferenceEngine, prompt: tuple[int, ...], output: tuple[int, ...]) -> torch.Tensor:
    """The logits generation saw at each output position (KV cache, one token per step)."""
    from transformers import DynamicCache

    rows = []
    logits, cache = engine._forward(torch.tensor([prompt]), DynamicCache(), logits_to_keep=1)
    rows.append(logits[0])
    for token in output[:-1]:
        logits, cache = engine._forward(torch.tensor([[token]]), cache)
        rows.append(logits[0])
    return torch.stack(rows)


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = load_engine(args.model, device="cpu", threads=args.threads)
    fp64 = make_float64(engine)
    prompts = [engine.encode_chat([{"role": "user", "content": p}]).token_ids for p in PROMPTS[: args.prompts]]
    settings = ("fp64 prefill", "1-thread prefill", "generation's own (KV cache)")
    worst: dict[str, list[float]] = {s: [0.0, 0.0] for s in settings}
    rows = 0
    for i, prompt in enumerate(prompts):
        for params in (
            SamplingParams(max_tokens=args.max_new_tokens),
            SamplingParams(
                temperature_milli=700, top_k=50, top_p_micro=950_000, seed=1000 + i, max_tokens=args.max_new_tokens
            ),
        ):
            output = engine.generate(prompt, params).token_ids
            reference = engine.compute_prefill_logits(prompt, output)
            torch.set_num_threads(1)
            one_thread = engine.compute_prefill_logits(prompt, output)
            torch.set_num_threads(args.threads)
            others = {
                "fp64 prefill": fp64.compute_prefill_logits(prompt, output),
                "1-thread prefill": one_thread,
                "generation's own (KV cache)": incremental_logits(engine, prompt, output),
            }
            for name, logits in others.items():
                largest, gap = compute_drift(reference, logits, list(output))
                worst[name] = [max(worst[name][0], largest), max(worst[name][1], gap)]
            rows += len(output)
        print(f"[{i + 1}/{len(prompts)}] " + ", ".join(f"{k}: {v[1]:.2e}" for k, v in worst.items()), flush=True)
    max_gap = max(v[1] for v in worst.values())
    delta = engine.profile.delta
    return {
        "logit_drift": {
            "profile_delta": delta,
            "prompts": len(prompts),
            "rows": rows,
            "threads": args.threads,
            "max_abs_logit_difference": {k: float(f"{v[0]:.3e}") for k, v in worst.items()},
            "max_gap_change": {k: float(f"{v[1]:.3e}") for k, v in worst.items()},
            "tolerance_over_max_gap_drift": round(delta / max_gap, 1) if max_gap else None,
        }
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/results.json alone")
    args = parser.parse_args(argv)
    if not 1 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts must be in 1..{len(PROMPTS)}")
    figures = run(args)
    report_results("logit_drift", figures, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
