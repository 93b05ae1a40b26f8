"""What a call costs before it is authenticated, and the gRPC server's transport settings: a call
without a usable signature is refused before its payload is hashed; the default message limit holds
the largest legitimate call with room to spare; TLS is both files or neither, never half."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from eth_account import Account
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from avs.calls import CallAuth, CallAuthenticator, sign_call
from avs.crypto import bls
from avs.errors import AuthenticationError
from avs.messages import Domain
from avs.rpc import convert
from avs.rpc.health import MAX_HEALTH_WATCHERS, BoundedHealthServicer
from avs.rpc.operator.v1 import operator_pb2 as op
from avs.rpc.operator.v1 import operator_pb2_grpc as op_grpc
from avs_operator.config import ConfigError, GrpcConfig, LimitsConfig, compute_largest_call_bytes, parse_config
from avs_operator.metrics import OperatorMetrics
from avs_operator.server import (
    SERVICE_NAME,
    ConcurrencyLimiter,
    OperatorServicer,
    build_grpc_server,
    new_health_servicer,
)

DOMAIN = Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
AGGREGATOR = Account.from_key(b"\x0a" * 32)
KEYS = bls.compute_key_pair(bls.SecretKey(12345))
NOW = 1_700_000_000.0


class StubCore:
    key_pair = KEYS
    operator_id = KEYS.operator_id
    domain = DOMAIN
    ready = threading.Event()

    def served_models(self) -> dict[bytes, str]:
        return {}


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many payloads were hashed."""
    calls: list[int] = []
    original = convert.compute_payload_hash

    def counting(message: object) -> bytes:
        calls.append(1)
        return original(message)  # type: ignore[arg-type]

    monkeypatch.setattr(convert, "compute_payload_hash", counting)
    yield calls


def servicer() -> OperatorServicer:
    return OperatorServicer(
        StubCore(),  # type: ignore[arg-type]
        CallAuthenticator(DOMAIN, KEYS.operator_id, [AGGREGATOR.address], clock=lambda: NOW),
        ConcurrencyLimiter(2),
        OperatorMetrics(CollectorRegistry()),
    )


def signed(issued_at_ms: int) -> op.GetInfoRequest:
    request = op.GetInfoRequest()
    auth = sign_call(
        AGGREGATOR.key, DOMAIN, "GetInfo", convert.compute_payload_hash(request), KEYS.operator_id, issued_at_ms
    )
    request.auth.CopyFrom(convert.call_auth_to_proto(auth))
    return request


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (None, "not signed"),
        (CallAuth(int(NOW * 1000), b"\x01" * 64), "65 bytes"),
        (CallAuth(int(NOW * 1000), b"\x01" * 4096), "65 bytes"),
        (CallAuth(int(NOW * 1000) - 31_000, b"\x01" * 65), "outside the 30000 ms window"),
        (CallAuth(int(NOW * 1000) + 31_000, b"\x01" * 65), "outside the 30000 ms window"),
    ],
)
def test_a_call_without_a_usable_signature_is_refused_before_its_payload_is_hashed(
    hashed: list[int], auth: CallAuth | None, reason: str
) -> None:
    request = op.GetInfoRequest()
    if auth is not None:
        request.auth.CopyFrom(convert.call_auth_to_proto(auth))
    with pytest.raises(AuthenticationError, match=reason):
        servicer().GetInfo(request, None)  # type: ignore[arg-type]
    assert hashed == []


def test_a_well_formed_call_is_hashed_once_and_served(hashed: list[int]) -> None:
    request = signed(int(NOW * 1000) - 1000)
    hashed.clear()
    response = servicer().GetInfo(request, None)  # type: ignore[arg-type]
    assert response.operator_id == KEYS.operator_id
    assert hashed == [1]


