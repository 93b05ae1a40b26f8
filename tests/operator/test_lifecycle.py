"""The operator's transport and lifecycle: TLS, reflection, message limits, SIGTERM, JSON logs."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import torch
import yaml
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from avs import keystore
from avs.crypto import bls
from avs.devnet import ServiceProcess
from avs.inference.engine import load_engine
from avs.rpc.operator_client import OperatorClient
from avs_aggregator.operators import GrpcOperatorCaller
from avs_aggregator.ports import OperatorInfo
from avs_operator.app import OperatorApp, Ports
from avs_operator.config import ConfigError, OperatorSecrets, parse_config
from avs_operator.node_api import ServiceStatus
from avs_operator.server import SERVICE_NAME
from tests.inference.conftest import build_tiny_model
from tests.operator.test_grpc_server import AGGREGATOR, DOMAIN, PASSWORD, envelope, make_config, start
from tests.operator.test_node_api import get

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("lifecycle-model") / "tiny")


def new_keystore(workdir: Path) -> bls.KeyPair:
    pair = bls.compute_key_pair(bls.generate_secret_key())
    keystore.save_bls_keystore(workdir / "op.bls.key.json", pair, PASSWORD, 1 << 12)
    return pair


def start_app(workdir: Path, model: Path, **grpc_overrides: object) -> OperatorApp:
    config = make_config(workdir, model)
    grpc_section = config["grpc"]
    assert isinstance(grpc_section, dict)
    grpc_section.update(grpc_overrides)
    app = OperatorApp(
        parse_config(config),
        OperatorSecrets(bls_key_password=PASSWORD),  # type: ignore[arg-type]
        engine_loader=lambda path, config: load_engine(
            path, threads=config.threads, device=config.device, cache_dir=workdir / "cache"
        ),
        create_slashing_protection=True,  # a fresh operator
    )
    app.start()
    return app


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (its own root) and its key: (cert, key)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@needs_openssl
def test_tls_when_configured(model_dir: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "server")
    pair = new_keystore(tmp_path)
    app = start_app(tmp_path, model_dir, tls_cert_file=str(cert), tls_key_file=str(key), listen="localhost:0")
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{app.ports.grpc}", credentials) as channel:
            info = OperatorClient(channel, DOMAIN, pair.operator_id, AGGREGATOR.key).get_info()
            assert info.operator_id == pair.operator_id
        with grpc.insecure_channel(f"localhost:{app.ports.grpc}") as plain:
            with pytest.raises(grpc.RpcError) as refused:
                OperatorClient(plain, DOMAIN, pair.operator_id, AGGREGATOR.key).get_info(timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # The aggregator's caller: TLS for an operator registered with a grpcs:// socket, checked
        # against the configured roots (a self-signed certificate is not in the system's).
        def registered(socket: str) -> OperatorInfo:
            return OperatorInfo(pair.operator_id, AGGREGATOR.address, pair.pubkey_g1, pair.pubkey_g2, socket, {0: 1})

        tls = registered(f"grpcs://localhost:{app.ports.grpc}")
        trusting = GrpcOperatorCaller(DOMAIN, bytes(AGGREGATOR.key), cert.read_bytes())
        untrusting = GrpcOperatorCaller(DOMAIN, bytes(AGGREGATOR.key))
        try:
            assert trusting._client(tls).get_info(timeout=5).operator_id == pair.operator_id
            for caller, operator in ((untrusting, tls), (trusting, registered(f"grpc://localhost:{app.ports.grpc}"))):
                with pytest.raises(grpc.RpcError) as failed:
                    caller._client(operator).get_info(timeout=5)
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            trusting.close()
            untrusting.close()
    finally:
        app.stop(1)


@needs_openssl
def test_mutual_tls_admits_only_callers_with_a_client_certificate(model_dir: Path, tmp_path: Path) -> None:
    """With ``grpc.tls_client_ca_file`` only a caller showing a certificate of those roots gets a
    connection: one without a certificate, or with another one, cannot even open a call, so it
    cannot hold the server's threads with calls it never finishes sending."""
    server_cert, server_key = self_signed(tmp_path, "server")
    client_cert, client_key = self_signed(tmp_path, "aggregator")
    other_cert, other_key = self_signed(tmp_path, "stranger")
    pair = new_keystore(tmp_path)
    app = start_app(
        tmp_path,
        model_dir,
        tls_cert_file=str(server_cert),
        tls_key_file=str(server_key),
        tls_client_ca_file=str(client_cert),
        listen="localhost:0",
    )
    target = f"localhost:{app.ports.grpc}"
    operator = OperatorInfo(
        pair.operator_id, AGGREGATOR.address, pair.pubkey_g1, pair.pubkey_g2, f"grpcs://{target}", {0: 1}
    )
    key = bytes(AGGREGATOR.key)
    admitted = GrpcOperatorCaller.from_files(DOMAIN, key, server_cert, client_cert, client_key)
    strangers = [
        GrpcOperatorCaller.from_files(DOMAIN, key, server_cert),
        GrpcOperatorCaller.from_files(DOMAIN, key, server_cert, other_cert, other_key),
    ]
    # More unfinished calls than the server has threads (max_concurrent_requests + 4), from a
    # stranger: the request message never comes.
    release = threading.Event()

    def never_sent() -> Iterator[bytes]:
        release.wait()
        yield b""

    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(server_cert.read_bytes()))
    get_info: Any = channel.stream_unary(f"/{SERVICE_NAME}/GetInfo")
    hanging: list[Any] = [get_info.future(never_sent()) for _ in range(12)]
    try:
        assert admitted._client(operator).get_info(timeout=5).operator_id == pair.operator_id
        for stranger in strangers:
            with pytest.raises(grpc.RpcError) as refused:
                stranger._client(operator).get_info(timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        for call in hanging:
            assert call.exception(timeout=5).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        release.set()
        channel.close()
        for caller in (admitted, *strangers):
            caller.close()
        app.stop(1)


def test_a_client_ca_without_tls_is_a_config_error(tmp_path: Path) -> None:
    config = make_config(tmp_path, tmp_path)
    config["grpc"] = {"tls_client_ca_file": "clients.pem"}
    with pytest.raises(ConfigError, match=r"tls_client_ca_file needs TLS"):
        parse_config(config)


def list_services(port: int) -> list[str] | grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        try:
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            return [s.name for r in responses for s in r.list_services_response.service]
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code


def test_reflection_only_behind_its_flag(model_dir: Path, tmp_path: Path) -> None:
    new_keystore(tmp_path)
    app = start_app(tmp_path, model_dir, reflection=True)
    try:
        services = list_services(app.ports.grpc)
        assert isinstance(services, list) and "avs.operator.v1.OperatorService" in services
    finally:
        app.stop(1)
    default = start(tmp_path, model_dir, tmp_path / "cache")
    try:
        assert list_services(default.app.ports.grpc) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        default.channel.close()
        default.app.stop(1)


def test_oversized_messages_are_refused(model_dir: Path, tmp_path: Path) -> None:
    pair = new_keystore(tmp_path)
    app = start_app(tmp_path, model_dir, max_message_bytes=320_000)  # the least the default limits allow
    try:
        with grpc.insecure_channel(
            f"127.0.0.1:{app.ports.grpc}", options=[("grpc.max_send_message_length", -1)]
        ) as channel:
            client = OperatorClient(channel, DOMAIN, pair.operator_id, AGGREGATOR.key)
            running = type("R", (), {"engine": next(iter(app.engines._engines.values()))})()
            big = envelope(running, "x" * 400_000, nonce=1)
            with pytest.raises(grpc.RpcError) as refused:
                client.generate(big)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        app.stop(1)


def test_the_binary_stops_cleanly_on_sigterm_and_logs_json_without_secrets(model_dir: Path, tmp_path: Path) -> None:
    first_key = new_keystore(tmp_path)
    config = make_config(tmp_path, model_dir)
    (tmp_path / "operator.yaml").write_text(yaml.safe_dump(config))
    env = {"OPERATOR_BLS_KEY_PASSWORD": PASSWORD, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "avs_operator.cli"]
    args = [*cli, "run", "--config", str(tmp_path / "operator.yaml")]
    # No history yet: `run` refuses (a mistyped URL or a new volume would start with none), until `init`.
    refused = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "no slashing protection history" in refused.stderr, refused.stderr
    init = [*cli, "slashing-protection", "init", "--config", str(tmp_path / "operator.yaml")]
    assert json.loads(subprocess.run(init, env=env, capture_output=True, text=True, check=True).stdout) == {
        "created": True
    }
    again = subprocess.run(init, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "exists already" in again.stderr
    process = ServiceProcess("operator", args, env, tmp_path)
    try:
        ready = process.wait_ready(timeout=120)
        assert isinstance(ready["grpc_port"], int)
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=30) == 0
    finally:
        process.stop()
    lines = [line for line in process.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON record
    assert {"serving", "stopped"} <= {r["message"] for r in records}
    (loaded,) = [r for r in records if r["message"] == "model loaded"]
    expected_device = "cuda:0" if torch.cuda.is_available() else "cpu"  # no `device` in the config
    assert (loaded["model"], loaded["device"], loaded["dtype"]) == ("tiny", expected_device, "float32")
    assert PASSWORD not in process.log_path.read_text() + process.stdout_path.read_text()
    # The history is now this key's: another key on the same config (a swapped volume, a second
    # operator's config in the same folder) is refused before it signs anything.
    (tmp_path / "op.bls.key.json").unlink()
    other_key = new_keystore(tmp_path)
    refused = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert f"belongs to operator 0x{first_key.operator_id.hex()}" in refused.stderr
    assert f"0x{other_key.operator_id.hex()}" in refused.stderr


def is_bound(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_a_stop_requested_while_models_load_leaves_nothing_serving_or_bound(model_dir: Path, tmp_path: Path) -> None:
    """SIGTERM's handler only requests the stop: ``start`` gives up before the next step (here, with
    the model loaded, before SERVING), and ``stop`` closes what was built, every port included.
    Before, the handler's stop ran inside ``start``, which went on to say SERVING afterwards."""
    new_keystore(tmp_path)
    app: OperatorApp

    def load_then_sigterm(path: Path, config: Any) -> Any:
        engine = load_engine(path, threads=config.threads, device=config.device, cache_dir=tmp_path / "cache")
        app.request_stop()  # what the SIGTERM handler does, while start() is loading the models
        return engine

    app = OperatorApp(
        parse_config(make_config(tmp_path, model_dir)),
        OperatorSecrets(bls_key_password=PASSWORD),  # type: ignore[arg-type]
        engine_loader=load_then_sigterm,
        create_slashing_protection=True,
    )
    assert app.start() is False
    ports = (app.ports.grpc, app.ports.node_api, app.ports.metrics)
    assert all(ports) and not app.core.ready.is_set()
    app.wait()  # returns at once: the stop was requested
    app.stop(1)
    assert [s.status for s in app._services()] == [ServiceStatus.DOWN]
    assert not any(is_bound(port) for port in ports), ports  # the metrics port too (it used to stay bound)


def test_a_second_operator_cannot_share_the_grpc_port(model_dir: Path, tmp_path: Path) -> None:
    """grpcio binds with SO_REUSEPORT by default: a second process on the port (a stale one draining,
    a copy with another slashing-protection database) got half of the calls. Now it cannot start."""
    new_keystore(tmp_path)
    first = start_app(tmp_path, model_dir)
    try:
        second = tmp_path / "second"
        second.mkdir()
        new_keystore(second)
        with pytest.raises(ConfigError, match="cannot listen there"):
            start_app(second, model_dir, listen=f"127.0.0.1:{first.ports.grpc}")
    finally:
        first.stop(1)


class StubEngine:
    """What start() touches of an engine: its profile, a warm-up token, its device and dtype."""

    def __init__(self, tag: int) -> None:
        self.profile_hash = bytes([tag]) * 32
        self.model = SimpleNamespace(dtype="float32")
        self.input_device = "cpu"

    def encode_chat(self, messages: Any) -> Any:
        return SimpleNamespace(token_ids=(1,))

    def stream(self, ids: Any, params: Any) -> Iterator[Any]:
        yield SimpleNamespace(token_id=1, finish_reason="length")


def two_model_config(workdir: Path) -> dict[str, Any]:
    config = make_config(workdir, workdir / "a")
    config["models"] = [{"name": "a", "path": str(workdir / "a")}, {"name": "b", "path": str(workdir / "b")}]
    return config


def test_the_node_api_says_up_only_once_the_daemon_serves(tmp_path: Path) -> None:
    """A model was reported Up (its service health 200, node health 206) as soon as it was loaded,
    while the daemon refused every call ("still loading") until the last model was."""
    new_keystore(tmp_path)
    loading_b, release_b = threading.Event(), threading.Event()

    def slow_second_model(path: Path, config: Any) -> Any:
        if path.name == "b":
            loading_b.set()
            assert release_b.wait(30)
        return StubEngine(1 if path.name == "a" else 2)

    app = OperatorApp(
        parse_config(two_model_config(tmp_path)),
        OperatorSecrets(bls_key_password=PASSWORD),  # type: ignore[arg-type]
        engine_loader=slow_second_model,
        create_slashing_protection=True,
    )
    starting = threading.Thread(target=app.start)
    starting.start()
    try:
        assert loading_b.wait(30)  # model a is loaded, b is loading: nothing is served yet
        assert not app.core.ready.is_set()
        assert get(app.ports.node_api, "/eigen/node/services/model-a/health")[0] == 503
        assert get(app.ports.node_api, "/eigen/node/health")[0] == 503
    finally:
        release_b.set()
        starting.join()
    try:
        assert app.core.ready.is_set()
        assert [s.status for s in app._services()] == [ServiceStatus.UP, ServiceStatus.UP]
        assert get(app.ports.node_api, "/eigen/node/health")[0] == 200
    finally:
        app.stop(1)


def test_run_refuses_a_chain_that_is_not_its_deployment_file_s(tmp_path: Path) -> None:
    """`run` never compared chain_id/task_manager with deployment_file (register and status do): left
    behind by a redeploy, it signed everything in the old contract's domain while saying SERVING."""
    new_keystore(tmp_path)
    deployment: dict[str, object] = {"chain_id": DOMAIN.chain_id, "start_block": 0}
    deployment |= {key: "0x" + "11" * 20 for key in ("deployer", "aggregator", "allocation_manager", "strategy")}
    deployment |= {key: "0x" + "22" * 20 for key in ("delegation_manager", "stake_token", "operator_registry")}
    deployment |= {"model_registry": "0x" + "33" * 20, "task_manager": "0x" + "44" * 20}  # redeployed
    (tmp_path / "deployment.json").write_text(json.dumps(deployment))
    config = two_model_config(tmp_path)
    config["chain"] = {**config["chain"], "deployment_file": str(tmp_path / "deployment.json")}
    app = OperatorApp(
        parse_config(config),
        OperatorSecrets(bls_key_password=PASSWORD),  # type: ignore[arg-type]
        engine_loader=lambda path, config: StubEngine(1 if path.name == "a" else 2),  # type: ignore[arg-type,return-value]
        create_slashing_protection=True,
    )
    try:
        with pytest.raises(ConfigError, match=r"chain_id/task_manager .* differ from the deployment file's"):
            app.start()
        assert app.ports == Ports()  # refused before anything listened
        assert not (tmp_path / "protection.sqlite").exists()
    finally:
        app.stop(1)
