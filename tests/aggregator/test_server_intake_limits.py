"""The intake's limits over real gRPC: requests the operators would refuse are refused at Submit,
before anything is stored, and WatchStatus streams cannot take every intake thread."""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from eth_account import Account
from eth_utils import keccak
from grpc_health.v1 import health_pb2, health_pb2_grpc

import avs.rpc.status as status_module
from avs.client import AggregatorClient
from avs.gateway.errors import compute_api_error
from avs.inference.params import MAX_STOP_SEQUENCE_CHARS
from avs.messages import compute_request_hash, compute_stop_sequences_hash
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.aggregator.v1 import aggregator_pb2_grpc as ag_grpc
from avs.rpc.health import MAX_HEALTH_WATCHERS
from avs.rpc.operator.v1 import operator_pb2 as op
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.server import SERVICE_NAME, AggregatorServicer, IntakeLimits, ServedModel, build_server
from avs_aggregator.store import RequestState, Store
from tests.aggregator.fakes import DOMAIN, MODEL_ID, FakeNetwork

WATCHES = 2
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Intake:
    stub: Any
    pipeline: Pipeline
    target: str


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[Intake]:
    network = FakeNetwork([{0: 100}])
    settings = PipelineSettings(workers=1)
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{tmp_path / 'agg.sqlite'}"), network, network, network, settings)
    limits = IntakeLimits(max_new_tokens=64, max_watches=WATCHES)
    servicer = AggregatorServicer(pipeline, {MODEL_ID: ServedModel("tiny", MODEL_ID)}, limits)
    server, port, _ = build_server(servicer, "127.0.0.1:0", max_workers=WATCHES + 2)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ag_grpc.AggregatorServiceStub(channel)  # type: ignore[no-untyped-call]
        yield Intake(stub, pipeline, f"127.0.0.1:{port}")
    finally:
        channel.close()
        server.stop(None).wait()
        pipeline.close()


