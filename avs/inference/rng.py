"""The counter-based noise of the canonical decoding rule: Philox4x32-10, integers only.

Sampling noise must be the same on every machine, so it comes from a keyed counter hash rather
than a stateful generator. For request seed ``s`` (uint64), output position ``i`` (uint32) and
token id ``t``:

1. ``key = (s mod 2^32, s >> 32)``, ``counter = (t >> 1, i, GUMBEL_STREAM, 0)``;
2. ``(w0, w1, w2, w3) = Philox4x32-10(counter, key)`` (Salmon et al., SC'11; the Random123
   reference, known-answer vectors in ``tests/inference/test_rng.py``);
3. ``x = w0 << 32 | w1`` for even ``t``, ``x = w2 << 32 | w3`` for odd ``t`` (a uint64);
4. ``u = (2 * (x >> 12) + 1) / 2^53``: an odd multiple of ``2^-53``, exactly representable in
   float64 and strictly inside (0, 1);
5. ``g = -log(-log(u))``: a standard Gumbel variate.

Steps 1-4 are integer arithmetic (and one exact float conversion), bit-identical everywhere.
Step 5 goes through the platform's float64 ``log`` (correctly rounded or within one ulp, about
1e-16 relative): far below the verification tolerance, which absorbs it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from avs.errors import InvalidInputError

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
GUMBEL_STREAM = 0x47554D42  # "GUMB": the counter word that names this use of the generator
MASK32 = 0xFFFFFFFF
UNIFORM_SCALE = 2.0**-53
# No noise value exceeds this: the largest u is 1 - 2^-53, and -log(-log(1 - 2^-53)) = 36.7368...
# (a test checks the float64 value). Verification uses it to skip tokens that can never win.
GUMBEL_MAX = 36.75

Words = tuple[int, int, int, int]
U64Array = npt.NDArray[np.uint64]
F64Array = npt.NDArray[np.float64]


def _check_word(name: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise InvalidInputError(f"{name} must be an integer in [0, 2^{bits})")


def compute_philox4x32(counter: Words, key: tuple[int, int], rounds: int = PHILOX_ROUNDS) -> Words:
    """Philox4x32 on Python integers: the reference the vectorized version is tested against."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        p0, p1 = PHILOX_M0 * c0, PHILOX_M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32)
    return c0, c1, c2, c3


def _philox_vector(c0: U64Array, c1: U64Array | int, key: tuple[int, int]) -> tuple[U64Array, ...]:
    """Philox4x32-10 over many counters ``(c0, c1, GUMBEL_STREAM, 0)`` at once (uint64 lanes, 32-bit words).

    The round of ``compute_philox4x32``, written with ``out=`` buffers: no temporary array per
    operation (a vocabulary-sized row is drawn every step of unfiltered sampling).
    """
    mask, m0, m1, shift = np.uint64(MASK32), np.uint64(PHILOX_M0), np.uint64(PHILOX_M1), np.uint64(32)
    x0 = c0.astype(np.uint64)  # a copy: updated in place below
    x1 = np.broadcast_to(np.asarray(c1, dtype=np.uint64), x0.shape).copy()
    x2, x3 = np.full_like(x0, GUMBEL_STREAM), np.zeros_like(x0)
    p0, p1 = np.empty_like(x0), np.empty_like(x0)
    k0, k1 = key
    for r in range(PHILOX_ROUNDS):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        np.multiply(m0, x0, out=p0)  # < 2^64: exact in uint64
        np.multiply(m1, x2, out=p1)
        # (x0, x1, x2, x3) = (hi(p1) ^ x1 ^ k0, lo(p1), hi(p0) ^ x3 ^ k1, lo(p0)); x1 and x3 are read first.
        np.bitwise_xor(np.right_shift(p1, shift, out=x0), x1, out=x0)
        np.bitwise_xor(x0, np.uint64(k0), out=x0)
        np.bitwise_xor(np.right_shift(p0, shift, out=x2), x3, out=x2)
        np.bitwise_xor(x2, np.uint64(k1), out=x2)
        np.bitwise_and(p1, mask, out=x1)
        np.bitwise_and(p0, mask, out=x3)
    return x0, x1, x2, x3


def _key(seed: int) -> tuple[int, int]:
    _check_word("seed", seed, 64)
    return seed & MASK32, seed >> 32


def compute_random_u64(seed: int, position: int, vocab_size: int) -> U64Array:
    """The uint64 ``x`` of step 3 for every token id ``0 .. vocab_size-1`` at one position."""
    _check_word("position", position, 32)
    blocks = np.arange((vocab_size + 1) // 2, dtype=np.uint64)
    w0, w1, w2, w3 = _philox_vector(blocks, position, _key(seed))
    shift = np.uint64(32)
    out = np.empty(2 * len(blocks), dtype=np.uint64)
    out[0::2] = (w0 << shift) | w1
    out[1::2] = (w2 << shift) | w3
    return out[:vocab_size]


def compute_random_u64_at(seed: int, positions: U64Array, tokens: U64Array) -> U64Array:
    """Step 3 for arbitrary (position, token) pairs: the same numbers as ``compute_random_u64``."""
    if positions.size and (int(positions.max()) > MASK32 or int(tokens.max()) >= 2**33):
        raise InvalidInputError("positions must be below 2^32 and token ids below 2^33")
    shift = np.uint64(32)
    w0, w1, w2, w3 = _philox_vector(tokens >> np.uint64(1), positions, _key(seed))
    even = (tokens & np.uint64(1)) == 0
    result: U64Array = np.where(even, (w0 << shift) | w1, (w2 << shift) | w3)
    return result


def compute_uniform_from_u64(x: U64Array) -> F64Array:
    """Step 4: ``u = (2 * (x >> 12) + 1) * 2^-53`` in (0, 1), exact."""
    odd = (x >> np.uint64(12)) * np.uint64(2) + np.uint64(1)  # < 2^53: exact as float64
    result: F64Array = odd.astype(np.float64) * UNIFORM_SCALE
    return result


def compute_gumbel_at(seed: int, positions: U64Array, tokens: U64Array) -> F64Array:
    """Steps 3-5 for arbitrary (position, token) pairs."""
    result: F64Array = -np.log(-np.log(compute_uniform_from_u64(compute_random_u64_at(seed, positions, tokens))))
    return result


def compute_uniform(seed: int, position: int, vocab_size: int) -> F64Array:
    """Step 4: ``u = (2 * (x >> 12) + 1) * 2^-53`` in (0, 1), exact."""
    return compute_uniform_from_u64(compute_random_u64(seed, position, vocab_size))


def compute_gumbel(seed: int, position: int, vocab_size: int) -> F64Array:
    """Step 5: one standard Gumbel variate per token id."""
    result: F64Array = -np.log(-np.log(compute_uniform(seed, position, vocab_size)))
    return result


def compute_uniform_scalar(seed: int, position: int, token: int) -> float:
    """Steps 1-4 for one token on Python integers (reference; used in tests and docs)."""
    words = compute_philox4x32((token >> 1, position, GUMBEL_STREAM, 0), (seed & MASK32, seed >> 32))
    x = (words[0] << 32 | words[1]) if token % 2 == 0 else (words[2] << 32 | words[3])
    return float(2 * (x >> 12) + 1) * UNIFORM_SCALE
