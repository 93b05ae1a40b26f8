"""Test-only constructions: points that are valid in one sense and invalid in another."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
from py_ecc.fields import optimized_bn128_FQ2 as FQ2

from avs.client import AggregatorClient
from avs.crypto.curve import FP_MODULUS, G2_B, G2Point
from avs.rpc.aggregator.v1 import aggregator_pb2_grpc as ag_grpc

_P = FP_MODULUS


def _fq2_sqrt(a: FQ2) -> FQ2 | None:
    """Square root in Fp2 for p = 3 mod 4 (Adj and Rodriguez-Henriquez, algorithm 9)."""
    a1 = a ** ((_P - 3) // 4)
    alpha = a1 * (a1 * a)
    a0 = (alpha**_P) * alpha
    minus_one = FQ2([_P - 1, 0])
    if a0 == minus_one:
        return None
    x0 = a1 * a
    factor = FQ2([0, 1]) if alpha == minus_one else (FQ2.one() + alpha) ** ((_P - 1) // 2)
    root = factor * x0
    return root if root * root == a else None


def find_twist_point_outside_subgroup(start: int = 1) -> G2Point:
    """A point on the G2 twist that is (with overwhelming probability) not in the r-subgroup."""
    b2 = FQ2([G2_B[0], G2_B[1]])
    for x_re in range(start, start + 1000):
        x = FQ2([x_re, 1])
        y = _fq2_sqrt(x * x * x + b2)
        if y is not None:
            return G2Point(x_im=int(x.coeffs[1]), x_re=int(x.coeffs[0]), y_im=int(y.coeffs[1]), y_re=int(y.coeffs[0]))
    raise AssertionError("no twist point found")


@contextmanager
def serve_aggregator(servicer: ag_grpc.AggregatorServiceServicer) -> Iterator[AggregatorClient]:
    """``servicer`` on a real gRPC server over loopback, and a client of it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ag_grpc.add_AggregatorServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = AggregatorClient(f"127.0.0.1:{port}")
    try:
        yield client
    finally:
        client.close()
        server.stop(None).wait()