def largest_calls(limits: LimitsConfig) -> dict[str, Message]:
    """The largest calls a node with ``limits`` accepts: a chat of max_chat_chars 4-byte characters
    over the most messages, with every stop sequence, a proposed output of the most tokens, a
    SignBatch of the most leaves, and a Generate reply."""
    per_message = limits.max_chat_chars // convert.MAX_CHAT_MESSAGES
    request = op.InferenceRequest(
        model_id=b"\xff" * 32,
        prompt_hash=b"\xff" * 32,
        temperature_milli=2**32 - 1,
        top_k=2**32 - 1,
        top_p_micro=2**32 - 1,
        seed=2**64 - 1,
        max_tokens=2**32 - 1,
        stop_sequences_hash=b"\xff" * 32,
        requester="0x" + "ab" * 20,
        nonce=b"\xff" * 32,
        messages=[op.ChatMessage(role="assistant", content="\U0001f600" * per_message)] * convert.MAX_CHAT_MESSAGES,
        stop_sequences=["\U0001f600" * 64] * convert.MAX_STOP_SEQUENCES,
    )
    auth = op.CallAuth(issued_at_ms=2**64 - 1, signature=b"\xff" * 65)
    leaf = op.BatchLeaf(request_hash=b"\xff" * 32, output_hash=b"\xff" * 32)
    header = op.BatchHeader(
        batch_index=2**64 - 1, leaves_root=b"\xff" * 32, reference_block=2**32 - 1, quorum_numbers=bytes(range(192))
    )
    reply = op.GenerateResponse(
        output_token_ids=[2**32 - 1] * limits.max_new_tokens,
        text="\U0001f600" * 256 * limits.max_new_tokens,  # the aggregator takes at most 256 characters a token
        output_hash=b"\xff" * 32,
        profile_hash=b"\xff" * 32,
        finish_reason="length",
    )
    return {
        "Verify": op.VerifyRequest(request=request, auth=auth, output_token_ids=[2**32 - 1] * limits.max_new_tokens),
        "SignBatch": op.SignBatchRequest(header=header, leaves=[leaf] * convert.MAX_BATCH_LEAVES, auth=auth),
        "Generate reply": reply,
    }


def test_the_default_message_limit_holds_the_largest_legitimate_calls() -> None:
    """1 MiB, and the largest call a node with the default limits accepts fits in under 3/4 of it."""
    limit = GrpcConfig().max_message_bytes
    assert limit == 1 << 20
    for name, message in largest_calls(LimitsConfig()).items():
        assert message.ByteSize() < 0.75 * limit, name


def test_the_config_s_largest_call_estimate_covers_the_real_messages() -> None:
    """``compute_largest_call_bytes`` (what grpc.max_message_bytes is checked against) is at least
    the real largest Verify and SignBatch, and not far above."""
    limits = LimitsConfig(max_chat_chars=100_000, max_new_tokens=20_000)  # the Verify is the largest
    calls = largest_calls(limits)
    smallest = compute_largest_call_bytes(LimitsConfig(max_chat_chars=1, max_new_tokens=1))
    assert calls["SignBatch"].ByteSize() <= smallest < 1.1 * calls["SignBatch"].ByteSize()
    assert calls["Verify"].ByteSize() <= compute_largest_call_bytes(limits) < 1.1 * calls["Verify"].ByteSize()


def test_half_a_tls_configuration_is_a_config_error() -> None:
    base = {
        "chain": {"chain_id": 31337, "task_manager": DOMAIN.verifying_contract},
        "keys": {"bls_keystore": "op.bls.key.json"},
        "models": [{"name": "tiny", "path": "model"}],
        "auth": {"authorised_aggregators": [AGGREGATOR.address]},
    }
    for half in ({"tls_cert_file": "server.crt"}, {"tls_key_file": "server.key"}):
        with pytest.raises(ConfigError, match=r"grpc: .*tls_cert_file and tls_key_file go together"):
            parse_config({**base, "grpc": half})
    both = parse_config({**base, "grpc": {"tls_cert_file": "server.crt", "tls_key_file": "server.key"}})
    assert both.grpc.tls_cert_file == Path("server.crt")
    assert parse_config(base).grpc.tls_cert_file is None


def test_the_server_never_falls_back_to_plaintext_for_half_a_tls_configuration() -> None:
    half = GrpcConfig.model_construct(**{**GrpcConfig().model_dump(), "tls_cert_file": Path("/nonexistent/cert.pem")})
    with pytest.raises(ConfigError, match="refusing to fall back to plaintext"):
        build_grpc_server(servicer(), half, new_health_servicer())


