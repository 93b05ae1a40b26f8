"""Operator config: the example file parses; every error names its field; secrets stay secret."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import yaml

from avs.rpc.convert import OPERATOR_MAX_MESSAGE_BYTES
from avs_operator.config import (
    ConfigError,
    LimitsConfig,
    compute_largest_call_bytes,
    load_config,
    load_secrets,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "operator" / "operator.example.yaml"


def example() -> dict[str, object]:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(data, dict)
    return data


def test_the_documented_example_is_valid_and_paths_resolve_next_to_it() -> None:
    config = load_config(EXAMPLE)
    assert config.chain.chain_id == 31337
    assert config.keys.bls_keystore == Path("~/.avs/keys/operator.bls.key.json").expanduser()  # `avs keys create`'s
    assert config.models[0].path == (EXAMPLE.parent.parent / "models" / "smollm2-135m").resolve()
    assert config.grpc.max_concurrent_requests == 4
    assert config.slashing_protection_url.startswith(f"sqlite:///{EXAMPLE.parent.resolve()}/")


def test_tls_files_resolve_next_to_the_config(tmp_path: Path) -> None:
    data = example()
    tls = {"tls_cert_file": "tls/server.crt", "tls_key_file": "tls/server.key", "tls_client_ca_file": "tls/ca.pem"}
    data["grpc"] = {**cast(dict[str, object], data["grpc"]), **tls}
    path = tmp_path / "etc" / "operator.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    grpc = load_config(path).grpc
    assert [grpc.tls_cert_file, grpc.tls_key_file, grpc.tls_client_ca_file] == [
        (path.parent / name).resolve() for name in tls.values()
    ]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("grpc", "max_concurrent_requests"), 0, "grpc.max_concurrent_requests"),
        (("chain", "task_manager"), "0x1234", "chain.task_manager"),
        (("chain", "chain_id"), -1, "chain.chain_id"),
        (("auth", "authorised_aggregators"), [], "auth.authorised_aggregators"),
        (("chain", "unknown_field"), 1, "chain.unknown_field"),
        (("grpc", "listen"), "not an address", "grpc.listen"),
        (("node_api", "listen"), "0.0.0.0:99999", "node_api.listen"),
        (("metrics", "listen"), "[::]:9092", "metrics.listen"),  # the HTTP servers are IPv4 only
    ],
)
def test_errors_name_the_field(path: tuple[str, str], value: object, field: str) -> None:
    data = example()
    section = data[path[0]]
    assert isinstance(section, dict)
    section[path[1]] = value
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(data)


def test_models_and_ports_are_checked_when_the_config_is_read_not_after_the_key_is_unlocked() -> None:
    """Before, these passed validation and failed late: after the keystore was decrypted and the
    database opened (a traceback for a port in use twice), or after a model's full load (a hash
    that is not hex), or never (a second model of the same name hid the first in the node API)."""
    models = example()["models"]
    assert isinstance(models, list)
    cases: dict[str, dict[str, object]] = {
        "models.0.name": {"models": [{**models[0], "name": "my model"}]},  # not a URL path segment
        "models.0.profile_hash": {"models": [{**models[0], "profile_hash": "0x" + "zz" * 32}]},
        "same name": {"models": [models[0], {**models[0], "path": "/elsewhere"}]},
        "same path": {"models": [models[0], {**models[0], "name": "other"}]},
        "node_api and metrics listen on the same port": {
            "node_api": {"listen": "127.0.0.1:9100"},
            "metrics": {"listen": "0.0.0.0:9100"},
        },
    }
    for message, change in cases.items():
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            parse_config({**example(), **change})
    ports_zero = {"node_api": {"listen": "127.0.0.1:0"}, "metrics": {"listen": "127.0.0.1:0"}}
    assert parse_config({**example(), **ports_zero}).metrics.listen == "127.0.0.1:0"  # 0: any free port, each


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "not a url"])
def test_the_slashing_protection_database_must_be_one_that_persists(url: str) -> None:
    data = example()
    data["slashing_protection_url"] = url
    with pytest.raises(ConfigError, match="slashing_protection_url"):
        parse_config(data)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config file"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("chain: [unclosed")
    with pytest.raises(ConfigError, match="not readable YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="top level"):
        parse_config("just a string")


def test_secrets_come_from_the_environment_and_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPERATOR_BLS_KEY_PASSWORD", "hunter2")
    secrets = load_secrets()
    assert secrets.bls_key_password is not None
    assert secrets.bls_key_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(secrets) and "hunter2" not in str(secrets)


def test_device_is_one_of_three_and_reaches_the_engine_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from avs_operator import app

    assert parse_config(example()).device is None  # CUDA when present, else CPU
    with pytest.raises(ConfigError, match="device"):
        parse_config({**example(), "device": "tpu"})
    seen: dict[str, object] = {}
    engine = object()
    monkeypatch.setattr(app, "load_engine", lambda path, **options: seen.update(options, path=path) or engine)
    config = parse_config({**example(), "device": "cpu", "threads": 3})
    assert app._default_loader(Path("models/x"), config) is engine
    assert seen == {"path": Path("models/x"), "threads": 3, "device": "cpu"}


def test_the_registered_socket_is_never_a_wildcard_and_its_scheme_matches_the_server(tmp_path: Path) -> None:
    """`register` without --socket used to publish grpc.listen as is: the example's 0.0.0.0:50051
    sends every aggregator to its own host, and a TLS server got a plaintext socket."""
    from avs.errors import InvalidInputError
    from avs_operator.cli import get_public_socket
    from avs_operator.config import GrpcConfig

    for listen in ("0.0.0.0:50051", "[::]:50051", ":50051"):
        with pytest.raises(InvalidInputError, match="binds every interface"):
            get_public_socket(None, GrpcConfig(listen=listen), MAINNET)
    assert get_public_socket(None, GrpcConfig(listen="10.0.0.5:50051"), MAINNET) == "grpc://10.0.0.5:50051"
    assert get_public_socket("op.example:50051", GrpcConfig(), MAINNET) == "op.example:50051"
    (tmp_path / "c.pem").write_text("cert")
    (tmp_path / "k.pem").write_text("key")
    tls = GrpcConfig(listen="10.0.0.5:50051", tls_cert_file=tmp_path / "c.pem", tls_key_file=tmp_path / "k.pem")
    assert get_public_socket(None, tls, MAINNET) == "grpcs://10.0.0.5:50051"
    with pytest.raises(InvalidInputError, match="serves TLS"):
        get_public_socket("grpc://op.example:50051", tls, MAINNET)
    with pytest.raises(InvalidInputError, match="asks for TLS"):
        get_public_socket("grpcs://op.example:50051", GrpcConfig(), MAINNET)


MAINNET, DEVNET = 1, 31337


@pytest.mark.parametrize(
    ("listen", "given", "message"),
    [
        ("10.0.0.5:0", None, "port must be in 1-65535"),  # any free port: aggregators cannot know it
        ("0.0.0.0:50051", "op.example.com:0", "port must be in 1-65535"),
        ("0.0.0.0:50051", "op.example.com:65536", "port must be in 1-65535"),
        ("0.0.0.0:50051", "grpc://op.example.com", r"must be \[grpc://\|grpcs://\]host:port"),
        ("0.0.0.0:50051", "op.example.com:50051/v1", "must be"),
        ("0.0.0.0:50051", "https://op.example.com:443", "not a host name"),  # aggregators dial it in plaintext
        ("0.0.0.0:50051", "garbage with spaces:1", "not a host name"),
        ("0.0.0.0:50051", "::1:50051", "not a host name"),  # IPv6 goes in brackets
        ("0.0.0.0:50051", "grpc://0.0.0.0:50051", "names every interface"),
        ("0.0.0.0:50051", "[::]:50051", "names every interface"),
        ("127.0.0.1:50051", None, "loopback"),
        ("localhost:50051", None, "loopback"),
        ("0.0.0.0:50051", "grpc://127.0.0.2:50051", "loopback"),
        ("0.0.0.0:50051", "[::1]:50051", "loopback"),
        ("0.0.0.0:50051", "[::ffff:127.0.0.1]:50051", "loopback"),
        ("0.0.0.0:50051", "999.1.1.1:50051", "not a host name"),  # digits only: an IPv4 address or nothing
        ("0.0.0.0:50051", "-bad-.example.com:50051", "not a host name"),  # a label starts and ends alphanumeric
    ],
)
def test_a_socket_aggregators_could_not_dial_is_refused(listen: str, given: str | None, message: str) -> None:
    """Only a wildcard grpc.listen was refused: port 0, a loopback host, or a --socket that was no
    host:port at all went on-chain, where every aggregator then failed to reach the operator."""
    from avs.errors import InvalidInputError
    from avs_operator.cli import get_public_socket
    from avs_operator.config import GrpcConfig

    with pytest.raises(InvalidInputError, match=message):
        get_public_socket(given, GrpcConfig(listen=listen), MAINNET)


@pytest.mark.parametrize(
    ("listen", "given", "chain_id", "socket"),
    [
        ("127.0.0.1:50051", None, DEVNET, "grpc://127.0.0.1:50051"),  # the devnet's operators share one host
        ("0.0.0.0:50051", "localhost:50051", DEVNET, "localhost:50051"),
        ("0.0.0.0:50051", "grpc://op-1.example.com:50051", MAINNET, "grpc://op-1.example.com:50051"),
        ("0.0.0.0:50051", "operator_1:50051", MAINNET, "operator_1:50051"),  # a Docker service name
        ("[2001:db8::5]:50051", None, MAINNET, "grpc://[2001:db8::5]:50051"),
        ("0.0.0.0:50051", "203.0.113.7:1", MAINNET, "203.0.113.7:1"),
    ],
)
def test_a_dialable_socket_is_registered_as_given(listen: str, given: str | None, chain_id: int, socket: str) -> None:
    from avs_operator.cli import get_public_socket
    from avs_operator.config import GrpcConfig

    assert get_public_socket(given, GrpcConfig(listen=listen), chain_id) == socket


@pytest.mark.parametrize(
    ("grpc_section", "limits", "message"),
    [
        ({"max_message_bytes": 200_000}, {}, "below the largest call"),  # a full SignBatch is ~290 KB
        ({}, {"max_new_tokens": 1_000_000}, "below the largest call"),  # ~6 MB of ids to verify
        ({}, {"max_chat_chars": 1_000_000}, "below the largest call"),  # ~4 MB of chat
        ({"max_message_bytes": 64 * 1024 * 1024}, {}, "grpc.max_message_bytes"),  # aggregators take 16 MiB
    ],
)
def test_calls_the_limits_accept_must_fit_in_one_message(
    grpc_section: dict[str, int], limits: dict[str, int], message: str
) -> None:
    """gRPC refused the bigger ones with RESOURCE_EXHAUSTED, which callers read as "overloaded";
    a reply too big for the aggregator failed after it was signed."""
    data = example()
    grpc = {**cast(dict[str, object], data["grpc"]), **grpc_section}
    limits_section = {**cast(dict[str, int], data.get("limits", {})), **limits}
    with pytest.raises(ConfigError, match=message):
        parse_config({**data, "grpc": grpc, "limits": limits_section})
    enough = compute_largest_call_bytes(LimitsConfig(**limits_section))
    if enough <= OPERATOR_MAX_MESSAGE_BYTES:  # the limits fit once the message limit is raised to them
        fitted = parse_config({**data, "grpc": {**grpc, "max_message_bytes": enough}, "limits": limits_section})
        assert fitted.grpc.max_message_bytes == enough


def test_a_password_may_come_from_the_file_var_file_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker and Kubernetes secrets are files: a password given as VAR sits in the container's
    environment, which `docker inspect` shows."""
    secret = tmp_path / "bls_key_password"
    secret.write_text("correct horse\n")
    monkeypatch.delenv("OPERATOR_BLS_KEY_PASSWORD", raising=False)
    monkeypatch.setenv("OPERATOR_BLS_KEY_PASSWORD_FILE", str(secret))
    password = load_secrets().bls_key_password
    assert password is not None and password.get_secret_value() == "correct horse"
    monkeypatch.setenv("OPERATOR_BLS_KEY_PASSWORD", "another")
    with pytest.raises(ConfigError, match="OPERATOR_BLS_KEY_PASSWORD or OPERATOR_BLS_KEY_PASSWORD_FILE, not both"):
        load_secrets()
    monkeypatch.delenv("OPERATOR_BLS_KEY_PASSWORD")
    monkeypatch.setenv("OPERATOR_BLS_KEY_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="OPERATOR_BLS_KEY_PASSWORD_FILE: cannot read"):
        load_secrets()
