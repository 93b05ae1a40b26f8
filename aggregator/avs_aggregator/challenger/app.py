"""``avs-challenger`` config, metrics and lifecycle (poll loop on a thread, SIGTERM-clean stop).

The challenger's ECDSA key (password from ``CHALLENGER_ECDSA_KEY_PASSWORD``) signs its Verify calls
to operators, so operators must list its address in ``auth.authorised_aggregators``, and sends the
challenge transactions, so it must hold the bond in the stake token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from eth_account import Account
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import SettingsConfigDict

from avs import keystore
from avs.chain.client import Web3AvsClient
from avs.chain.deployment import load_deployment
from avs.chain.faults import Web3FaultClient
from avs.chain.insurance import InsuranceBuyer
from avs.client import AggregatorClient
from avs.config import (
    EnvSecrets,
    Section,
    resolve_database_url,
    resolve_optional_paths,
    resolve_path,
    split_host_port,
)
from avs.errors import InvalidInputError
from avs.httpserver import start_metrics_server
from avs.messages import Domain
from avs_aggregator.chain import Web3OperatorSetReader
from avs_aggregator.challenger.chain import AggregatorLeafSource, OperatorLeafChecker, Web3BatchFeed, Web3Escalator
from avs_aggregator.challenger.core import Challenger, Finding
from avs_aggregator.challenger.resolution import Resolver
from avs_aggregator.challenger.rewards import RewardCollector, Web3RewardPool
from avs_aggregator.challenger.slashes import SlashClearer, Web3SlashChain
from avs_aggregator.challenger.store import (
    AttestationRow,
    ChallengeRow,
    ChallengerStore,
    ChallengeState,
    EquivocationRow,
)
from avs_aggregator.config import MAX_WAIT_SECONDS, TLS_FILES, ConfigError, check_client_certificate_pair
from avs_aggregator.evidence import EvidenceBook
from avs_aggregator.keeper import StakeKeeper
from avs_aggregator.operators import GrpcOperatorCaller
from avs_aggregator.txsender import TransactionSender

logger = logging.getLogger(__name__)


class ChallengerConfig(Section):
    rpc_url: str = "http://127.0.0.1:8545"
    deployment_file: Path
    aggregator: str = "127.0.0.1:50060"  # the aggregator's intake gRPC (GetBatch, GetStatus)
    ecdsa_keystore: Path
    operator_tls_ca_file: Path | None = None  # PEM roots for operators with a grpcs:// socket
    # The client certificate (PEM) shown to operators that require mutual TLS; both or neither
    operator_tls_client_cert_file: Path | None = None
    operator_tls_client_key_file: Path | None = None
    # Keep the registry's stakes fresh itself (updateOperatorsForQuorum): escalation certificates are
    # refused on stale stakes, and the challenger must not depend on the aggregator for that.
    refresh_stakes: bool = True
    sample_rate: float = Field(default=0.1, ge=0, le=1)  # share of leaves re-verified
    checkers: int = Field(default=2, ge=1, le=32)  # operators asked per leaf: non-signers first
    check_attempts: int = Field(default=10, ge=1)  # polls a leaf is retried while unchecked
    escalate: bool = True  # open a challenge (locks the bond) for a leaf found wrong
    resolve: bool = True  # collect the escalation quorum's certificate, resolveChallenge / expireChallenge
    prove_equivocations: bool = True  # proveEquivocation for conflicting attestations it sees
    # clearBurnOrRedistributableShares for slashes the registry could not clear to the pool
    # (SlashedFundsNotCleared; EigenLayer's slash resolution delay), once they can be (challenger/slashes.py)
    clear_slashes: bool = True
    slash_lookback_blocks: int = Field(default=100_000, ge=1)  # events read again at a start
    # scan position, findings, challenges; a relative SQLite path is relative to the config file
    database_url: str = "sqlite:///challenger-data/challenger.sqlite"
    reference_lag_blocks: int = Field(default=1, ge=1)  # escalation certificates at latest - lag
    confirmations: int = Field(default=0, ge=0, le=64)  # blocks on top of a BatchCertified event before it is read
    poll_seconds: float = Field(default=5.0, gt=0, le=MAX_WAIT_SECONDS)
    # An owed reward is claimed once the pool can pay all of it, or the part it can pay once that
    # part has waited this long (0: any part at once; challenger/rewards.py)
    reward_partial_after_seconds: float = Field(default=86_400.0, ge=0, le=30 * 86_400)
    verify_seconds: float = Field(default=60.0, gt=0, le=MAX_WAIT_SECONDS)
    start_block: int | None = None  # first run only (then the database's position); default: the head
    metrics_listen: str = "0.0.0.0:9097"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _check_escalation_is_resolved(self) -> ChallengerConfig:
        # Without the resolver a challenge is opened on one operator's REJECT with no confirmation
        # by the escalation quorum, and never expired: the bond stays locked, or goes to whoever
        # resolves it with an ACCEPT certificate.
        if self.escalate and not self.resolve:
            raise ValueError("escalate needs resolve (a challenge opened must be confirmed, resolved or expired)")
        check_client_certificate_pair(self.operator_tls_client_cert_file, self.operator_tls_client_key_file)
        return self


class ChallengerSecrets(EnvSecrets):
    model_config = SettingsConfigDict(env_prefix="CHALLENGER_", extra="ignore")

    ecdsa_key_password: SecretStr | None = None


def load_challenger_config(path: Path) -> ChallengerConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} is not readable YAML: {exc}") from None
    try:
        config = ChallengerConfig.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid challenger config: {fields}") from None

    return config.model_copy(
        update={
            "deployment_file": resolve_path(config.deployment_file, path.parent),
            "ecdsa_keystore": resolve_path(config.ecdsa_keystore, path.parent),
            **resolve_optional_paths(config, TLS_FILES, path.parent),
            "database_url": resolve_database_url(config.database_url, path.parent),
        }
    )


class ChallengerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.leaves_checked = Counter(
            "avs_challenger_leaves_checked_total", "Leaves re-verified, by verdict", ["verdict"], registry=registry
        )
        self.challenges = Counter(
            "avs_challenger_challenges_total",
            "Challenges opened, or adopted from the chain (one per leaf)",
            registry=registry,
        )
        self.challenges_closed = Counter(
            "avs_challenger_challenges_closed_total",
            "Challenges ended, by how (upheld, dismissed, expired; lost: given up to a reorg, then refused)",
            ["state"],
            registry=registry,
        )
        self.open_challenges = Gauge("avs_challenger_open_challenges", "Challenges still open", registry=registry)
        self.last_block = Gauge("avs_challenger_last_block", "Last block processed", registry=registry)
        self.pending_checks = Gauge(
            "avs_challenger_pending_checks", "Leaves (or batches) not checked yet, retried", registry=registry
        )
        self.slashes_not_cleared = Gauge(
            "avs_challenger_slashes_not_cleared",
            "Slashes whose funds have not reached the insurance pool yet (SlashedFundsNotCleared, not cleared since)",
            registry=registry,
        )
        self.slashes_cleared = Counter(
            "avs_challenger_slashes_cleared_total",
            "Slashes this challenger cleared to the insurance pool (clearBurnOrRedistributableShares)",
            registry=registry,
        )

    def record(
        self, findings: list[Finding], closed: list[ChallengeRow], still_open: int, lost: Sequence[Finding] = ()
    ) -> None:
        """``findings``: new this poll; ``closed``: the challenges that ended (``Resolver``); ``lost``: the
        leaves whose challenge, given up to a reorg, was then refused (``take_lost_challenges``)."""
        for finding in findings:
            self.leaves_checked.labels(finding.verdict.name.lower() if finding.verdict else "unchecked").inc()
            # Every finding naming a challenge counts, not only those with our transaction: one adopted
            # from the chain (after a crash, a receipt timeout, or someone else's) is resolved and
            # counted closed like the others, so it is counted opened too.
            if finding.challenge_id is not None:
                self.challenges.inc()
        for row in closed:
            self.challenges_closed.labels(row.state.lower()).inc()
        if lost:
            self.challenges_closed.labels("lost").inc(len(lost))
        self.open_challenges.set(still_open)


class EndedChallenges:
    """The resolver as the challenger's ``ChallengeAdvancer``, keeping what ended for the metrics."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self._ended: list[ChallengeRow] = []

    def advance_all(self) -> list[ChallengeRow]:
        ended = self.resolver.advance_all()
        self._ended += ended
        return ended

    def take_ended(self) -> list[ChallengeRow]:
        ended, self._ended = self._ended, []
        return ended


