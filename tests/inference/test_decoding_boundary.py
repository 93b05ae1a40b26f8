"""Verification at the top-k / top-p edge: near-tied tokens there, each possibly cut on its own, of
which every generator within the tolerance keeps some (found in review, 2026-11-29).

The tolerance lets every logit of the generator be off by up to ``delta/2`` from the verifier's. On
a small vocabulary the corners and centre of that box ({-delta/2, 0, +delta/2} per logit) stand
for the generators: logits on a grid of ``delta/4`` with ``delta`` a power of two keep every sum
exact, so "a generator within the tolerance picks token t" is decided without rounding.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

import torch

from avs.inference.decoding import compute_kept_mask, compute_noise, select_token
from avs.inference.engine import Failure, compute_verification
from avs.inference.params import SamplingParams


def grid_generators(z: torch.Tensor, delta: float) -> list[torch.Tensor]:
    """The generators' logits: every logit moved by -delta/2, 0 or +delta/2 (3^V rows)."""
    steps = torch.tensor(list(itertools.product((-delta / 2, 0.0, delta / 2), repeat=z.numel())), dtype=torch.float64)
    return list(z + steps)


def grid_picks_and_surely_kept(z: torch.Tensor, params: SamplingParams, delta: float) -> tuple[set[int], set[int]]:
    """(tokens some grid generator picks at position 0, tokens every grid generator keeps)."""
    picks: set[int] = set()
    always = set(range(z.numel()))
    for row in grid_generators(z, delta):
        picks.add(select_token(row, params, 0))
        always &= set(torch.nonzero(compute_kept_mask(row, params)).flatten().tolist())
    return picks, always


def accepted(z: torch.Tensor, token: int, params: SamplingParams, delta: float) -> bool:
    return compute_verification(z[None, :], [token], params, delta).accepted


def seed_where_group_outscores(z: torch.Tensor, group: list[int], temperature: float, gap: float, start: int) -> int:
    """The first seed from ``start`` whose scores put every token of ``group`` ``gap`` above all others
    (``start`` itself if none of the next 500 does)."""
    others = [i for i in range(z.numel()) if i not in group]
    for seed in range(start, start + 500):
        scores = z + temperature * compute_noise(seed, 0, z.numel())
        if float(scores[group].min()) > float(scores[others].max()) + gap:
            return seed
    return start


DELTA = 2.0**-7  # 0.0078: a power of two, so the grid sums below are exact


@pytest.mark.parametrize(
    ("logits", "top_k", "top_p_micro"),
    [
        # top-k 2: token 0 is surely in the top 2; tokens 1 and 2 are delta/2 apart at the 2nd/3rd place,
        # so each may be cut, but every generator keeps one of them.
        ([2.0, 1.0, 1.0 - DELTA / 2, -3.0, -4.0], 2, 1_000_000),
        # top-p 0.5: token 0 holds ~0.42 of the mass; of tokens 1 and 2 (delta/2 apart) the one the generator
        # ranks higher has only token 0's mass above it, so it is kept; the other is cut.
        ([1.0, 0.5, 0.5 - DELTA / 2, -1.0, -2.0], 0, 500_000),
    ],
)
def test_the_boundary_swap_of_the_review_is_rejected(logits: list[float], top_k: int, top_p_micro: int) -> None:
    """The reviewer's repro: with the two boundary tokens scoring well above token 0, every generator
    within the tolerance picks one of them; token 0, the best surely-kept token, passed with margin 0.0."""
    z = torch.tensor(logits, dtype=torch.float64)
    seed = seed_where_group_outscores(z, [1, 2], 1.0, 1.0, 0)
    params = SamplingParams(temperature_milli=1000, top_k=top_k, top_p_micro=top_p_micro, seed=seed, max_tokens=1)
    picks, surely_kept = grid_picks_and_surely_kept(z, params, DELTA)
    assert picks <= {1, 2} and 0 in surely_kept and 1 not in surely_kept and 2 not in surely_kept
    verdict = compute_verification(z[None, :], [0], params, DELTA)
    assert not verdict.accepted and verdict.failure is Failure.TOKEN and verdict.margins[0] < -1.0
    assert all(accepted(z, token, params, DELTA) for token in picks)  # the honest choices still pass


