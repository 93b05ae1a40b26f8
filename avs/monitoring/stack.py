"""Monitoring for a running devnet: the chain exporter process, the target files, and Prometheus
(when the ``prometheus`` binary is installed).

    stack = start_monitoring(workdir, rpc_url, deployment_file, {
        ScrapeJob.OPERATORS: [ScrapeTarget("127.0.0.1:9092", {"operator": "alice"})],
        ScrapeJob.AGGREGATOR: [ScrapeTarget("127.0.0.1:9095")],
    })
    print(stack.prometheus_url)   # None when Prometheus is not installed
    ...
    stack.stop()

Used by ``make demo`` / ``make devnet`` and by ``tests/deploy``. Grafana is not started (it is not
installable here); point one at ``prometheus_url`` with ``deploy/grafana/provisioning``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from avs.monitoring.prometheus import PrometheusProcess, find_prometheus
from avs.monitoring.targets import ScrapeJob, ScrapeTarget, write_targets

if TYPE_CHECKING:
    from avs.devnet import ServiceProcess


@dataclass
class MonitoringStack:
    exporter: ServiceProcess
    exporter_port: int
    prometheus: PrometheusProcess | None
    targets_dir: Path

    @property
    def prometheus_url(self) -> str | None:
        return None if self.prometheus is None else self.prometheus.url

    def update_targets(self, job: ScrapeJob, targets: Sequence[ScrapeTarget]) -> None:
        """Replace a job's targets (e.g. once the challenger has started); Prometheus reloads them."""
        write_targets(job, targets, self.targets_dir)

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        self.exporter.stop()


def start_chain_exporter(
    rpc_url: str, deployment_file: Path, log_dir: Path, poll_seconds: float = 1.0, listen: str = "127.0.0.1:0"
) -> tuple[ServiceProcess, int]:
    """``python -m avs.monitoring.chain_exporter`` as a process; returns it and its metrics port."""
    from avs.devnet import ServiceProcess

    args = [
        sys.executable,
        "-m",
        "avs.monitoring.chain_exporter",
        "--rpc-url",
        rpc_url,
        "--deployment",
        str(deployment_file),
        "--listen",
        listen,
        "--poll-seconds",
        str(poll_seconds),
    ]
    log_dir.mkdir(parents=True, exist_ok=True)
    exporter = ServiceProcess("chain-exporter", args, dict(os.environ), log_dir)
    try:
        ready = exporter.wait_ready(timeout=60)
    except BaseException:
        exporter.stop()
        raise
    return exporter, int(str(ready["metrics_port"]))


def start_monitoring(
    workdir: Path,
    rpc_url: str,
    deployment_file: Path,
    targets: Mapping[ScrapeJob, Sequence[ScrapeTarget]],
    scrape_interval: str | None = "2s",
    poll_seconds: float = 1.0,
    prometheus_port: int | None = None,
) -> MonitoringStack:
    """Starts the chain exporter, writes every job's targets (the exporter's added), and starts
    Prometheus in ``workdir/prometheus`` if it is installed."""
    exporter, port = start_chain_exporter(rpc_url, deployment_file, workdir / "logs", poll_seconds)
    targets_dir = workdir / "prometheus" / "targets"
    try:
        all_targets = {**targets, ScrapeJob.CHAIN_EXPORTER: [ScrapeTarget(f"127.0.0.1:{port}")]}
        for job, job_targets in all_targets.items():
            write_targets(job, job_targets, targets_dir)
        prometheus = None
        if find_prometheus() is not None:
            prometheus = PrometheusProcess.start(workdir / "prometheus", scrape_interval, prometheus_port)
    except BaseException:
        exporter.stop()
        raise
    return MonitoringStack(exporter, port, prometheus, targets_dir)
