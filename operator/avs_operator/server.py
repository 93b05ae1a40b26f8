"""The operator's gRPC server: servicers convert between protobuf and domain types, nothing more.

Authentication happens first (UNAUTHENTICATED / PERMISSION_DENIED before any compute), then the
concurrency limit (RESOURCE_EXHAUSTED), then ``OperatorCore``. Its cheap half comes before the
payload is even hashed: a call with no 65-byte signature, or stamped outside the time window, is
refused without copying, serialising or hashing its (up to ``max_message_bytes``) payload.
Errors become status codes in ``avs.rpc.status``; every call is counted in
``avs_grpc_requests_total`` by method and code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from avs import __version__
from avs.calls import CallAuthenticator
from avs.errors import InferenceError, OverloadedError
from avs.rpc import convert
from avs.rpc.common.v1 import bn254_pb2
from avs.rpc.health import CONNECTION_LIMIT_OPTIONS, BoundedHealthServicer
from avs.rpc.operator.v1 import operator_pb2 as op
from avs.rpc.operator.v1 import operator_pb2_grpc as op_grpc
from avs.rpc.status import ErrorToStatusInterceptor, get_status_code
from avs_operator.config import ConfigError, GrpcConfig
from avs_operator.core import GenerateResult, OperatorCore, SignedAttestation
from avs_operator.metrics import OperatorMetrics

SERVICE_NAME = op.DESCRIPTOR.services_by_name["OperatorService"].full_name


class ConcurrencyLimiter:
    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self.limit = limit

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            raise OverloadedError(f"this operator is serving its limit of {self.limit} requests; retry later")
        try:
            yield
        finally:
            self._slots.release()


class OperatorServicer(op_grpc.OperatorServiceServicer):
    def __init__(
        self,
        core: OperatorCore,
        authenticator: CallAuthenticator,
        limiter: ConcurrencyLimiter,
        metrics: OperatorMetrics,
    ) -> None:
        self._core = core
        self._auth = authenticator
        self._limiter = limiter
        self._metrics = metrics

    @contextmanager
    def _call(
        self, method: str, request: op.GetInfoRequest | op.GenerateRequest | op.VerifyRequest | op.SignBatchRequest
    ) -> Iterator[None]:
        started = time.monotonic()
        code = grpc.StatusCode.OK
        self._metrics.in_flight.inc()
        try:
            auth = self._auth.check_envelope(convert.call_auth_from_proto(request.auth))  # before hashing
            self._auth.authenticate(method, convert.compute_payload_hash(request), auth)
            if method != "GetInfo" and not self._core.ready.is_set():
                raise InferenceError("the operator is still loading its models; retry shortly")
            with self._limiter.slot():
                yield
        except Exception as error:
            code = get_status_code(error)
            raise
        except GeneratorExit:  # a stream closed between two tokens: its client cancelled or went away
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._metrics.in_flight.dec()
            self._metrics.rpc_requests.labels(method, code.name).inc()
            self._metrics.rpc_duration.labels(method).observe(time.monotonic() - started)

    def GetInfo(self, request: op.GetInfoRequest, context: grpc.ServicerContext) -> op.GetInfoResponse:
        with self._call("GetInfo", request):
            keys = self._core.key_pair
            return op.GetInfoResponse(
                version=__version__,
                operator_id=self._core.operator_id,
                public_key=bn254_pb2.BlsPublicKey(
                    g1=convert.g1_to_proto(keys.pubkey_g1),
                    g2=convert.g2_to_proto(keys.pubkey_g2),
                    operator_id=keys.operator_id,
                ),
                models=[
                    op.ServedModel(model_id=model_id, profile_hash=model_id, name=name)
                    for model_id, name in self._core.served_models().items()
                ],
                chain_id=self._core.domain.chain_id,
                task_manager=self._core.domain.verifying_contract,
            )

    def Generate(self, request: op.GenerateRequest, context: grpc.ServicerContext) -> op.GenerateResponse:
        with self._call("Generate", request):
            envelope = convert.request_from_proto(request.request)
            prepared = self._core.prepare(envelope.request, envelope.messages, envelope.stop_sequences)
            return self._generate_response(self._core.generate(prepared, context))

    def GenerateStream(
        self, request: op.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[op.GenerateStreamResponse]:
        with self._call("GenerateStream", request):
            envelope = convert.request_from_proto(request.request)
            prepared = self._core.prepare(envelope.request, envelope.messages, envelope.stop_sequences)
            for item in self._core.stream(prepared, context):
                if isinstance(item, GenerateResult):
                    yield op.GenerateStreamResponse(result=self._generate_response(item))
                else:
                    yield op.GenerateStreamResponse(token_id=item)

    def Verify(self, request: op.VerifyRequest, context: grpc.ServicerContext) -> op.VerifyResponse:
        with self._call("Verify", request):
            envelope = convert.request_from_proto(request.request)
            prepared = self._core.prepare(envelope.request, envelope.messages, envelope.stop_sequences)
            result = self._core.verify(prepared, request.output_token_ids, context)
            position = result.verification.first_failing_position
            failure = result.verification.failure
            return op.VerifyResponse(
                attestation=self._signed(result.attestation),
                first_failing_position=-1 if position is None else position,
                reason="" if failure is None else str(failure),
            )

    def SignBatch(self, request: op.SignBatchRequest, context: grpc.ServicerContext) -> op.SignBatchResponse:
        with self._call("SignBatch", request):
            header = convert.batch_header_from_proto(request.header)
            leaves = convert.leaves_from_proto(request.leaves)
            digest, signature = self._core.sign_batch(header, leaves, context)
            return op.SignBatchResponse(
                signature=convert.signature_to_proto(digest, signature), operator_id=self._core.operator_id
            )

    def _signed(self, signed: SignedAttestation) -> op.SignedAttestation:
        return op.SignedAttestation(
            attestation=convert.attestation_to_proto(signed.attestation),
            signature=convert.signature_to_proto(signed.digest, signed.signature),
            operator_id=self._core.operator_id,
        )

    def _generate_response(self, result: GenerateResult) -> op.GenerateResponse:
        return op.GenerateResponse(
            output_token_ids=list(result.token_ids),
            text=result.text,
            output_hash=result.output_hash,
            profile_hash=result.profile_hash,
            finish_reason=str(result.finish_reason),
            attestation=self._signed(result.attestation),
        )


def build_grpc_server(
    servicer: OperatorServicer, config: GrpcConfig, health_servicer: BoundedHealthServicer
) -> tuple[grpc.Server, int]:
    """A started-but-not-serving server: returns it and the bound port (``:0`` picks one)."""
    if (config.tls_cert_file is None) != (config.tls_key_file is None):  # GrpcConfig refuses it too
        raise ConfigError("grpc: tls_cert_file and tls_key_file go together; refusing to fall back to plaintext")
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # grpcio sets SO_REUSEPORT by default: a second process (a stale one still draining, a copy
        # with another slashing-protection database) would bind the same port and get half the calls.
        ("grpc.so_reuseport", 0),
        *CONNECTION_LIMIT_OPTIONS,
    ]
    # Extra workers past the limit answer RESOURCE_EXHAUSTED quickly instead of queueing.
    workers = futures.ThreadPoolExecutor(max_workers=config.max_concurrent_requests + 4, thread_name_prefix="grpc")
    # gRPC queues calls without bound by default, each one parsed and its signature recovered before
    # the limiter sees it: past this many in flight or queued, callers get RESOURCE_EXHAUSTED at once.
    server = grpc.server(
        workers,
        interceptors=[ErrorToStatusInterceptor()],
        options=options,
        maximum_concurrent_rpcs=4 * (config.max_concurrent_requests + 4),
    )
    op_grpc.add_OperatorServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    credentials = None
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        client_ca = config.tls_client_ca_file
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key_file.read_bytes(), config.tls_cert_file.read_bytes())],
            root_certificates=client_ca.read_bytes() if client_ca is not None else None,
            require_client_auth=client_ca is not None,
        )
    try:
        if credentials is not None:
            port = server.add_secure_port(config.listen, credentials)
        else:
            port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:  # grpcio's "Failed to bind to address": in use, or not an address here
        raise ConfigError(f"grpc.listen {config.listen!r}: cannot listen there (in use, or no such address)") from exc
    return server, port


def new_health_servicer() -> BoundedHealthServicer:
    """Health checking, NOT_SERVING until the models are loaded and warmed up (``set_serving``)."""
    return BoundedHealthServicer((SERVICE_NAME,))
