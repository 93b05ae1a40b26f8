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
for top-p, logit errors of up to ``delta/2`` each scale a set's *odds* (its mass over the rest's) by at
most ``e^(±delta/T)``, so the outer test compares with ``p`` the least mass the generator can have
seen, ``m / (m + e^(delta/T) (1 - m))``, and the inner test the greatest, ``m e^(delta/T) / (m
e^(delta/T) + 1 - m)`` (near ``p = 0.95`` a window about ten times narrower than scaling the mass
itself by ``e^(±delta/T)``, which version 1 did until 2026-11-26; both are sound).
With top-k, the outer set's top-p masses are taken over every token within ``delta`` of the k-th
logit (the generator keeps ties at the k-th logit, so its top-p may normalise over more than k).
Position ``i`` passes iff the proposed token is in the outer set and its perturbed score is at
least ``max(perturbed score over rivals) - delta``, the *rivals* being the inner set, the token
itself, and every token whose logit is more than ``delta`` above the token's: the filters keep
tokens in logit order, so if the proposed token survived, those did too, whatever the error. The
best score is also at least the *boundary floor* (``_boundary_floor``): every generator within the
tolerance keeps at least ``n`` tokens, so a near-tied group at the top-k/top-p edge, none of whose
tokens is surely kept on its own, still holds survivors whose best score the proposed one must
reach. The *margin* is that difference (``<= 0``; ``0`` when the token is the verifier's own
choice; ``-inf`` if filtered out).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from avs.inference.params import SamplingParams
from avs.inference.rng import GUMBEL_MAX, compute_gumbel, compute_gumbel_at
from avs.messages import TOP_P_ONE

MASS_SLACK = 1e-9  # rounding room for the relaxed top-p sets: outer a bit larger, inner a bit smaller
# Sampled outputs are judged this many positions at a time: 64 rows of a 49k vocabulary in float64,
# sorted with their ids, are about 75 MiB; a whole 512-token output at once peaked above 2 GiB.
MARGIN_CHUNK_ROWS = 64

TensorPair = tuple[torch.Tensor, torch.Tensor]


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


def _sort_descending(values: torch.Tensor) -> torch.Tensor:
    """One CPU row sorted, largest first: numpy's sort, about twice as fast as torch's here; same values."""
    return torch.from_numpy(np.sort(values.numpy())[::-1].copy())


