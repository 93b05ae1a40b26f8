"""Quorum cost and operator overhead on SmolLM2-135M, every figure against a baseline in this process.

    python -m bench.quorum [--model models/smollm2-135m] [--prompts 5] [--max-new-tokens 64]
                           [--threads 2] [--quick] [--no-record]

Quorum cost (per prompt, greedy and sampled, interleaved so that load on a shared machine hits
every column alike):

* plain: one ``model.generate`` of the same number of new tokens (greedy, or HF's own sampler
  with the same temperature / top-k / top-p) -- the baseline;
* quorum of q: one canonical generation (``InferenceEngine.generate``, the primary's work) and
  q - 1 prefill verifications of its output (``InferenceEngine.verify``, the verifiers' work);
* q re-runs: the generation run q times (what "every node re-runs the request" costs).

The ratios are the total work a quorum spends, not its wall-clock latency (verifiers run in
parallel on their own machines): median generation / plain + (q - 1) x median verification /
plain, each ratio taken within one prompt, medians over prompts and repeats (robust to the load
spikes of a shared machine; the summed-seconds ratios are kept as ``*_summed``).
``quorum{q}_over_one_generation`` puts the same work over one of our own generations instead.

Operator overhead: a greedy ``Generate`` over real gRPC to an in-process ``OperatorApp`` (signed
call, authentication, SQLite slashing protection, BLS-signed attestation) against
``model.generate`` of the same model object, prompt and token count: the median of paired
per-run ratios over every prompt three times, after a warm-up call. The engine-level figure
(``InferenceEngine.generate`` against ``model.generate``) is ``quorum_bench_engine_overhead_ratio``
(``bench.inference`` records its own ``engine_overhead_ratio``; neither overwrites the other).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from avs.inference.engine import InferenceEngine, load_engine
from avs.inference.params import SamplingParams
from bench.results import report_results

T = TypeVar("T")
QUORUMS = (3, 5)
PROMPTS = (
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about autumn leaves.",
    "Give me three tips for learning to code.",
    "Why is the sky blue?",
    "Describe the water cycle.",
    "How do vaccines work?",
    "What is an API?",
    "Explain recursion with an example.",
    "How can I improve my sleep?",
)


@dataclass
class QuorumTimes:
    """Seconds per prompt: the plain baseline, the generations (first = primary) and the verifications."""

    plain: list[float] = field(default_factory=list)
    generations: list[list[float]] = field(default_factory=list)
    verifications: list[list[float]] = field(default_factory=list)
    accepted: int = 0
    tokens: int = 0


def compute_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Summed seconds over summed seconds, rounded for the results file."""
    return round(sum(numerator) / sum(denominator), 4)


def compute_quorum_seconds(times: QuorumTimes, quorum: int) -> list[float]:
    """Per prompt: one generation and ``quorum - 1`` verifications of its output."""
    return [g[0] + sum(v[: quorum - 1]) for g, v in zip(times.generations, times.verifications, strict=True)]


def compute_rerun_seconds(times: QuorumTimes, quorum: int) -> list[float]:
    """Per prompt: the generation run ``quorum`` times."""
    return [sum(g[:quorum]) for g in times.generations]


def compute_median_ratios(times: QuorumTimes) -> tuple[float, float, float]:
    """Medians over runs of generation / plain, verification / plain and verification / generation.

    Each ratio is taken within one prompt (same tokens), then the median across prompts and
    repeats: robust to the load spikes of a shared machine, which hit single calls several-fold.
    """
    gen_plain, ver_plain, ver_gen = [], [], []
    for plain, gens, checks in zip(times.plain, times.generations, times.verifications, strict=True):
        typical = statistics.median(gens)
        gen_plain += [g / plain for g in gens]
        ver_plain += [v / plain for v in checks]
        ver_gen += [v / typical for v in checks]
    return statistics.median(gen_plain), statistics.median(ver_plain), statistics.median(ver_gen)


