"""A Prometheus server as a child process (Debian's ``prometheus`` package), and its HTTP query API.

For the devnet and the tests: ``PrometheusProcess.start`` copies ``deploy/prometheus``'s
``prometheus.yml`` and ``alerts.yml`` into a work folder (so relative ``targets/*.json`` paths
resolve there), lowers the scrape interval if asked, and runs ``prometheus`` on a free port with
its TSDB in that folder. ``find_prometheus()`` is None when the binary is not installed
(``apt-get install -y prometheus``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from avs.errors import AvsError

DEPLOY_PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


class PrometheusError(AvsError, RuntimeError):
    """Prometheus could not be started, or a query failed."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    result_type: str  # vector, matrix, scalar, string
    result: list[Any]

    def is_empty(self) -> bool:
        return not self.result


def find_prometheus() -> str | None:
    return shutil.which("prometheus")


def find_promtool() -> str | None:
    return shutil.which("promtool")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def compute_config(config: dict[str, Any], scrape_interval: str | None) -> dict[str, Any]:
    """``prometheus.yml`` with every interval set to ``scrape_interval`` (tests: fast scrapes)."""
    if scrape_interval is None:
        return config
    out = {**config, "global": {**config.get("global", {})}}
    out["global"]["scrape_interval"] = scrape_interval
    out["global"]["scrape_timeout"] = scrape_interval
    out["global"]["evaluation_interval"] = scrape_interval
    out["scrape_configs"] = [
        {**job, "scrape_interval": scrape_interval, "scrape_timeout": scrape_interval}
        for job in config.get("scrape_configs", [])
    ]
    return out


class PrometheusProcess:
    """``prometheus`` with the project's config in ``workdir``; ``stop()`` always reaps it."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, workdir: Path, log: Any) -> None:
        self.process = process
        self.url = url
        self.workdir = workdir
        self.targets_dir = workdir / "targets"
        self._log = log

    @classmethod
    def start(
        cls,
        workdir: Path,
        scrape_interval: str | None = None,
        port: int | None = None,
        source: Path = DEPLOY_PROMETHEUS,
        timeout: float = 30.0,
    ) -> PrometheusProcess:
        binary = find_prometheus()
        if binary is None:
            raise PrometheusError("prometheus is not installed (apt-get install -y prometheus)")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "targets").mkdir(exist_ok=True)
        config = compute_config(yaml.safe_load((source / "prometheus.yml").read_text()), scrape_interval)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        shutil.copy(source / "alerts.yml", workdir / "alerts.yml")
        port = port or _free_port()
        args = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ]
        log = (workdir / "prometheus.log").open("wb")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        node = cls(process, f"http://127.0.0.1:{port}", workdir, log)
        node.wait_ready(timeout)
        return node

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.process.returncode}; see {self._log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus was not ready within {timeout:.0f} s")

    def get_api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """``GET /api/v1/<path>``'s ``data``; raises ``PrometheusError`` with Prometheus's own error."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> QueryResult:
        data = self.get_api("query", {"query": expr})
        kind = str(data["resultType"])
        return QueryResult(kind, data["result"] if kind in ("vector", "matrix") else [data["result"]])

    def get_active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.get_api("targets")["activeTargets"]
        return targets

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
