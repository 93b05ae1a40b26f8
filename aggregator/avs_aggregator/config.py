"""The aggregator's configuration: one typed tree from a YAML file, secrets from the environment.

The ECDSA keystore's password comes from ``AGGREGATOR_ECDSA_KEY_PASSWORD`` only (a ``SecretStr``).
See ``aggregator/aggregator.example.yaml`` for every field. Errors name the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from avs.config import (
    ConfigError,
    EnvSecrets,
    parse_model,
    read_yaml,
    resolve_database_url,
    resolve_optional_paths,
    resolve_path,
    split_host_port,
)
from avs.config import Section as _Section
from avs.rpc import convert

__all__ = ["AggregatorConfig", "AggregatorSecrets", "ConfigError", "load_config", "parse_config"]

# The longest deadline or wait a config may set: gRPC refuses a deadline of 1e10 s or more at once
# (every call would fail DEADLINE_EXCEEDED), and an hour is past any sane step.
MAX_WAIT_SECONDS = 3600.0

# The PEM files for calling operators: roots for grpcs:// sockets, and the client pair for mTLS.
TLS_FILES = ("operator_tls_ca_file", "operator_tls_client_cert_file", "operator_tls_client_key_file")


def check_client_certificate_pair(cert_file: Path | None, key_file: Path | None) -> None:
    if (cert_file is None) != (key_file is None):
        raise ValueError("operator_tls_client_cert_file and operator_tls_client_key_file go together (mutual TLS)")


class ChainConfig(_Section):
    rpc_url: str = "http://127.0.0.1:8545"
    deployment_file: Path  # written by contracts/script/Deploy.s.sol
    reference_lag_blocks: int = Field(default=1, ge=1, le=64)  # reference block = latest - lag
    prove_rejections: bool = True  # proveRejectedOutput when a quorum rejects; proveEquivocation on conflicts
    confirmations: int = Field(default=0, ge=0, le=64)  # blocks on top before a transaction counts
    receipt_timeout_seconds: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)  # then the fees are bumped
    bump_percent: int = Field(default=25, ge=10, le=500)
    max_bumps: int = Field(default=5, ge=0, le=50)
    max_fee_gwei: float = Field(default=1000.0, ge=1e-9)  # no version's fee cap or tip goes above it (>= 1 wei)
    refresh_stakes: bool = True  # the leader sends updateOperatorsForQuorum before stakes go stale
    eject_understaked: bool = True  # ... then ejectUnderstaked for zero-stake members (needs refresh_stakes)


class KeysConfig(_Section):
    ecdsa_keystore: Path  # the aggregator's key: signs operator calls and certifyBatch
    # PEM roots for operators registered with a grpcs:// socket (TLS); unset: the system's roots
    operator_tls_ca_file: Path | None = None
    # The client certificate (PEM) shown to operators that require mutual TLS; both or neither
    operator_tls_client_cert_file: Path | None = None
    operator_tls_client_key_file: Path | None = None

    @model_validator(mode="after")
    def _check_client_pair(self) -> KeysConfig:
        check_client_certificate_pair(self.operator_tls_client_cert_file, self.operator_tls_client_key_file)
        return self


QUORUM_COUNT = 192  # the registry's uint192 quorum bitmap
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ModelConfig(_Section):
    name: str = Field(min_length=1, max_length=128)
    model_id: str  # 0x profile hash (the operators' GetInfo lists it)
    tokenizer_path: Path | None = None  # a model folder: lets requesters omit prompt_hash

    @field_validator("model_id")
    @classmethod
    def _check_model_id(cls, value: str) -> str:
        if len(value) != 66 or not value.startswith("0x"):
            raise ValueError("must be a 0x-prefixed 32-byte hex string")
        bytes.fromhex(value[2:])
        return value.lower()


# A certified status besides its chat and output: the certificate's signer keys (~240 bytes each:
# room for about 4,000 operators), proof, hashes, stakes.
STATUS_OVERHEAD_BYTES = 1024 * 1024 + 64 * 1024


def compute_largest_status_bytes(max_chat_chars: int, max_new_tokens: int) -> int:
    """A certified status of the longest chat and output: the output's ids and text are in it twice
    (the status and its certificate)."""
    output = 2 * (convert.TOKEN_ID_BYTES + convert.MAX_TEXT_BYTES_PER_TOKEN) * max_new_tokens
    return convert.compute_largest_chat_bytes(max_chat_chars) + output + STATUS_OVERHEAD_BYTES


class PolicyConfig(_Section):
    # Quorums served. Security setting: one quorum's majority REJECT slashes a primary, so each must
    # hold enough stake to be trusted with an honest majority (docs/aggregator.md, step 5).
    quorums: list[int] = Field(default=[0], min_length=1)
    default_quorums: list[int] = Field(default=[0], min_length=1)
    default_threshold_bps: int = Field(default=6667, gt=0, le=10_000)
    min_threshold_bps: int = Field(default=6667, gt=0, le=10_000)  # >= the task manager's thresholdBps
    max_threshold_bps: int = Field(default=10_000, gt=0, le=10_000)
    max_attempts: int = Field(default=3, ge=1, le=16)
    max_pending: int = Field(default=10_000, gt=0)
    max_chat_chars: int = Field(default=64 * 1024, gt=0)
    max_new_tokens: int = Field(default=512, gt=0)

    @field_validator("quorums", "default_quorums")
    @classmethod
    def _check_quorums(cls, value: list[int]) -> list[int]:
        if any(not 0 <= q < QUORUM_COUNT for q in value):
            raise ValueError(f"quorum numbers are 0 to {QUORUM_COUNT - 1}")
        if len(set(value)) != len(value):
            raise ValueError("a quorum is listed twice")
        return sorted(value)

    @model_validator(mode="after")
    def _check(self) -> PolicyConfig:
        if not set(self.default_quorums) <= set(self.quorums):
            raise ValueError("default_quorums must be among quorums")
        if not self.min_threshold_bps <= self.default_threshold_bps <= self.max_threshold_bps:
            raise ValueError("default_threshold_bps must be within [min_threshold_bps, max_threshold_bps]")
        # Past these, a valid Submit or its status would not fit in one message: gRPC's
        # RESOURCE_EXHAUSTED, which clients read as "overloaded, retry".
        submit = convert.compute_largest_submit_bytes(self.max_chat_chars)
        if submit > convert.INTAKE_MAX_REQUEST_BYTES:
            raise ValueError(
                f"max_chat_chars {self.max_chat_chars}: a Submit of that many characters (4 bytes each) would not"
                f" fit in the intake's {convert.INTAKE_MAX_REQUEST_BYTES}-byte messages"
            )
        status = compute_largest_status_bytes(self.max_chat_chars, self.max_new_tokens)
        if status > convert.INTAKE_MAX_REPLY_BYTES:
            raise ValueError(
                f"max_new_tokens {self.max_new_tokens} with max_chat_chars {self.max_chat_chars}: a certified status"
                f" could take ~{status} bytes, over the {convert.INTAKE_MAX_REPLY_BYTES} a client receives"
            )
        return self


class DeadlinesConfig(_Section):
    generate_seconds: float = Field(default=120.0, gt=0, le=MAX_WAIT_SECONDS)
    verify_seconds: float = Field(default=60.0, gt=0, le=MAX_WAIT_SECONDS)
    verify_rounds: int = Field(default=2, ge=1, le=8)  # while verifiers that did not answer leave it short
    sign_batch_seconds: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)
    # An operator answering busy (at its concurrency limit) is asked again after busy_backoff_seconds,
    # using no attempt and no verification round, for up to busy_wait_seconds; then busy is a failure.
    busy_backoff_seconds: float = Field(default=0.5, ge=0, le=60)
    busy_wait_seconds: float = Field(default=60.0, ge=0, le=MAX_WAIT_SECONDS)


class BatchConfig(_Section):
    max_size: int = Field(default=16, gt=0, le=4096)
    max_latency_seconds: float = Field(default=2.0, ge=0, le=MAX_WAIT_SECONDS)
    first_index: int = Field(default=1, ge=0, lt=2**63)  # the batches table's BigInteger
    max_reference_age_blocks: int = Field(default=100, gt=0)  # used only where the chain's cannot be read
    sign_rounds: int = Field(default=3, ge=1, le=32)  # SignBatch rounds while the signers fall short
    sign_backoff_seconds: float = Field(default=1.0, ge=0, le=3600)  # before round 2, doubled after


class LeaderConfig(_Section):
    """Several aggregators on one database: only the holder of the lease drives the pipeline."""

    enabled: bool | None = None  # None: on for a server database (PostgreSQL), off for SQLite
    lease_seconds: float = Field(default=15.0, gt=0, le=600)  # a standby takes over this long after
    renew_seconds: float | None = Field(default=None, gt=0)  # default lease_seconds / 3
    # default host:grpc-port/pid; the lease row adds a 17-character per-process token (String(128))
    holder_id: str | None = Field(default=None, min_length=1, max_length=110)

    @model_validator(mode="after")
    def _check(self) -> LeaderConfig:
        if self.renew_seconds is not None and self.renew_seconds >= self.lease_seconds:
            raise ValueError("renew_seconds must be below lease_seconds (the time a demoted leader has to stop)")
        return self

    def get_renew_seconds(self) -> float:
        return self.lease_seconds / 3 if self.renew_seconds is None else self.renew_seconds


class RetentionConfig(_Section):
    # Finished requests (certified in a confirmed batch, or failed) and their batches are deleted
    # this long after they last changed: GetStatus and GetBatch then answer NOT_FOUND, and a
    # request resubmitted after it is taken as new. 0 keeps everything. Keep them longer than the
    # challenge window and the insurance coverage term (challengers read batches and certificates
    # here), and than clients may come back for a status.
    keep_finished_hours: float = Field(default=168.0, ge=0, le=24 * 3650)

    @field_validator("keep_finished_hours")
    @classmethod
    def _check_keep(cls, value: float) -> float:
        if 0 < value < 24:
            raise ValueError("keep finished requests 24 hours at least (or 0: for ever)")
        return value


class AggregatorConfig(_Section):
    chain: ChainConfig
    keys: KeysConfig
    models: list[ModelConfig] = Field(min_length=1)
    database_url: str = "sqlite:///aggregator-data/aggregator.sqlite"
    grpc_listen: str = "0.0.0.0:50060"
    metrics_listen: str = "0.0.0.0:9095"
    health_listen: str = "0.0.0.0:9096"
    policy: PolicyConfig = PolicyConfig()
    deadlines: DeadlinesConfig = DeadlinesConfig()
    batch: BatchConfig = BatchConfig()
    leader: LeaderConfig = LeaderConfig()
    retention: RetentionConfig = RetentionConfig()
    workers: int = Field(default=8, gt=0, le=256)
    log_level: str = "INFO"

    @field_validator("grpc_listen", "metrics_listen", "health_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        try:
            split_host_port(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[ModelConfig]) -> list[ModelConfig]:
        for what, keys in (("name", [m.name for m in value]), ("model_id", [m.model_id for m in value])):
            if len(set(keys)) != len(keys):
                raise ValueError(f"two models have the same {what}")
        return value

    def is_leader_election_enabled(self) -> bool:
        """``leader.enabled``, or by default: on for a shared (server) database, off for SQLite."""
        if self.leader.enabled is not None:
            return self.leader.enabled
        return not self.database_url.startswith("sqlite")


class AggregatorSecrets(EnvSecrets):
    model_config = SettingsConfigDict(env_prefix="AGGREGATOR_", extra="ignore")

    ecdsa_key_password: SecretStr | None = None


def parse_config(data: Any) -> AggregatorConfig:
    return parse_model(AggregatorConfig, data, "aggregator")


def load_config(path: Path) -> AggregatorConfig:
    """Read and validate a YAML config; relative paths in it are relative to the file."""
    config = parse_config(read_yaml(path))

    def resolve(p: Path) -> Path:
        return resolve_path(p, path.parent)

    models = [
        m.model_copy(update={"tokenizer_path": resolve(m.tokenizer_path)}) if m.tokenizer_path else m
        for m in config.models
    ]
    return config.model_copy(
        update={
            "chain": config.chain.model_copy(update={"deployment_file": resolve(config.chain.deployment_file)}),
            "keys": config.keys.model_copy(
                update={
                    "ecdsa_keystore": resolve(config.keys.ecdsa_keystore),
                    **resolve_optional_paths(config.keys, TLS_FILES, path.parent),
                }
            ),
            "models": models,
            "database_url": resolve_database_url(config.database_url, path.parent),
        }
    )
