"""The full-vocabulary margin computation that ``decoding.compute_margins`` replaced, kept as the oracle.

It evaluates the relaxed top-k/top-p sets and the Gumbel noise for every token of every row, a
direct transcription of the rule in ``docs/inference.md``; the fast path must give the same
margins (tests/inference/test_decoding.py).
"""

from __future__ import annotations

import math

import torch

from avs.inference.decoding import (
    MASS_SLACK,
    _has_filters,
    _mass_above,
    _survivor_cdf,
    _top_k_mask,
    compute_noise,
    compute_noise_at,
)
from avs.inference.params import SamplingParams
from avs.messages import TOP_P_ONE


def _relaxed_masks(z: torch.Tensor, params: SamplingParams, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(outer, inner), row-wise: tokens that may / must have survived the filters under error ``delta``."""
    vocab = z.shape[-1]
    outer = _top_k_mask(z, params.top_k, delta)
    if 0 < params.top_k < vocab:
        inner = z > torch.topk(z, params.top_k + 1, dim=-1).values[..., -1:] + delta
    else:
        inner = torch.ones_like(outer)
    if params.top_p_micro < TOP_P_ONE:
        survivors = params.top_k if 0 < params.top_k < vocab else vocab
        z_desc = torch.topk(z, survivors, dim=-1, sorted=True).values
        cdf = _survivor_cdf(z_desc, params.temperature)
        # Logits off by up to delta/2 each scale a set's odds (its mass over the rest's) by a factor
        # within e^(±delta/T): the generator's mass lies between these two.
        factor = math.exp(min(delta / params.temperature, 700.0))

        def greatest(m: torch.Tensor) -> torch.Tensor:
            return factor * m / (factor * m + 1 - m)

        # The outer test: the generator kept ties at the k-th logit, so its top-p may normalise over
        # every token within delta of the k-th logit (row by row here).
        for row in range(z.shape[0]):
            if 0 < params.top_k < vocab:
                kth = torch.topk(z[row], params.top_k).values[-1]
                wide = torch.sort(z[row][z[row] >= kth - delta], descending=True).values
            else:
                wide = z_desc[row]
            # token by token, in log-odds (from masses, 1 - mass rounds to 0 at large delta/T)
            scaled = wide / params.temperature
            limit = math.log(params.top_p / (1.0 - params.top_p))
            for token in range(vocab):
                above = wide > z[row, token] + delta
                log_odds = torch.logsumexp(scaled[above], 0) - torch.logsumexp(scaled[~above], 0)
                least_odds = float(log_odds) - delta / params.temperature
                slack = MASS_SLACK * (1.0 + abs(limit) + (abs(least_odds) if math.isfinite(least_odds) else 0.0))
                outer[row, token] &= least_odds < limit + slack
        if delta > 0:  # the mass strictly above z - delta includes the token itself: take it out
            below = torch.minimum(z - delta, torch.nextafter(z, torch.full_like(z, -math.inf)))
            own = torch.exp(z / params.temperature - torch.logsumexp(z_desc / params.temperature, -1, keepdim=True))
            inner &= greatest(_mass_above(z_desc, cdf, below) - own) < params.top_p - MASS_SLACK
        else:
            inner &= _mass_above(z_desc, cdf, z) < params.top_p - MASS_SLACK
    return outer, inner


def compute_margins_reference(
    logits: torch.Tensor, tokens: list[int], params: SamplingParams, delta: float
) -> list[float]:
    """Margins of every position of an output; ``logits[i]`` is the row that predicts ``tokens[i]``."""
    z = logits.to(torch.float64)
    n, vocab = z.shape
    rows, index = torch.arange(n), torch.tensor(tokens, dtype=torch.long)
    if params.is_greedy:
        return (z[rows, index] - z.max(dim=1).values).tolist()
    temperature = params.temperature
    own = z[rows, index] + temperature * compute_noise_at(params.seed, rows, index)
    if not _has_filters(params, vocab):
        best = torch.stack([(z[i] + temperature * compute_noise(params.seed, i, vocab)).max() for i in range(n)])
        return (own - best).tolist()
    outer, inner = _relaxed_masks(z, params, delta)
    inner[rows, index] = True
    inner |= z > (z[rows, index] + delta)[:, None]  # kept whenever the token was: filters keep logit order
    kept_count = _least_kept_counts(z, params, delta)
    z_sorted = torch.cat([torch.sort(z, -1, descending=True).values, z.new_full((n, 1), -math.inf)], -1)
    z_n, z_next = z_sorted[rows, kept_count - 1][:, None], z_sorted[rows, kept_count][:, None]
    surely_top = z > z_next + delta  # in every generator's top n
    inner |= surely_top
    cand_rows, cand_tokens = torch.nonzero(inner, as_tuple=True)
    scores = z[cand_rows, cand_tokens] + temperature * compute_noise_at(params.seed, cand_rows, cand_tokens)
    best = torch.full((n,), -math.inf, dtype=torch.float64).scatter_reduce(0, cand_rows, scores, reduce="amax")
    # The boundary floor: every generator keeps m = n - |surely_top| tokens of the band, so its choice
    # reaches the m-th lowest band score (up to delta).
    all_scores = z + temperature * torch.stack([compute_noise(params.seed, i, vocab) for i in range(n)])
    band = (z >= z_n - delta) & ~surely_top
    for i in range(n):
        m = int(kept_count[i]) - int(surely_top[i].sum())
        if m >= 1:
            best[i] = torch.maximum(best[i], torch.sort(all_scores[i][band[i]]).values[m - 1])
    margins = torch.where(outer[rows, index], own - best, torch.full_like(own, -math.inf))
    return margins.tolist()


def _least_kept_counts(z: torch.Tensor, params: SamplingParams, delta: float) -> torch.Tensor:
    """Row-wise n: every generator within the tolerance keeps its own top n (k with top-k only; with
    top-p, the first j whose mass over our top k may reach p once its odds grow by e^(delta/T))."""
    vocab = z.shape[-1]
    survivors = params.top_k if 0 < params.top_k < vocab else vocab
    if params.top_p_micro >= TOP_P_ONE:
        return torch.full((z.shape[0],), survivors, dtype=torch.long)
    cdf = _survivor_cdf(torch.topk(z, survivors, dim=-1, sorted=True).values, params.temperature)
    p = params.top_p
    factor = math.exp(min(delta / params.temperature, 700.0))
    reachable = p / (p + factor * (1.0 - p)) - MASS_SLACK  # cdf[j] >= this: its greatest mass may reach p
    counts = [
        next((j for j in range(1, survivors + 1) if float(cdf[i, j]) >= reachable), survivors)
        for i in range(z.shape[0])
    ]
    return torch.tensor(counts, dtype=torch.long)


def compute_kept_mask_reference(z: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Steps 1-2 as written in the rule: the top-p mass above every token, searched token by token."""
    mask = _top_k_mask(z, params.top_k, 0.0)
    if params.top_p_micro < TOP_P_ONE:
        z_desc = torch.sort(z[mask], descending=True).values
        mask &= _mass_above(z_desc, _survivor_cdf(z_desc, params.temperature), z) < params.top_p
    return mask