def _request(nonce: int = 1, stops: tuple[str, ...] = (), **fields: Any) -> ag.SubmitRequest:
    request = op.InferenceRequest(
        model_id=MODEL_ID,
        prompt_hash=keccak(text="hi"),
        temperature_milli=700,
        top_p_micro=1_000_000,
        max_tokens=16,
        stop_sequences=list(stops),
        stop_sequences_hash=compute_stop_sequences_hash(list(stops)),
        requester="0x" + "ab" * 20,
        nonce=nonce.to_bytes(32, "big"),
        messages=[op.ChatMessage(role="user", content="hi")],
    )
    for key, value in fields.items():
        setattr(request, key, value)
    return ag.SubmitRequest(request=request)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (_request(temperature_milli=4_000_000_000), "temperature_milli"),
        (_request(top_p_micro=0), "top_p_micro"),
        (_request(top_p_micro=1_000_001), "top_p_micro"),
        (_request(max_tokens=0), "max_tokens"),
        (_request(stops=("s" * 65,)), "stop sequence"),
        (_request(stops=("",)), "stop sequence"),
    ],
)
def test_parameters_the_operators_refuse_are_refused_before_anything_is_stored(
    intake: Intake, message: ag.SubmitRequest, expected: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        intake.stub.Submit(message)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in str(info.value.details())
    assert intake.pipeline.store.count_requests(list(RequestState)) == 0


def test_a_valid_request_with_stop_sequences_is_taken(intake: Intake) -> None:
    reply = intake.stub.Submit(_request(stops=("\n\n", "s" * 64)))
    row = intake.pipeline.store.get_request(bytes(reply.request_hash))
    assert row is not None and row.state == RequestState.RECEIVED


def test_calls_that_never_finish_sending_do_not_stall_the_intake(intake: Intake) -> None:
    """The intake's port is public. A client opens far more calls than the intake has threads
    (WATCHES + 2) and never sends their requests: complete requests are still served, and once the
    client lets go its calls end as usual. (grpcio's sync server gave each unfinished call a thread:
    it then answered no one.)"""
    release = threading.Event()

    def never_sent() -> Iterator[bytes]:
        release.wait()
        yield ag.GetStatusRequest(request_hash=b"\1" * 32).SerializeToString()

    channel = grpc.insecure_channel(intake.target)
    get_status: Any = channel.stream_unary(f"/{SERVICE_NAME}/GetStatus")
    hanging = [get_status.future(never_sent(), timeout=30) for _ in range(3 * (WATCHES + 2))]
    try:
        time.sleep(0.5)  # the calls have reached the server
        assert not any(call.done() for call in hanging)
        reply = intake.stub.Submit(_request(), timeout=5)
        assert intake.stub.GetStatus(ag.GetStatusRequest(request_hash=reply.request_hash), timeout=5).state
    finally:
        release.set()
    for call in hanging:  # an unknown request hash: answered NOT_FOUND, the calls were never lost
        assert call.exception(timeout=10).code() == grpc.StatusCode.NOT_FOUND
    channel.close()


def _servicer(tmp_path: Path, kind: type[AggregatorServicer] = AggregatorServicer) -> tuple[Pipeline, Any]:
    """A pipeline over a fake chain and the intake's servicer of it (``kind``), for a server of its own."""
    network = FakeNetwork([{0: 100}])
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{tmp_path / 'agg.sqlite'}"), network, network, network)
    return pipeline, kind(pipeline, {MODEL_ID: ServedModel("tiny", MODEL_ID)}, IntakeLimits(max_new_tokens=64))


def test_requests_waiting_for_a_thread_are_not_held_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The aio server reads complete requests on its loop whatever the threads are doing; it decoded
    each at once and held it while the call waited for a thread (a chat of empty messages is ~30x its
    wire size decoded: 300 queued ones of 270 KiB took +2.8 GiB, found in review). Handlers decode on
    their thread now: while every thread is busy, queued requests stay bytes."""
    decoded: list[bytes] = []
    lenient = status_module._lenient

    def counting(deserializer: Any) -> Any:
        parse = lenient(deserializer)
        if parse is None:
            return None

        def counted(data: bytes) -> Any:
            decoded.append(data)
            return parse(data)

        return counted

    monkeypatch.setattr(status_module, "_lenient", counting)
    release = threading.Event()

    class Held(AggregatorServicer):
        def Submit(self, request: Any, context: Any) -> Any:
            release.wait(10)
            return super().Submit(request, context)

    pipeline, servicer = _servicer(tmp_path, Held)
    server, port, _ = build_server(servicer, "127.0.0.1:0", max_workers=2)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ag_grpc.AggregatorServiceStub(channel)  # type: ignore[no-untyped-call]
        calls = [stub.Submit.future(_request(nonce=n), timeout=30) for n in range(20)]
        time.sleep(1.0)  # every request has arrived; two are being handled
        assert len(decoded) <= 2
        release.set()
        assert all(call.result().request_hash for call in calls)
        assert len(decoded) == 20
    finally:
        release.set()
        channel.close()
        server.stop(None).wait()
        pipeline.close()


def test_watch_streams_are_capped_and_leave_threads_for_submit_and_status(intake: Intake) -> None:
    hashes = [bytes(intake.stub.Submit(_request(nonce=n)).request_hash) for n in range(WATCHES + 1)]
    watches = [intake.stub.WatchStatus(ag.GetStatusRequest(request_hash=h)) for h in hashes[:WATCHES]]
    try:
        for watch in watches:  # each stream is open and has sent the first status
            assert next(watch).state == ag.REQUEST_STATE_RECEIVED
        with pytest.raises(grpc.RpcError) as info:
            next(intake.stub.WatchStatus(ag.GetStatusRequest(request_hash=hashes[-1])))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = intake.stub.GetStatus(ag.GetStatusRequest(request_hash=hashes[-1]), timeout=5)
        assert status.state == ag.REQUEST_STATE_RECEIVED
        assert intake.stub.Submit(_request(nonce=99), timeout=5).request_hash
    finally:
        for watch in watches:
            watch.cancel()
    # A cancelled stream gives its slot back.
    for _ in range(50):
        try:
            assert next(intake.stub.WatchStatus(ag.GetStatusRequest(request_hash=hashes[-1]), timeout=5)).state
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            time.sleep(0.1)
    else:
        pytest.fail("the cancelled streams never gave their slots back")


@pytest.mark.parametrize("spelled", [str.lower, lambda a: a[2:], lambda a: "0X" + a[2:]])
def test_a_requester_signature_holds_however_the_address_is_spelled(
    intake: Intake, spelled: Callable[[str], str]
) -> None:
    """The request hash is the same for any spelling of the requester's address, so its signature is."""
    account = Account.from_key(b"\x0c" * 32)
    message = _request(nonce=7, requester=spelled(account.address))
    digest = compute_request_hash(DOMAIN, convert.request_from_proto(message.request).request)
    message.requester_signature = Account._sign_hash(digest, account.key).signature
    assert bytes(intake.stub.Submit(message).request_hash) == digest
    stranger = Account.from_key(b"\x0d" * 32)
    message.requester_signature = Account._sign_hash(digest, stranger.key).signature
    with pytest.raises(grpc.RpcError) as info:
        intake.stub.Submit(message)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_malformed_hashes_and_signatures_are_invalid_arguments_not_unknown_or_unauthenticated(
    intake: Intake,
) -> None:
    """The proto promises INVALID_ARGUMENT for malformed input: a wrong-length hash said NOT_FOUND
    (as if it were merely unknown) and a signature of the wrong shape UNAUTHENTICATED."""
    calls: dict[str, Callable[[], object]] = {
        "GetStatus": lambda: intake.stub.GetStatus(ag.GetStatusRequest(request_hash=b"\x01" * 31)),
        "Submit model_id": lambda: intake.stub.Submit(_request(model_id=b"\x01" * 33)),
        "Submit signature": lambda: intake.stub.Submit(
            ag.SubmitRequest(request=_request().request, requester_signature=b"\x01" * 64)
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    with pytest.raises(grpc.RpcError) as unknown:  # well formed and unknown: still NOT_FOUND
        intake.stub.GetStatus(ag.GetStatusRequest(request_hash=b"\x01" * 32))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("index", [2**63 - 1, 2**63, 2**64 - 1])
def test_get_batch_of_any_uint64_index_is_not_found(intake: Intake, index: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        intake.stub.GetBatch(ag.GetBatchRequest(batch_index=index))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("method", ["Submit", "Prepare"])
def test_a_chat_of_many_empty_messages_is_refused_before_it_is_walked(intake: Intake, method: str) -> None:
    """An empty chat message is 2 bytes on the wire: one 4 MiB call held 2 million of them, and the
    intake copied the request and made a dict per message (590 MB) before the count was checked."""
    request = _request()
    request.request.messages.extend([op.ChatMessage()] * 100_000)  # 200 KB: under the receive limit
    tracemalloc.start()
    try:
        with pytest.raises(grpc.RpcError) as refused:
            getattr(intake.stub, method)(request, timeout=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {convert.MAX_CHAT_MESSAGES} chat messages" in (refused.value.details() or "")
    assert peak < 32 << 20, f"{peak >> 20} MiB of Python objects for a refused request"


def test_a_status_over_grpc_s_default_4_mib_reaches_the_sdk(tmp_path: Path) -> None:
    """The longest output the policy allows (20,000 tokens of 256 bytes) makes a status over 5 MB:
    the SDK's channel refused it (RESOURCE_EXHAUSTED, "overloaded, retry") at gRPC's 4 MiB default."""
    tokens = 20_000
    network = FakeNetwork([{0: 100}])
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{tmp_path / 'agg.sqlite'}"), network, network, network)
    servicer = AggregatorServicer(pipeline, {MODEL_ID: ServedModel("m", MODEL_ID)}, IntakeLimits(max_new_tokens=tokens))
    server, port, _ = build_server(servicer, "127.0.0.1:0")
    server.start()
    client = AggregatorClient(f"127.0.0.1:{port}")
    try:
        request_hash = bytes(client._stub.Submit(_request(max_tokens=tokens)).request_hash)  # as it was sent
        text = "\U0001f600" * (convert.MAX_TEXT_BYTES_PER_TOKEN // 4 * tokens)  # what a primary may send
        pipeline.store.update_request(
            request_hash, state=RequestState.VERIFYING, output_ids=json.dumps([5] * tokens), output_text=text
        )
        status = client.get_status(request_hash)
        assert status.ByteSize() > 5_000_000 and status.output_text == text
    finally:
        client.close()
        server.stop(None).wait()
        pipeline.close()


def _with_chat(message: ag.SubmitRequest, chat: list[op.ChatMessage]) -> ag.SubmitRequest:
    del message.request.messages[:]
    message.request.messages.extend(chat)
    return message


def _largest_submit(max_chat_chars: int) -> ag.SubmitRequest:
    """A valid Submit as large as ``max_chat_chars`` allows: that many 4-byte characters over the
    most messages, every stop sequence at its longest, every field at its widest."""
    per_message, extra = divmod(max_chat_chars, convert.MAX_CHAT_MESSAGES)
    messages = [op.ChatMessage(role="user", content="\U0001f600" * per_message)] * convert.MAX_CHAT_MESSAGES
    messages[-1] = op.ChatMessage(role="user", content="\U0001f600" * (per_message + extra))
    stops = ("\U0001f600" * MAX_STOP_SEQUENCE_CHARS,) * convert.MAX_STOP_SEQUENCES
    message = _with_chat(_request(stops=stops, seed=2**64 - 1, top_k=2**32 - 1, max_tokens=64), messages)
    message.requester_signature = b"\xff" * 65
    message.model_name = "m" * 128
    message.quorum_numbers = bytes(range(192))
    message.threshold_bps = 2**32 - 1
    message.insured = True
    return message


def test_the_intake_receives_the_largest_valid_submit_and_nothing_larger(intake: Intake) -> None:
    """The receive limit is the largest Submit the policy allows: a larger one is refused by gRPC
    before it is parsed (it would only be refused after, at some memory per message)."""
    largest = _largest_submit(IntakeLimits().max_chat_chars)
    limit = convert.compute_largest_submit_bytes(IntakeLimits().max_chat_chars)
    assert largest.ByteSize() <= limit < 1.1 * largest.ByteSize()
    for method in ("Submit", "Prepare"):
        with pytest.raises(grpc.RpcError) as refused:  # parsed and checked: refused for its fields
            getattr(intake.stub, method)(largest, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        too_large = _largest_submit(IntakeLimits().max_chat_chars)
        too_large.request.messages[0].content += "x" * (limit - largest.ByteSize() + 1)
        with pytest.raises(grpc.RpcError) as refused:
            getattr(intake.stub, method)(too_large, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in str(refused.value.details())
        assert compute_api_error(refused.value).status == 413  # the gateway: too large, not "busy, retry"
    chat = list(_largest_submit(IntakeLimits().max_chat_chars).request.messages)
    reply = intake.stub.Submit(_with_chat(_request(max_tokens=64), chat), timeout=30)
    assert intake.pipeline.store.get_request(bytes(reply.request_hash)) is not None


def test_the_intakes_health_is_bounded_and_watches_see_changes(tmp_path: Path) -> None:
    """The intake's health service (on the grpc.aio server): Check and Watch answer only the names
    the server set, at most MAX_HEALTH_WATCHERS streams, and a watch sees a status set from another
    thread (the leader election's)."""
    pipeline = Pipeline(DOMAIN, Store("sqlite://"), *(FakeNetwork([{0: 100}]),) * 3, PipelineSettings())
    servicer = AggregatorServicer(pipeline, {}, IntakeLimits())
    server, port, health_servicer = build_server(servicer, "127.0.0.1:0", max_workers=2)
    health_servicer.set("leader", health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health: Any = health_pb2_grpc.HealthStub(channel)  # its stubs do not declare Watch
    watches: list[Any] = []
    try:
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status == SERVING
        for name in ("unknown", "x" * 100_000):
            with pytest.raises(grpc.RpcError) as unknown:
                next(health.Watch(health_pb2.HealthCheckRequest(service=name), timeout=5))
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watches = [health.Watch(health_pb2.HealthCheckRequest(service="leader")) for _ in range(MAX_HEALTH_WATCHERS)]
        assert [next(w).status for w in watches] == [health_pb2.HealthCheckResponse.NOT_SERVING] * len(watches)
        with pytest.raises(grpc.RpcError) as full:
            next(health.Watch(health_pb2.HealthCheckRequest(service="leader"), timeout=5))
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        health_servicer.set("leader", SERVING)  # from this thread, not the server's loop
        assert [next(w).status for w in watches] == [SERVING] * len(watches)
        health_servicer.enter_graceful_shutdown()
        assert next(watches[0]).status == health_pb2.HealthCheckResponse.NOT_SERVING
        health_servicer.set("leader", SERVING)  # ignored once shutting down
        assert health.Check(health_pb2.HealthCheckRequest(service="leader"), timeout=5).status != SERVING
    finally:
        for watch in watches:
            watch.cancel()
        channel.close()
        assert server.stop(None).wait(10)
        assert server.stop(None).is_set()  # a second stop answers at once
        with pytest.raises(RuntimeError, match="stopping or stopped"):  # refused, never left waiting
            server.call(lambda: 1)
        pipeline.close()


def test_a_port_that_cannot_be_bound_leaves_no_thread_behind(tmp_path: Path) -> None:
    """The aio server's loop thread starts with it; a failed bind (the port taken) stopped nothing."""
    pipeline, servicer = _servicer(tmp_path)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    before = {t.ident for t in threading.enumerate()}
    try:
        for _ in range(3):
            with pytest.raises(RuntimeError):
                build_server(servicer, f"127.0.0.1:{taken.getsockname()[1]}")
        left = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("intake")]
        assert left == []  # (grpc.aio's own poller thread is one per process, started with the first server)
    finally:
        taken.close()
        pipeline.close()


def test_the_watch_threads_end_with_the_servicer(tmp_path: Path) -> None:
    pipeline, servicer = _servicer(tmp_path)
    server, port, _ = build_server(servicer, "127.0.0.1:0", max_workers=2)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ag_grpc.AggregatorServiceStub(channel)  # type: ignore[no-untyped-call]
        request_hash = stub.Submit(_request(), timeout=5).request_hash
        watch = stub.WatchStatus(ag.GetStatusRequest(request_hash=request_hash), timeout=10)
        assert next(watch).state == ag.REQUEST_STATE_RECEIVED  # a look ran on a watch thread
        watch.cancel()
    finally:
        channel.close()
        server.stop(None).wait()
    servicer.close()  # what the app does once its server stopped, before it closes the store
    assert [t.name for t in threading.enumerate() if t.name.startswith("watch")] == []
    pipeline.close()
