"""Conversions between protobuf messages and domain types, validating everything that arrives.

Incoming points are parsed strictly (length, canonical field element, on the curve, G2 subgroup),
so a servicer never hands an unchecked point to the crypto code.
"""

from __future__ import annotations

from avs.crypto.bls import parse_g2
from avs.crypto.curve import G1Point, G2Point, parse_g1
from avs.errors import EncodingError
from avs.rpc.common.v1 import bn254_pb2 as pb


def _to_word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _from_word(name: str, data: bytes) -> int:
    if len(data) != 32:
        raise EncodingError(f"{name} must be 32 bytes, got {len(data)}")
    return int.from_bytes(data, "big")


def g1_to_proto(point: G1Point) -> pb.G1Point:
    return pb.G1Point(x=_to_word(point.x), y=_to_word(point.y))


def g1_from_proto(message: pb.G1Point, *, allow_identity: bool = False) -> G1Point:
    return parse_g1(_from_word("x", message.x), _from_word("y", message.y), allow_identity=allow_identity)


def g2_to_proto(point: G2Point) -> pb.G2Point:
    return pb.G2Point(
        x_im=_to_word(point.x_im), x_re=_to_word(point.x_re), y_im=_to_word(point.y_im), y_re=_to_word(point.y_re)
    )


def g2_from_proto(message: pb.G2Point) -> G2Point:
    """A G2 public key from the wire; raises ``InvalidPointError`` unless it is in the subgroup."""
    x = (_from_word("x_im", message.x_im), _from_word("x_re", message.x_re))
    y = (_from_word("y_im", message.y_im), _from_word("y_re", message.y_re))
    return parse_g2(x, y)
