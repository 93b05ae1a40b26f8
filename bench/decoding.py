"""Host cost of the canonical decoding rule per generated token, against one model decode step.

    python -m bench.decoding [--model models/smollm2-135m] [--prompts 3] [--tokens 64] [--threads 2]
                             [--stop-lengths 512,4096,16384] [--no-record]

Every generated token costs one forward step of the model plus one ``select_token`` on the host
(float64 logits, the filters, the counter-based Gumbel noise). This prints, per sampling setting,
the mean ``select_token`` time over real SmolLM2 logit rows and its ratio to the mean decode step
measured in the same process (a greedy generation's time per token). On a GPU the step is much
shorter while the host work stays, so the ratio there is larger.

It also times the stop-sequence check per token at several output lengths: the engine's scanner
(``avs.inference.stops``) against the rule it implements, decoding the whole output at every token.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from avs.inference.decoding import select_token
from avs.inference.engine import load_engine
from avs.inference.params import SamplingParams
from avs.inference.stops import StopScanner
from bench.inference import PROMPTS
from bench.results import report_results

SETTINGS = {
    "greedy": SamplingParams(max_tokens=64),
    "T 0.7, top-k 50, top-p 0.95": SamplingParams(temperature_milli=700, top_k=50, top_p_micro=950_000, seed=1),
    "T 0.7, top-k 50": SamplingParams(temperature_milli=700, top_k=50, seed=1),
    "T 0.8, top-p 0.9": SamplingParams(temperature_milli=800, top_p_micro=900_000, seed=1),
    "T 1.0, no filter": SamplingParams(temperature_milli=1000, seed=1),
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = load_engine(args.model, device="cpu", threads=args.threads)
    prompts = [engine.encode_chat([{"role": "user", "content": p}]).token_ids for p in PROMPTS[: args.prompts]]
    engine.generate(prompts[0], SamplingParams(max_tokens=4))  # warm-up
    rows, step_seconds = [], []
    for prompt in prompts:
        start = time.perf_counter()
        output = engine.generate(prompt, SamplingParams(max_tokens=args.tokens)).token_ids
        step_seconds.append((time.perf_counter() - start) / len(output))
        rows.append(engine.compute_prefill_logits(prompt, output))
    logits = torch.cat(rows)
    step = statistics.median(step_seconds)
    per_setting = {}
    for name, params in SETTINGS.items():
        start = time.perf_counter()
        for position in range(logits.shape[0]):
            select_token(logits[position], params, position)
        seconds = (time.perf_counter() - start) / logits.shape[0]
        per_setting[name] = {"select_token_us": round(seconds * 1e6, 1), "over_decode_step": round(seconds / step, 4)}
        print(f"{name:30} {seconds * 1e6:9.1f} us per token  {seconds / step:7.2%} of a decode step", flush=True)
    print(f"decode step (greedy generation / token): {step * 1e3:.1f} ms, {logits.shape[0]} logit rows", flush=True)
    stop_check = time_stop_check(engine, _long_output(engine, prompts, max(args.stop_lengths)), args.stop_lengths)
    return {
        "decoding_rule_over_decode_step": per_setting,
        "stop_check_us_per_token": stop_check,
        "decoding_rule_details": {
            "decode_step_ms": round(step * 1e3, 2),
            "rows": int(logits.shape[0]),
            "threads": args.threads,
            "load_average": list(os.getloadavg()),
        },
    }


STOP_CHECK_LENGTHS = (512, 4096, 16384)


def _long_output(engine: Any, prompts: list[tuple[int, ...]], length: int) -> list[int]:
    """Real output text, repeated to ``length`` tokens (the stop never occurs in it)."""
    params = SamplingParams(max_tokens=min(128, engine.profile.max_new_tokens))
    tokens = [t for prompt in prompts for t in engine.generate(prompt, params).token_ids]
    tokens = [t for t in tokens if t not in engine.eos_ids] or list(prompts[0])  # a model that only said EOS
    return (tokens * (length // len(tokens) + 1))[:length]


def time_stop_check(engine: Any, output: list[int], lengths: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Microseconds per token to check one stop sequence over outputs of each length: the scanner
    against decoding the whole output at every token (the rule's definition)."""
    stops = ("\n\nUser:",)
    figures = {}
    for length in lengths:
        ids = output[:length]
        start = time.perf_counter()
        scanner = engine.stop_scanner(SamplingParams(stop_sequences=stops))
        assert not any(scanner.push(t) for t in ids)
        fast = (time.perf_counter() - start) / length
        start = time.perf_counter()
        whole = StopScanner(stops, None, engine.decode)  # no table: decodes the whole output each token
        assert not any(whole.push(t) for t in ids)
        slow = (time.perf_counter() - start) / length
        figures[str(length)] = {"scanner_us": round(fast * 1e6, 2), "whole_decode_us": round(slow * 1e6, 1)}
        print(
            f"stop check at {length:6} tokens: {fast * 1e6:7.2f} us per token, whole decode {slow * 1e6:9.1f} us "
            f"({slow / fast:,.0f}x)",
            flush=True,
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m"))
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt (the logit rows)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--stop-lengths",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=STOP_CHECK_LENGTHS,
        help="output lengths the stop check is timed at (comma-separated)",
    )
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/results.json alone")
    args = parser.parse_args(argv)
    report_results("decoding", run(args), record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
