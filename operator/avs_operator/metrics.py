"""The operator's Prometheus metrics, behind one object with the registry passed in.

EigenLayer node-spec metrics (``eigen_*``) plus the AVS's own (``avs_*``). Names carry their
units; labels stay few. ``avs_grpc_request*`` count the gRPC calls this node serves (the spec's
``eigen_rpc_request_*`` are the node's calls to its Ethereum client, labelled by client version:
another thing, not exported here).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

AVS_NAME = "verifiable-inference"
SIGNATURE_KINDS = ("attestation", "batch")  # the label ``kind`` of signatures and refusals
_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.performance_score = Gauge(
            "eigen_performance_score",
            "Node performance, 0 to 100 (100: serving every model)",
            ["avs_name"],
            registry=registry,
        )
        self.rpc_requests = Counter(
            "avs_grpc_requests_total",
            "gRPC requests served, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.rpc_duration = Histogram(
            "avs_grpc_request_duration_seconds",
            "gRPC request duration",
            ["method"],
            buckets=_STAGE_BUCKETS,
            registry=registry,
        )
        self.registered_stakes = Gauge(
            "eigen_registered_stakes",
            "Stake registered with the AVS, per quorum",
            ["quorum_number", "quorum_name"],
            registry=registry,
        )
        self.tokens_generated = Counter(
            "avs_tokens_generated_total", "Output tokens generated as primary", ["model"], registry=registry
        )
        self.verdicts = Counter(
            "avs_verification_verdicts_total", "Verification verdicts signed", ["model", "verdict"], registry=registry
        )
        self.inference_seconds = Histogram(
            "avs_inference_seconds", "Time per inference stage", ["stage"], buckets=_STAGE_BUCKETS, registry=registry
        )
        self.signatures = Counter(
            "avs_signatures_total", "BLS signatures released, by kind", ["kind"], registry=registry
        )
        self.refusals = Counter(
            "avs_signing_refusals_total", "Signatures refused by slashing protection", ["kind"], registry=registry
        )
        self.in_flight = Gauge("avs_requests_in_flight", "gRPC requests being served", registry=registry)
        # Always 1: its labels say who this node is, so dashboards can join a scrape target (instance)
        # with the aggregator's per-operator series (label ``operator``: the id's first 4 bytes).
        self.info = Gauge(
            "avs_operator_info",
            "This operator's identity (value 1)",
            ["operator", "operator_id", "chain_id", "task_manager"],
            registry=registry,
        )
        self.performance_score.labels(AVS_NAME).set(0)
        # Counters an alert takes increase() of exist at 0 from the start: a series first seen at 1
        # has no increase, and the first refusal of a process would not alert.
        for kind in SIGNATURE_KINDS:
            self.signatures.labels(kind)
            self.refusals.labels(kind)
        self._stake_quorums: set[int] = set()

    def set_registered_stakes(self, stakes: Mapping[int, int]) -> None:
        """``eigen_registered_stakes`` of the quorums the operator is in now: a quorum it left (ejected,
        churned out, deregistered) is removed, not left showing its old stake."""
        for quorum in self._stake_quorums - stakes.keys():
            self.registered_stakes.remove(str(quorum), f"quorum {quorum}")
        for quorum, stake in stakes.items():
            self.registered_stakes.labels(str(quorum), f"quorum {quorum}").set(stake)
        self._stake_quorums = set(stakes)

    def set_identity(self, operator_id: bytes, chain_id: int, task_manager: str) -> None:
        full = "0x" + operator_id.hex()
        self.info.labels(full[:10], full, str(chain_id), task_manager).set(1)

    def set_ready(self, ready: bool) -> None:
        self.performance_score.labels(AVS_NAME).set(100 if ready else 0)
