"""Prometheus ``file_sd`` target files: what ``deploy/prometheus/prometheus.yml`` scrapes.

``prometheus.yml`` has one scrape job per component, each reading ``targets/<job>*.json`` next to
it. The devnet (or an operator's own tooling) calls ``write_targets`` with the endpoints it
started; Prometheus picks changes up without a restart. Writes are atomic (temp file + rename),
so Prometheus never reads half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from avs.errors import InvalidInputError

DEFAULT_TARGETS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "targets"


class ScrapeJob(StrEnum):
    """The ``job_name``s of ``deploy/prometheus/prometheus.yml``; each reads ``targets/<value>*.json``."""

    OPERATORS = "operators"
    AGGREGATOR = "aggregator"
    CHALLENGER = "challenger"
    CHAIN_EXPORTER = "chain_exporter"
    GATEWAY = "gateway"


# Documented default metrics ports (host:port of each component's /metrics).
DEFAULT_METRICS_PORTS: Mapping[ScrapeJob, int] = {
    ScrapeJob.OPERATORS: 9092,
    ScrapeJob.AGGREGATOR: 9095,
    ScrapeJob.CHALLENGER: 9097,
    ScrapeJob.CHAIN_EXPORTER: 9098,
    ScrapeJob.GATEWAY: 9099,
}


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    address: str  # host:port of /metrics
    labels: Mapping[str, str] = field(default_factory=dict)  # e.g. {"operator": "op-1"}


def compute_file_sd(targets: Sequence[ScrapeTarget], common_labels: Mapping[str, str] | None = None) -> list[object]:
    """The ``file_sd`` JSON document: one group per target so that each keeps its own labels."""
    groups: list[object] = []
    for target in targets:
        host, _, port = target.address.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInputError(f"scrape target {target.address!r} must be host:port")
        groups.append({"targets": [target.address], "labels": {**(common_labels or {}), **target.labels}})
    return groups


def write_targets(
    job: ScrapeJob,
    targets: Sequence[ScrapeTarget],
    targets_dir: Path = DEFAULT_TARGETS_DIR,
    common_labels: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Path:
    """Writes ``targets_dir/<job>[-<name>].json`` atomically and returns its path."""
    targets_dir.mkdir(parents=True, exist_ok=True)
    path = targets_dir / f"{job.value}{'-' + name if name else ''}.json"
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(compute_file_sd(targets, common_labels), indent=2) + "\n")
    os.replace(temp, path)
    return path


def remove_targets(targets_dir: Path = DEFAULT_TARGETS_DIR) -> None:
    """Deletes every target file (the devnet calls this when it stops)."""
    for job in ScrapeJob:
        for path in targets_dir.glob(f"{job.value}*.json"):
            path.unlink(missing_ok=True)