def compute_kept_mask(z: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Steps 1-2 on one row: the tokens that survive top-k then top-p (the generator's exact rule).

    Top-p keeps token ``t`` iff ``cdf[#survivors above t] < p``. The cumulative ``cdf`` only grows,
    so that holds exactly for the tokens at or above one threshold logit: the one at the last
    position whose ``cdf`` entry is still below ``p``. One comparison per token instead of a
    search per token, with the same ``cdf``, hence the same survivors.
    """
    mask = _top_k_mask(z, params.top_k, 0.0)
    if params.top_p_micro < TOP_P_ONE:
        z_desc = _sort_descending(z[mask])
        cdf = _survivor_cdf(z_desc, params.temperature)
        if z_desc.numel() == 0 or not bool(torch.isfinite(cdf[-1])):  # NaN or inf logits: the rule as written
            mask &= _mass_above(z_desc, cdf, z) < params.top_p
            return mask
        below_p = int(torch.searchsorted(cdf, cdf.new_tensor([params.top_p]), side="left"))  # >= 1: cdf[0] = 0
        mask &= z >= z_desc[min(below_p, z_desc.numel()) - 1]
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


def _sorted_head(z: torch.Tensor, params: SamplingParams) -> TensorPair | None:
    """Row-wise leading logits and ids, descending: the top k+1 with top-k, whole rows with only top-p."""
    if 0 < params.top_k < z.shape[-1]:
        values, ids = torch.topk(z, params.top_k + 1, dim=-1)
        return values, ids
    if params.top_p_micro < TOP_P_ONE:
        values, ids = torch.sort(z, dim=-1, descending=True)
        return values, ids
    return None


def _top_k_bounds(head: TensorPair | None, params: SamplingParams) -> TensorPair | None:
    """Row-wise (k-th, (k+1)-th) largest logits when top-k filters."""
    if head is None or head[0].shape[-1] != params.top_k + 1:
        return None
    return head[0][:, params.top_k - 1], head[0][:, params.top_k]


def _top_p_table(head: TensorPair | None, params: SamplingParams) -> TensorPair | None:
    """Row-wise top-k survivors' logits, descending, and their cumulative ``softmax(z / T)``."""
    if head is None or params.top_p_micro >= TOP_P_ONE:
        return None
    z_desc = head[0][:, : params.top_k] if params.top_k > 0 else head[0]
    return z_desc, _survivor_cdf(z_desc, params.temperature)


def _outer_top_p_table(
    z: torch.Tensor, head: TensorPair | None, table: TensorPair | None, params: SamplingParams, delta: float
) -> TensorPair | None:
    """The top-p table for the outer test: with top-k, over every token within ``delta`` of the k-th
    logit (rows padded with -inf), the largest set the generator may have normalised over."""
    if table is None or _top_k_bounds(head, params) is None:
        return table
    floor = head[0][:, params.top_k - 1 : params.top_k] - delta  # type: ignore[index]
    count = int((z >= floor).sum(-1).max())
    values = torch.topk(z, count, dim=-1).values
    z_desc = torch.where(values >= floor, values, torch.full_like(values, -math.inf))
    return z_desc, _survivor_cdf(z_desc, params.temperature)


def _odds_factor(params: SamplingParams, delta: float) -> float:
    # Logits off by up to delta/2 each scale the sums of e^(z/T) over a set and over the rest by
    # factors within e^(±delta/2T), so the set's odds (the ratio of the two) by one within e^(±delta/T).
    return math.exp(min(delta / params.temperature, 700.0))


def _least_mass(mass: torch.Tensor, params: SamplingParams, delta: float) -> torch.Tensor:
    """The smallest mass a set of verifier mass ``mass`` can have had for the generator: odds / e^(delta/T)."""
    factor = _odds_factor(params, delta)
    return mass / (mass + factor * (1.0 - mass))


def _greatest_mass(mass: torch.Tensor, params: SamplingParams, delta: float) -> torch.Tensor:
    """The largest mass a set of verifier mass ``mass`` can have had for the generator: odds * e^(delta/T)."""
    scaled = _odds_factor(params, delta) * mass
    return scaled / (scaled + 1.0 - mass)


def _is_outer(
    z_tok: torch.Tensor, bounds: TensorPair | None, table: TensorPair | None, params: SamplingParams, delta: float
) -> torch.Tensor:
    """Per row: could the proposed token (logit ``z_tok``) have survived the filters under error ``delta``?"""
    outer = torch.ones_like(z_tok, dtype=torch.bool)
    if bounds is not None:
        # Needs no rounding slack: z_tok is a double and rounding is monotonic, so z_tok >= kth - delta
        # in exact arithmetic implies it here (a token exactly delta below the k-th logit passes).
        outer &= z_tok >= bounds[0] - delta
    if table is not None:
        # In log-odds: the generator's least odds of the mass above z_tok + delta are ours / e^(delta/T),
        # and the token survived iff they may be below p / (1 - p). From masses, 1 - mass rounds to 0
        # once the rest is below ~1e-16 of the whole (delta/T above ~33, a bf16 profile's 0.5 at T 0.015),
        # and an honest token was refused (found in review, 2026-11-29).
        z_desc = table[0]
        count = torch.searchsorted(-z_desc, -(z_tok + delta)[:, None], side="left")[:, 0]  # z > z_tok + delta
        least = _log_odds_above(z_desc, count, params.temperature) - delta / params.temperature
        limit = math.log(params.top_p / (1.0 - params.top_p))
        outer &= least < limit + MASS_SLACK * (1.0 + abs(limit) + least.abs().nan_to_num(posinf=0.0, neginf=0.0))
    return outer


def _log_odds_above(z_desc: torch.Tensor, count: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise log(mass of the first ``count`` over the mass of the rest) of ``softmax(z_desc / T)``,
    from log-sums (no ``1 - mass``): ``-inf`` with nothing above, ``+inf`` with nothing below."""
    scaled = z_desc / temperature
    none = torch.full_like(scaled[:, :1], -math.inf)
    head = torch.cat([none, torch.logcumsumexp(scaled, -1)], -1)  # head[j]: log-sum of the first j
    tail = torch.cat([torch.logcumsumexp(scaled.flip(-1), -1).flip(-1), none], -1)  # tail[j]: from j on
    return head.gather(-1, count[:, None])[:, 0] - tail.gather(-1, count[:, None])[:, 0]


def _score_reach_floor(own: torch.Tensor, reach: float) -> torch.Tensor:
    """Row-wise: a token with a logit below this never outscores ``own`` (its score is at most ``z + reach``),
    taken a hair low to absorb rounding."""
    return own - reach - 1e-9 * (1.0 + own.abs() + reach)


def _rival_candidates(
    z: torch.Tensor, own: torch.Tensor, head: TensorPair | None, bounds: TensorPair | None, delta: float, reach: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the tokens that might outscore the proposed one: (logits, ids, valid), descending.

    Exact pruning: a perturbed score is at most ``z + reach`` (``reach = T * GUMBEL_MAX``), so a
    token with ``z < own - reach`` can never be the best (``own`` is one of the scores maximized);
    with top-k only the top k can be inner, and only those above ``z_(k+1) + delta``. The bounds
    are taken a hair low to absorb rounding: a superset is harmless, the inner test follows.
    """
    lower = _score_reach_floor(own, reach)
    if bounds is not None:
        values, ids = head[0][:, :-1], head[1][:, :-1]  # type: ignore[index]
        lower = torch.maximum(lower, bounds[1] + delta)
    else:
        count = int((z >= lower[:, None]).sum(-1).max())
        values, ids = (head[0][:, :count], head[1][:, :count]) if head is not None else torch.topk(z, count, dim=-1)
    return values, ids, values >= lower[:, None]


def _is_inner(
    values: torch.Tensor, bounds: TensorPair | None, table: TensorPair | None, params: SamplingParams, delta: float
) -> torch.Tensor:
    """For candidate logits (rows aligned with ``z``): do they survive the filters even under error ``delta``?"""
    inner = torch.ones_like(values, dtype=torch.bool)
    if bounds is not None:
        inner &= values > bounds[1][:, None] + delta
    if table is not None:
        z_desc, cdf = table
        if delta > 0:  # the mass strictly above z - delta includes the token itself: take it out
            below = torch.minimum(values - delta, torch.nextafter(values, torch.full_like(values, -math.inf)))
            log_norm = torch.logsumexp(z_desc / params.temperature, -1, keepdim=True)
            own = torch.exp(values / params.temperature - log_norm)
            inner &= _greatest_mass(_mass_above(z_desc, cdf, below) - own, params, delta) < params.top_p - MASS_SLACK
        else:
            inner &= _mass_above(z_desc, cdf, values) < params.top_p - MASS_SLACK
    return inner


def _least_kept_count(head: TensorPair, table: TensorPair | None, params: SamplingParams, delta: float) -> torch.Tensor:
    """Row-wise ``n``: every generator within the tolerance keeps at least its ``n`` highest logits.

    With top-k only, ``n = k``. With top-p the generator keeps its ``j``-th token (in its own order)
    whenever its top ``j - 1`` tokens hold mass ``< p`` over its top-k survivors. Its ``i``-th largest
    logit is within ``delta/2`` of ours (order statistics move by no more than the logits), and its
    survivors include its top k (all tokens without top-k), so the odds of its top ``j`` against its
    ranks ``j+1..k`` are at most ``e^(delta/T)`` times ours: its mass is at most ``_greatest_mass`` of
    our ``cdf[j]`` (the table over exactly our top k). So it keeps at least the first ``j`` whose
    ``cdf[j]`` may reach ``p``: ``cdf[j] >= _least_mass(p)``, taken ``MASS_SLACK`` low (a smaller
    ``n`` is always safe).
    """
    values = head[0]
    if table is None:
        return torch.full(values.shape[:-1], params.top_k, dtype=torch.long)
    z_desc, cdf = table
    threshold = _least_mass(torch.tensor(params.top_p, dtype=torch.float64), params, delta) - MASS_SLACK
    count = torch.searchsorted(cdf, threshold.expand(cdf.shape[0], 1).contiguous(), side="left")[:, 0]
    return count.clamp(1, z_desc.shape[-1])


def _boundary_floor(
    z: torch.Tensor,
    own: torch.Tensor,
    head: TensorPair,
    table: TensorPair | None,
    params: SamplingParams,
    delta: float,
    positions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise (floor, ``z_(n+1)``): every generator within the tolerance picks a token whose score here
    is at least ``floor - delta`` (``-inf`` where the rule gives nothing). Found in review (2026-11-29):
    near-tied tokens at the filters' edge may each be cut alone, but not all of them at once.

    Why. Every such generator keeps its own top ``n`` tokens (``_least_kept_count``): a set ``S`` of
    ``n`` tokens with ``min_S z' >= max_(not S) z'``, so ``min_S z >= max_(not S) z - delta`` in our
    logits. ``S`` holds every token of ``I = {z > z_(n+1) + delta}`` (were one left out, it and the
    ``n`` tokens of ``S`` would all lie above ``z_(n+1)``: ``n + 1`` tokens) and lies inside
    ``O = {z >= z_(n) - delta}`` (a member below that would force every token at or above ``z_(n)``,
    ``n`` of them, into ``S`` beside it). So ``S`` holds ``m = n - |I|`` tokens of the band ``O - I``,
    and the generator's choice outscores, in its own scores, the best of them, so at least the
    ``m``-th lowest of the band's scores in its own. An order statistic of a set of scores moves by
    no more than the scores (``delta/2``), so the choice's score here is at least the ``m``-th lowest
    band score here minus ``delta``: the floor. ``I`` itself is surely kept: the caller adds its
    tokens to the rivals (``z_(n+1)`` is returned for that). Honest choices keep margin 0: with no
    error, ``S`` is our own top ``n``, and our choice outscores its ``m`` band tokens.
    (Relaxed, not exact: the ``m`` lowest band scores may belong to band tokens more than ``delta``
    apart, which no single ``S`` holds together; that only lowers the floor.)

    Band tokens with a logit below ``own - T * GUMBEL_MAX`` score below ``own``: they count as
    ``-inf``, which keeps ``max(own, floor)`` exact and draws noise only near the top.
    """
    rows = torch.arange(z.shape[0])
    n = _least_kept_count(head, table, params, delta)
    values, ids = head
    padded = torch.cat([values, values.new_full((values.shape[0], 1), -math.inf)], -1)
    z_next = padded[rows, n]
    floor, ceiling = padded[rows, n - 1] - delta, z_next + delta  # the band: floor <= z <= ceiling
    m = n - torch.searchsorted(-values, -ceiling[:, None], side="left")[:, 0]  # n - |I|; I lies in the top n
    # Tokens at or above the floor, as (row, logit, id): from the head, or from the whole row where the
    # band may reach past the head (top-k: the (k+1)-th logit within delta of the floor).
    width = int(torch.searchsorted(-values, -floor[:, None], side="right").max())
    at_rows, at_cols = torch.nonzero(values[:, :width] >= floor[:, None], as_tuple=True)
    at_values, at_ids = values[at_rows, at_cols], ids[at_rows, at_cols]
    if values.shape[-1] < z.shape[-1]:
        wide = torch.nonzero(values[:, -1] >= floor).flatten()
        if wide.numel() > 0:
            keep, whole = ~torch.isin(at_rows, wide), z[wide]
            wide_rows, wide_ids = torch.nonzero(whole >= floor[wide, None], as_tuple=True)
            at_rows = torch.cat([at_rows[keep], wide[wide_rows]])
            at_values = torch.cat([at_values[keep], whole[wide_rows, wide_ids]])
            at_ids = torch.cat([at_ids[keep], wide_ids])
    band = at_values <= ceiling[at_rows]
    scored = band & (at_values >= _score_reach_floor(own, params.temperature * GUMBEL_MAX)[at_rows])
    band_rows, band_values = at_rows[scored], at_values[scored]
    noise = compute_noise_at(params.seed, positions[band_rows], at_ids[scored])
    scores = band_values + params.temperature * noise
    # The m-th lowest band score of each row; unscored band tokens are the lowest (below own).
    rank = m - torch.bincount(at_rows[band & ~scored], minlength=z.shape[0])  # its place among the row's scored, from 1
    lowest = torch.full_like(own, -math.inf)
    if scores.numel() > 0:
        by_score = torch.argsort(scores, stable=True)
        by_row = by_score[torch.argsort(band_rows[by_score], stable=True)]  # row by row, each ascending
        counts = torch.bincount(band_rows, minlength=z.shape[0])
        start = torch.cumsum(counts, 0) - counts
        picked = scores[by_row][(start + rank - 1).clamp(0, scores.numel() - 1)]
        lowest = torch.where(rank >= 1, picked, lowest)
    return torch.where(m >= 1, lowest, torch.full_like(lowest, -math.inf)), z_next


def _best_full_rows(z: torch.Tensor, seed: int, temperature: float, positions: torch.Tensor) -> torch.Tensor:
    """Row-wise max of ``z + T * g`` over the whole vocabulary (no filters and too little to prune)."""
    rows = zip(z, positions.tolist(), strict=True)
    best = [(row + temperature * compute_noise(seed, position, z.shape[-1])).max() for row, position in rows]
    return torch.stack(best) if best else z.new_zeros(0)


def _best_scores(
    z: torch.Tensor,
    z_tok: torch.Tensor,
    own: torch.Tensor,
    head: TensorPair | None,
    params: SamplingParams,
    delta: float,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Row-wise best perturbed score over the rivals: the inner set, the proposed token (logit
    ``z_tok``, score ``own``), every token more than ``delta`` above it, the tokens above
    ``z_(n+1) + delta`` and the boundary floor (``_boundary_floor``)."""
    bounds, table = _top_k_bounds(head, params), _top_p_table(head, params)
    values, ids, valid = _rival_candidates(z, own, head, bounds, delta, params.temperature * GUMBEL_MAX)
    if head is None and 2 * values.shape[-1] > z.shape[-1]:  # per-token noise would cost more than whole rows
        return _best_full_rows(z, params.seed, params.temperature, positions)
    # Tokens above z_tok + delta are in ``values``: with top-k they rank above the k-th logit
    # whenever the token is in the outer set (else its margin is -inf anyway).
    above = values > (z_tok + delta)[:, None]
    rivals = (valid & _is_inner(values, bounds, table, params, delta)) | above
    floor = None
    if head is not None:  # filters: the top n are kept whatever the error, so are the tokens above z_(n+1) + delta
        floor, z_next = _boundary_floor(z, own, head, table, params, delta, positions)
        rivals |= valid & (values > (z_next + delta)[:, None])  # with top-k, n <= k: all among ``values``
    cand_rows, cand_cols = torch.nonzero(rivals, as_tuple=True)
    cand_tokens = ids[cand_rows, cand_cols]
    noise = compute_noise_at(params.seed, positions[cand_rows], cand_tokens)
    scores = values[cand_rows, cand_cols] + params.temperature * noise
    best = own.scatter_reduce(0, cand_rows, scores, reduce="amax")  # the proposed token always competes
    return best if floor is None else torch.maximum(best, floor)


def compute_margins(logits: torch.Tensor, tokens: list[int], params: SamplingParams, delta: float) -> list[float]:
    """Margins of every position of an output; ``logits[i]`` is the row that predicts ``tokens[i]``.

    ``MARGIN_CHUNK_ROWS`` positions at a time (a sampled row's working set is a few float64 copies of
    the vocabulary, sorted: all of a long output at once would take gigabytes), and noise only for
    tokens that could outscore the proposed one (``_rival_candidates``): the same margins as
    evaluating every token of every row.
    """
    if params.is_greedy:
        z = logits.to(torch.float64)
        z_tok = z[torch.arange(z.shape[0]), torch.tensor(tokens, dtype=torch.long)]
        return (z_tok - z.max(dim=1).values).tolist()
    margins: list[float] = []
    for start in range(0, len(tokens), MARGIN_CHUNK_ROWS):
        stop = start + MARGIN_CHUNK_ROWS
        margins += _compute_sampled_margins(logits[start:stop], tokens[start:stop], params, delta, start)
    return margins


def _compute_sampled_margins(
    logits: torch.Tensor, tokens: list[int], params: SamplingParams, delta: float, first_position: int
) -> list[float]:
    """``compute_margins`` of consecutive positions from ``first_position`` (the noise's position)."""
    z = logits.to(torch.float64)
    rows, index = torch.arange(z.shape[0]), torch.tensor(tokens, dtype=torch.long)
    positions = rows + first_position
    z_tok = z[rows, index]
    own = z_tok + params.temperature * compute_noise_at(params.seed, positions, index)
    head = _sorted_head(z, params)
    best = _best_scores(z, z_tok, own, head, params, delta, positions)
    outer_table = _outer_top_p_table(z, head, _top_p_table(head, params), params, delta)
    outer = _is_outer(z_tok, _top_k_bounds(head, params), outer_table, params, delta)
    return torch.where(outer, own - best, torch.full_like(own, -math.inf)).tolist()
