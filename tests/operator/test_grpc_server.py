"""The operator daemon for real: gRPC over loopback, a tiny model, a SQLite file, HTTP endpoints."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from eth_account import Account
from eth_utils import keccak
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avs import keystore
from avs.crypto import bls
from avs.inference.engine import InferenceEngine, load_engine
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import (
    Attestation,
    BatchHeader,
    Domain,
    InferenceRequest,
    Verdict,
    compute_digest,
    compute_request_hash,
    compute_stop_sequences_hash,
)
from avs.rpc import convert
from avs.rpc.operator.v1 import operator_pb2 as op
from avs.rpc.operator_client import OperatorClient
from avs_operator.app import OperatorApp
from avs_operator.config import OperatorSecrets, parse_config
from tests.inference.conftest import build_tiny_model

TASK_MANAGER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAIN = Domain(31337, TASK_MANAGER)
AGGREGATOR = Account.from_key(b"\x0a" * 32)
STRANGER = Account.from_key(b"\x0b" * 32)
PASSWORD = "operator password"


@dataclass
class Running:
    app: OperatorApp
    channel: grpc.Channel
    client: OperatorClient
    engine: InferenceEngine
    key_pair: bls.KeyPair
    workdir: Path


def make_config(workdir: Path, model: Path, max_concurrent: int = 4) -> dict[str, object]:
    return {
        "chain": {"chain_id": 31337, "task_manager": TASK_MANAGER},
        "keys": {"bls_keystore": str(workdir / "op.bls.key.json")},
        "models": [{"name": "tiny", "path": str(model)}],
        "auth": {"authorised_aggregators": [AGGREGATOR.address]},
        "grpc": {"listen": "127.0.0.1:0", "max_concurrent_requests": max_concurrent},
        "node_api": {"listen": "127.0.0.1:0"},
        "metrics": {"listen": "127.0.0.1:0"},
        "slashing_protection_url": f"sqlite:///{workdir / 'protection.sqlite'}",
        "threads": 1,
    }


def start(workdir: Path, model: Path, cache: Path) -> Running:
    app = OperatorApp(
        parse_config(make_config(workdir, model)),
        OperatorSecrets(bls_key_password=PASSWORD),  # type: ignore[arg-type]
        engine_loader=lambda path, config: load_engine(
            path, threads=config.threads, device=config.device, cache_dir=cache
        ),
        create_slashing_protection=True,  # a fresh operator
    )
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.ports.grpc}")
    key_pair = keystore.load_bls_keystore(workdir / "op.bls.key.json", PASSWORD)
    client = OperatorClient(channel, DOMAIN, key_pair.operator_id, AGGREGATOR.key)
    engine = next(iter(app.engines._engines.values()))
    return Running(app, channel, client, engine, key_pair, workdir)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("op-model") / "tiny")


@pytest.fixture(scope="module")
def running(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp("operator")
    keystore.save_bls_keystore(
        workdir / "op.bls.key.json", bls.compute_key_pair(bls.generate_secret_key()), PASSWORD, 1 << 12
    )
    node = start(workdir, model_dir, tmp_path_factory.mktemp("cache"))
    yield node
    node.channel.close()
    node.app.stop(1)


def envelope(node: Running, text: str, nonce: int, max_tokens: int = 8, **overrides: object) -> convert.RequestEnvelope:
    messages = ({"role": "user", "content": text},)
    fields: dict[str, object] = {
        "model_id": node.engine.profile_hash,
        "prompt_hash": node.engine.encode_chat(list(messages)).prompt_hash,
        "temperature_milli": 0,
        "top_k": 0,
        "top_p_micro": 1_000_000,
        "seed": 0,
        "max_tokens": max_tokens,
        "stop_sequences_hash": compute_stop_sequences_hash([]),
        "requester": "0x" + "ab" * 20,
        "nonce": nonce,
    }
    fields.update(overrides)
    return convert.RequestEnvelope(InferenceRequest(**fields), messages, ())  # type: ignore[arg-type]


def verdict_of(response: object) -> Verdict:
    return convert.attestation_from_proto(response.attestation.attestation).verdict  # type: ignore[attr-defined]


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    code: grpc.StatusCode = info.value.code()
    return code


def test_health_and_info(running: Running) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    check = health.Check(health_pb2.HealthCheckRequest(service=""))  # type: ignore[attr-defined]
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    info = running.client.get_info()
    assert info.operator_id == running.key_pair.operator_id
    assert convert.g2_from_proto(info.public_key.g2) == running.key_pair.pubkey_g2
    assert [(m.name, m.model_id) for m in info.models] == [("tiny", running.engine.profile_hash)]
    assert (info.chain_id, info.task_manager) == (31337, TASK_MANAGER)


def test_the_operator_serves_on_cuda_when_present(running: Running) -> None:
    """No ``device`` in the config: the operator takes the GPU where torch sees one (so on a lent GPU
    machine every test in this file runs the operator's CUDA path), else the CPU."""
    import torch

    assert running.app.config.device is None
    assert running.engine.input_device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_generate_returns_a_signed_attestation_of_its_output(running: Running) -> None:
    request = envelope(running, "hello world", nonce=1)
    response = running.client.generate(request)
    tokens = list(response.output_token_ids)
    assert 0 < len(tokens) <= 8
    request_hash = compute_digest(DOMAIN, request.request)
    assert response.output_hash == running.engine.compute_output_hash(request_hash, tokens)
    attestation = convert.attestation_from_proto(response.attestation.attestation)
    assert attestation == Attestation(request_hash, response.output_hash, Verdict.ACCEPT)
    signature = convert.g1_from_proto(response.attestation.signature.signature)
    assert bls.verify(running.key_pair.pubkey_g2, compute_digest(DOMAIN, attestation), signature)
    # Generation is canonical: the stream gives the same tokens (a new request, same prompt).
    streamed = list(running.client.generate_stream(envelope(running, "hello world", nonce=2)))
    assert [m.token_id for m in streamed[:-1]] == tokens
    assert list(streamed[-1].result.output_token_ids) == tokens


def test_verify_accepts_the_canonical_output_and_rejects_an_edit(running: Running) -> None:
    generated = list(running.client.generate(envelope(running, "the quick brown fox", nonce=10)).output_token_ids)
    verifier_request = envelope(running, "the quick brown fox", nonce=11)
    accepted = running.client.verify(verifier_request, generated)
    assert verdict_of(accepted) == Verdict.ACCEPT and accepted.first_failing_position == -1
    edited = [*generated[:-1], (generated[-1] + 1) % running.engine.vocab_size]
    rejected = running.client.verify(envelope(running, "the quick brown fox", nonce=12), edited)
    assert verdict_of(rejected) == Verdict.REJECT
    assert rejected.first_failing_position >= 0 and rejected.reason
    # Past the node's max_new_tokens: refused before any hashing or signing, nothing recorded.
    flood = [0] * (running.app.config.limits.max_new_tokens + 1)
    flood_request = envelope(running, "the quick brown fox", nonce=13)
    assert code_of(lambda: running.client.verify(flood_request, flood)) == grpc.StatusCode.OUT_OF_RANGE
    assert verdict_of(running.client.verify(flood_request, generated)) == Verdict.ACCEPT  # free to attest


def test_sign_batch_only_over_accepted_outputs(running: Running) -> None:
    request = envelope(running, "operators sign", nonce=20)
    response = running.client.generate(request)
    leaf = BatchLeaf(compute_digest(DOMAIN, request.request), response.output_hash)
    header = BatchHeader(7, compute_merkle_tree([leaf]).root, 100, b"\x00")
    signed = running.client.sign_batch(header, [leaf])
    assert bls.verify(
        running.key_pair.pubkey_g2, compute_digest(DOMAIN, header), convert.g1_from_proto(signed.signature.signature)
    )
    foreign = BatchLeaf(keccak(text="never seen"), keccak(text="output"))
    foreign_header = BatchHeader(8, compute_merkle_tree([foreign]).root, 100, b"\x00")
    assert code_of(lambda: running.client.sign_batch(foreign_header, [foreign])) == grpc.StatusCode.FAILED_PRECONDITION
    wrong_root = BatchHeader(9, keccak(text="not the root"), 100, b"\x00")
    assert code_of(lambda: running.client.sign_batch(wrong_root, [leaf])) == grpc.StatusCode.INVALID_ARGUMENT
    conflicting = BatchHeader(7, compute_merkle_tree([leaf]).root, 101, b"\x00")
    assert code_of(lambda: running.client.sign_batch(conflicting, [leaf])) == grpc.StatusCode.FAILED_PRECONDITION


def test_refusals_have_the_right_status_codes(running: Running) -> None:
    client = running.client
    good = envelope(running, "hello", nonce=30)
    unsigned = grpc.insecure_channel(f"127.0.0.1:{running.app.ports.grpc}")
    from avs.rpc.operator.v1 import operator_pb2_grpc as op_grpc

    stub = op_grpc.OperatorServiceStub(unsigned)  # type: ignore[no-untyped-call]
    assert code_of(lambda: stub.Generate(op.GenerateRequest(request=convert.request_to_proto(good)))) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    stranger = OperatorClient(running.channel, DOMAIN, running.key_pair.operator_id, STRANGER.key)
    assert code_of(lambda: stranger.generate(good)) == grpc.StatusCode.PERMISSION_DENIED
    replayed = client.sign("Generate", op.GenerateRequest(request=convert.request_to_proto(good)))
    stub.Generate(replayed, timeout=60)
    assert code_of(lambda: stub.Generate(replayed, timeout=60)) == grpc.StatusCode.UNAUTHENTICATED
    tampered = client.sign("Generate", op.GenerateRequest(request=convert.request_to_proto(good)))
    tampered.request.max_tokens = 9  # changed after signing
    assert code_of(lambda: stub.Generate(tampered)) == grpc.StatusCode.PERMISSION_DENIED
    unknown = envelope(running, "hello", nonce=31, model_id=keccak(text="no such model"))
    assert code_of(lambda: client.generate(unknown)) == grpc.StatusCode.NOT_FOUND
    wrong_prompt = envelope(running, "hello", nonce=32, prompt_hash=keccak(text="another prompt"))
    assert code_of(lambda: client.generate(wrong_prompt)) == grpc.StatusCode.INVALID_ARGUMENT
    too_long = envelope(running, "hello", nonce=33, max_tokens=10_000)
    assert code_of(lambda: client.generate(too_long)) == grpc.StatusCode.OUT_OF_RANGE
    bad_sampling = envelope(running, "hello", nonce=34, temperature_milli=50_000)
    assert code_of(lambda: client.generate(bad_sampling)) == grpc.StatusCode.INVALID_ARGUMENT
    malformed = client.sign("Generate", op.GenerateRequest(request=op.InferenceRequest(model_id=b"\x01")))
    assert code_of(lambda: stub.Generate(malformed)) == grpc.StatusCode.INVALID_ARGUMENT
    other_chain = OperatorClient(running.channel, Domain(1, TASK_MANAGER), running.key_pair.operator_id, AGGREGATOR.key)
    assert code_of(lambda: other_chain.generate(good)) == grpc.StatusCode.PERMISSION_DENIED
    unsigned.close()


def test_calls_without_a_grpc_deadline_are_served(running: Running) -> None:
    """gRPC gives a call without a deadline a huge time_remaining (~9e18 s): the engine's turn must
    take it as no deadline, not fail with INTERNAL."""
    client, stub = running.client, running.client._stub
    generated = stub.Generate(client.sign("Generate", op.GenerateRequest(request=request_proto(running, 40))))
    assert verdict_of(generated) == Verdict.ACCEPT
    streamed = list(
        stub.GenerateStream(client.sign("GenerateStream", op.GenerateRequest(request=request_proto(running, 41))))
    )
    assert list(streamed[-1].result.output_token_ids) == list(generated.output_token_ids)
    verify = op.VerifyRequest(request=request_proto(running, 42), output_token_ids=list(generated.output_token_ids))
    assert verdict_of(stub.Verify(client.sign("Verify", verify))) == Verdict.ACCEPT


def test_a_huge_input_echoed_in_an_error_keeps_its_status_code(running: Running) -> None:
    """A 200,000-character chat role is INVALID_ARGUMENT with short details: echoed whole, the details
    would outgrow the client's 16 KiB header limit and arrive as RESOURCE_EXHAUSTED."""
    message = request_proto(running, 43)
    message.messages[0].role = "x" * 200_000
    with pytest.raises(grpc.RpcError) as info:
        running.client._stub.Generate(running.client.sign("Generate", op.GenerateRequest(request=message)), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "chat role must be one of" in details and len(details) < 200


def test_sign_batch_refuses_an_index_beyond_the_records_range(running: Running) -> None:
    request = envelope(running, "a high batch index", nonce=44)
    leaf = BatchLeaf(compute_digest(DOMAIN, request.request), running.client.generate(request).output_hash)
    root = compute_merkle_tree([leaf]).root
    top = BatchHeader(2**63 - 1, root, 100, b"\x00")
    assert bls.verify(
        running.key_pair.pubkey_g2,
        compute_digest(DOMAIN, top),
        convert.g1_from_proto(running.client.sign_batch(top, [leaf]).signature.signature),
    )
    beyond = BatchHeader(2**63, root, 100, b"\x00")
    assert code_of(lambda: running.client.sign_batch(beyond, [leaf])) == grpc.StatusCode.INVALID_ARGUMENT


def request_proto(node: Running, nonce: int) -> op.InferenceRequest:
    return convert.request_to_proto(envelope(node, "no deadline", nonce))


def test_node_api_and_metrics_over_http(running: Running) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{running.app.ports.node_api}/eigen/node/health") as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{running.app.ports.metrics}/metrics") as response:
        text = response.read().decode()
    assert 'eigen_performance_score{avs_name="verifiable-inference"} 100.0' in text
    assert 'avs_grpc_requests_total{code="OK",method="Generate"}' in text
    assert 'avs_grpc_requests_total{code="UNAUTHENTICATED",method="Generate"}' in text
    assert "avs_tokens_generated_total" in text and 'avs_signatures_total{kind="attestation"}' in text
    operator_id = "0x" + running.key_pair.operator_id.hex()
    assert (
        f'avs_operator_info{{chain_id="{DOMAIN.chain_id}",operator="{operator_id[:10]}",operator_id="{operator_id}",'
        in text
    )


def test_slashing_protection_survives_a_restart(model_dir: Path, tmp_path: Path) -> None:
    keystore.save_bls_keystore(
        tmp_path / "op.bls.key.json", bls.compute_key_pair(bls.generate_secret_key()), PASSWORD, 1 << 12
    )
    first = start(tmp_path, model_dir, tmp_path / "cache")
    request = envelope(first, "restart me", nonce=40)
    generated = list(first.client.generate(request).output_token_ids)
    first.channel.close()
    first.app.stop(1)

    second = start(tmp_path, model_dir, tmp_path / "cache")
    try:
        edited = [*generated[:-1], (generated[-1] + 1) % second.engine.vocab_size]
        # Rejecting another output is honest; accepting a second output would be equivocation.
        assert verdict_of(second.client.verify(envelope(second, "restart me", nonce=40), edited)) == Verdict.REJECT
        again = second.client.verify(envelope(second, "restart me", nonce=40), generated)
        assert verdict_of(again) == Verdict.ACCEPT  # the same ACCEPT as before: allowed
    finally:
        second.channel.close()
        second.app.stop(1)


def test_a_stream_the_client_cancels_between_tokens_is_counted_cancelled(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GenerateStream cancelled while the server is between two tokens ends with the generator
    closed (GeneratorExit, not an Exception): it was counted OK."""
    client, stub = running.client, running.client._stub
    requests = running.app.metrics.rpc_requests
    before = {code: requests.labels("GenerateStream", code)._value.get() for code in ("OK", "CANCELLED")}
    cancelled = threading.Event()
    stream = running.app.core.stream

    def slow_stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for i, item in enumerate(stream(*args, **kwargs)):
            if i == 1:
                cancelled.wait(10)  # the client cancels after the first token
            yield item

    monkeypatch.setattr(running.app.core, "stream", slow_stream)
    call = stub.GenerateStream(client.sign("GenerateStream", op.GenerateRequest(request=request_proto(running, 60))))
    assert next(call).token_id >= 0
    call.cancel()
    cancelled.set()
    deadline = time.monotonic() + 10
    while requests.labels("GenerateStream", "CANCELLED")._value.get() == before["CANCELLED"]:
        assert time.monotonic() < deadline, "the cancelled stream was not counted CANCELLED"
        time.sleep(0.05)
    assert requests.labels("GenerateStream", "OK")._value.get() == before["OK"]


def test_a_generation_the_client_cancels_is_abandoned_not_finished(running: Running) -> None:
    """A unary Generate whose client cancels while it waits for the engine never runs: the server
    sees the call is no longer active and ends it CANCELLED instead of generating and signing."""
    client, stub = running.client, running.client._stub
    requests = running.app.metrics.rpc_requests
    before = requests.labels("Generate", "CANCELLED")._value.get()
    call = envelope(running, "cancelled while queued", nonce=50)
    with running.app.core._engine_lock:  # an earlier call holds the engine
        pending = stub.Generate.future(
            client.sign("Generate", op.GenerateRequest(request=convert.request_to_proto(call)))
        )
        in_flight = running.app.metrics.in_flight
        deadline = time.monotonic() + 10
        while in_flight._value.get() < 1 and time.monotonic() < deadline:  # the server has the call
            time.sleep(0.02)
        assert in_flight._value.get() >= 1
        time.sleep(0.1)  # from the interceptor to the engine wait
        pending.cancel()
        time.sleep(0.5)  # the cancellation reaches the server
    deadline = time.monotonic() + 10
    while requests.labels("Generate", "CANCELLED")._value.get() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests.labels("Generate", "CANCELLED")._value.get() == before + 1
    request_hash = compute_request_hash(DOMAIN, call.request)
    assert running.app.core._protection.get_attestations(DOMAIN.separator, request_hash) == []