@contextlib.contextmanager
def serve(health: BoundedHealthServicer) -> Iterator[grpc.Channel]:
    """The operator's gRPC server on loopback (default limits: 4 calls at once, 8 worker threads)."""
    server, port = build_grpc_server(servicer(), GrpcConfig(listen="127.0.0.1:0"), health)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    server.stop(None)


@pytest.fixture
def served() -> Iterator[grpc.Channel]:
    with serve(new_health_servicer()) as channel:
        yield channel


def _get_info_code(channel: grpc.Channel) -> grpc.StatusCode:
    """GetInfo's status (unsigned: UNAUTHENTICATED when a worker answers it); the deadline is generous
    for a loaded CI machine, far below forever (what a pinned pool gave)."""
    try:
        op_grpc.OperatorServiceStub(channel).GetInfo(op.GetInfoRequest(), timeout=15)  # type: ignore[no-untyped-call]
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


@contextlib.contextmanager
def watching(health: Any, count: int, service: str = "") -> Iterator[list[Any]]:
    """``count`` open Watch streams (each answered once), cancelled on the way out whatever happened."""
    streams: list[Any] = []
    try:
        for _ in range(count):
            streams.append(health.Watch(health_pb2.HealthCheckRequest(service=service)))
            assert next(streams[-1]).status == health_pb2.HealthCheckResponse.NOT_SERVING
        yield streams
    finally:
        for stream in streams:
            stream.cancel()


def test_health_watchers_hold_no_worker_thread() -> None:
    """Health.Watch wrapped by the error interceptor lost grpcio's non-blocking flag: 8 streams from
    a client without credentials held every worker thread, and real calls timed out."""
    with (
        serve(BoundedHealthServicer([SERVICE_NAME], max_watchers=16)) as channel,
        watching(health_pb2_grpc.HealthStub(channel), 16, SERVICE_NAME),
    ):
        assert _get_info_code(channel) == grpc.StatusCode.UNAUTHENTICATED  # answered, not DEADLINE_EXCEEDED


def test_health_watchers_are_bounded_and_only_for_the_servers_services(served: grpc.Channel) -> None:
    """Unknown service names were kept for good (a megabyte each) and watchers had no bound (each
    holds one of the server's RPC slots)."""
    health: Any = health_pb2_grpc.HealthStub(served)  # its stubs do not declare Watch
    watch = health_pb2.HealthCheckRequest(service="")
    with watching(health, MAX_HEALTH_WATCHERS):
        with pytest.raises(grpc.RpcError) as full:
            next(health.Watch(watch, timeout=15))
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _get_info_code(served) == grpc.StatusCode.UNAUTHENTICATED  # the server still answers
    with pytest.raises(grpc.RpcError) as unknown:
        next(health.Watch(health_pb2.HealthCheckRequest(service="x" * 100_000), timeout=15))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    deadline = time.monotonic() + 15  # cancelled streams give their places back
    while True:
        again = health.Watch(watch, timeout=15)
        try:
            assert next(again).status == health_pb2.HealthCheckResponse.NOT_SERVING
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.05)
        finally:
            again.cancel()


def test_a_request_that_does_not_parse_is_invalid_argument_not_internal(served: grpc.Channel) -> None:
    """A string field that is not UTF-8 failed in grpcio's deserializer: INTERNAL and a logged
    traceback per call, which any client could fill the log with."""

    def field(number: int, payload: bytes) -> bytes:  # protobuf's length-delimited field
        return bytes([(number << 3) | 2, len(payload)]) + payload

    body = field(2, field(11, field(1, b"user") + field(2, b"\xff\xfe")))  # request.messages[0].content
    call: Any = served.unary_unary("/avs.operator.v1.OperatorService/Generate")
    with pytest.raises(grpc.RpcError) as info:
        call(body, timeout=15)  # a slow machine must not turn the refusal into DEADLINE_EXCEEDED
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in str(info.value.details())
