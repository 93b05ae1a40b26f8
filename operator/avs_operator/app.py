"""The operator daemon's lifecycle: start, warm up, serve, stop cleanly.

Order at start: the config's chain against its deployment file (when set), slashing protection,
keys, metrics and node API, the gRPC server answering health checks with NOT_SERVING, then the
models (checked against their profiles) and a warm-up pass; only then SERVING, and only then are
the node API's services Up. A SIGTERM only requests the stop: ``start`` gives up between its steps
(between models too), and the main thread stops. At stop: NOT_SERVING first (gRPC health and the
node API's services), then in-flight calls get a grace period to finish. A signature is recorded
before it is returned, so stopping at any point never leaves one unrecorded. The daemon never
writes to the chain (registration is a CLI command).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from avs import __version__, keystore
from avs.calls import CallAuthenticator
from avs.chain.deployment import Deployment
from avs.config import split_host_port
from avs.errors import InvalidInputError, ModelMismatchError
from avs.httpserver import start_metrics_server
from avs.inference.engine import EngineRegistry, InferenceEngine, load_engine
from avs.inference.params import SamplingParams
from avs.messages import Domain
from avs_operator.config import OperatorConfig, OperatorSecrets, load_checked_deployment
from avs_operator.core import OperatorCore
from avs_operator.metrics import OperatorMetrics
from avs_operator.node_api import NodeApiServer, ServiceState, ServiceStatus
from avs_operator.server import (
    ConcurrencyLimiter,
    OperatorServicer,
    build_grpc_server,
    new_health_servicer,
)
from avs_operator.slashing_protection import SlashingProtection

logger = logging.getLogger(__name__)

STAKE_REFRESH_SECONDS = 60.0
EngineLoader = Callable[[Path, OperatorConfig], InferenceEngine]


def _default_loader(path: Path, config: OperatorConfig) -> InferenceEngine:
    return load_engine(path, threads=config.threads, device=config.device)


class _StopRequested(Exception):
    """A stop was requested while ``start`` was building: it gives up at the next step."""


@dataclass
class Ports:
    grpc: int = 0
    node_api: int = 0
    metrics: int = 0


class OperatorApp:
    def __init__(
        self,
        config: OperatorConfig,
        secrets: OperatorSecrets,
        engine_loader: EngineLoader = _default_loader,
        create_slashing_protection: bool = False,
    ):
        """``create_slashing_protection``: make an empty history if there is none (tests and fresh
        devnets); ``avs-operator run`` refuses to start without one."""
        self.config = config
        self._create_protection = create_slashing_protection
        self._secrets = secrets
        self._load_engine = engine_loader
        self.ports = Ports()
        self.registry = CollectorRegistry()
        self.metrics = OperatorMetrics(self.registry)
        self.engines = EngineRegistry()
        self._model_states: dict[str, ServiceStatus] = {m.name: ServiceStatus.INITIALIZING for m in config.models}
        self._health = new_health_servicer()
        self._stop_requested = threading.Event()  # SIGTERM: set by the handler, acted on by the main thread
        self._stopped = threading.Event()
        self._grpc: grpc.Server | None = None
        self._closers: list[Callable[[], Any]] = []

    # --- lifecycle --------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the daemon to stop (a signal handler's part): ``start`` gives up at its next step, and
        ``wait`` returns; ``stop`` does the work."""
        self._stop_requested.set()

    def _checkpoint(self) -> None:
        if self._stop_requested.is_set():
            raise _StopRequested

    def start(self) -> bool:
        """Build and start everything; False if a stop was requested meanwhile (then ``stop`` closes
        what was built, and nothing says SERVING)."""
        try:
            self._start()
        except _StopRequested:
            logger.info("stop requested while starting")
            return False
        return True

    def _start(self) -> None:
        # Before anything else: a stale chain_id/task_manager would have every signature made in a
        # domain the contracts reject, while health says SERVING.
        deployment = load_checked_deployment(self.config.chain) if self.config.chain.deployment_file else None
        password = self._secrets.bls_key_password
        if password is None:
            raise InvalidInputError("set OPERATOR_BLS_KEY_PASSWORD to unlock the BLS keystore")
        key_pair = keystore.load_bls_keystore(self.config.keys.bls_keystore, password.get_secret_value())
        domain = Domain(self.config.chain.chain_id, self.config.chain.task_manager)
        protection = SlashingProtection(
            self.config.slashing_protection_url, create=self._create_protection, operator_id=key_pair.operator_id
        )
        self._closers.append(protection.close)
        self._checkpoint()
        self._start_http()
        self.core = OperatorCore(
            domain,
            key_pair,
            self.engines,
            protection,
            self.metrics,
            self.config.limits,
            max_reply_bytes=self.config.grpc.max_message_bytes,
        )
        self.metrics.set_identity(key_pair.operator_id, domain.chain_id, domain.verifying_contract)
        authenticator = CallAuthenticator(
            domain, key_pair.operator_id, self.config.auth.authorised_aggregators, self.config.auth.window_ms
        )
        servicer = OperatorServicer(
            self.core,
            authenticator,
            ConcurrencyLimiter(self.config.grpc.max_concurrent_requests),
            self.metrics,
        )
        self._checkpoint()
        self._grpc, self.ports.grpc = build_grpc_server(servicer, self.config.grpc, self._health)
        self._grpc.start()
        logger.info("grpc listening", extra={"port": self.ports.grpc, "operator_id": "0x" + key_pair.operator_id.hex()})
        for model in self.config.models:
            self._checkpoint()  # a model can take minutes to load: a SIGTERM is acted on between them
            self.core.add_model(model.name, self._load_model(model.name, model.path, model.profile_hash))
        self._checkpoint()
        self.core.ready.set()
        # Up only now, all together: a model loaded while the next one still loads is refused
        # ("still loading"), so the node API must not call it Up before the daemon serves it.
        self._model_states.update(dict.fromkeys(self._model_states, ServiceStatus.UP))
        if deployment is not None:
            threading.Thread(target=self._refresh_stakes, args=(deployment,), name="stakes", daemon=True).start()
        self._health.set_serving(True)
        self.metrics.set_ready(True)
        logger.info("serving", extra={"models": list(self._model_states)})

    def _load_model(self, name: str, path: Path, expected_profile: str | None) -> InferenceEngine:
        engine = self._load_engine(path, self.config)
        if expected_profile is not None and "0x" + engine.profile_hash.hex() != expected_profile.lower():
            self._model_states[name] = ServiceStatus.DOWN
            raise ModelMismatchError(f"model {name!r} at {path} does not have the configured profile hash")
        # Warm-up: one token through the real path, so the first request pays no load cost.
        next(
            iter(
                engine.stream(
                    engine.encode_chat([{"role": "user", "content": "hi"}]).token_ids, SamplingParams(max_tokens=1)
                )
            )
        )
        self.engines.add(engine)
        # Which device and dtype serve the model: CUDA is taken when present, so say which was.
        dtype = str(engine.model.dtype).removeprefix("torch.")
        logger.info(
            "model loaded",
            extra={
                "model": name,
                "profile": "0x" + engine.profile_hash.hex(),
                "device": str(engine.input_device),
                "dtype": dtype,
            },
        )
        return engine

    def _start_http(self) -> None:
        host, port = split_host_port(self.config.node_api.listen)
        node_api = NodeApiServer(host, port, self.config.node_name, __version__, self._services)
        node_api.start()
        self.ports.node_api = node_api.port
        self._closers.append(node_api.stop)
        host, port = split_host_port(self.config.metrics.listen)
        metrics_server, _ = start_metrics_server(host, port, self.registry)
        self.ports.metrics = int(metrics_server.server_address[1])
        self._closers.append(metrics_server.server_close)  # the port, once the serving loop has ended
        self._closers.append(metrics_server.shutdown)

    def _refresh_stakes(self, deployment: Deployment) -> None:
        """Read this operator's registered stake per quorum for ``eigen_registered_stakes`` (read-only)."""
        from avs.chain.registration import get_operator_status, load_client

        while not self._stopped.is_set():
            try:
                client = load_client(self.config.chain.rpc_url, deployment, None)
                address = client.registry.functions.getOperatorFromId(self.core.operator_id).call()
                status = get_operator_status(client, address)
                self.metrics.set_registered_stakes(status.stake)
            except Exception:
                logger.warning("could not read registered stakes", exc_info=True)
            self._stopped.wait(STAKE_REFRESH_SECONDS)

    def _services(self) -> list[ServiceState]:
        return [
            ServiceState(f"model-{name}", name, "verified inference: generate, verify, sign batches", status)
            for name, status in self._model_states.items()
        ]

    def stop(self, grace_seconds: float = 10.0) -> None:
        """NOT_SERVING (gRPC health, the node API's services, the ready metric), let in-flight calls
        finish for ``grace_seconds``, then close everything. Again after a stop that came while
        ``start`` was still building, it closes what was built since."""
        self._stop_requested.set()
        first = not self._stopped.is_set()
        self._stopped.set()
        self._health.set_serving(False)
        self.metrics.set_ready(False)
        self._model_states.update(dict.fromkeys(self._model_states, ServiceStatus.DOWN))
        if hasattr(self, "core"):
            self.core.ready.clear()
        if self._grpc is not None:
            grpc_server, self._grpc = self._grpc, None
            grpc_server.stop(grace_seconds).wait()
        while self._closers:
            self._closers.pop()()
        if first:
            logger.info("stopped")

    def wait(self) -> None:
        """Until a stop is requested (``request_stop``, ``stop``)."""
        self._stop_requested.wait()
