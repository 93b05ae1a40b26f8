"""Fake operators that speak the real operator gRPC API, with real BLS keys and chosen faults.

Each ``FakeOperatorServer`` is a real ``grpc.server`` on loopback serving
``avs.operator.v1.OperatorService``: it "generates" the canonical tokens of ``tests.aggregator.fakes``
(a pure function of the request, so every honest operator agrees) and signs real EIP-712
attestations and batch digests. ``behaviour`` picks the fault:

- ``honest``; ``slow`` (answers after ``slow_seconds``, beyond the aggregator's deadlines);
- ``garbage`` (well-formed protobuf with malformed hashes and points);
- ``garbage_bytes`` (bytes that are not the response message at all);
- ``bad_signature`` (valid points, signatures over another digest);
- ``down``: call ``stop()`` (the port refuses connections).
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from eth_utils import keccak

from avs.crypto import bls
from avs.messages import Attestation, Domain, InferenceOutput, Verdict, compute_digest, compute_output_hash
from avs.messages import compute_request_hash as request_hash_of
from avs.rpc import convert
from avs.rpc.common.v1 import bn254_pb2 as pb
from avs.rpc.operator.v1 import operator_pb2 as op
from avs.rpc.operator.v1 import operator_pb2_grpc as op_grpc
from tests.aggregator.fakes import canonical_tokens

SERVICE = "avs.operator.v1.OperatorService"
GARBAGE_POINT = pb.G1Point(x=b"\xff" * 32, y=b"\x01")
GARBAGE_BYTES = b"\x0a\xff\xff\xff\xff\x0f not a protobuf message"


class FakeOperatorServicer(op_grpc.OperatorServiceServicer):
    def __init__(self, keys: bls.KeyPair, domain: Domain, behaviour: str = "honest", slow_seconds: float = 3.0):
        self.keys = keys
        self.domain = domain
        self.behaviour = behaviour
        self.slow_seconds = slow_seconds
        self.delay = 0.0  # every answer waits this long (lets tests watch the stages)
        self.calls: dict[str, int] = {}
        self.stopped = threading.Event()

    def _enter(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        wait = self.slow_seconds if self.behaviour == "slow" else self.delay
        if wait:
            self.stopped.wait(wait)

    def _sign(self, digest: bytes) -> pb.BlsSignature:
        signed = keccak(b"another digest" + digest) if self.behaviour == "bad_signature" else digest
        return convert.signature_to_proto(digest, bls.sign(self.keys.secret, signed))

    def _attest(self, request_hash: bytes, output_hash: bytes, verdict: Verdict) -> op.SignedAttestation:
        attestation = Attestation(request_hash, output_hash, verdict)
        return op.SignedAttestation(
            attestation=convert.attestation_to_proto(attestation),
            signature=self._sign(compute_digest(self.domain, attestation)),
            operator_id=self.keys.operator_id,
        )

    def Generate(self, request: op.GenerateRequest, context: Any) -> op.GenerateResponse:
        self._enter("generate")
        envelope = convert.request_from_proto(request.request)
        request_hash = request_hash_of(self.domain, envelope.request)
        tokens = canonical_tokens(envelope.request)
        output_hash = compute_output_hash(InferenceOutput(request_hash, envelope.request.model_id, tokens))
        if self.behaviour == "garbage":
            bad = op.SignedAttestation(signature=pb.BlsSignature(signature=GARBAGE_POINT))
            return op.GenerateResponse(output_token_ids=[7], output_hash=b"junk", attestation=bad)
        return op.GenerateResponse(
            output_token_ids=list(tokens),
            text="fake",
            output_hash=output_hash,
            profile_hash=envelope.request.model_id,
            finish_reason="length",
            attestation=self._attest(request_hash, output_hash, Verdict.ACCEPT),
        )

    def Verify(self, request: op.VerifyRequest, context: Any) -> op.VerifyResponse:
        self._enter("verify")
        envelope = convert.request_from_proto(request.request)
        request_hash = request_hash_of(self.domain, envelope.request)
        tokens = tuple(int(t) for t in request.output_token_ids)
        output_hash = compute_output_hash(InferenceOutput(request_hash, envelope.request.model_id, tokens))
        if self.behaviour == "garbage":
            bad = op.SignedAttestation(
                attestation=op.Attestation(request_hash=b"x", output_hash=output_hash, verdict=op.Verdict.ValueType(9)),
                signature=pb.BlsSignature(signature=GARBAGE_POINT),
            )
            return op.VerifyResponse(attestation=bad)
        verdict = Verdict.ACCEPT if tokens == canonical_tokens(envelope.request) else Verdict.REJECT
        return op.VerifyResponse(
            attestation=self._attest(request_hash, output_hash, verdict),
            first_failing_position=-1 if verdict == Verdict.ACCEPT else 0,
        )

    def SignBatch(self, request: op.SignBatchRequest, context: Any) -> op.SignBatchResponse:
        self._enter("sign_batch")
        header = convert.batch_header_from_proto(request.header)
        if self.behaviour == "garbage":
            return op.SignBatchResponse(signature=pb.BlsSignature(signature=GARBAGE_POINT))
        return op.SignBatchResponse(
            signature=self._sign(compute_digest(self.domain, header)), operator_id=self.keys.operator_id
        )


def _garbage_handler(servicer: FakeOperatorServicer) -> grpc.GenericRpcHandler:
    def answer(method: str) -> Any:
        def handle(request: bytes, context: Any) -> bytes:
            servicer._enter(method)
            return GARBAGE_BYTES

        return grpc.unary_unary_rpc_method_handler(handle)  # no (de)serialisers: raw bytes out

    return grpc.method_handlers_generic_handler(
        SERVICE, {"Generate": answer("generate"), "Verify": answer("verify"), "SignBatch": answer("sign_batch")}
    )


class FakeOperatorServer:
    def __init__(self, keys: bls.KeyPair, domain: Domain, behaviour: str = "honest", slow_seconds: float = 3.0):
        self.servicer = FakeOperatorServicer(keys, domain, behaviour, slow_seconds)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        if behaviour == "garbage_bytes":
            self.server.add_generic_rpc_handlers((_garbage_handler(self.servicer),))
        else:
            op_grpc.add_OperatorServiceServicer_to_server(self.servicer, self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def socket(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.servicer.stopped.set()
        self.server.stop(0).wait()
