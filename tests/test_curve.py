from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avs.crypto.bls import parse_g2
from avs.crypto.curve import (
    FP_MODULUS,
    G1_GENERATOR,
    G2_GENERATOR,
    G1Point,
    is_on_curve_g1,
    is_on_curve_g2,
    negate_g1,
    parse_g1,
    parse_g2_on_curve,
)
from avs.errors import AvsError, InvalidPointError
from tests.helpers import find_twist_point_outside_subgroup

field = st.integers(min_value=0, max_value=FP_MODULUS - 1)


def test_generators_are_on_their_curves() -> None:
    assert is_on_curve_g1(G1_GENERATOR)
    assert is_on_curve_g2(G2_GENERATOR)


def test_parse_g1_accepts_generator_and_rejects_identity_unless_allowed() -> None:
    assert parse_g1(1, 2) == G1_GENERATOR
    with pytest.raises(InvalidPointError):
        parse_g1(0, 0)
    assert parse_g1(0, 0, allow_identity=True).is_identity()


@pytest.mark.parametrize(
    ("x", "y"),
    [(1, 3), (FP_MODULUS + 1, 2), (1, 2 + FP_MODULUS), (-1, 2), (0, 1)],
    ids=["off-curve", "non-canonical-x", "non-canonical-y", "negative", "half-identity"],
)
def test_parse_g1_rejects_malformed_points(x: int, y: int) -> None:
    with pytest.raises(InvalidPointError) as info:
        parse_g1(x, y)
    assert isinstance(info.value, AvsError) and isinstance(info.value, ValueError)


def _curve_point_or_near_miss() -> st.SearchStrategy[tuple[int, int]]:
    """Random pairs (almost never on the curve), points k*G, and such points with one coordinate
    moved by a small step: every branch of the check gets examples."""
    from avs.crypto.backends import get_backend

    points = st.integers(1, 2**64).map(lambda k: get_backend().g1_mul(G1_GENERATOR, k)).map(lambda p: (p.x, p.y))
    moved = st.tuples(points, st.integers(1, 3), st.booleans()).map(
        lambda t: ((t[0][0] + t[1]) % FP_MODULUS, t[0][1]) if t[2] else (t[0][0], (t[0][1] + t[1]) % FP_MODULUS)
    )
    return st.one_of(st.tuples(field, field), points, moved)


@given(_curve_point_or_near_miss())
def test_parse_g1_agrees_with_the_curve_equation(point: tuple[int, int]) -> None:
    x, y = point
    on_curve = (y * y - x**3 - 3) % FP_MODULUS == 0
    if on_curve and (x, y) != (0, 0):
        assert parse_g1(x, y) == G1Point(x, y)
    else:
        with pytest.raises(InvalidPointError):
            parse_g1(x, y)


def test_negation_keeps_points_on_the_curve() -> None:
    assert negate_g1(G1_GENERATOR) == G1Point(1, FP_MODULUS - 2)
    assert is_on_curve_g1(negate_g1(G1_GENERATOR))


def test_parse_g2_takes_solidity_order() -> None:
    g = G2_GENERATOR
    assert parse_g2((g.x_im, g.x_re), (g.y_im, g.y_re)) == g
    with pytest.raises(InvalidPointError):
        parse_g2((g.x_re, g.x_im), (g.y_re, g.y_im))  # swapped: real-first is another (invalid) point


def test_parse_g2_rejects_a_twist_point_outside_the_subgroup() -> None:
    outside = find_twist_point_outside_subgroup()
    coords = ((outside.x_im, outside.x_re), (outside.y_im, outside.y_re))
    assert parse_g2_on_curve(*coords) == outside  # on the twist...
    with pytest.raises(InvalidPointError, match="subgroup"):
        parse_g2(*coords)  # ...but not a valid public key


def test_parse_g2_rejects_identity_and_non_canonical() -> None:
    with pytest.raises(InvalidPointError):
        parse_g2((0, 0), (0, 0))
    g = G2_GENERATOR
    with pytest.raises(InvalidPointError):
        parse_g2((g.x_im + FP_MODULUS, g.x_re), (g.y_im, g.y_re))
