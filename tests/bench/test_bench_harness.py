"""The benchmark scripts in their smallest modes (tiny model, quick flags, nothing recorded) and
their pure helpers, so that the harness behind docs/performance.md cannot rot."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_utils import keccak

from avs.crypto import bls
from avs.crypto.curve import FP_MODULUS
from bench import aggregator_scale, decoding, e2e, gas, inference_devices, logit_drift, quorum
from bench import bls as bls_bench
from tests.inference.conftest import build_tiny_model

ANVIL = Path(__file__).resolve().parents[2] / "contracts" / "tools" / "anvil"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("bench") / "tiny")


def test_quorum_cost_counts_one_generation_and_q_minus_one_verifications() -> None:
    times = quorum.QuorumTimes(
        plain=[1.0, 1.0], generations=[[1.0] * 5, [2.0] * 5], verifications=[[0.1] * 4, [0.2] * 4]
    )
    assert quorum.compute_quorum_seconds(times, 3) == pytest.approx([1.2, 2.4])
    assert quorum.compute_rerun_seconds(times, 5) == pytest.approx([5.0, 10.0])
    summary = quorum.summarize_quorum(times)
    assert summary["quorum3_cost_ratio"] == pytest.approx(1.8)
    assert summary["rerun3_cost_ratio"] == pytest.approx(4.5)
    assert summary["quorum5_cost_ratio"] == pytest.approx(2.1)
    assert summary["quorum3_over_one_generation"] == pytest.approx(1.2)


def test_the_operator_overhead_is_a_median_of_paired_ratios() -> None:
    """One slow baseline run (a load spike) moves one pair, not the figure; the summed ratio moves."""
    grpc_seconds, plain_seconds = [1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 5.0]
    assert quorum.compute_paired_ratio(grpc_seconds, plain_seconds) == 1.0
    assert quorum.compute_ratio(grpc_seconds, plain_seconds) == pytest.approx(5 / 9, abs=1e-4)


def printed_figures(out: str) -> dict[str, Any]:
    """The figures a benchmark printed last (``report_results``: an indented JSON object)."""
    figures: dict[str, Any] = json.loads(out[out.rindex("\n{") + 1 :])
    return figures


def test_quorum_quick_on_the_tiny_model(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert quorum.main(["--model", str(tiny_model), "--quick", "--threads", "1", "--no-record"]) == 0
    out = capsys.readouterr().out
    assert "quorum of 3" in out and "operator gRPC Generate" in out
    figures = printed_figures(out)
    details = figures["quorum_details"]["all"]
    # One generation and q - 1 prefills: more operators cost more, and less than q generations.
    assert 0 < details["quorum3_cost_ratio"] < details["quorum5_cost_ratio"]
    assert details["quorum3_cost_ratio"] < details["rerun3_cost_ratio"]
    assert details["quorum3_over_one_generation"] < 3
    assert figures["operator_overhead_ratio"] > 0


def test_decoding_rule_cost_on_the_tiny_model(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(tiny_model), "--prompts", "1", "--tokens", "4", "--threads", "1", "--stop-lengths", "8,64"]
    assert decoding.main([*argv, "--no-record"]) == 0
    out = capsys.readouterr().out
    figures = json.loads(out[out.index("{") :])
    assert set(figures["decoding_rule_over_decode_step"]) == set(decoding.SETTINGS)
    assert all(v["select_token_us"] > 0 for v in figures["decoding_rule_over_decode_step"].values())
    stop_check = figures["stop_check_us_per_token"]
    assert set(stop_check) == {"8", "64"}
    assert all(v["scanner_us"] > 0 and v["whole_decode_us"] > 0 for v in stop_check.values())


def test_logit_drift_measures_gap_changes() -> None:
    reference = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    other = reference.clone()
    other[0, 2] += 0.25  # row 0 chose token 0: its gap to token 2 changes by 0.25
    other[1, 1] -= 0.5  # row 1 chose token 1: every gap of row 1 shrinks by 0.5
    assert logit_drift.compute_drift(reference, other, [0, 1]) == (0.5, 0.5)
    assert logit_drift.compute_drift(reference, reference, [0, 1]) == (0.0, 0.0)


def test_logit_drift_on_the_tiny_model(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(tiny_model), "--prompts", "1", "--max-new-tokens", "5", "--threads", "1", "--no-record"]
    assert logit_drift.main(argv) == 0
    out = capsys.readouterr().out
    drift = json.loads(out[out.index("{") :])["logit_drift"]
    assert set(drift["max_gap_change"]) == {"fp64 prefill", "1-thread prefill", "generation's own (KV cache)"}
    assert 0 < drift["max_gap_change"]["fp64 prefill"] < 1e-3


def test_inference_devices_harness_on_the_cpu(tiny_model: Path, tmp_path: Path) -> None:
    """``--gpu cpu``: both parties on the CPU agree token for token; the int8 party is not counted honest."""
    out = tmp_path / "devices.json"
    argv = ["--model", str(tiny_model), "--gpu", "cpu", "--prompts", "3", "--few-prompts", "2"]
    argv += ["--cost-prompts", "2", "--overhead-prompts", "1", "--max-new-tokens", "6", "--threads", "1"]
    argv += ["--no-record", "--profile-steps", "--out", str(out)]
    assert inference_devices.main(argv) == 0
    figures = json.loads(out.read_text())
    details = figures["inference_devices"]
    assert figures["cross_device_honest_accept_rate"] == 1.0
    assert details["token_identical_across_devices"]["cpu fp32 = gpu fp32 greedy"] == "3/3"  # each pair once
    assert details["honest_by_setting"]["gpu batched->cpu sampled"]["total"] == 3
    assert set(details["cheat_by_setting"]) == {"gpu int8->cpu fp32 greedy", "gpu int8->cpu fp32 sampled"}
    assert set(details["bfloat16_kind"]) == {
        f"{a}->{b} {kind}"
        for a, b in (("gpu bf16", "cpu fp32"), ("cpu fp32", "gpu bf16"))
        for kind in ("greedy", "sampled")
    }
    assert figures["gpu_verify_over_generate"] > 0 and details["gpu_plain_generate_agrees"] == "1/1"
    assert (details["prompts"], details["few_prompts"], details["cost_prompts"]) == (3, 2, 2)
    # Both "GPU" parties are the CPU here: fp32 drifts not at all, bf16 does.
    assert details["logit_drift_vs_cpu"]["gpu fp32"]["max_gap_change"] == 0.0
    assert details["logit_drift_vs_cpu"]["gpu bf16"]["max_gap_change"] > 0.0
    profile = details["step_profile"]
    for side in ("ours", "plain"):  # the same model call shows up in both
        ops = {row["op"] for row in profile[side]["busiest_host_ops"]}
        assert profile[side]["ms_per_token"] > 0 and any(op.startswith("aten::") for op in ops)
    anatomy = details["step_anatomy"]
    assert anatomy["same_tokens"] and anatomy["repeats"] == 5
    low, high = anatomy["ms_per_token_range"]["engine"]
    assert low <= anatomy["ms_per_token"]["engine"] <= high
    loops = {"engine", "model.generate", "loop, host argmax", "loop, device argmax"}
    assert set(anatomy["over_model_generate"]) == loops
    assert all(ratio > 0 for ratio in anatomy["over_model_generate"].values())


def test_inference_devices_runs_only_the_phases_asked_for(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "devices.json"
    argv = ["--model", str(tiny_model), "--gpu", "cpu", "--prompts", "2", "--max-new-tokens", "4", "--threads", "1"]
    assert inference_devices.main([*argv, "--no-record", "--only", "drift", "--out", str(out)]) == 0
    details = json.loads(out.read_text())["inference_devices"]
    assert set(details["logit_drift_vs_cpu"]) == {"gpu fp32"}
    assert details["honest_by_setting"] == {} and "step_profile" not in details
    with pytest.raises(SystemExit):
        inference_devices.main([*argv, "--only", "bf16-drift"])  # needs the bf16 party
    with pytest.raises(SystemExit):
        inference_devices.main([*argv, "--only", "warp"])


def test_gas_table_divides_by_batch_size_and_compares_with_batches_of_one() -> None:
    rows = gas.compute_table({(1, 0): 200_000, (64, 0): 204_800})
    assert rows[1]["gas_per_inference"] == 3_200
    assert rows[1]["baseline_over_batched"] == pytest.approx(62.5)
    assert len({leaf.request_hash for leaf in gas.compute_leaves(7, 8)}) == 8


@pytest.mark.skipif(not ANVIL.exists(), reason="anvil is not installed (make setup)")
def test_gas_quick_on_anvil(capsys: pytest.CaptureFixture[str]) -> None:
    assert gas.main(["--quick", "--no-record"]) == 0
    out = capsys.readouterr().out
    assert "gas/inference" in out
    figures = printed_figures(out)
    # A batch of 64 costs each inference a small share of a batch of one's certification.
    assert 0 < figures["gas_per_inference_batch64"] < figures["gas_per_task_response_baseline"] / 10
    assert figures["gas_batch64_saving_over_per_task"] > 10


def test_e2e_stage_split_from_prometheus_text() -> None:
    text = "\n".join(
        [
            "# TYPE avs_aggregator_stage_seconds histogram",
            'avs_aggregator_stage_seconds_sum{stage="generating"} 2.5',
            'avs_aggregator_stage_seconds_sum{stage="verifying"} 0.5',
            'avs_aggregator_stage_seconds_sum{stage="certify"} 0.25',
            'avs_aggregator_stage_seconds_count{stage="certify"} 1.0',
        ]
    )
    sums = e2e.parse_stage_sums(text + "\n")
    assert sums == {"generating": 2.5, "verifying": 0.5, "certify": 0.25}
    split = e2e.compute_stage_split({"generating": 0.5}, sums, total=4.0)
    assert split["generate"] == pytest.approx(2.0)
    assert split["chain"] == pytest.approx(0.25)
    assert split["queue"] == pytest.approx(4.0 - 2.0 - 0.5 - 0.25)
    assert e2e.compute_mean_split([split, split]) == {k: round(v, 3) for k, v in split.items()}


def test_aggregator_scale_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert aggregator_scale.main(["--quick", "--no-record"]) == 0
    out = capsys.readouterr().out
    assert "requests/s" in out
    figures = printed_figures(out)
    assert figures["aggregator_requests_per_s_3_operators"] > 0
    row = figures["aggregator_scale_details"]["by_operators"]["3"]
    assert row["aggregator_cpu_s_per_request"] > 0 and row["aggregator_rss_mb"] > 0


def get_benchmark(section: str) -> str:
    """The script behind a ``results.json`` run: a script's modes and machines record under sections
    of their own (a timing-only inference run, the overhead-only quorum run, a GPU rerun)."""
    if section.startswith("inference_devices"):
        return "inference_devices"
    return {"inference_timing": "inference", "operator_overhead": "quorum"}.get(section, section)


def test_no_two_benchmarks_record_the_same_top_level_figure() -> None:
    """Else the later run silently replaces, at the top level, the other's figure the README cites."""
    document = json.loads((Path(__file__).resolve().parents[2] / "bench" / "results.json").read_text())
    writers: dict[str, set[str]] = {}
    for section, run in document["runs"].items():
        for key in set(run) - {"measured_at", "machine", "python"}:
            writers.setdefault(key, set()).add(get_benchmark(section))
    assert {key: names for key, names in writers.items() if len(names) > 1} == {}


