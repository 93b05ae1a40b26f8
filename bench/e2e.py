"""End-to-end latency of one request on the devnet (SmolLM2-135M), split by pipeline stage.

    python -m bench.e2e [--model models/smollm2-135m] [--requests 3] [--max-tokens 32] [--quick]
                        [--no-record]

``avs.devnet.Devnet``: anvil, the contracts, four operator processes serving the model and the
aggregator process (batches of up to 4, 1 s batching latency). One unrecorded warm-up request,
then ``--requests`` greedy requests one after the other, each submitted through
``AggregatorClient`` and followed until CERTIFIED. The stages come from the aggregator's
``avs_aggregator_stage_seconds`` histogram (the ``_sum`` per stage label, scraped from its
metrics endpoint before and after each request):

* received -> primary picked (``received``), generate on the primary (``generating``), prefill
  verification by the others in parallel (``verifying``), batch signing (``sign_batch``), the
  ``certifyBatch`` transaction to its receipt (``certify``);
* queue: the rest of the client's wall-clock time -- waiting for the pipeline loop, for the batch
  to close (up to 1 s), and the client's polling.

The baseline is ``model.generate`` of the same number of new tokens on the same model with one
thread (as the devnet's operators), the median of three, run in this process after the devnet is
stopped: ``e2e_over_plain_generate`` is the latency a certified answer costs over an uncertified
local one, the median over the requests of each request's latency over its own baseline (one
statistic on both sides: the baseline was the best of three against a mean of the requests, which
overstated the ratio).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from eth_account import Account
from prometheus_client.parser import text_string_to_metric_families

from avs.client import AggregatorClient
from avs.devnet import Devnet
from bench.results import record_results

STAGES = {
    "received": "pick_primary",
    "generating": "generate",
    "verifying": "verify",
    "sign_batch": "batch_sign",
    "certify": "chain",
}
PROMPTS = (
    "In one sentence, what does a restaked operator do?",
    "Name three primary colors.",
    "What is the boiling point of water at sea level?",
    "Give one tip for learning to code.",
    "Why is the sky blue?",
)


def parse_stage_sums(metrics_text: str) -> dict[str, float]:
    """``avs_aggregator_stage_seconds_sum`` per stage label, from Prometheus text."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "avs_aggregator_stage_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                sums[sample.labels["stage"]] = float(sample.value)
    return sums


def compute_stage_split(before: Mapping[str, float], after: Mapping[str, float], total: float) -> dict[str, float]:
    """Seconds per named stage between two scrapes; ``queue`` is what the stages leave of ``total``."""
    split = {name: after.get(label, 0.0) - before.get(label, 0.0) for label, name in STAGES.items()}
    split["queue"] = total - sum(split.values())
    return split


def compute_mean_split(splits: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {key: round(sum(s[key] for s in splits) / len(splits), 3) for key in splits[0]}


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse_stage_sums(response.read().decode())


def run_one(devnet: Devnet, question: str, max_tokens: int) -> tuple[float, dict[str, float], int]:
    port = devnet.aggregator_ports["metrics"]
    before = scrape(port)
    started = time.perf_counter()
    with AggregatorClient(devnet.aggregator_url) as client:
        model = next(iter(client.list_models()))
        request_hash = client.submit(
            [{"role": "user", "content": question}],
            requester=Account.create().address,
            model=model,
            max_tokens=max_tokens,
        )
        status = client.wait(request_hash, timeout=900)
    total = time.perf_counter() - started
    time.sleep(0.2)  # the certify stage is observed just after the request's state changes
    split = compute_stage_split(before, scrape(port), total)
    return total, split, len(status.output_token_ids)


def measure_plain(model_dir: Path, prompts: Sequence[str], tokens: Sequence[int], threads: int) -> list[float]:
    import torch

    from avs.inference.engine import load_engine
    from avs.inference.params import SamplingParams
    from bench.quorum import plain_generate

    torch.set_num_threads(threads)
    engine = load_engine(model_dir, threads=threads)
    seconds = []
    for question, n in zip(prompts, tokens, strict=True):
        prompt = engine.encode_chat([{"role": "user", "content": question}]).token_ids
        plain_generate(engine, prompt, SamplingParams(max_tokens=n), n)  # warm-up
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            plain_generate(engine, prompt, SamplingParams(max_tokens=n), n)
            runs.append(time.perf_counter() - start)
        seconds.append(statistics.median(runs))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m"))
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="1 request of 8 tokens")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/results.json alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.max_tokens = 1, 8
    if not 1 <= args.requests <= len(PROMPTS) - 1:
        parser.error(f"--requests must be in 1..{len(PROMPTS) - 1}")
    load_start = [round(x, 2) for x in os.getloadavg()]
    questions = PROMPTS[1 : 1 + args.requests]
    with tempfile.TemporaryDirectory() as folder:
        devnet = Devnet(Path(folder) / "devnet", args.model)
        started = time.perf_counter()
        devnet.start(on_step=lambda step: print(f"  {step}", flush=True))
        startup = time.perf_counter() - started
        try:
            run_one(devnet, PROMPTS[0], args.max_tokens)  # warm-up, not recorded
            results = []
            for question in questions:
                total, split, tokens = run_one(devnet, question, args.max_tokens)
                print(f"  {total:.2f}s, {tokens} tokens: " + ", ".join(f"{k} {v:.2f}s" for k, v in split.items()))
                results.append((total, split, tokens))
        finally:
            devnet.stop()
    plain = measure_plain(args.model, questions, [r[2] for r in results], threads=1)
    latency = statistics.median(r[0] for r in results)
    split = compute_mean_split([r[1] for r in results])
    figures: dict[str, Any] = {
        "e2e_latency_s": round(latency, 3),
        **{f"e2e_{stage}_s": seconds for stage, seconds in split.items()},
        "e2e_over_plain_generate": round(statistics.median(r[0] / b for r, b in zip(results, plain, strict=True)), 2),
        "e2e_details": {
            "statistics": "latency: median of the requests; ratio: median of each request over its own baseline"
            " (median of 3); stages: means",
            "latency_mean_s": round(sum(r[0] for r in results) / len(results), 3),
            "requests": len(results),
            "max_tokens": args.max_tokens,
            "tokens": [r[2] for r in results],
            "plain_generate_seconds": [round(s, 3) for s in plain],
            "plain_generate_threads": 1,
            "operators": len(devnet.operators),
            "devnet_startup_s": round(startup, 1),
            "load_average_start_end": [load_start, [round(x, 2) for x in os.getloadavg()]],
        },
    }
    print(f"{'stage':<16}{'seconds':>10}")
    for stage, seconds in split.items():
        print(f"{stage:<16}{seconds:>10.3f}")
    print(f"{'end to end':<16}{latency:>10.3f}  ({figures['e2e_over_plain_generate']}x model.generate)")
    if not args.no_record:
        record_results("e2e", figures)
        print("recorded in bench/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
