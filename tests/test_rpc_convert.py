"""Points over gRPC: round trips, and strict validation of what arrives."""

from __future__ import annotations

import pytest

from avs.crypto import bls
from avs.errors import EncodingError, InvalidPointError
from avs.rpc import convert
from avs.rpc.common.v1 import bn254_pb2 as pb
from tests.helpers import find_twist_point_outside_subgroup


def test_round_trip_through_wire_bytes() -> None:
    pair = bls.compute_key_pair(bls.SecretKey(99))
    g1 = pb.G1Point.FromString(convert.g1_to_proto(pair.pubkey_g1).SerializeToString())
    g2 = pb.G2Point.FromString(convert.g2_to_proto(pair.pubkey_g2).SerializeToString())
    assert convert.g1_from_proto(g1) == pair.pubkey_g1
    assert convert.g2_from_proto(g2) == pair.pubkey_g2


def test_wrong_lengths_and_invalid_points_are_refused() -> None:
    with pytest.raises(EncodingError, match="32 bytes"):
        convert.g1_from_proto(pb.G1Point(x=b"\x01", y=b"\x02"))
    with pytest.raises(InvalidPointError):
        convert.g1_from_proto(pb.G1Point(x=(1).to_bytes(32, "big"), y=(3).to_bytes(32, "big")))
    with pytest.raises(InvalidPointError):
        convert.g1_from_proto(pb.G1Point(x=bytes(32), y=bytes(32)))
    with pytest.raises(InvalidPointError, match="subgroup"):
        convert.g2_from_proto(convert.g2_to_proto(find_twist_point_outside_subgroup()))
