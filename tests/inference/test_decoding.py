"""The canonical decoding rule and its tolerant check, on synthetic logits."""

from __future__ import annotations

import math
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

import torch

from avs.inference import decoding
from avs.inference.decoding import (
    compute_kept_mask,
    compute_margins,
    compute_noise,
    select_token,
)
from avs.inference.params import SamplingParams
from tests.inference.reference_decoding import compute_kept_mask_reference, compute_margins_reference

VOCAB = 50


def logits_for(seed: int, rows: int = 1, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, VOCAB, generator=generator, dtype=torch.float64) * scale


def test_greedy_is_argmax_with_lowest_id_on_ties() -> None:
    z = torch.zeros(VOCAB, dtype=torch.float64)
    z[7] = z[3] = 1.0
    assert select_token(z, SamplingParams(), 0) == 3


def test_top_k_then_top_p_follow_the_documented_order() -> None:
    z = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    assert compute_kept_mask(z, SamplingParams(temperature_milli=1000, top_k=3)).tolist() == [1, 1, 1, 0, 0]
    probs = torch.softmax(z[:3], 0)  # top-p renormalizes over the top-k survivors
    top_p = float(probs[0] + probs[1] / 2)  # the mass above token 1 is probs[0] < p; above token 2 is > p
    params = SamplingParams(temperature_milli=1000, top_k=3, top_p_micro=round(top_p * 1_000_000))
    assert compute_kept_mask(z, params).tolist() == [1, 1, 0, 0, 0]
    tiny_p = SamplingParams(temperature_milli=1000, top_p_micro=1)
    assert compute_kept_mask(z, tiny_p).tolist() == [1, 0, 0, 0, 0]  # the top token always survives


def test_sampling_is_gumbel_max_of_the_documented_noise() -> None:
    z = logits_for(1)[0]
    params = SamplingParams(temperature_milli=700, seed=42)
    expected = int(torch.argmax(z + 0.7 * compute_noise(42, 5, VOCAB)))
    assert select_token(z, params, 5) == expected


def test_sampling_frequencies_follow_the_softmax() -> None:
    z = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    counts = [0, 0, 0]
    for position in range(3000):
        counts[select_token(z, SamplingParams(temperature_milli=1000, seed=9), position)] += 1
    expected = torch.softmax(z, 0) * 3000
    assert all(abs(c - float(e)) < 5 * math.sqrt(float(e)) for c, e in zip(counts, expected, strict=True))


filter_params = st.builds(
    SamplingParams,
    temperature_milli=st.integers(1, 2000),
    top_k=st.sampled_from([0, 1, 5, 20, VOCAB, VOCAB + 10]),
    top_p_micro=st.sampled_from([1, 300_000, 900_000, 1_000_000]),
    seed=st.integers(0, 2**64 - 1),
)


@settings(max_examples=60)
@given(filter_params, st.integers(0, 10_000), st.floats(0.0, 0.5))
def test_own_choices_verify_with_zero_margin(params: SamplingParams, seed: int, delta: float) -> None:
    z = logits_for(seed, rows=4)
    tokens = [select_token(z[i], params, i) for i in range(4)]
    margins = compute_margins(z, tokens, params, delta)
    assert all(m == 0.0 for m in margins)


