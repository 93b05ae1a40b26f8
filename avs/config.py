"""What every binary's configuration shares: strict sections, YAML loading, errors that name
the field. Each binary defines its own typed tree (``avs_operator.config``, ``avs_aggregator.config``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_settings import BaseSettings
from sqlalchemy.engine import make_url

from avs.errors import InvalidInputError

MAX_CONFIG_BYTES = 1 << 20
RPC_URL_ENV = "ETH_RPC_URL"  # Foundry's name for it: cast and forge read the same variable
Model = TypeVar("Model", bound=BaseModel)


class ConfigError(InvalidInputError):
    """A configuration file or environment that is missing, unreadable or invalid."""


class EnvSecrets(BaseSettings):
    """Passwords and keys from the environment: ``VAR``, or ``VAR_FILE`` naming a file that holds
    the value (Docker and Kubernetes secrets: then the value is in no process environment that
    ``docker inspect`` or ``/proc/*/environ`` shows). Values passed to the constructor win."""

    def __init__(self, **values: Any) -> None:
        prefix = str(self.model_config.get("env_prefix", ""))
        fields = type(self).model_fields
        secrets = [name for name, field in fields.items() if "SecretStr" in str(field.annotation)]
        super().__init__(**{**read_secret_files(prefix, secrets), **values})


def read_secret_files(prefix: str, fields: list[str]) -> dict[str, str]:
    """``{field: value}`` for each ``<PREFIX><FIELD>_FILE`` set in the environment (the file's text
    without its final newline); ``ConfigError`` if the variable itself is set too, or the file
    cannot be read."""
    found = {}
    for name in fields:
        variable = f"{prefix}{name}".upper()
        path = os.environ.get(f"{variable}_FILE")
        if path is None:
            continue
        if os.environ.get(variable) is not None:
            raise ConfigError(f"set {variable} or {variable}_FILE, not both")
        try:
            found[name] = Path(path).read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{variable}_FILE: cannot read {path}: {exc}") from None
    return found


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not silently fall back to a default),
    and so are ``.inf`` and ``.nan`` (YAML takes them for floats; they crash, or hang, far later)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def format_validation_error(error: ValidationError) -> str:
    """``grpc.max_concurrent_requests: Input should be greater than 0; ...``"""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors())


def parse_model(model: type[Model], data: Any, what: str) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what} config: {format_validation_error(exc)}") from None


def read_yaml(path: Path) -> Any:
    """The YAML document at ``path``; ``ConfigError`` if missing, too large or unreadable."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} is not readable YAML: {exc}") from None


def resolve_path(path: Path, base: Path) -> Path:
    """``path`` relative to the config file's folder ``base`` (absolute paths unchanged)."""
    return path if path.is_absolute() else (base / path.expanduser()).resolve()


def resolve_optional_paths(section: Any, names: Sequence[str], base: Path) -> dict[str, Path]:
    """``section``'s path fields among ``names`` that are set, each ``resolve_path``-ed: a
    ``model_copy(update=...)`` for optional files (TLS certificates and keys)."""
    return {name: resolve_path(getattr(section, name), base) for name in names if getattr(section, name)}


def resolve_database_url(url: str, base: Path) -> str:
    """A SQLite file URL with a relative path made relative to ``base`` (the config file's folder, not
    the process's working directory); in-memory SQLite and other databases unchanged."""
    if not url.startswith("sqlite"):
        return url
    parsed = make_url(url)
    if parsed.database in (None, "", ":memory:") or Path(parsed.database).is_absolute():
        return url
    absolute = (base / Path(parsed.database).expanduser()).resolve()
    return parsed.set(database=str(absolute)).render_as_string(hide_password=False)


MAX_PORT = 65535


def split_host_port(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9092"`` -> ``("127.0.0.1", 9092)``; ``ConfigError`` otherwise."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > MAX_PORT:
        raise ConfigError(f"listen address {listen!r} must be host:port, the port in 0-{MAX_PORT}")
    return host, int(port)


def default_rpc_url(fallback: str | None = None) -> str | None:
    """``$ETH_RPC_URL``, else ``fallback``: a URL holding an API key need not be on a command line,
    where every user of the machine can read it (``ps``, ``/proc/PID/cmdline``)."""
    return os.environ.get(RPC_URL_ENV) or fallback
