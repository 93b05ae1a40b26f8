"""BN254 (alt_bn128) constants and backend-independent point types.

Points cross every boundary of the project as plain integers in *affine* coordinates, the way
the EVM precompiles and EigenLayer's ``BN254.sol`` see them:

- the identity is ``(0, 0)`` (``(0, 0, 0, 0)`` in G2), as the precompiles encode it;
- a G2 coordinate is an element ``re + im·i`` of Fp2 and is written in **Solidity order**
  ``[im, re]``, matching ``BN254.G2Point.X[0]`` = imaginary part.

Parsing is strict (``parse_*`` raise ``InvalidPointError``); the G2 subgroup check needs a
scalar multiplication and is done by the backend (see ``avs.crypto.backends``).
"""

from __future__ import annotations

from dataclasses import dataclass

from avs.errors import InvalidPointError

# Base field modulus (FP_MODULUS in BN254.sol) and group order (FR_MODULUS).
FP_MODULUS = 21888242871839275222246405745257275088696311157297823662689037894645226208583
FR_MODULUS = 21888242871839275222246405745257275088548364400416034343698204186575808495617

G1_B = 3
# Twist coefficient b2 = 3 / (9 + i), as (re, im).
G2_B = (
    19485874751759354771024239261021720505790618469301721065564631296452457478373,
    266929791119991161246907387137283842545076965332900288569378510910307636690,
)


@dataclass(frozen=True, slots=True)
class G1Point:
    """Affine G1 point; ``G1Point(0, 0)`` is the identity."""

    x: int
    y: int

    def is_identity(self) -> bool:
        return self.x == 0 and self.y == 0

    def to_json(self) -> dict[str, str]:
        return {"X": str(self.x), "Y": str(self.y)}


@dataclass(frozen=True, slots=True)
class G2Point:
    """Affine G2 point with coordinates ``x = x_re + x_im·i`` and ``y = y_re + y_im·i``."""

    x_im: int
    x_re: int
    y_im: int
    y_re: int

    def is_identity(self) -> bool:
        return self.x_im == self.x_re == self.y_im == self.y_re == 0

    def to_solidity(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``([X.im, X.re], [Y.im, Y.re])`` as ``BN254.G2Point`` stores it."""
        return (self.x_im, self.x_re), (self.y_im, self.y_re)

    def to_json(self) -> dict[str, list[str]]:
        return {"X": [str(self.x_im), str(self.x_re)], "Y": [str(self.y_im), str(self.y_re)]}


G1_IDENTITY = G1Point(0, 0)
G2_IDENTITY = G2Point(0, 0, 0, 0)
G1_GENERATOR = G1Point(1, 2)
G2_GENERATOR = G2Point(
    x_im=11559732032986387107991004021392285783925812861821192530917403151452391805634,
    x_re=10857046999023057135944570762232829481370756359578518086990519993285655852781,
    y_im=4082367875863433681332203403145435568316851327593401208105741076214120093531,
    y_re=8495653923123431417604973247489272438418190587263600148770280649306958101930,
)


def _fp2_mul(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """(re, im) product in Fp2 = Fp[i]/(i^2 + 1)."""
    return (
        (a[0] * b[0] - a[1] * b[1]) % FP_MODULUS,
        (a[0] * b[1] + a[1] * b[0]) % FP_MODULUS,
    )


def is_on_curve_g1(point: G1Point) -> bool:
    """True for the identity and for canonical points on y^2 = x^3 + 3."""
    if point.is_identity():
        return True
    if not (0 <= point.x < FP_MODULUS and 0 <= point.y < FP_MODULUS):
        return False
    return (point.y * point.y - point.x**3 - G1_B) % FP_MODULUS == 0


def is_on_curve_g2(point: G2Point) -> bool:
    """True for the identity and for canonical points on the twist y^2 = x^3 + b2."""
    coords = (point.x_im, point.x_re, point.y_im, point.y_re)
    if not all(0 <= c < FP_MODULUS for c in coords):
        return False
    if point.is_identity():
        return True
    x = (point.x_re, point.x_im)
    y = (point.y_re, point.y_im)
    x3 = _fp2_mul(_fp2_mul(x, x), x)
    y2 = _fp2_mul(y, y)
    return (y2[0] - x3[0] - G2_B[0]) % FP_MODULUS == 0 and (y2[1] - x3[1] - G2_B[1]) % FP_MODULUS == 0


def negate_g1(point: G1Point) -> G1Point:
    if point.is_identity():
        return point
    return G1Point(point.x, (FP_MODULUS - point.y) % FP_MODULUS)


def parse_g1(x: int, y: int, *, allow_identity: bool = False) -> G1Point:
    """A G1 point from untrusted coordinates; raises ``InvalidPointError`` if it is not one.

    G1 has cofactor 1, so on the curve means in the group.
    """
    point = G1Point(x, y)
    if not is_on_curve_g1(point):
        raise InvalidPointError(f"not a canonical point on BN254 G1: ({x}, {y})")
    if point.is_identity() and not allow_identity:
        raise InvalidPointError("the G1 identity is not allowed here")
    return point


def parse_g2_on_curve(x: tuple[int, int], y: tuple[int, int], *, allow_identity: bool = False) -> G2Point:
    """A G2 point from Solidity-order coordinates ``[im, re]``, checked to be on the twist.

    This does NOT check subgroup membership; use ``avs.crypto.bls.parse_g2`` for untrusted keys.
    """
    point = G2Point(x_im=x[0], x_re=x[1], y_im=y[0], y_re=y[1])
    if not is_on_curve_g2(point):
        raise InvalidPointError(f"not a canonical point on the BN254 G2 twist: X={list(x)} Y={list(y)}")
    if point.is_identity() and not allow_identity:
        raise InvalidPointError("the G2 identity is not allowed here")
    return point