class ChallengerApp:
    def __init__(self, config: ChallengerConfig, secrets: ChallengerSecrets) -> None:
        self.config = config
        self._secrets = secrets
        self.registry = CollectorRegistry()
        self.metrics = ChallengerMetrics(self.registry)
        self._stopped = threading.Event()
        self._closers: list[Any] = []
        self.metrics_port = 0
        self.rewards: RewardCollector | None = None  # with an insurance pool in the deployment (start)
        self.slashes: SlashClearer | None = None  # with a strategy manager in the deployment (start)

    def start(self) -> None:
        password = self._secrets.ecdsa_key_password
        if password is None:
            raise InvalidInputError("set CHALLENGER_ECDSA_KEY_PASSWORD to unlock the challenger's keystore")
        key = keystore.load_ecdsa_keystore(self.config.ecdsa_keystore, password.get_secret_value())
        deployment = load_deployment(self.config.deployment_file)
        from web3 import Web3

        w3 = Web3(Web3.HTTPProvider(self.config.rpc_url, request_kwargs={"timeout": 30}))
        account = Account.from_key(key)
        client = Web3AvsClient(w3, deployment, account)
        # Challenge, resolve and slashing transactions with nonce tracking and fee bumps: one stuck in
        # the mempool is replaced, not left there while the challenge window runs out.
        client.sender = TransactionSender(client, account)
        domain = Domain(deployment.chain_id, deployment.task_manager)
        c = self.config
        caller = GrpcOperatorCaller.from_files(
            domain, key, c.operator_tls_ca_file, c.operator_tls_client_cert_file, c.operator_tls_client_key_file
        )
        aggregator = AggregatorClient(self.config.aggregator)
        self._closers += [caller.close, aggregator.close]
        self.store = ChallengerStore(self.config.database_url)
        self._closers.append(self.store.close)
        chain = Web3Escalator(Web3FaultClient(client))
        reader = Web3OperatorSetReader(client, self.config.reference_lag_blocks)
        self.keeper = StakeKeeper(client, reader, client.transact) if self.config.refresh_stakes else None
        if deployment.insurance_pool is not None:
            pool = Web3RewardPool(InsuranceBuyer(w3, deployment, account, client=client))
            self.rewards = RewardCollector(pool, self.config.reward_partial_after_seconds)
        if deployment.strategy_manager is not None and self.config.clear_slashes:
            slash_chain = Web3SlashChain(client, deployment.strategy_manager)
            self.slashes = SlashClearer(slash_chain, self.config.slash_lookback_blocks, self.config.confirmations)
        self.evidence = EvidenceBook(
            self.store.session,
            AttestationRow,
            EquivocationRow,
            chain if self.config.prove_equivocations else None,
            self.store.clock,
        )
        self.resolver: Resolver | None = None
        self._advancer: EndedChallenges | None = None
        if self.config.resolve:
            timeout = self.config.verify_seconds
            self.resolver = Resolver(domain, self.store, chain, reader, caller, timeout, self.evidence)
            self._advancer = EndedChallenges(self.resolver)
            self._closers.append(self.resolver.close)
        checker = OperatorLeafChecker(
            reader, caller, self.config.verify_seconds, evidence=self.evidence, checkers=self.config.checkers
        )
        self._closers.append(checker.close)
        self.challenger = Challenger(
            Web3BatchFeed(client),
            AggregatorLeafSource(aggregator),
            checker,
            chain if self.config.escalate else None,
            self.store,
            resolver=self._advancer,  # also between leaves of a long poll; what ended is counted
            sample_rate=self.config.sample_rate,
            start_block=self.config.start_block,
            check_attempts=self.config.check_attempts,
            confirm=self.resolver.predict_verdict if self.resolver is not None else None,
            confirmations=self.config.confirmations,
            find_challenge_tx=chain.find_challenge_tx,
        )
        host, port = split_host_port(self.config.metrics_listen)
        server, _ = start_metrics_server(host, port, self.registry)
        self.metrics_port = int(server.server_address[1])
        self._closers.append(server.shutdown)
        self._thread = threading.Thread(target=self._loop, name="challenger", daemon=True)
        self._thread.start()
        logger.info("challenger watching", extra={"task_manager": deployment.task_manager})

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self.poll_once()
            self._stopped.wait(self.config.poll_seconds)

    def poll_once(self) -> None:
        """One poll: scan and check (moving the open challenges on between leaves and at the end),
        then report evidence and metrics, each step on its own (the chain or the aggregator
        unreachable for one does not stop the others)."""
        findings: list[Finding] = []
        try:
            if self.keeper is not None:  # before resolving: an escalation certificate needs fresh stakes
                self.keeper.tick()
        except Exception:
            logger.exception("refreshing the registry's stakes failed; retrying at the next poll")
        try:
            findings = self.challenger.poll()
        except Exception:
            logger.exception("challenger scan failed; retrying at the next poll")
        closed = self._advancer.take_ended() if self._advancer is not None else []
        lost = self.challenger.take_lost_challenges()
        try:
            self.evidence.report_pending()
        except Exception:
            logger.exception("reporting equivocations failed; retrying at the next poll")
        try:
            if self.slashes is not None:  # before the rewards: a slash cleared may fund them
                self.metrics.slashes_cleared.inc(self.slashes.tick())
                self.metrics.slashes_not_cleared.set(self.slashes.pending)
        except Exception:
            logger.exception("clearing slashed funds to the pool failed; retrying at the next poll")
        try:
            if self.rewards is not None:  # rewards the pool could not pay when the fraud was recorded
                self.rewards.tick()
        except Exception:
            logger.exception("collecting the challenger's owed reward failed; retrying at the next poll")
        try:
            still_open = len(self.store.list_challenges([ChallengeState.OPEN]))
            self.metrics.record(findings, closed, still_open, lost)
            self.metrics.pending_checks.set(len(self.store.list_pending_checks()))
            self.metrics.last_block.set(self.challenger.next_block - 1)
        except Exception:
            logger.exception("challenger metrics not updated")

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if hasattr(self, "_thread"):
            self._thread.join(30)
        for close in reversed(self._closers):
            close()

    def wait(self) -> None:
        self._stopped.wait()