def summarize_quorum(times: QuorumTimes) -> dict[str, Any]:
    """Cost per certified inference over one plain generation (medians) and the summed-seconds ratios."""
    gen_plain, ver_plain, ver_gen = compute_median_ratios(times)
    figures: dict[str, Any] = {"prompts": len(times.plain), "tokens": times.tokens}
    for q in QUORUMS:
        figures[f"quorum{q}_cost_ratio"] = round(gen_plain + (q - 1) * ver_plain, 4)
        figures[f"rerun{q}_cost_ratio"] = round(q * gen_plain, 4)
        figures[f"quorum{q}_over_one_generation"] = round(1 + (q - 1) * ver_gen, 4)
        figures[f"quorum{q}_cost_ratio_summed"] = compute_ratio(compute_quorum_seconds(times, q), times.plain)
        figures[f"rerun{q}_cost_ratio_summed"] = compute_ratio(compute_rerun_seconds(times, q), times.plain)
    figures["generate_over_plain"] = round(gen_plain, 4)
    figures["verify_over_generate"] = round(ver_gen, 4)
    figures["verifications_accepted"] = f"{times.accepted}/{sum(len(v) for v in times.verifications)}"
    figures["seconds"] = {
        "plain": [round(x, 3) for x in times.plain],
        "generations": [[round(x, 3) for x in g] for g in times.generations],
        "verifications": [[round(x, 3) for x in v] for v in times.verifications],
    }
    return figures