@st.composite
def boundary_cases(draw: st.DrawFn, offsets: tuple[int, ...]) -> tuple[torch.Tensor, list[int], SamplingParams, float]:
    """Small logits on a delta/4 grid with a group of 2-3 tokens at the filters' edge: the lowest token
    the filters keep and 1-2 others moved next to it (``offsets``, in units of delta/4); any filters;
    a seed drawn, or (half the time) searched so that the group outscores every other token by 2 delta."""
    delta = draw(st.sampled_from([2.0**-6, 2.0**-3, 0.5]))
    quarter = delta / 4
    vocab = draw(st.integers(3, 6))
    scale = draw(st.sampled_from([1.0, 3.0]))
    z = torch.tensor(
        [
            round(v * scale / quarter) * quarter
            for v in draw(st.lists(st.floats(-2.5, 2.5, allow_nan=False), min_size=vocab, max_size=vocab))
        ],
        dtype=torch.float64,
    )
    top_k = draw(st.integers(0, vocab))
    top_p = draw(st.sampled_from([300_000, 500_000, 900_000, 950_000, 1_000_000]))
    temperature = draw(st.sampled_from([250, 700, 1000, 2000]))
    base = SamplingParams(temperature_milli=temperature, top_k=top_k, top_p_micro=top_p, max_tokens=1)
    kept = torch.nonzero(compute_kept_mask(z, base)).flatten().tolist()
    edge = min(kept, key=lambda i: (float(z[i]), -i))
    others = [i for i in range(vocab) if i != edge]
    group = [edge, *draw(st.lists(st.sampled_from(others), min_size=1, max_size=min(2, vocab - 2), unique=True))]
    for token in group[1:]:
        z[token] = z[edge] + draw(st.sampled_from(offsets)) * quarter
    seed = draw(st.integers(0, 2**63))
    if draw(st.booleans()):
        seed = seed_where_group_outscores(z, group, base.temperature, 2 * delta, seed)
    params = SamplingParams(temperature_milli=temperature, top_k=top_k, top_p_micro=top_p, seed=seed, max_tokens=1)
    return z, group, params, delta


@settings(max_examples=120, deadline=None)
@given(boundary_cases((-4, -3, -2, -1, 0, 1, 2, 3, 4)))
def test_every_choice_of_a_generator_within_the_tolerance_is_accepted(
    case: tuple[torch.Tensor, list[int], SamplingParams, float],
) -> None:
    """Soundness: whatever token a generator whose logits are within delta/2 of the verifier's picks is
    accepted, near-tied groups at the edge (within delta and beyond) and exact ties included."""
    z, _, params, delta = case
    picks, _ = grid_picks_and_surely_kept(z, params, delta)
    for token in picks:
        assert accepted(z, token, params, delta), (token, z.tolist(), params, delta)


@settings(max_examples=120, deadline=None)
@given(boundary_cases((0,)))
def test_the_boundary_swap_is_rejected_whenever_no_generator_picks_it(
    case: tuple[torch.Tensor, list[int], SamplingParams, float],
) -> None:
    """The cheat: the best-scoring token that every generator keeps, in place of a choice at the edge.
    It passes when some generator within the tolerance picks it, and only when one within twice the
    tolerance does: the floor is relaxed (a generator that keeps a lower band token and drops a
    higher one must lower that one further, which the floor does not charge; up to delta more of
    slack, exact ties included: docs/inference.md). Before the floor, swaps passed that no generator
    within any such tolerance picks."""
    z, _, params, delta = case
    picks, surely_kept = grid_picks_and_surely_kept(z, params, delta)
    if not surely_kept:  # near-tied top tokens: no token is kept by every generator
        return
    scores = z + params.temperature * compute_noise(params.seed, 0, z.numel())
    cheat = max(surely_kept, key=lambda i: float(scores[i]))
    if cheat in picks:
        assert accepted(z, cheat, params, delta), (cheat, picks, z.tolist(), params, delta)
    elif accepted(z, cheat, params, delta):
        relaxed, _ = grid_picks_and_surely_kept(z, params, 2 * delta)
        assert cheat in relaxed, (cheat, relaxed, z.tolist(), params, delta)


def test_an_honest_top_p_pick_at_a_large_delta_over_temperature_is_not_filtered_out() -> None:
    """Found in review: the outer top-p test computed the least mass from ``1 - mass``, which rounds to
    0 once the rest is below ~1e-16 of the whole (delta/T above ~33: a bf16 profile's delta 0.5 at
    T 0.01), so a token a generator within the tolerance keeps and picks was refused as filtered out."""
    delta = 0.5
    z = torch.tensor([10.0, 9.49, 5.0, 4.0], dtype=torch.float64)
    generator = z + torch.tensor([-delta / 2, delta / 2, 0.0, 0.0], dtype=torch.float64)
    picked = None
    for seed in range(1000):
        params = SamplingParams(temperature_milli=10, top_p_micro=950_000, seed=seed, max_tokens=1)
        if select_token(generator, params, 0) == 1:
            picked = params
            break
    assert picked is not None
    assert compute_kept_mask(generator, picked).tolist() == [True, True, False, False]
    verdict = compute_verification(z[None], [1], picked, delta)
    assert verdict.accepted, (verdict.failure, verdict.margins)
    # and a token no generator within the tolerance keeps is still filtered out
    assert not compute_verification(z[None], [2], picked, delta).accepted
