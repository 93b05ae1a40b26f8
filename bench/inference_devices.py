"""Cross-device inference benchmark: outputs generated on a GPU verified on the CPU, and back.

    python -m bench.inference_devices [--model models/smollm2-135m] [--prompts 20] [--few-prompts 5]
                                      [--cost-prompts 50] [--threads 8] [--gpu cuda] [--out FILE]
                                      [--skip-cost] [--profile-steps] [--anatomy-repeats 5]
                                      [--only PHASE,...] [--no-record]

Needs a CUDA device (``--gpu cpu`` runs every GPU party on the CPU instead: the tests use it to
exercise the harness on machines without one). Every output is checked at the registered
profile's tolerance and at the sweep of ``bench.inference``. Settings:

* honest, float32 profile: CPU fp32 -> GPU fp32 and GPU fp32 -> CPU fp32 (greedy and sampled),
  GPU left-padded batch -> CPU, accelerate's ``device_map="auto"`` -> CPU, and a model split by
  ``device_map`` between the GPU and CPU offload (``max_memory``: the multi-device code path on
  a one-GPU machine) -> CPU;
* bfloat16 kind (reported apart: a float32 profile has no bf16 party): GPU bf16 -> CPU fp32 and
  CPU fp32 -> GPU bf16;
* cheating across devices: int8 weights generating on the GPU, verified on the CPU;
* logit drift: how far the GPU's (fp32, bf16) prefill logits are from the CPU's on the same outputs,
  the floor under the tolerance (``bench.logit_drift`` measures the CPU's own);
* cost on the GPU: verification time over generation time, and our generation over
  ``model.generate``; with ``--profile-steps``, ``torch.profiler``'s busiest operators (host time)
  of one greedy generation each way, to find where our per-step time differs from theirs, and a
  step anatomy (``compute_step_anatomy``): the engine, ``model.generate`` and two bare decode
  loops timed on the same tokens, which splits the difference into bookkeeping, the logits' trip
  to the host, and the way the model is called.

Figures go to ``bench/results.json`` under their own keys (``cross_device_*``, ``gpu_*``, and
``inference_devices`` for the breakdown); ``--out`` also writes them, phase by phase, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

from avs.inference.engine import InferenceEngine, load_engine
from avs.inference.params import SamplingParams
from bench.inference import (
    DELTAS,
    PROMPTS,
    Tally,
    check,
    compute_rate,
    make_int8,
    plain_generate,
    time_against_plain,
    timed,
)
from bench.logit_drift import compute_drift
from bench.results import report_results

BATCH_SIZE = 5
BF16_DELTA = 0.5
OFFLOAD_GPU_BYTES = 200 << 20  # ~40% of the fp32 SmolLM2-135M on the GPU, the rest offloaded
PHASES = (  # in the order they run; auto and offload only with a GPU
    *("cost", "profile", "cpu-gpu", "gpu-cpu", "drift", "batched", "int8", "auto", "offload"),
    *("bf16", "bf16-verifier", "bf16-drift"),
)


def load_offloaded(folder: Path, reference: InferenceEngine, gpu_bytes: int) -> InferenceEngine:
    """The model split by accelerate between GPU 0 and CPU offload, wrapped in the engine."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(folder),
        dtype=torch.float32,
        device_map="auto",
        max_memory={0: gpu_bytes, "cpu": 16 << 30},
        local_files_only=True,
    )
    placement = sorted({str(d) for d in getattr(model, "hf_device_map", {}).values()})
    print(f"offloaded model placement: {placement}", flush=True)
    model.eval()  # type: ignore[no-untyped-call]
    return InferenceEngine(model, reference.tokenizer, reference.profile, reference.eos_ids)


