"""The caller's side of the operator API (the aggregator and the challenger use it; no torch).

Each call is signed with the caller's ECDSA key for one operator (``avs.calls``); deadlines are
gRPC timeouts, and errors arrive as ``grpc.RpcError`` with the operator's status code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import grpc

from avs.calls import sign_call
from avs.merkle import BatchLeaf
from avs.messages import BatchHeader, Domain
from avs.rpc import convert
from avs.rpc.operator.v1 import operator_pb2 as op
from avs.rpc.operator.v1 import operator_pb2_grpc as op_grpc

Request = TypeVar("Request", op.GetInfoRequest, op.GenerateRequest, op.VerifyRequest, op.SignBatchRequest)


class OperatorClient:
    def __init__(
        self,
        channel: grpc.Channel,
        domain: Domain,
        operator_id: bytes,
        caller_key: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stub = op_grpc.OperatorServiceStub(channel)  # type: ignore[no-untyped-call]
        self._domain = domain
        self._operator_id = operator_id
        self._key = caller_key
        self._clock = clock

    def sign(self, method: str, request: Request) -> Request:
        """Set ``request.auth`` for ``method`` (public so tests can tamper after signing)."""
        auth = sign_call(
            self._key,
            self._domain,
            method,
            convert.compute_payload_hash(request),
            self._operator_id,
            int(self._clock() * 1000),
        )
        request.auth.CopyFrom(convert.call_auth_to_proto(auth))
        return request

    def get_info(self, timeout: float = 10.0) -> op.GetInfoResponse:
        response: op.GetInfoResponse = self._stub.GetInfo(self.sign("GetInfo", op.GetInfoRequest()), timeout=timeout)
        return response

    def generate(self, envelope: convert.RequestEnvelope, timeout: float = 120.0) -> op.GenerateResponse:
        request = op.GenerateRequest(request=convert.request_to_proto(envelope))
        response: op.GenerateResponse = self._stub.Generate(self.sign("Generate", request), timeout=timeout)
        return response

    def generate_stream(
        self, envelope: convert.RequestEnvelope, timeout: float = 120.0
    ) -> Iterator[op.GenerateStreamResponse]:
        request = op.GenerateRequest(request=convert.request_to_proto(envelope))
        stream: Iterator[op.GenerateStreamResponse] = self._stub.GenerateStream(
            self.sign("GenerateStream", request), timeout=timeout
        )
        return stream

    def verify(
        self, envelope: convert.RequestEnvelope, output_ids: Sequence[int], timeout: float = 60.0
    ) -> op.VerifyResponse:
        request = op.VerifyRequest(request=convert.request_to_proto(envelope), output_token_ids=list(output_ids))
        response: op.VerifyResponse = self._stub.Verify(self.sign("Verify", request), timeout=timeout)
        return response

    def sign_batch(self, header: BatchHeader, leaves: Sequence[BatchLeaf], timeout: float = 30.0) -> op.SignBatchResponse:
        request = op.SignBatchRequest(
            header=convert.batch_header_to_proto(header),
            leaves=[op.BatchLeaf(request_hash=leaf.request_hash, output_hash=leaf.output_hash) for leaf in leaves],
        )
        response: op.SignBatchResponse = self._stub.SignBatch(self.sign("SignBatch", request), timeout=timeout)
        return response