def timed(function: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def plain_generate(engine: InferenceEngine, prompt: Sequence[int], params: SamplingParams, tokens: int) -> list[int]:
    """``model.generate`` of exactly ``tokens`` new tokens; HF's sampler when ``params`` samples."""
    sampling: dict[str, Any] = {"do_sample": False}
    if params.temperature_milli:
        sampling = {
            "do_sample": True,
            "temperature": params.temperature_milli / 1000,
            "top_k": params.top_k or None,
            "top_p": params.top_p_micro / 1_000_000,
        }
    with torch.inference_mode():
        out = engine.model.generate(
            torch.tensor([list(prompt)], device=engine.input_device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=engine.input_device),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=engine.pad_id,
            **sampling,
        )
    return [int(t) for t in out[0, len(prompt) :]]


def measure_quorum(
    engine: InferenceEngine, prompts: Sequence[Sequence[int]], make_params: Callable[[int], SamplingParams]
) -> QuorumTimes:
    times = QuorumTimes()
    runs, checks = max(QUORUMS), max(QUORUMS) - 1
    for i, prompt in enumerate(prompts):
        params = make_params(i)
        generations = []
        primary, seconds = timed(partial(engine.generate, prompt, params))
        generations.append(seconds)
        n = len(primary.token_ids)
        times.tokens += n
        times.plain.append(timed(partial(plain_generate, engine, prompt, params, n))[1])
        verifications = []
        for _ in range(checks):
            verdict, seconds = timed(partial(engine.verify, prompt, primary.token_ids, params))
            verifications.append(seconds)
            times.accepted += int(verdict.accepted)
        for _ in range(runs - 1):
            generations.append(timed(partial(engine.generate, prompt, params))[1])
        times.generations.append(generations)
        times.verifications.append(verifications)
        print(
            f"  [{i + 1}/{len(prompts)}] {n} tokens: generate {generations[0]:.2f}s, verify {verifications[0]:.2f}s",
            flush=True,
        )
    return times


# --- operator overhead over gRPC -------------------------------------------------------


@contextmanager
def running_operator(engine: InferenceEngine, workdir: Path) -> Iterator[Any]:
    """An in-process ``OperatorApp`` serving ``engine`` on loopback gRPC; yields a signed client."""
    import grpc

    from avs.crypto import bls
    from avs.rpc.operator_client import OperatorClient
    from bench.operators import CALLER_KEY, DOMAIN, start_operator_app

    key_pair = bls.compute_key_pair(bls.generate_secret_key())
    app = start_operator_app(workdir, key_pair, engine, "bench", workdir, max_concurrent=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{app.ports.grpc}")
    try:
        yield OperatorClient(channel, DOMAIN, key_pair.operator_id, CALLER_KEY)
    finally:
        channel.close()
        app.stop(1)


def make_envelope(engine: InferenceEngine, text: str, nonce: int, max_tokens: int) -> Any:
    from avs.messages import InferenceRequest, compute_stop_sequences_hash
    from avs.rpc import convert

    messages = ({"role": "user", "content": text},)
    request = InferenceRequest(
        model_id=engine.profile_hash,
        prompt_hash=engine.encode_chat(list(messages)).prompt_hash,
        temperature_milli=0,
        top_k=0,
        top_p_micro=1_000_000,
        seed=0,
        max_tokens=max_tokens,
        stop_sequences_hash=compute_stop_sequences_hash([]),
        requester="0x" + "ab" * 20,
        nonce=nonce,
    )
    return convert.RequestEnvelope(request, messages, ())


OVERHEAD_REPEATS = 3


def compute_paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median of per-run ratios, each against the baseline run next to it (a load spike on a
    shared machine then moves one pair, not the whole figure)."""
    return round(statistics.median(n / d for n, d in zip(numerator, denominator, strict=True)), 4)


def measure_overhead(
    engine: InferenceEngine, texts: Sequence[str], max_tokens: int, repeats: int = OVERHEAD_REPEATS
) -> dict[str, Any]:
    """gRPC ``Generate`` and ``InferenceEngine.generate`` against ``model.generate``, interleaved:
    every prompt ``repeats`` times, the order alternating, each path warmed up first (the first
    gRPC call pays channel set-up, the first SQLite write the file's creation)."""
    greedy = SamplingParams(max_tokens=max_tokens)
    seconds: dict[str, list[float]] = {"grpc": [], "engine": [], "plain": []}
    agree = grpc_is_engine = runs = 0
    with tempfile.TemporaryDirectory() as folder, running_operator(engine, Path(folder)) as client:
        client.generate(make_envelope(engine, texts[0], nonce=999, max_tokens=4))  # warm-up, not timed
        for i, text in enumerate(texts):
            prompt = engine.encode_chat([{"role": "user", "content": text}]).token_ids
            n = len(engine.generate(prompt, greedy).token_ids)  # the token count every column produces
            for repeat in range(repeats):
                run = i * repeats + repeat
                order = ["grpc", "engine", "plain"] if run % 2 == 0 else ["plain", "engine", "grpc"]
                outputs: dict[str, list[int]] = {}
                for name in order:
                    if name == "grpc":  # a new nonce each time: a new request for the operator
                        envelope = make_envelope(engine, text, nonce=1000 + run, max_tokens=n)
                        response, s = timed(partial(client.generate, envelope))
                        outputs[name] = list(response.output_token_ids)
                    elif name == "engine":
                        generation, s = timed(partial(engine.generate, prompt, SamplingParams(max_tokens=n)))
                        outputs[name] = list(generation.token_ids)
                    else:
                        outputs[name], s = timed(partial(plain_generate, engine, prompt, greedy, n))
                    seconds[name].append(s)
                agree += int(outputs["grpc"] == outputs["plain"] == outputs["engine"])
                grpc_is_engine += int(outputs["grpc"] == outputs["engine"])
                runs += 1
            last = ", ".join(f"{k} {statistics.median(v[-repeats:]):.2f}s" for k, v in seconds.items())
            print(f"  [{i + 1}/{len(texts)}] {n} tokens, median of {repeats}: {last}")
    return {
        "operator_overhead_ratio": compute_paired_ratio(seconds["grpc"], seconds["plain"]),
        "quorum_bench_engine_overhead_ratio": compute_paired_ratio(seconds["engine"], seconds["plain"]),
        "operator_overhead_details": {
            "prompts": len(texts),
            "repeats": repeats,
            "ratio": "median over every run of its gRPC (or engine) seconds over the plain run next to it",
            "operator_overhead_ratio_summed": compute_ratio(seconds["grpc"], seconds["plain"]),
            "same_tokens_all_three": f"{agree}/{runs}",
            "grpc_same_tokens_as_engine": f"{grpc_is_engine}/{runs}",
            "seconds_median": {k: round(statistics.median(v), 3) for k, v in seconds.items()},
            "grpc_minus_engine_seconds_median": round(
                statistics.median(g - e for g, e in zip(seconds["grpc"], seconds["engine"], strict=True)), 4
            ),
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_start = [round(x, 2) for x in os.getloadavg()]
    torch.set_num_threads(args.threads)
    engine = load_engine(args.model, threads=args.threads)
    texts = PROMPTS[: args.prompts]
    prompts = [engine.encode_chat([{"role": "user", "content": t}]).token_ids for t in texts]
    warm_params = (SamplingParams(max_tokens=8), SamplingParams(temperature_milli=700, top_k=50, max_tokens=8))
    for _ in range(3):  # warm-up outside the timings: the first calls of each path are several times slower
        for params in warm_params:
            warm = engine.generate(prompts[0], params)
            engine.verify(prompts[0], warm.token_ids, params)
            plain_generate(engine, prompts[0], params, 8)

    def greedy(i: int) -> SamplingParams:
        return SamplingParams(max_tokens=args.max_new_tokens)

    def sampled(i: int) -> SamplingParams:
        return SamplingParams(
            temperature_milli=700, top_k=50, top_p_micro=950_000, seed=1000 + i, max_tokens=args.max_new_tokens
        )

    if args.only_overhead:
        print("operator overhead (gRPC Generate vs model.generate):", flush=True)
        return measure_overhead(engine, texts, args.max_new_tokens)
    by_kind: dict[str, QuorumTimes] = {}
    for kind, make in (("greedy", greedy), ("sampled", sampled)):
        print(f"quorum cost, {kind}:", flush=True)
        by_kind[kind] = measure_quorum(engine, prompts, make)
    both = QuorumTimes()
    for times in by_kind.values():
        both.plain += times.plain
        both.generations += times.generations
        both.verifications += times.verifications
        both.accepted += times.accepted
        both.tokens += times.tokens
    overall = summarize_quorum(both)
    print("operator overhead (gRPC Generate vs model.generate):", flush=True)
    overhead = measure_overhead(engine, texts, args.max_new_tokens)
    return {
        "quorum3_cost_ratio": overall["quorum3_cost_ratio"],
        "quorum5_cost_ratio": overall["quorum5_cost_ratio"],
        "rerun3_cost_ratio": overall["rerun3_cost_ratio"],
        "rerun5_cost_ratio": overall["rerun5_cost_ratio"],
        "quorum3_over_one_generation": overall["quorum3_over_one_generation"],
        "quorum5_over_one_generation": overall["quorum5_over_one_generation"],
        **overhead,
        "quorum_details": {
            "model": args.model.name,
            "threads": args.threads,
            "max_new_tokens": args.max_new_tokens,
            "device": "cpu",
            "baseline": "model.generate of the same token count (greedy, or HF sampling at T=0.7 top-k 50 top-p 0.95)",
            "all": overall,
            **{kind: summarize_quorum(times) for kind, times in by_kind.items()},
            "load_average_start_end": [load_start, [round(x, 2) for x in os.getloadavg()]],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m"))
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 prompt, 8 new tokens (checks the harness)")
    parser.add_argument("--only-overhead", action="store_true", help="only the operator overhead figures")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/results.json alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens = 1, 8
    if not 1 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts must be in 1..{len(PROMPTS)}")
    figures = run(args)
    if args.only_overhead:
        print(f"operator gRPC Generate {figures['operator_overhead_ratio']:.3f}x model.generate")
        report_results("operator_overhead", figures, record=not args.no_record)
        return 0
    details = figures["quorum_details"]["all"]
    print(f"{'per certified inference':<34}{'x model.generate':>18}{'x our generate':>16}")
    for q in QUORUMS:
        row = f"{details[f'quorum{q}_cost_ratio']:>18.3f}{details[f'quorum{q}_over_one_generation']:>16.3f}"
        print(f"{f'quorum of {q} (1 gen + {q - 1} verify)':<34}{row}")
        print(f"{f'{q} re-runs':<34}{details[f'rerun{q}_cost_ratio']:>18.3f}{float(q):>16.3f}")
    print(f"{'operator gRPC Generate':<34}{figures['operator_overhead_ratio']:>18.3f}")
    print(f"{'engine generate':<34}{figures['quorum_bench_engine_overhead_ratio']:>18.3f}")
    report_results("quorum", figures, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
