"""The gateway's configuration: one typed tree from flags and ``AVS_GATEWAY_*`` environment variables.

Flags win over the environment. API keys come from ``AVS_GATEWAY_API_KEYS`` only (comma-separated,
a ``SecretStr``); none set means no authentication. Errors name the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from eth_utils import is_address, to_checksum_address
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from avs.config import EnvSecrets
from avs.errors import InvalidInputError
from avs.messages import MAX_QUORUMS

# What a browser sends in its Origin header: a scheme, a host and an optional port, nothing after.
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class GatewayConfigError(InvalidInputError):
    """Flags or environment that do not make a valid gateway configuration."""


class GatewayConfig(EnvSecrets):
    # .inf / nan refused: an infinite request timeout would hold a slot for ever
    model_config = SettingsConfigDict(env_prefix="AVS_GATEWAY_", extra="forbid", frozen=True, allow_inf_nan=False)

    aggregator: str = "127.0.0.1:50060"  # the aggregator's intake gRPC host:port
    listen: str = "127.0.0.1:8080"  # port 0: a free port
    # Prometheus /metrics on a port of its own (avs.gateway.metrics); unset: no metrics served
    metrics_listen: str | None = None
    requester: str  # the 0x address put in every InferenceRequest
    # Prepared model folders (avs_profile.json + tokenizer files): the models served, their prompt
    # hashes computed and their certified tokens decoded here (avs.gateway.models).
    model_dirs: list[Path] = Field(min_length=1)
    # The AVS's deployment JSON: certificates must be of its chain and task manager. Unset: they are
    # checked (signature, Merkle proof, stake shares) but could be of another deployment.
    deployment: Path | None = None
    # An RPC endpoint of the deployment's chain (needs ``deployment``): each certificate must also be
    # certified on-chain (verifyLeaf) with the stake shares the registry recorded. Without it the
    # checks are offline, and a certificate signed with keys that are not the operators' passes them.
    # A secret: a provider URL often holds an API key.
    rpc_url: SecretStr | None = None
    api_keys: SecretStr | None = None  # comma-separated Bearer keys; unset: no authentication
    quorums: list[int] = Field(default=[])  # empty: the aggregator's default quorums
    threshold_bps: int = Field(default=0, ge=0, le=10_000)  # 0: the aggregator's default
    default_max_tokens: int = Field(default=128, ge=1)
    default_temperature: float = Field(default=1.0, ge=0, le=10)  # OpenAI's default
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # Submit to certified; below the openai SDK's 600 s read timeout, so that a client gets the 504
    # (which says not to retry) instead of timing out and retrying: each retry is a new inference.
    request_timeout_seconds: float = Field(default=540.0, gt=0, le=3600)
    # Completions followed at once (avs.gateway.admission): in all, and per API key (without keys,
    # only the total). Over either: 429, before anything is submitted.
    max_in_flight: int = Field(default=192, ge=1, le=4096)
    max_in_flight_per_key: int = Field(default=32, ge=1)
    # Completions a caller may start per minute (per API key; without keys, in all); 0: no limit.
    # Over it: 429 with the seconds until the next one in Retry-After (avs.gateway.admission).
    rate_limit_per_minute: int = Field(default=0, ge=0, le=1_000_000)
    # Web pages allowed to call the API from a browser (CORS): origins as "https://app.example",
    # or "*" for any page. Empty: no CORS headers, and a browser refuses every cross-origin call.
    cors_origins: list[str] = Field(default=[], max_length=64)
    # A keyless gateway on a loopback address answers loopback Host names only (DNS rebinding); these
    # names too: the public name a reverse proxy on this machine forwards (nginx $host, Caddy, Traefik)
    allowed_hosts: list[str] = Field(default=[], max_length=64)
    # On SIGTERM the gateway stops taking completions and waits up to this long for those in flight
    # to be answered (an answer cut off is retried by the SDKs: another paid inference).
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, le=3600)
    log_level: str = "INFO"

    @field_validator("requester")
    @classmethod
    def _check_requester(cls, value: str) -> str:
        if not is_address(value):
            raise ValueError("must be a 0x-prefixed 20-byte address")
        return str(to_checksum_address(value))

    @field_validator("quorums")
    @classmethod
    def _check_quorums(cls, value: list[int]) -> list[int]:
        if any(not 0 <= q < MAX_QUORUMS for q in value) or len(set(value)) != len(value):
            raise ValueError(f"quorum numbers must be distinct, in [0, {MAX_QUORUMS})")
        return sorted(value)

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        # Set but blank ("", " ", ","): a typo must not switch authentication off.
        if value is not None and not any(k.strip() for k in value.get_secret_value().split(",")):
            raise ValueError("is set but holds no key; unset it to serve without authentication")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port] (no path, no trailing slash), or *"
                )
        return value

    @field_validator("listen", "aggregator", "metrics_listen")
    @classmethod
    def _check_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)
        return value

    @model_validator(mode="after")
    def _check_any_origin_has_keys(self) -> GatewayConfig:
        # Any web page, in any visitor's browser, could then spend this gateway's completions (and
        # read them): name the pages, or require keys.
        if "*" in self.cors_origins and self.api_keys is None:
            raise ValueError("cors_origins * needs API keys (AVS_GATEWAY_API_KEYS): any web page could use the gateway")
        return self

    @model_validator(mode="after")
    def _check_rpc_url_has_deployment(self) -> GatewayConfig:
        if self.rpc_url is not None and self.deployment is None:
            raise ValueError("rpc_url needs deployment: verifyLeaf must run on the deployment you trust")
        return self

    def get_api_keys(self) -> tuple[str, ...]:
        if self.api_keys is None:
            return ()
        return tuple(k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip())


def parse_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def load_config(**overrides: Any) -> GatewayConfig:
    """The config from the environment, with ``overrides`` (flags; ``None`` values left out) on top."""
    try:
        return GatewayConfig(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise GatewayConfigError(f"invalid gateway configuration: {problems}") from None
