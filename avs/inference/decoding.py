"""The canonical decoding rule (version 1) and its tolerant check, on one row of logits.

For output position ``i`` with logits ``z`` (cast to float64) and temperature ``T``:

* ``T == 0``: the token is ``argmax z`` (lowest id on ties). Top-k, top-p and seed are ignored.
* ``T > 0``, filters in this order:
  1. top-k (``k > 0``): keep tokens with ``z >= z_(k)``, the k-th largest logit (ties kept);
  2. top-p (``p < 1``): ``q = softmax(z / T)`` over the top-k survivors; keep token ``t`` iff
     the mass of survivors with a strictly larger logit is ``< p`` (so the top token is always
     kept and ties are kept together);
  3. the token is ``argmax`` over survivors of the perturbed score ``z + T * g(seed, i, t)``, with
     ``g`` the Gumbel noise of ``avs.inference.rng`` (Gumbel-max: an exact sample of
     ``softmax(z / T)`` restricted to the survivors, written in logit units).

The verifier recomputes ``z`` by prefill on its own hardware, so it only knows ``z`` up to a small
error and uses two relaxed sets: the *outer* set (tokens that could have survived the filters
if every logit moved by up to ``delta``) and the *inner* set (tokens that survive even then);
for top-p, a logit error also scales every probability by up to ``e^(±delta/T)``, so the masses
compared with ``p`` are divided (outer) or multiplied (inner) by ``e^(delta/T)``.
Position ``i`` passes iff the proposed token is in the outer set and its perturbed score is at
least ``max(perturbed score over inner set ∪ {token}) - delta``. The *margin* is that difference
(``<= 0``; ``0`` when the token is the verifier's own choice; ``-inf`` if filtered out).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from avs.inference.params import SamplingParams
from avs.inference.rng import compute_gumbel, compute_gumbel_at
from avs.messages import TOP_P_ONE

MASS_SLACK = 1e-9  # rounding room for the relaxed top-p sets: outer a bit larger, inner a bit smaller


def compute_noise(seed: int, position: int, vocab_size: int) -> torch.Tensor:
    """Gumbel noise of every token id at one position."""
    return torch.from_numpy(compute_gumbel(seed, position, vocab_size))


def compute_noise_at(seed: int, positions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Gumbel noise of (position, token) pairs: the same values ``compute_noise`` gives."""
    as_u64 = [t.numpy().astype(np.uint64) for t in (positions, tokens)]
    return torch.from_numpy(compute_gumbel_at(seed, as_u64[0], as_u64[1]))


def _has_filters(params: SamplingParams, vocab_size: int) -> bool:
    return 0 < params.top_k < vocab_size or params.top_p_micro < TOP_P_ONE


def _kth_largest(z: torch.Tensor, k: int) -> float:
    return float(torch.topk(z, k).values[-1]) if k <= z.numel() else -math.inf


def _survivor_cdf(z_desc: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cumulative ``softmax(z / T)`` over survivors sorted by descending logit, with a leading 0."""
    cumulative = torch.cumsum(torch.softmax(z_desc / temperature, -1), -1)
    return torch.cat([cumulative.new_zeros(*cumulative.shape[:-1], 1), cumulative], -1)


def _mass_above(z_desc: torch.Tensor, cdf: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """For each threshold x (row-wise): the survivors' probability mass with logit ``> x``."""
    count = torch.searchsorted(-z_desc, -thresholds, side="left")  # survivors with z > x
    return cdf.gather(-1, count)


def _top_k_mask(z: torch.Tensor, top_k: int, slack: float) -> torch.Tensor:
    if top_k == 0 or top_k >= z.shape[-1]:
        return torch.ones_like(z, dtype=torch.bool)
    kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
    return z >= kth - slack


def compute_kept_mask(z: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Steps 1-2 on one row: the tokens that survive top-k then top-p (the generator's exact rule)."""
    mask = _top_k_mask(z, params.top_k, 0.0)
    if params.top_p_micro < TOP_P_ONE:
        z_desc = torch.sort(z[mask], descending=True).values
        mask &= _mass_above(z_desc, _survivor_cdf(z_desc, params.temperature), z) < params.top_p
    return mask


def select_token(z: torch.Tensor, params: SamplingParams, position: int) -> int:
    """The canonical choice at ``position`` for logits ``z`` (float64, one row)."""
    if params.is_greedy:
        return int(torch.argmax(z))
    if not _has_filters(params, z.numel()):
        return int(torch.argmax(z + params.temperature * compute_noise(params.seed, position, z.numel())))
    kept = torch.nonzero(compute_kept_mask(z, params)).flatten()  # ascending ids: ties go to the lowest
    noise = compute_noise_at(params.seed, torch.full_like(kept, position), kept)
    return int(kept[torch.argmax(z[kept] + params.temperature * noise)])


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
        # Logits off by up to delta/2 each move every probability by a factor within e^(±delta/T).
        factor = math.exp(min(delta / params.temperature, 700.0))
        outer &= _mass_above(z_desc, cdf, z + delta) / factor < params.top_p + MASS_SLACK
        if delta > 0:  # the mass strictly above z - delta includes the token itself: take it out
            below = torch.minimum(z - delta, torch.nextafter(z, torch.full_like(z, -math.inf)))
            own = torch.exp(z / params.temperature - torch.logsumexp(z_desc / params.temperature, -1, keepdim=True))
            inner &= (_mass_above(z_desc, cdf, below) - own) * factor < params.top_p - MASS_SLACK
        else:
            inner &= _mass_above(z_desc, cdf, z) < params.top_p - MASS_SLACK
    return outer, inner


def compute_margins(logits: torch.Tensor, tokens: list[int], params: SamplingParams, delta: float) -> list[float]:
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
    cand_rows, cand_tokens = torch.nonzero(inner, as_tuple=True)
    scores = z[cand_rows, cand_tokens] + temperature * compute_noise_at(params.seed, cand_rows, cand_tokens)
    best = torch.full((n,), -math.inf, dtype=torch.float64).scatter_reduce(0, cand_rows, scores, reduce="amax")
    margins = torch.where(outer[rows, index], own - best, torch.full_like(own, -math.inf))
    return margins.tolist()
