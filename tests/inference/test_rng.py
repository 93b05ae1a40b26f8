"""The counter-based generator: Random123 known answers, determinism, range, vector = scalar."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from avs.errors import InvalidInputError
from avs.inference.rng import (
    GUMBEL_MAX,
    MASK32,
    compute_gumbel,
    compute_gumbel_at,
    compute_philox4x32,
    compute_random_u64,
    compute_uniform,
    compute_uniform_from_u64,
    compute_uniform_scalar,
)

# Philox4x32-10 known-answer vectors from Random123's kat_vectors: (counter, key, output).
RANDOM123_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

# Our own stream (seed, position, token) -> uniform: fixed here so any change to the rule shows.
UNIFORM_KAT = [
    ((12345, 7, 0), 0.8795780248245794),
    ((12345, 7, 1), 0.13665819645496147),
    ((12345, 7, 2), 0.46209825944049576),
    ((12345, 7, 3), 0.24806306993894822),
    ((2**64 - 1, 2**32 - 1, 0), 0.27339261753850386),
    ((2**64 - 1, 2**32 - 1, 1), 0.7949395141550092),
]

seeds = st.integers(0, 2**64 - 1)
positions = st.integers(0, 2**32 - 1)


@pytest.mark.parametrize(("counter", "key", "expected"), RANDOM123_KAT)
def test_philox_matches_random123(
    counter: tuple[int, int, int, int], key: tuple[int, int], expected: tuple[int, ...]
) -> None:
    assert compute_philox4x32(counter, key) == expected


@pytest.mark.parametrize(("args", "expected"), UNIFORM_KAT)
def test_uniform_known_answers(args: tuple[int, int, int], expected: float) -> None:
    seed, position, token = args
    assert compute_uniform_scalar(seed, position, token) == expected
    assert compute_uniform(seed, position, token + 1)[token] == expected


@given(seeds, positions, st.integers(1, 64))
def test_vector_equals_scalar_reference(seed: int, position: int, vocab: int) -> None:
    vector = compute_uniform(seed, position, vocab)
    assert [compute_uniform_scalar(seed, position, t) for t in range(vocab)] == vector.tolist()


@given(seeds, positions, st.integers(1, 300))
def test_deterministic_and_in_open_unit_interval(seed: int, position: int, vocab: int) -> None:
    first, second = compute_uniform(seed, position, vocab), compute_uniform(seed, position, vocab)
    assert np.array_equal(first, second)
    assert bool(np.all(first > 0.0)) and bool(np.all(first < 1.0))
    assert np.all(np.isfinite(compute_gumbel(seed, position, vocab)))


@given(seeds, positions, st.lists(st.integers(0, 999), min_size=1, max_size=20))
def test_subset_noise_equals_full_noise(seed: int, position: int, tokens: list[int]) -> None:
    full = compute_gumbel(seed, position, 1000)
    subset = compute_gumbel_at(seed, np.full(len(tokens), position, dtype=np.uint64), np.array(tokens, dtype=np.uint64))
    assert subset.tolist() == full[tokens].tolist()


@given(seeds, positions)
def test_streams_differ_by_seed_and_position(seed: int, position: int) -> None:
    base = compute_random_u64(seed, position, 8)
    assert not np.array_equal(base, compute_random_u64(seed ^ 1, position, 8))
    assert not np.array_equal(base, compute_random_u64(seed, position ^ 1, 8))


def test_uniform_is_roughly_uniform_and_gumbel_has_its_mean() -> None:
    u = compute_uniform(1, 0, 200_000)
    assert abs(float(u.mean()) - 0.5) < 0.005
    g = compute_gumbel(1, 0, 200_000)
    assert abs(float(g.mean()) - 0.5772156649) < 0.01  # Euler-Mascheroni
    assert float(g.max()) < -math.log(-math.log(1 - 2**-53)) + 1e-9


@pytest.mark.parametrize(("seed", "position"), [(-1, 0), (2**64, 0), (0, -1), (0, 2**32)])
def test_out_of_range_inputs_are_rejected(seed: int, position: int) -> None:
    with pytest.raises(InvalidInputError):
        compute_uniform(seed, position, 4)


def test_no_noise_value_exceeds_the_bound_verification_prunes_with() -> None:
    largest = np.array([2**64 - 1, 2**64 - 2**12], dtype=np.uint64)  # both map to u = 1 - 2^-53
    uniform = compute_uniform_from_u64(largest)
    assert uniform.tolist() == [1 - 2**-53] * 2
    assert float(np.max(-np.log(-np.log(uniform)))) <= GUMBEL_MAX < 36.74 + 0.02


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
def test_gumbel_noise_stays_below_the_bound(seed: int, position: int) -> None:
    assert float(compute_gumbel(seed, position, 64).max()) <= GUMBEL_MAX