def test_the_bls_bench_hashes_each_message_afresh_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash to G1 is cached: timing one message over and over measured a cached hash and
    flattered verification by a third (found by a review helper)."""
    pair = bls.compute_key_pair(bls_bench.full_size_secret("harness"))
    message = keccak(text="harness")
    signature = bls.sign(pair.secret, message)
    hashed: list[bytes] = []
    uncached = bls._hash_to_g1.__wrapped__

    def counted(message_hash: bytes) -> object:
        hashed.append(message_hash)
        return uncached(message_hash)

    monkeypatch.setattr(bls, "_hash_to_g1", functools.lru_cache(maxsize=16)(counted))

    def hashes(fresh: bool) -> int:
        hashed.clear()
        calls = bls_bench.measure_rate(lambda: bls.verify(pair.pubkey_g2, message, signature), 0.01, fresh=fresh)
        assert calls > 0
        return len(hashed)

    assert hashes(fresh=True) >= 3  # the warm-up and every timed call (at least two)
    assert hashes(fresh=False) <= 1  # the warm-up's hash serves every call


def test_gas_bench_counts_the_hash_tries_the_contract_makes() -> None:
    """The expected gas per inference weighs the one-try gas by the mean tries of random digests:
    the count must be the hash's (x found = h mod p + tries - 1)."""
    for i in range(50):
        digest = keccak(text=f"digest {i}")
        x = bls.compute_hash_to_g1(digest).x
        assert x == (int.from_bytes(digest, "big") + gas.count_hash_tries(digest) - 1) % FP_MODULUS
    assert 1.5 < gas.compute_mean_tries(400) < 2.5  # half of all x give a square: ~2 on average
    assert gas.compute_gas_per_try([(1, 100), (2, 4_600), (1, 102), (3, 9_000)]) == 4_499
    assert gas.compute_gas_per_try([(1, 100), (1, 102)]) is None
