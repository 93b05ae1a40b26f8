"""The operator's configuration: one typed tree from a YAML file, secrets from the environment.

Secrets never live in the file: the keystore passwords come from ``OPERATOR_BLS_KEY_PASSWORD`` and
``OPERATOR_ECDSA_KEY_PASSWORD`` as ``SecretStr`` (repr and logs show ``**********``). A config
error names the field, e.g. ``grpc.max_concurrent_requests: Input should be greater than 0``.
See ``operator/operator.example.yaml`` for every field with its meaning.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from avs.chain.deployment import Deployment, load_deployment
from avs.config import (
    MAX_PORT,
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
from avs.errors import InvalidInputError
from avs.messages import checksum
from avs.rpc.convert import (
    CALL_ENVELOPE_BYTES,
    MAX_BATCH_LEAVES,
    OPERATOR_MAX_MESSAGE_BYTES,
    TOKEN_ID_BYTES,
    compute_largest_chat_bytes,
)
from avs_operator.slashing_protection import check_database_url

__all__ = [
    "ConfigError",
    "OperatorConfig",
    "OperatorSecrets",
    "load_checked_deployment",
    "load_config",
    "load_secrets",
    "parse_config",
]


def _address(value: str) -> str:
    try:
        return checksum(value)
    except InvalidInputError as exc:
        raise ValueError("must be a 20-byte 0x address") from exc


class ChainConfig(_Section):
    chain_id: int = Field(gt=0)
    task_manager: str  # the EIP-712 verifying contract of every signed message
    rpc_url: str = "http://127.0.0.1:8545"
    # The contracts' addresses: for register/deregister/status, and for `run` to read this operator's
    # registered stake. Both check that chain_id and task_manager are the deployment's.
    deployment_file: Path | None = None

    _check_task_manager = field_validator("task_manager")(_address)


class KeysConfig(_Section):
    bls_keystore: Path
    ecdsa_keystore: Path | None = None


def _grpc_listen(value: str) -> str:
    """host:port, as gRPC takes it: ``[::]:50051`` for IPv6, ``:50051`` for every interface."""
    _, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > MAX_PORT:
        raise ValueError(f"listen address {value!r} must be host:port, the port in 0-{MAX_PORT}")
    return value


def _ipv4_listen(value: str) -> str:
    try:
        host, _ = split_host_port(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    if ":" in host or host.startswith("["):
        raise ValueError("the HTTP endpoints listen on IPv4 only: use 0.0.0.0 (every interface) or an IPv4 address")
    return value


class GrpcConfig(_Section):
    listen: str = "0.0.0.0:50051"
    # 1 MiB holds the largest call this node accepts with room to spare: a 64K-character chat
    # (~270 KB at 4 bytes a character), a 4096-leaf SignBatch (~290 KB), and their replies. At least
    # what the limits allow (compute_largest_call_bytes), at most what aggregators receive.
    max_message_bytes: int = Field(default=1024 * 1024, gt=0, le=OPERATOR_MAX_MESSAGE_BYTES)
    max_concurrent_requests: int = Field(default=4, gt=0, le=1024)
    reflection: bool = False
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Mutual TLS: only callers with a client certificate signed by these roots (the aggregators' and
    # challengers') get a connection. Every call is signed anyway, but an unauthenticated peer could
    # hold the server's threads with calls it never finishes sending (docs/operator.md, "Exposure").
    tls_client_ca_file: Path | None = None

    _check_listen = field_validator("listen")(_grpc_listen)

    @model_validator(mode="after")
    def _check_tls(self) -> GrpcConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "tls_cert_file and tls_key_file go together: set both to serve TLS, neither to serve plaintext"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs TLS: set tls_cert_file and tls_key_file too")
        return self


class HttpConfig(_Section):
    listen: str

    _check_listen = field_validator("listen")(_ipv4_listen)


class ModelConfig(_Section):
    # The node API's service id is "model-<name>", a URL path segment: letters, digits, ".", "_", "-".
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    path: Path
    profile_hash: str | None = None  # the on-chain profile; the engine refuses other weights

    @field_validator("profile_hash")
    @classmethod
    def _check_profile_hash(cls, value: str | None) -> str | None:
        if value is not None and re.fullmatch(r"0x[0-9a-fA-F]{64}", value) is None:
            raise ValueError("must be a 0x-prefixed 32-byte hex string")
        return value


class LimitsConfig(_Section):
    max_prompt_tokens: int = Field(default=4096, gt=0)
    max_new_tokens: int = Field(default=512, gt=0)
    max_chat_chars: int = Field(default=64 * 1024, gt=0)


BATCH_LEAF_BYTES = 72  # two 32-byte hashes with their tags and lengths


def compute_largest_call_bytes(limits: LimitsConfig) -> int:
    """The largest request the limits let through: a Verify of the longest chat with every stop
    sequence and the longest output, or a SignBatch of the most leaves."""
    verify = compute_largest_chat_bytes(limits.max_chat_chars) + TOKEN_ID_BYTES * limits.max_new_tokens
    return max(verify, BATCH_LEAF_BYTES * MAX_BATCH_LEAVES) + CALL_ENVELOPE_BYTES


class AuthConfig(_Section):
    authorised_aggregators: list[str] = Field(min_length=1)
    window_ms: int = Field(default=30_000, gt=0, le=600_000)

    @field_validator("authorised_aggregators")
    @classmethod
    def _check_addresses(cls, values: list[str]) -> list[str]:
        return [_address(v) for v in values]


class OperatorConfig(_Section):
    chain: ChainConfig
    keys: KeysConfig
    models: list[ModelConfig] = Field(min_length=1)
    auth: AuthConfig
    grpc: GrpcConfig = GrpcConfig()
    node_api: HttpConfig = HttpConfig(listen="0.0.0.0:9091")
    metrics: HttpConfig = HttpConfig(listen="0.0.0.0:9092")
    limits: LimitsConfig = LimitsConfig()
    slashing_protection_url: str = "sqlite:///operator-data/slashing-protection.sqlite"
    threads: int | None = Field(default=None, gt=0)
    device: Literal["cpu", "cuda", "auto"] | None = None  # None: CUDA when present, else CPU
    node_name: str = "avs-operator"

    @model_validator(mode="after")
    def _check_distinct(self) -> OperatorConfig:
        """One name and folder per model (the node API keys services by name; a folder listed twice
        would be loaded twice), and one port per server (unless 0: any free one)."""
        for what, values in (("name", [m.name for m in self.models]), ("path", [m.path for m in self.models])):
            if len(set(values)) != len(values):
                raise ValueError(f"models: two entries have the same {what}")
        listens = {"grpc": self.grpc.listen, "node_api": self.node_api.listen, "metrics": self.metrics.listen}
        ports = [(name, int(listen.rpartition(":")[2])) for name, listen in listens.items()]
        taken = [name for name, port in ports if port and [p for _, p in ports].count(port) > 1]
        if taken:
            raise ValueError(f"{' and '.join(taken)} listen on the same port")
        return self

    @model_validator(mode="after")
    def _check_calls_fit(self) -> OperatorConfig:
        """A call the limits accept must fit in one gRPC message: gRPC refuses a bigger one with
        RESOURCE_EXHAUSTED, which callers read as "overloaded, retry"."""
        largest = compute_largest_call_bytes(self.limits)
        if largest > self.grpc.max_message_bytes:
            raise ValueError(
                f"grpc.max_message_bytes {self.grpc.max_message_bytes} is below the largest call the limits"
                f" accept (~{largest} bytes: limits.max_chat_chars at 4 bytes a character, limits.max_new_tokens"
                f" output ids to verify, a {MAX_BATCH_LEAVES}-leaf SignBatch): raise it (at most"
                f" {OPERATOR_MAX_MESSAGE_BYTES}) or lower the limits"
            )
        return self

    @field_validator("slashing_protection_url")
    @classmethod
    def _check_protection_url(cls, value: str) -> str:
        try:
            check_database_url(value)
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from exc
        return value


class OperatorSecrets(EnvSecrets):
    """Keystore passwords, from the environment only."""

    model_config = SettingsConfigDict(env_prefix="OPERATOR_", extra="ignore")

    bls_key_password: SecretStr | None = None
    ecdsa_key_password: SecretStr | None = None


def parse_config(data: Any) -> OperatorConfig:
    return parse_model(OperatorConfig, data, "operator")


def load_config(path: Path) -> OperatorConfig:
    """Read and validate a YAML config; relative paths in it are relative to the file."""
    return _resolve_paths(parse_config(read_yaml(path)), path.parent)


def _resolve_paths(config: OperatorConfig, base: Path) -> OperatorConfig:
    def resolve(p: Path) -> Path:
        return resolve_path(p, base)

    keys = config.keys.model_copy(
        update={
            "bls_keystore": resolve(config.keys.bls_keystore),
            "ecdsa_keystore": resolve(config.keys.ecdsa_keystore) if config.keys.ecdsa_keystore else None,
        }
    )
    models = [m.model_copy(update={"path": resolve(m.path)}) for m in config.models]
    tls_files = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
    grpc = config.grpc.model_copy(update=resolve_optional_paths(config.grpc, tls_files, base))
    deployment = config.chain.deployment_file
    chain = config.chain.model_copy(update={"deployment_file": resolve(deployment) if deployment else None})
    protection = resolve_database_url(config.slashing_protection_url, base)
    return config.model_copy(
        update={"keys": keys, "models": models, "grpc": grpc, "chain": chain, "slashing_protection_url": protection}
    )


def load_secrets() -> OperatorSecrets:
    return OperatorSecrets()


def load_checked_deployment(chain: ChainConfig) -> Deployment:
    """The contracts of ``chain.deployment_file``, refused (``ConfigError``) unless its chain id and task
    manager are ``chain``'s: a config left behind by a redeploy would sign every message in the old
    contract's EIP-712 domain, which the new contracts reject, while looking healthy."""
    if chain.deployment_file is None:
        raise ConfigError("chain.deployment_file: required for on-chain commands")
    deployment = load_deployment(chain.deployment_file)
    if (deployment.chain_id, deployment.task_manager) != (chain.chain_id, chain.task_manager):
        raise ConfigError(
            f"chain: chain_id/task_manager ({chain.chain_id}, {chain.task_manager}) differ from the deployment"
            f" file's ({deployment.chain_id}, {deployment.task_manager}, {chain.deployment_file}): update them"
            " to the deployment the operator is registered with"
        )
    return deployment