def decode_loop(engine: InferenceEngine, prompt: tuple[int, ...], n: int, host_logits: bool) -> tuple[int, ...]:
    """Greedy decoding with nothing but the model calls: the floor under the engine's loop.

    ``host_logits``: each step's logits go to the host as float64 and the argmax is taken there,
    as the engine does; otherwise the argmax runs on the device and only the token id comes back
    (the one sync per step that a stop check needs, as in ``model.generate``).
    """
    from transformers import DynamicCache

    cache_arg = {engine._cache_arg: DynamicCache()}
    ids = torch.tensor([prompt], device=engine.input_device)
    output: list[int] = []
    with torch.inference_mode():
        logits = engine.model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_arg).logits[:, -1]
        while True:
            if host_logits:
                token = int(torch.argmax(logits.to(device="cpu", dtype=torch.float64)[0]))
                ids = torch.tensor([[token]], device=engine.input_device)
            else:
                ids = torch.argmax(logits, dim=-1, keepdim=True)
                token = int(ids[0, 0])
            output.append(token)
            if token in engine.eos_ids or len(output) >= n:
                return tuple(output)
            logits = engine.model(input_ids=ids, use_cache=True, **cache_arg).logits[:, -1]


def compute_step_anatomy(engine: InferenceEngine, prompt: tuple[int, ...], n: int, repeats: int) -> dict[str, Any]:
    """Milliseconds per token of four greedy loops over the same tokens, each run ``repeats`` times in
    rotating order (no loop always first): the engine, ``model.generate``, and ``decode_loop`` with
    host or device argmax. engine - host loop = the engine's bookkeeping; host - device loop = the
    logits' trip to the host; device loop - generate = how the two call the model."""
    loops: dict[str, Callable[[], tuple[int, ...]]] = {
        "engine": lambda: engine.generate(prompt, SamplingParams(max_tokens=n)).token_ids,
        "model.generate": partial(plain_generate, engine, prompt, n),
        "loop, host argmax": partial(decode_loop, engine, prompt, n, True),
        "loop, device argmax": partial(decode_loop, engine, prompt, n, False),
    }
    names = list(loops)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    tokens = {name: loops[name]() for name in names}  # warm, and the outputs to compare
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _, s = timed(loops[name])
            seconds[name].append(s)
    per_token = {name: statistics.median(s) / len(tokens[name]) * 1e3 for name, s in seconds.items()}
    plain = per_token["model.generate"]
    return {
        "tokens": n,
        "repeats": repeats,
        "same_tokens": all(t == tokens["engine"] for t in tokens.values()),
        "ms_per_token": {name: round(ms, 4) for name, ms in per_token.items()},
        "ms_per_token_range": {  # the spread says which differences are run-to-run noise
            name: [round(min(s) / len(tokens[name]) * 1e3, 4), round(max(s) / len(tokens[name]) * 1e3, 4)]
            for name, s in seconds.items()
        },
        "over_model_generate": {name: round(ms / plain, 4) for name, ms in per_token.items()},
    }


