"""Reference backend: py-ecc's optimized_bn128 (pure Python, about 0.3 s per pairing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from py_ecc import optimized_bn128 as bn
from py_ecc.optimized_bn128 import optimized_pairing

from avs.crypto.curve import FR_MODULUS, G1_IDENTITY, G2_IDENTITY, G1Point, G2Point

_Point = Any  # py-ecc's projective tuples are loosely typed


def _to_g1(point: G1Point) -> _Point:
    if point.is_identity():
        return bn.Z1
    return (bn.FQ(point.x), bn.FQ(point.y), bn.FQ.one())


def _from_g1(point: _Point) -> G1Point:
    if bn.is_inf(point):
        return G1_IDENTITY
    x, y = bn.normalize(point)
    return G1Point(int(x), int(y))


def _to_g2(point: G2Point) -> _Point:
    if point.is_identity():
        return bn.Z2
    return (bn.FQ2([point.x_re, point.x_im]), bn.FQ2([point.y_re, point.y_im]), bn.FQ2.one())


def _from_g2(point: _Point) -> G2Point:
    if bn.is_inf(point):
        return G2_IDENTITY
    x, y = bn.normalize(point)
    return G2Point(x_im=int(x.coeffs[1]), x_re=int(x.coeffs[0]), y_im=int(y.coeffs[1]), y_re=int(y.coeffs[0]))


class PyEccBackend:
    name = "py_ecc"

    def g1_add(self, a: G1Point, b: G1Point) -> G1Point:
        return _from_g1(bn.add(_to_g1(a), _to_g1(b)))

    def g1_mul(self, point: G1Point, scalar: int) -> G1Point:
        return _from_g1(bn.multiply(_to_g1(point), scalar % FR_MODULUS))

    def g1_mul_secret(self, point: G1Point, scalar: int) -> G1Point:
        return self.g1_mul(point, scalar)  # py-ecc has no constant-time path: the reference only

    def g1_multi_mul(self, points: Sequence[G1Point], scalars: Sequence[int]) -> G1Point:
        total = bn.Z1
        for point, scalar in zip(points, scalars, strict=True):
            total = bn.add(total, bn.multiply(_to_g1(point), scalar % FR_MODULUS))
        return _from_g1(total)

    def g2_add(self, a: G2Point, b: G2Point) -> G2Point:
        return _from_g2(bn.add(_to_g2(a), _to_g2(b)))

    def g2_mul(self, point: G2Point, scalar: int) -> G2Point:
        return _from_g2(bn.multiply(_to_g2(point), scalar % FR_MODULUS))

    def g2_mul_secret(self, point: G2Point, scalar: int) -> G2Point:
        return self.g2_mul(point, scalar)

    def is_in_g2_subgroup(self, point: G2Point) -> bool:
        return bool(bn.is_inf(bn.multiply(_to_g2(point), FR_MODULUS)))

    def pairing_product_is_one(self, pairs: Sequence[tuple[G1Point, G2Point]]) -> bool:
        product = bn.FQ12.one()
        for p, q in pairs:
            if p.is_identity() or q.is_identity():
                continue  # e(O, Q) = e(P, O) = 1
            product = product * optimized_pairing.pairing(_to_g2(q), _to_g1(p), final_exponentiate=False)
        return bool(optimized_pairing.final_exponentiate(product) == bn.FQ12.one())
