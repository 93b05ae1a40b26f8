"""deploy/docker-compose.operator.yml (not runnable here): parsed and checked for shape and secrets."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|PRIVATE|TOKEN|_KEY\b|MNEMONIC", re.IGNORECASE)
ENV_REFERENCE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[?-][^}]*)?\}$")


def _compose() -> dict[str, object]:
    data = yaml.safe_load((DEPLOY / "docker-compose.operator.yml").read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, object]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _environment(service: dict[str, object]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return {str(item).partition("=")[0]: str(item).partition("=")[2] for item in env}
    assert isinstance(env, dict)
    return {str(k): str(v) for k, v in env.items()}


def test_services_and_ports() -> None:
    services = _services()
    assert set(services) == {"operator", "prometheus", "grafana"}
    ports = {name: [str(p) for p in service.get("ports", [])] for name, service in services.items()}  # type: ignore[attr-defined]
    grpc_port = "${OPERATOR_GRPC_BIND:+${OPERATOR_GRPC_BIND}:}50051:50051"  # unset: IPv4 and IPv6 (0.0.0.0: v4 only)
    assert grpc_port in ports["operator"]  # gRPC for the aggregators: the only port that may be public
    assert "127.0.0.1:9091:9091" in ports["operator"] and "127.0.0.1:9092:9092" in ports["operator"]
    for name, published in ports.items():
        for mapping in published:
            if mapping != grpc_port:
                assert mapping.startswith("127.0.0.1:"), f"{name} publishes {mapping} on every interface"


def test_no_secret_inline() -> None:
    """A password is a file under /run/secrets (a Docker secret: in no container's environment,
    which `docker inspect` shows), or at least a reference to the environment of `docker compose`."""
    secrets = _compose()["secrets"]
    assert isinstance(secrets, dict)
    for name, service in _services().items():
        for key, value in _environment(service).items():
            if not SECRET_WORDS.search(key):
                continue
            if key.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/") and secret in service["secrets"], f"{name}.{key}"  # type: ignore[operator]
                assert str(secrets[secret]["file"]).startswith("./operator/secrets/"), secret  # git-ignored
            else:
                assert ENV_REFERENCE.match(value), f"{name}.{key} must come from the environment, not the file"
    text = (DEPLOY / "docker-compose.operator.yml").read_text()
    assert not re.search(r"0x[0-9a-fA-F]{64}", text), "a private key is written in the compose file"


def test_operator_keeps_slashing_protection_on_a_volume_and_mounts_secrets_read_only() -> None:
    operator = _services()["operator"]
    volumes = [str(v) for v in operator["volumes"]]  # type: ignore[attr-defined]
    assert "operator-data:/data" in volumes
    assert any(v.endswith(":/keys:ro") for v in volumes)
    assert "operator-data" in _compose()["volumes"]  # type: ignore[operator]


def test_mounted_files_exist() -> None:
    for service in _services().values():
        for volume in service.get("volumes", []):  # type: ignore[attr-defined]
            source = str(volume).split(":", 1)[0]
            if source.startswith("./prometheus") or source.startswith("./grafana"):
                assert (DEPLOY / source).exists(), source
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["alerts.yml"]


def test_grafana_gets_the_prometheus_url_the_datasource_reads() -> None:
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "${PROMETHEUS_URL}"
    assert _environment(_services()["grafana"])["PROMETHEUS_URL"] == "http://prometheus:9090"


def test_local_secrets_are_neither_committed_nor_sent_to_the_image_build() -> None:
    """The operator's config, keys, models and deployment (./operator/...) and the passwords
    (deploy/.env) are the user's: git must not pick them up, nor `docker build` (whose context is the
    repository: `COPY operator` also took a local operator/operator.yaml and its signing history)."""
    volumes = [str(v) for v in _services()["operator"]["volumes"]]  # type: ignore[attr-defined]
    local = [f"deploy/{v.split(':')[0].removeprefix('./')}" for v in volumes if v.startswith("./operator/")]
    assert "deploy/operator/deployment.json" in local  # chain.deployment_file: /config/deployment.json
    secrets = [f"deploy/{v['file'].removeprefix('./')}" for v in _compose()["secrets"].values()]  # type: ignore[attr-defined]
    private = [*local, *secrets, "deploy/.env", "operator/operator.yaml", "operator/operator-data/protection.sqlite"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *private], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    assert sorted(ignored) == sorted(private)
    dockerignore = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for path in private:
        assert any(path == entry or path.startswith(entry + "/") for entry in dockerignore), path
