"""Both BN254 backends give identical results on random inputs (py-ecc is the reference)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avs.crypto.backends import Bn254Backend, get_backend, load_backend
from avs.crypto.curve import (
    FP_MODULUS,
    FR_MODULUS,
    G1_GENERATOR,
    G2_GENERATOR,
    G1Point,
    is_on_curve_g1,
    is_on_curve_g2,
    negate_g1,
)
from tests.helpers import find_twist_point_outside_subgroup

scalars = st.integers(min_value=0, max_value=2**256 - 1)
small = st.integers(min_value=1, max_value=FR_MODULUS - 1)
FAST = load_backend("mcl")
REFERENCE = load_backend("py_ecc")


def test_default_backend_is_the_fast_one() -> None:
    assert get_backend().name == "mcl"


@settings(max_examples=40)
@given(scalars, scalars)
def test_g1_arithmetic_matches(a: int, b: int) -> None:
    pa, pb = FAST.g1_mul(G1_GENERATOR, a), FAST.g1_mul(G1_GENERATOR, b)
    assert pa == REFERENCE.g1_mul(G1_GENERATOR, a)
    assert is_on_curve_g1(pa)
    assert FAST.g1_add(pa, pb) == REFERENCE.g1_add(pa, pb) == FAST.g1_mul(G1_GENERATOR, a + b)
    assert FAST.g1_add(pa, negate_g1(pa)).is_identity()


@settings(max_examples=10)
@given(scalars, scalars)
def test_g2_arithmetic_matches(a: int, b: int) -> None:
    qa, qb = FAST.g2_mul(G2_GENERATOR, a), REFERENCE.g2_mul(G2_GENERATOR, b)
    assert qa == REFERENCE.g2_mul(G2_GENERATOR, a)
    assert is_on_curve_g2(qa)
    assert FAST.g2_add(qa, qb) == REFERENCE.g2_add(qa, qb)


@settings(max_examples=10)
@given(st.lists(scalars, min_size=0, max_size=6), st.data())
def test_multi_scalar_multiplication_matches(ks: list[int], data: st.DataObject) -> None:
    points = [FAST.g1_mul(G1_GENERATOR, data.draw(small)) for _ in ks]
    assert FAST.g1_multi_mul(points, ks) == REFERENCE.g1_multi_mul(points, ks)


@settings(max_examples=5)
@given(small, small, st.booleans())
def test_pairing_checks_match(a: int, b: int, break_it: bool) -> None:
    # e(a·b·G1, G2) · e(-a·G1, b·G2) == 1, unless we perturb the first factor.
    ab = a * b + (1 if break_it else 0)
    pairs = [
        (FAST.g1_mul(G1_GENERATOR, ab), G2_GENERATOR),
        (negate_g1(FAST.g1_mul(G1_GENERATOR, a)), FAST.g2_mul(G2_GENERATOR, b)),
    ]
    results = {backend.name: backend.pairing_product_is_one(pairs) for backend in (FAST, REFERENCE)}
    assert results == {"mcl": not break_it, "py_ecc": not break_it}


def test_subgroup_checks_match(backend: Bn254Backend) -> None:
    assert backend.is_in_g2_subgroup(backend.g2_mul(G2_GENERATOR, 12345))
    assert not backend.is_in_g2_subgroup(find_twist_point_outside_subgroup())


def test_identity_handling(backend: Bn254Backend) -> None:
    assert backend.g1_mul(G1_GENERATOR, FR_MODULUS).is_identity()
    assert backend.g2_mul(G2_GENERATOR, 0).is_identity()
    assert backend.g1_multi_mul([], []).is_identity()
    assert backend.pairing_product_is_one([])


def test_the_fast_backend_refuses_a_coordinate_past_the_field_modulus() -> None:
    """Found in review: for (x + p, y), which py_ecc reduces to (x, y), mcl computed with another
    point, so the two backends answered differently for a point no parser had checked. mcl refuses
    it now (every parser of network input refuses it before)."""
    point = FAST.g1_mul(G1_GENERATOR, 7)
    for unreduced in (G1Point(point.x + FP_MODULUS, point.y), G1Point(point.x, point.y + FP_MODULUS)):
        with pytest.raises(ValueError, match="field modulus"):
            FAST.g1_add(unreduced, point)


def test_falling_back_to_py_ecc_is_logged() -> None:
    script = (
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "from avs.crypto import backends\n"
        "backends.load_backend = (lambda name, real=backends.load_backend: "
        "real(name) if name == 'py_ecc' else (_ for _ in ()).throw(backends.BackendUnavailableError('no mcl')))\n"
        "assert backends.get_backend().name == 'py_ecc'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "mcl unavailable (no mcl); using py_ecc" in result.stderr


FIRST_USE_FROM_MANY_THREADS = """
import threading
from avs.crypto import bls
start = threading.Barrier(16)
results = []
def verify():
    start.wait()  # the first use of the backend, in 16 threads at once
    keys = bls.compute_key_pair(bls.SecretKey(5))
    results.append(bls.verify(keys.pubkey_g2, b"\\x11" * 32, bls.sign(keys.secret, b"\\x11" * 32)))
threads = [threading.Thread(target=verify) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
assert results == [True] * 16, results
"""


@pytest.mark.parametrize("attempt", range(5))
def test_first_use_from_many_threads_loads_the_backend_once(attempt: int) -> None:
    """Regression: two threads loading mcl at once (two ``mclBn_init`` calls) crashed the aggregator
    with SIGSEGV/SIGFPE. A fresh interpreter per attempt, so the first load is the one raced."""
    result = subprocess.run([sys.executable, "-c", FIRST_USE_FROM_MANY_THREADS], capture_output=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr.decode()[-2000:])