class Run:
    """The parties, the prompts and the tallies of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cpu = load_engine(args.model, device="cpu", threads=args.threads)
        self.gpu = load_engine(args.model, device=args.gpu, threads=args.threads)  # threads: CPU harness only
        self.parties = {"cpu fp32": self.cpu, "gpu fp32": self.gpu}
        self.delta = self.cpu.profile.delta
        self.greedy = SamplingParams(max_tokens=args.max_new_tokens)
        texts = PROMPTS[: max(args.prompts, args.cost_prompts)]
        self.prompts = [self.cpu.encode_chat([{"role": "user", "content": t}]).token_ids for t in texts]
        self.honest: dict[str, Tally] = {}
        self.bf16: dict[str, Tally] = {}
        self.cheat: dict[str, Tally] = {}
        self.identical: dict[str, dict[int, bool]] = {}  # per pair of parties, whichever generated
        self.timing: dict[str, list[float]] = {k: [] for k in ("gen", "ver", "ours", "plain")}
        self.plain_agree = 0
        self.figures: dict[str, Any] = {}
        self._outputs: dict[tuple[str, str, int], tuple[int, ...]] = {}
        self.drifts: dict[str, list[float]] = {}  # party -> [max |logit difference|, max gap change] vs CPU
        self.figures_extra: dict[str, Any] = {}

    def output(self, party: str, kind: str, i: int) -> tuple[int, ...]:
        """The party's output for prompt ``i``, generated once and reused by every setting."""
        key = (party, kind, i)
        if key not in self._outputs:
            self._outputs[key] = self.parties[party].generate(self.prompts[i], self.params(kind, i)).token_ids
        return self._outputs[key]

    def params(self, kind: str, i: int) -> SamplingParams:
        if kind == "greedy":
            return self.greedy
        return SamplingParams(
            temperature_milli=700, top_k=50, top_p_micro=950_000, seed=1000 + i, max_tokens=self.args.max_new_tokens
        )

    def cross(
        self,
        generator: str,
        verifier: str,
        rows: range,
        kinds: tuple[str, ...] = ("greedy", "sampled"),
        group: dict[str, Tally] | None = None,
    ) -> None:
        """Generate with one party, verify with the other; count token-identical outputs too."""
        tallies = self.honest if group is None else group
        for i in rows:
            for kind in kinds:
                params = self.params(kind, i)
                output = self.output(generator, kind, i)
                same = output == self.output(verifier, kind, i)
                name = f"{generator}->{verifier} {kind}"
                tallies.setdefault(name, Tally()).add(
                    check(self.parties[verifier], self.prompts[i], output, params, same)
                )
                pair = " = ".join(sorted((generator, verifier)))
                self.identical.setdefault(f"{pair} {kind}", {})[i] = same

    def drift(self, party: str, rows: range) -> None:
        """How far the party's prefill logits are from the CPU's, on the CPU's outputs (bench.logit_drift)."""
        for i in rows:
            for kind in ("greedy", "sampled"):
                output = self.output("cpu fp32", kind, i)
                reference = self.cpu.compute_prefill_logits(self.prompts[i], output)
                other = self.parties[party].compute_prefill_logits(self.prompts[i], output)
                largest, gap = compute_drift(reference, other, list(output))
                worst = self.drifts.setdefault(party, [0.0, 0.0])
                self.drifts[party] = [max(worst[0], largest), max(worst[1], gap)]

    def gpu_cost(self) -> None:
        """GPU generation, verification and model.generate timings, warm."""
        self.gpu.generate(self.prompts[0], SamplingParams(max_tokens=8))
        for i, prompt in enumerate(self.prompts[: self.args.cost_prompts]):
            for kind in ("greedy", "sampled"):
                generation, gen_s = timed(partial(self.gpu.generate, prompt, self.params(kind, i)))
                _, ver_s = timed(partial(self.gpu.verify, prompt, generation.token_ids, self.params(kind, i)))
                self._outputs[("gpu fp32", kind, i)] = generation.token_ids
                self.timing["gen"].append(gen_s)
                self.timing["ver"].append(ver_s)
            if i < self.args.overhead_prompts:
                n = len(self._outputs[("gpu fp32", "greedy", i)])
                ours_s, plain_s, same = time_against_plain(self.gpu, prompt, n, plain_first=i % 2 == 1)
                self.timing["ours"].append(ours_s)
                self.timing["plain"].append(plain_s)
                self.plain_agree += int(same)

    def profile_steps(self, top: int = 12) -> None:
        """One warm greedy generation by us and by ``model.generate`` under ``torch.profiler`` (the
        longest output of the first five prompts, so that decode steps outweigh the prefill): the
        operators with the most host (self CPU) time, per generated token."""
        outputs = [self.gpu.generate(p, self.greedy).token_ids for p in self.prompts[:5]]
        n, prompt = max((len(o), p) for o, p in zip(outputs, self.prompts, strict=False))
        runs: dict[str, Callable[[], object]] = {
            "ours": partial(self.gpu.generate, prompt, SamplingParams(max_tokens=n)),
            "plain": partial(plain_generate, self.gpu, prompt, n),
        }
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.args.gpu == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        report: dict[str, Any] = {"tokens": n}
        for name, generate in runs.items():
            generate()  # warm
            with torch.profiler.profile(activities=activities) as profiler:
                _, seconds = timed(generate)
            events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            report[name] = {
                "ms_per_token": round(seconds / n * 1e3, 4),
                "busiest_host_ops": [
                    {
                        "op": e.key,
                        "calls_per_token": round(e.count / n, 2),
                        "self_cpu_us_per_token": round(e.self_cpu_time_total / n, 1),
                    }
                    for e in events[:top]
                ],
            }
        self.figures_extra["step_profile"] = report
        self.figures_extra["step_anatomy"] = compute_step_anatomy(self.gpu, prompt, n, self.args.anatomy_repeats)

    def batched(self, rows: range) -> None:
        for start in range(rows.start, rows.stop, BATCH_SIZE):
            batch_rows = range(start, min(start + BATCH_SIZE, rows.stop))
            for kind in ("greedy", "sampled"):
                params = [self.params(kind, i) for i in batch_rows]
                outputs = self.gpu.generate_batch([self.prompts[i] for i in batch_rows], params)
                for i, generation in zip(batch_rows, outputs, strict=True):
                    self.honest.setdefault(f"gpu batched->cpu {kind}", Tally()).add(
                        check(self.cpu, self.prompts[i], generation.token_ids, params[i - start])
                    )

    def summarise(self) -> dict[str, Any]:
        deltas = sorted({*DELTAS, self.delta})
        gen, ver = sum(self.timing["gen"]), sum(self.timing["ver"])
        return {
            "cross_device_honest_accept_rate": compute_rate(self.honest.values(), self.delta),
            "cross_device_cheat_reject_rate": compute_rate(self.cheat.values(), self.delta, True, True),
            "gpu_verify_over_generate": round(ver / gen, 4) if gen else None,
            "gpu_engine_overhead_ratio": (
                round(sum(self.timing["ours"]) / sum(self.timing["plain"]), 4) if self.timing["plain"] else None
            ),
            "inference_devices": {
                "gpu": torch.cuda.get_device_name(0) if self.args.gpu != "cpu" else "cpu (harness check)",
                "torch": torch.__version__,
                "cpu": f"{platform.machine()}, {self.args.threads} threads",
                "transformers": transformers.__version__,
                "profile_hash": "0x" + self.cpu.profile_hash.hex(),
                "delta": self.delta,
                "prompts": self.args.prompts,
                "few_prompts": min(self.args.few_prompts, self.args.prompts),
                "cost_prompts": len(self.timing["ver"]) // 2,
                "max_new_tokens": self.args.max_new_tokens,
                "honest_by_setting": {k: v.summary(self.delta, rejecting=False) for k, v in self.honest.items()},
                "token_identical_across_devices": {k: f"{sum(v.values())}/{len(v)}" for k, v in self.identical.items()},
                "bfloat16_kind": {
                    k: {"rate_at_0.5": v.rate(BF16_DELTA), "rate_at_profile_delta": v.rate(self.delta)}
                    for k, v in self.bf16.items()
                },
                "cheat_by_setting": {k: v.summary(self.delta, rejecting=True) for k, v in self.cheat.items()},
                "logit_drift_vs_cpu": {
                    k: {"max_abs_logit_difference": float(f"{v[0]:.3e}"), "max_gap_change": float(f"{v[1]:.3e}")}
                    for k, v in self.drifts.items()
                },
                "honest_accept_by_delta": {str(d): compute_rate(self.honest.values(), d) for d in deltas},
                "gpu_seconds_mean": {k: round(statistics.mean(v), 4) for k, v in self.timing.items() if v},
                "gpu_plain_generate_agrees": f"{self.plain_agree}/{len(self.timing['plain'])}",
                **self.figures_extra,
            },
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Run(args)
    every = range(args.prompts)
    few = range(min(args.few_prompts, args.prompts))

    def against_cpu(
        name: str, load: Callable[[], InferenceEngine], rows: range, kinds: tuple[str, ...], group: dict[str, Tally]
    ) -> Callable[[], None]:
        """A phase: load another party, then verify its outputs on the CPU."""

        def phase() -> None:
            bench.parties[name] = load()
            bench.cross(name, "cpu fp32", rows, kinds, group)

        return phase

    both, greedy = ("greedy", "sampled"), ("greedy",)
    phases: list[tuple[str, Callable[[], None]]] = [
        *([] if args.skip_cost else [("cost", bench.gpu_cost)]),
        *([("profile", bench.profile_steps)] if args.profile_steps else []),
        ("cpu-gpu", lambda: bench.cross("cpu fp32", "gpu fp32", every)),
        ("gpu-cpu", lambda: bench.cross("gpu fp32", "cpu fp32", every)),
        ("drift", lambda: bench.drift("gpu fp32", every)),
        ("batched", lambda: bench.batched(every)),
        ("int8", against_cpu("gpu int8", lambda: make_int8(bench.gpu), few, both, bench.cheat)),
    ]
    if args.gpu != "cpu":
        auto = partial(load_engine, args.model, device="auto")
        offloaded = partial(load_offloaded, args.model, bench.cpu, OFFLOAD_GPU_BYTES)
        phases += [
            ("auto", against_cpu("gpu device_map=auto", auto, few, greedy, bench.honest)),
            ("offload", against_cpu("gpu+cpu offload", offloaded, few, greedy, bench.honest)),
        ]
    bf16 = partial(load_engine, args.model, device=args.gpu, threads=args.threads, dtype="bfloat16")
    phases += [
        ("bf16", against_cpu("gpu bf16", bf16, few, both, bench.bf16)),
        ("bf16-verifier", lambda: bench.cross("cpu fp32", "gpu bf16", few, group=bench.bf16)),
        ("bf16-drift", lambda: bench.drift("gpu bf16", few)),
    ]
    for name, phase in phases:
        if args.only is not None and name not in args.only:
            continue
        phase()
        bench.figures = bench.summarise()
        if args.out is not None:
            args.out.write_text(json.dumps(bench.figures, indent=2))
        print(f"phase {name} done", flush=True)
    return bench.figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m"))
    parser.add_argument("--prompts", type=int, default=20, help="prompts for the fp32 cross-device settings")
    parser.add_argument("--few-prompts", type=int, default=5, help="prompts for int8, bf16 and device_map")
    parser.add_argument("--cost-prompts", type=int, default=50, help="prompts for the GPU timings")
    parser.add_argument("--overhead-prompts", type=int, default=10, help="prompts for the model.generate comparison")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=8, help="CPU party's torch threads")
    parser.add_argument("--gpu", choices=("cuda", "cpu"), default="cuda", help="cpu: check the harness without a GPU")
    parser.add_argument("--skip-cost", action="store_true", help="leave out the GPU timings")
    parser.add_argument(
        "--profile-steps", action="store_true", help="profile one greedy generation, ours and model.generate"
    )
    parser.add_argument("--anatomy-repeats", type=int, default=5, help="timed runs of each loop in the step anatomy")
    parser.add_argument(
        "--only",
        type=lambda names: set(names.split(",")),
        help=f"run only these phases, comma-separated: {', '.join(PHASES)} (bf16-verifier and bf16-drift need bf16)",
    )
    parser.add_argument("--out", type=Path, help="also write the figures here after every phase")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/results.json alone")
    args = parser.parse_args(argv)
    for name in ("prompts", "cost_prompts"):
        if not 1 <= getattr(args, name) <= len(PROMPTS):
            parser.error(f"--{name.replace('_', '-')} must be in 1..{len(PROMPTS)}")
    if args.only is not None and not args.only <= set(PHASES):
        parser.error(f"--only takes phases among {', '.join(PHASES)}")
    if args.only is not None and args.only & {"bf16-verifier", "bf16-drift"} and "bf16" not in args.only:
        parser.error("--only: bf16-verifier and bf16-drift need the bf16 phase")
    if args.gpu == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark compares a GPU with the CPU (--gpu cpu checks the harness)")
    figures = run(args)
    report_results("inference_devices", figures, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
