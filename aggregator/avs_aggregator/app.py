"""The aggregator daemon: wires config, store, chain, operators, pipeline, intake API, metrics, health.

``AggregatorApp.start()`` opens the database (running migrations), resumes every unfinished
request and batch, and starts serving; ``stop()`` (SIGTERM) stops intake, lets the current steps
finish, and closes everything. Work is driven by ``PipelineRunner``: request steps run on a pool
(one request at a time per request), batches are signed and certified one after the other on
their own thread, so one sender key never races itself for nonces.

Several aggregators may share one database (``leader`` in the config; on by default for
PostgreSQL): a ``LeaderElector`` keeps trying for the lease, and only its holder runs a
``PipelineRunner`` (a new one at each election: a runner is not restartable) and sends
transactions (``LeaderOnlySender``). A standby serves the reads and refuses intake (UNAVAILABLE,
naming the leader); ``/health`` says which role it has and ``/health/leader`` answers 200 on the
leader only. On demotion intake is refused at once and the runner is stopped before the lease can
expire (a failed renewal leaves ``lease_seconds - renew_seconds``); a clean stop releases the
lease so a standby takes over at its next try.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from http.server import BaseHTTPRequestHandler
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry
from web3.contract.contract import ContractFunction

from avs import keystore
from avs.chain.client import Web3AvsClient
from avs.chain.deployment import load_deployment
from avs.chain.faults import Web3FaultClient
from avs.chain.governance import warn_if_unsound
from avs.chain.insurance import Web3CoverageReader
from avs.config import split_host_port
from avs.errors import InvalidInputError, UnavailableError
from avs.httpserver import BoundedHTTPServer, start_metrics_server
from avs.logs import redact_urls
from avs.messages import Domain
from avs.prompts import PromptEncoder
from avs_aggregator.chain import Web3ChainWriter, Web3OperatorSetReader, Web3RejectionReporter
from avs_aggregator.config import AggregatorConfig, AggregatorSecrets
from avs_aggregator.keeper import StakeKeeper
from avs_aggregator.leader import LeaderElector, LeaderLease, NotLeaderError
from avs_aggregator.metrics import AggregatorMetrics
from avs_aggregator.operators import GrpcOperatorCaller
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.server import SERVICE_NAME, AggregatorServicer, IntakeLimits, ServedModel, build_server
from avs_aggregator.store import RequestState, Store
from avs_aggregator.txsender import SenderSettings, SentTransaction, TransactionSender

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2
LEADER_HEALTH_SERVICE = f"{SERVICE_NAME}/leader"  # gRPC health: SERVING on the leader only
HEALTH_PATHS = ("/health", "/eigen/node/health")
LEADER_HEALTH_PATH = "/health/leader"


class Role(StrEnum):
    LEADER = "leader"  # drives the pipeline, takes requests, sends transactions
    STANDBY = "standby"  # serves the reads; waits for the lease


def build_pipeline_settings(config: AggregatorConfig) -> PipelineSettings:
    policy, batch = config.policy, config.batch
    return PipelineSettings(
        default_quorums=bytes(sorted(policy.default_quorums)),
        default_threshold_bps=policy.default_threshold_bps,
        min_threshold_bps=policy.min_threshold_bps,
        max_threshold_bps=policy.max_threshold_bps,
        allowed_quorums=frozenset(policy.quorums),
        max_attempts=policy.max_attempts,
        generate_timeout=config.deadlines.generate_seconds,
        verify_timeout=config.deadlines.verify_seconds,
        verify_rounds=config.deadlines.verify_rounds,
        sign_timeout=config.deadlines.sign_batch_seconds,
        batch_max_size=batch.max_size,
        batch_max_latency=batch.max_latency_seconds,
        first_batch_index=batch.first_index,
        max_reference_age=batch.max_reference_age_blocks,
        max_pending=policy.max_pending,
        workers=config.workers,
        confirmations=config.chain.confirmations,
        sign_rounds=batch.sign_rounds,
        sign_backoff=batch.sign_backoff_seconds,
    )


class LeaderOnlySender(TransactionSender):
    """A ``TransactionSender`` that sends only while ``may_send()``: the fence that keeps a demoted
    aggregator (a step still in flight, a paused process) from sending after its lease is gone."""

    def __init__(
        self,
        client: Web3AvsClient,
        account: LocalAccount,
        settings: SenderSettings,
        may_send: Callable[[], bool],
    ) -> None:
        super().__init__(client, account, settings)
        self._may_send = may_send

    def send(self, fn: ContractFunction, *, confirm: bool = True) -> SentTransaction:
        self._check_may_broadcast()  # before waiting for the lock too
        return super().send(fn, confirm=confirm)

    def _check_may_broadcast(self) -> None:
        if not self._may_send():
            raise NotLeaderError("this aggregator does not hold the leader lease; the leader sends this transaction")


@dataclass(frozen=True)
class Retention:
    """Finished requests and batches are deleted ``keep_seconds`` after they last changed, checked
    every ``every_seconds`` (``Store.prune_finished``)."""

    keep_seconds: float
    every_seconds: float = 3600.0


class PipelineRunner:
    """Drives a ``Pipeline`` on threads until ``stop()``."""

    def __init__(
        self,
        pipeline: Pipeline,
        workers: int,
        keeper: StakeKeeper | None = None,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pipeline = pipeline
        self.keeper = keeper
        self.retention = retention
        self._clock = clock
        self._next_prune = 0.0  # the first batch-loop tick prunes
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="request")
        self._inflight: set[bytes] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._guard(self._request_loop), name="requests", daemon=True),
            threading.Thread(target=self._guard(self._batch_loop), name="batches", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopped.set()
        self.pipeline._notify()
        for thread in self._threads:
            thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self._stopped.is_set():
                try:
                    loop()
                except Exception:
                    logger.exception("pipeline loop error; retrying")
                    self._stopped.wait(1.0)

        return run

    def _request_loop(self) -> None:
        while not self._stopped.is_set():
            for request_hash in self.pipeline.active_request_hashes():
                with self._lock:
                    if request_hash in self._inflight:
                        continue
                    self._inflight.add(request_hash)
                self._pool.submit(self._drive, request_hash)
            self.pipeline.wait_for_change(POLL_SECONDS)

    def _drive(self, request_hash: bytes) -> None:
        try:
            while not self._stopped.is_set() and self.pipeline.advance_request(request_hash):
                pass
        except Exception:
            logger.exception("request step failed; will retry", extra={"request": "0x" + request_hash.hex()})
            self._stopped.wait(1.0)
        finally:
            with self._lock:
                self._inflight.discard(request_hash)

    def _batch_loop(self) -> None:
        while not self._stopped.is_set():
            self._keep_stakes()
            try:
                self.pipeline.form_batches()
            except Exception as exc:  # a chain read failing: the batches formed already still move on
                logger.warning("forming batches failed; will retry", extra={"error": redact_urls(str(exc))})
                self._stopped.wait(1.0)  # as a failing loop pass did: no log line every poll
            for index in self.pipeline.active_batch_indices():
                if self._stopped.is_set():
                    return
                try:
                    self.pipeline.advance_batch(index)
                except Exception:  # one failing batch must not hold back the batches after it
                    logger.exception("batch step failed; will retry", extra={"batch_index": index})
            self._update_gauges()
            self._prune()
            self._stopped.wait(POLL_SECONDS)

    def _prune(self) -> None:
        """Deletes what the retention lets go, a bounded transaction at a time, between batch steps;
        a failure is logged and tried again at the next check."""
        if self.retention is None or self._clock() < self._next_prune:
            return
        self._next_prune = self._clock() + self.retention.every_seconds
        before = self._clock() - self.retention.keep_seconds
        try:
            while not self._stopped.is_set() and (counts := self.pipeline.store.prune_finished(before)):
                logger.info("pruned finished rows", extra=dataclasses.asdict(counts))
        except Exception as exc:
            logger.warning("pruning failed; retrying at the next check", extra={"error": str(exc)})

    def _keep_stakes(self) -> None:
        """Refreshes the registry's stakes before certificates would find them stale (the first
        tick, at start or on election, refreshes a quorum that is stale already); a failure is
        logged and retried at the next poll, batching goes on."""
        if self.keeper is None:
            return
        try:
            self.keeper.tick()
        except Exception as exc:
            logger.warning("stake refresh failed; retrying at the next poll", extra={"error": str(exc)})

    def _update_gauges(self) -> None:
        metrics = self.pipeline.metrics
        if metrics is None:
            return
        for state in RequestState:
            if state not in (RequestState.CERTIFIED, RequestState.FAILED):
                metrics.pending.labels(state.value.lower()).set(self.pipeline.store.count_requests([state]))


@dataclass
class Ports:
    grpc: int = 0
    metrics: int = 0
    health: int = 0


def check_first_batch_index(client: Web3AvsClient, first_index: int) -> None:
    """Refuses a ``batch.first_index`` that the task manager's record ring cannot take in an empty
    slot: a slot moves at most ``MAX_EPOCH_STEP`` ring epochs a certification (an empty one counts
    as epoch 0), so every batch from such an index would revert ``BatchIndexTooFar`` and fail."""
    functions = client.task_manager.functions
    ring = int(functions.recordRing().call())
    if ring == 0:
        return
    step = int(functions.MAX_EPOCH_STEP().call())
    if first_index // ring > step:
        raise InvalidInputError(
            f"batch.first_index {first_index} is more than MAX_EPOCH_STEP ({step}) ring epochs past an empty "
            f"slot of the task manager's record ring ({ring} slots): at most {ring * (step + 1) - 1}"
        )


class AggregatorApp:
    def __init__(self, config: AggregatorConfig, secrets: AggregatorSecrets) -> None:
        self.config = config
        self._secrets = secrets
        self.registry = CollectorRegistry()
        self.metrics = AggregatorMetrics(self.registry)
        self.ports = Ports()
        self._closers: list[Callable[[], Any]] = []
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self.ready = threading.Event()
        self.role = Role.STANDBY
        self.runner: PipelineRunner | None = None
        self.elector: LeaderElector | None = None
        self.keeper: StakeKeeper | None = None
        self._role_lock = threading.Lock()

    def start(self) -> bool:
        """Build and start everything; False if a stop was requested meanwhile (``request_stop``,
        from a signal handler): it gives up between steps, and ``stop`` closes what was built."""
        config = self.config
        password = self._secrets.ecdsa_key_password
        if password is None:
            raise InvalidInputError("set AGGREGATOR_ECDSA_KEY_PASSWORD to unlock the aggregator's ECDSA keystore")
        key = keystore.load_ecdsa_keystore(config.keys.ecdsa_keystore, password.get_secret_value())
        account = Account.from_key(key)
        deployment = load_deployment(config.chain.deployment_file)
        from web3 import Web3

        w3 = Web3(Web3.HTTPProvider(config.chain.rpc_url, request_kwargs={"timeout": 30}))
        try:
            chain_id = w3.eth.chain_id
        except Exception as exc:  # the node's URL (an API key in its path) is in requests' message
            raise UnavailableError(f"the RPC node cannot be read: {redact_urls(str(exc))}") from None
        if chain_id != deployment.chain_id:
            raise InvalidInputError(f"{redact_urls(config.chain.rpc_url)} is not chain {deployment.chain_id}")
        warn_if_unsound(w3, deployment)  # bounds governance may have broken since the deployment
        if self._stop_requested.is_set():
            return False
        client = Web3AvsClient(w3, deployment, account)
        check_first_batch_index(client, config.batch.first_index)
        domain = Domain(deployment.chain_id, deployment.task_manager)
        self.store = Store(config.database_url)
        self._closers.append(self.store.close)
        keys = config.keys
        caller = GrpcOperatorCaller.from_files(
            domain,
            key,
            keys.operator_tls_ca_file,
            keys.operator_tls_client_cert_file,
            keys.operator_tls_client_key_file,
        )
        self._closers.append(caller.close)
        sender = LeaderOnlySender(
            client,
            account,
            SenderSettings(
                receipt_timeout=config.chain.receipt_timeout_seconds,
                bump_percent=config.chain.bump_percent,
                max_bumps=config.chain.max_bumps,
                confirmations=config.chain.confirmations,
                max_fee_per_gas=round(config.chain.max_fee_gwei * 10**9),
            ),
            self.is_leader,
        )
        client.sender = sender  # every transaction of the aggregator's account: leader only, fee bumps
        reporter = None
        if config.chain.prove_rejections and deployment.fault_manager is not None:
            reporter = Web3RejectionReporter(Web3FaultClient(client))
        settings = build_pipeline_settings(config)
        reader = Web3OperatorSetReader(client, config.chain.reference_lag_blocks)
        # the leader's batch loop keeps the registry's stakes fresh (updateOperatorsForQuorum)
        self.keeper = None
        if config.chain.refresh_stakes:
            self.keeper = StakeKeeper(client, reader, client.transact, eject_understaked=config.chain.eject_understaked)
        self.pipeline = Pipeline(
            domain,
            self.store,
            reader,
            caller,
            Web3ChainWriter(client),
            settings,
            self.metrics,
            reporter,
        )
        self._closers.append(self.pipeline.close)
        models = {}
        for model in config.models:
            model_id = bytes.fromhex(model.model_id[2:])
            encoder = PromptEncoder(model.tokenizer_path) if model.tokenizer_path else None
            models[model_id] = ServedModel(model.name, model_id, encoder)
        coverage = Web3CoverageReader(w3, deployment.insurance_pool) if deployment.insurance_pool else None
        limits = IntakeLimits(config.policy.max_chat_chars, config.policy.max_new_tokens)
        servicer = AggregatorServicer(self.pipeline, models, limits, coverage, gate=self)
        if self._stop_requested.is_set():
            return False
        self._start_http()
        self._grpc, self.ports.grpc, self._health = build_server(servicer, config.grpc_listen)
        self._servicer = servicer
        self._health.set(LEADER_HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._stop_requested.is_set():
            return False
        self._start_leadership()
        self._grpc.start()
        self.ready.set()
        logger.info(
            "aggregator serving",
            extra={
                "grpc_port": self.ports.grpc,
                "aggregator": account.address,
                "task_manager": deployment.task_manager,
                "role": self.role.value,
                "holder": self.elector.lease.holder if self.elector else None,
            },
        )
        return True

    # --- leadership ----------------------------------------------------------------------

    def _start_leadership(self) -> None:
        """Leader election on: a first try now (a lone aggregator leads before it serves), then the
        loop; off (SQLite by default): this aggregator is the leader."""
        config = self.config
        if not config.is_leader_election_enabled():
            self._on_elected(0)
            return
        holder = config.leader.holder_id or f"{socket.gethostname()}:{self.ports.grpc}/{os.getpid()}"
        lease = LeaderLease(self.store, holder, ttl=config.leader.lease_seconds)
        self.elector = LeaderElector(lease, self._on_elected, self._on_demoted, config.leader.get_renew_seconds())
        self.elector.start()

    def is_leader(self) -> bool:
        """Whether this aggregator drives the pipeline and may send transactions now: elected and,
        by the local clock, inside the lease it last renewed."""
        if self.elector is None:
            return self.role is Role.LEADER
        return self.role is Role.LEADER and self.elector.is_leader and self.elector.lease.is_held()

    def get_intake_refusal(self) -> str | None:
        """``IntakeGate``: None on the leader; a standby names the lease holder, if there is one."""
        if self._stopped.is_set():
            return "this aggregator is stopping"
        if self.is_leader():
            return None
        if self.elector is None:
            return "this aggregator is not driving the pipeline yet"
        own = self.elector.lease.holder
        try:
            holder = self.elector.lease.get_holder()
        except Exception as exc:  # the database is unreachable
            logger.warning("could not read the leader lease", extra={"error": str(exc)})
            holder = None
        if holder is None or holder[0] == own or holder[1] < time.time():
            return f"this aggregator ({own}) is a standby and no aggregator holds the leader lease now; retry shortly"
        return f"this aggregator ({own}) is a standby; the leader is {holder[0]} (term {holder[2]}): submit there"

    def _retention(self) -> Retention | None:
        hours = self.config.retention.keep_finished_hours
        return Retention(keep_seconds=hours * 3600) if hours else None

    def _on_elected(self, term: int) -> None:
        with self._role_lock:
            if self._stopped.is_set():
                return
            self.runner = PipelineRunner(self.pipeline, self.config.workers, self.keeper, self._retention())
            self.runner.start()
            self.role = Role.LEADER
            self.metrics.leader.set(1)
            self._health.set(LEADER_HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        logger.info("driving the pipeline", extra={"term": term})

    def _on_demoted(self) -> None:
        """Refuse intake at once, then stop the runner (its steps in flight finish; their
        transactions are fenced by ``LeaderOnlySender``)."""
        leader = self.config.leader
        with self._role_lock:
            self.role = Role.STANDBY
            self.metrics.leader.set(0)
            self._health.set(LEADER_HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
            runner, self.runner = self.runner, None
            if runner is not None:
                runner.stop(timeout=leader.lease_seconds - leader.get_renew_seconds())
        logger.info("standing by: the pipeline is stopped")

    def _start_http(self) -> None:
        host, port = split_host_port(self.config.metrics_listen)
        metrics_server, _ = start_metrics_server(host, port, self.registry)
        self.ports.metrics = int(metrics_server.server_address[1])
        self._closers.append(lambda: _close_server(metrics_server))
        app = self

        class Health(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.rstrip("/")
                if path not in (*HEALTH_PATHS, LEADER_HEALTH_PATH):
                    self.send_error(404)
                    return
                status, report = app.get_health(leader_only=path == LEADER_HEALTH_PATH)
                body = json.dumps(report).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        host, port = split_host_port(self.config.health_listen)
        server = BoundedHTTPServer((host, port), Health)
        self.ports.health = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
        self._closers.append(lambda: _close_server(server))

    def get_health(self, leader_only: bool = False) -> tuple[int, dict[str, str]]:
        """``/health``: 200 while serving, whatever the role (a standby serves the reads), 503 while
        starting or stopping; ``/health/leader``: 200 on the leader only (where intake goes)."""
        serving = self.ready.is_set() and not self._stopped.is_set()
        body = {"status": "ok" if serving else "unavailable", "role": self.role.value}
        if self.elector is not None:
            body["holder"] = self.elector.lease.holder
        ok = serving and (self.is_leader() if leader_only else True)
        return (200 if ok else 503), body

    def request_stop(self) -> None:
        """Ask for a stop: a signal handler's part. ``stop`` itself runs on the main thread once
        ``start`` has returned (in a handler it could wait on a lock the interrupted code holds)."""
        self._stop_requested.set()

    def stop(self, grace_seconds: float = 10.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._stop_requested.set()
        self.ready.clear()
        if hasattr(self, "_health"):
            self._health.enter_graceful_shutdown()
        if hasattr(self, "_grpc"):
            self._grpc.stop(grace_seconds).wait()
            self._servicer.close()
        if self.elector is not None:
            self.elector.stop(release=False)  # no more renewals; the steps in flight may still send
        with self._role_lock:
            runner, self.runner = self.runner, None
            if runner is not None:
                runner.stop()
            self.role = Role.STANDBY
        if self.elector is not None:
            self.elector.release()  # a standby takes over at its next try
        for close in reversed(self._closers):
            close()
        logger.info("aggregator stopped")

    def wait(self) -> None:
        """Until a stop is requested (or done)."""
        self._stop_requested.wait()


def _close_server(server: BoundedHTTPServer) -> None:
    """Stop serving and release the port (``shutdown`` alone leaves it bound: probes hang, a restart
    on the same port fails)."""
    server.shutdown()
    server.server_close()