@settings(max_examples=60)
@given(filter_params, st.integers(0, 10_000))
def test_small_logit_noise_is_tolerated(params: SamplingParams, seed: int) -> None:
    z = logits_for(seed, rows=4)
    tokens = [select_token(z[i], params, i) for i in range(4)]
    jitter = (torch.rand(z.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5) * 0.02
    margins = compute_margins(z + jitter, tokens, params, delta=0.05)
    assert min(margins) >= -0.05


def test_a_filtered_out_token_fails_with_minus_infinity() -> None:
    z = logits_for(3)
    worst = int(torch.argmin(z[0]))
    params = SamplingParams(temperature_milli=1000, top_k=5, seed=1)
    assert compute_margins(z, [worst], params, 0.1) == [-math.inf]


def test_a_token_chosen_under_another_seed_usually_fails() -> None:
    z = logits_for(4, rows=32, scale=1.0)
    honest = SamplingParams(temperature_milli=1000, seed=1)
    cheat = SamplingParams(temperature_milli=1000, seed=2)
    tokens = [select_token(z[i], cheat, i) for i in range(32)]
    assert min(compute_margins(z, tokens, honest, 0.05)) < -0.05


@st.composite
def margin_cases(draw: st.DrawFn) -> tuple[torch.Tensor, list[int], SamplingParams, float]:
    """Random logits (some rounded to force ties), any filter setting, proposed tokens often near the top."""
    rows, vocab = draw(st.integers(1, 6)), draw(st.integers(2, 80))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    z = torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * draw(
        st.sampled_from([0.1, 1.0, 4.0, 30.0])
    )
    if draw(st.booleans()):
        z = torch.round(z * 2) / 2  # ties across the k-th logit and among candidates
    params = SamplingParams(
        temperature_milli=draw(st.sampled_from([1, 50, 700, 1000, 3000])),
        top_k=draw(st.integers(0, vocab + 2)),
        top_p_micro=draw(st.sampled_from([1, 300_000, 900_000, 950_000, 1_000_000])),
        seed=draw(st.integers(0, 2**64 - 1)),
    )
    top = torch.topk(z, min(3, vocab), dim=-1).indices
    tokens = [
        int(top[i, draw(st.integers(0, top.shape[1] - 1))]) if draw(st.booleans()) else draw(st.integers(0, vocab - 1))
        for i in range(rows)
    ]
    return z, tokens, params, draw(st.sampled_from([0.0, 0.05, 0.5, 3.0]))


@settings(max_examples=400, deadline=None)
@given(margin_cases())
def test_kept_set_equals_the_per_token_search(case: tuple[torch.Tensor, list[int], SamplingParams, float]) -> None:
    z, _, params, _ = case
    for row in z:
        assert torch.equal(compute_kept_mask(row, params), compute_kept_mask_reference(row, params))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("top_k", [0, 1, 3])
def test_kept_set_with_non_finite_logits_follows_the_rule_as_written(bad: float, top_k: int) -> None:
    z = torch.tensor([2.0, bad, 1.0, 0.5, 2.0], dtype=torch.float64)
    params = SamplingParams(temperature_milli=700, top_k=top_k, top_p_micro=900_000)
    assert torch.equal(compute_kept_mask(z, params), compute_kept_mask_reference(z, params))


@settings(max_examples=400, deadline=None)
@given(margin_cases())
def test_fast_margins_equal_the_full_vocabulary_reference(
    case: tuple[torch.Tensor, list[int], SamplingParams, float],
) -> None:
    z, tokens, params, delta = case
    assert compute_margins(z, tokens, params, delta) == compute_margins_reference(z, tokens, params, delta)


@settings(max_examples=200, deadline=None)
@given(margin_cases(), st.integers(1, 4))
def test_margins_judged_in_chunks_of_positions_equal_the_reference(
    case: tuple[torch.Tensor, list[int], SamplingParams, float], chunk_rows: int
) -> None:
    """A long output is judged ``MARGIN_CHUNK_ROWS`` positions at a time; each chunk's noise is keyed
    by the absolute position, so the margins are the whole output's."""
    z, tokens, params, delta = case
    with patch.object(decoding, "MARGIN_CHUNK_ROWS", chunk_rows):
        assert compute_margins(z, tokens, params, delta) == compute_margins_reference(z, tokens, params, delta)


def test_pruning_path_matches_the_reference_on_a_large_vocabulary() -> None:
    # A spread of logits where the Gumbel bound prunes most of the row (the common case on real models).
    z = logits_for(11, rows=8, scale=1.0).repeat(1, 200) * torch.linspace(8, 1, 8, dtype=torch.float64)[:, None]
    for params in (
        SamplingParams(temperature_milli=100, seed=5),
        SamplingParams(temperature_milli=3000, seed=5),
        SamplingParams(temperature_milli=700, top_p_micro=950_000, seed=5),
    ):
        tokens = [select_token(z[i], params, i) if i % 2 else int(torch.topk(z[i], 3).indices[2]) for i in range(8)]
        assert compute_margins(z, tokens, params, 0.5) == compute_margins_reference(z, tokens, params, 0.5)


@settings(max_examples=400, deadline=None)
@given(margin_cases())
def test_own_choices_verify_with_zero_margin_even_with_ties(
    case: tuple[torch.Tensor, list[int], SamplingParams, float],
) -> None:
    """Ties at the k-th logit (the generator keeps them all, so top-p normalises over more than k)
    and among candidates: the generator's own choice is never rejected."""
    z, _, params, delta = case
    tokens = [select_token(z[i], params, i) for i in range(z.shape[0])]
    assert compute_margins(z, tokens, params, delta) == [0.0] * len(tokens)


def test_a_tie_at_the_kth_logit_widens_top_p() -> None:
    """Logits [2, 1, 1], top-k 2, top-p 0.6: the generator keeps all three (ties at the k-th) and may
    pick token 2; verifying over exactly k tokens used to call it filtered out."""
    z = torch.tensor([[2.0, 1.0, 1.0]], dtype=torch.float64)
    params = SamplingParams(temperature_milli=1000, top_k=2, top_p_micro=600_000, seed=0)
    assert compute_kept_mask(z[0], params).tolist() == [True, True, True]
    assert select_token(z[0], params, 0) == 2
    assert compute_margins(z, [2], params, 0.01) == [0.0]


def test_a_token_below_a_stronger_survivor_cannot_pass_at_the_top_p_edge() -> None:
    """Logits [10, 6, 5.9], top-p 0.9755: token 2 is neither surely kept (inner) nor surely cut, and
    used to be compared with nothing but itself (margin 0). Token 1 sits 0.1 above it: if 2 survived,
    so did 1, and 1's perturbed score wins under this seed, so 2 can never be the choice."""
    z = torch.tensor([[10.0, 6.0, 5.9]], dtype=torch.float64)
    params = SamplingParams(temperature_milli=1000, top_p_micro=975_500, seed=8516)
    assert compute_kept_mask(z[0], params).tolist() == [True, True, False]
    assert select_token(z[0], params, 0) == 1
    assert compute_margins(z, [2], params, 0.01)[0] < -0.01
    assert compute_margins(z, [1], params, 0.01) == [0.0]


@st.composite
def worst_case_errors(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, list[int], SamplingParams, float]:
    """Generator logits, the verifier's logits off by exactly +-delta/2 each (delta a power of two and
    logits on a 1/64 grid, so every sum is exact), the generator's tokens, params and delta.

    The errors push every row to the edge of the error model: tokens above the chosen one up and
    the rest down (the chosen token looks weakest: top-k/top-p may seem to cut it), the opposite
    (every rival looks strong), or random signs."""
    rows, vocab = draw(st.integers(1, 4)), draw(st.integers(2, 60))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scale = draw(st.sampled_from([0.25, 1.0, 4.0]))
    z_gen = torch.round(torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * scale * 64) / 64
    params = SamplingParams(
        temperature_milli=draw(st.sampled_from([250, 700, 1000, 2000])),
        top_k=draw(st.integers(0, vocab + 1)),
        top_p_micro=draw(st.sampled_from([300_000, 900_000, 950_000, 1_000_000])),
        seed=draw(st.integers(0, 2**64 - 1)),
    )
    delta = draw(st.sampled_from([2.0**-6, 2.0**-3, 0.5]))
    tokens = [select_token(z_gen[i], params, i) for i in range(rows)]
    pattern = draw(st.sampled_from(["chosen looks weak", "chosen looks strong", "random"]))
    above = z_gen > torch.tensor([float(z_gen[i, t]) for i, t in enumerate(tokens)], dtype=torch.float64)[:, None]
    if pattern == "random":
        signs = torch.randint(0, 2, z_gen.shape, generator=generator).to(torch.float64) * 2 - 1
    else:
        signs = above.to(torch.float64) * 2 - 1
        signs = signs if pattern == "chosen looks weak" else -signs
    return z_gen, z_gen + signs * delta / 2, tokens, params, delta


@settings(max_examples=300, deadline=None)
@given(worst_case_errors())
def test_own_choices_pass_under_the_largest_errors_the_tolerance_allows(
    case: tuple[torch.Tensor, torch.Tensor, list[int], SamplingParams, float],
) -> None:
    """Soundness of the relaxed top-k/top-p sets (odds bounds): logit errors of delta/2 on every
    token, in the worst direction, never reject the generator's own choice."""
    _, z_verifier, tokens, params, delta = case
    assert min(compute_margins(z_verifier, tokens, params, delta)) >= -delta


def test_a_token_surely_inside_top_p_is_a_rival_at_the_edge() -> None:
    """Logits [0, 0, c], top-p 0.95, with the two top tokens holding 0.949 of the mass: token 2
    survives (0.949 < 0.95), and at delta 0.01 no logit error can push that mass to 0.95 (its odds
    move by at most e^0.01: 0.9495 at most). So token 2 is a rival, and a token it outscores fails.
    Scaling the mass itself by e^0.01 (0.9585) called token 2 possibly cut, and let a cheat that
    skipped it pass with margin 0: an output of 1 %-noise weights in bench.inference did that."""
    c = math.log(2 / 0.949 - 2)
    z = torch.tensor([[0.0, 0.0, c]], dtype=torch.float64)
    base = SamplingParams(temperature_milli=1000, top_p_micro=950_000)
    assert compute_kept_mask(z[0], base).tolist() == [True, True, True]
    seed = next(s for s in range(10_000) if int(torch.argmax(z[0] + compute_noise(s, 0, 3))) == 2)
    params = SamplingParams(temperature_milli=1000, top_p_micro=950_000, seed=seed)
    scores = z[0] + compute_noise(seed, 0, 3)
    assert select_token(z[0], params, 0) == 2
    skipped_to = int(torch.argmax(scores[:2]))  # the best of the tokens above the edge
    margin = compute_margins(z, [skipped_to], params, 0.01)[0]
    assert margin == pytest.approx(float(scores[skipped_to] - scores[2])) and margin < -0.01
    assert compute_margins(z, [2], params, 0.01) == [0.0]
