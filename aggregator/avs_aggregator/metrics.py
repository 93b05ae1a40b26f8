"""The aggregator's metrics behind one object; the registry is passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Submit to certified: past the 120 s that AvsCertificationSlow alerts on (a p95 over the top bucket
# cannot be told apart from the top bucket itself).
REQUEST_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)


class AggregatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "avs_aggregator_requests_total", "Requests entering each state", ["state"], registry=registry
        )
        self.pending = Gauge(
            "avs_aggregator_requests_in_state", "Requests currently in each state", ["state"], registry=registry
        )
        self.stage_seconds = Histogram(
            "avs_aggregator_stage_seconds",
            "Time per pipeline step",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.request_seconds = Histogram(
            "avs_aggregator_request_seconds", "Submit to certified", buckets=REQUEST_BUCKETS, registry=registry
        )
        self.signed_stake_ratio = Gauge(
            "avs_aggregator_signed_stake_ratio",
            "Share of stake that signed the last batch",
            ["quorum"],
            registry=registry,
        )
        self.batch_gas = Histogram(
            "avs_aggregator_batch_gas_used",
            "Gas used per certifyBatch",
            buckets=(1e5, 1.5e5, 2e5, 2.5e5, 3e5, 4e5, 6e5, 1e6),
            registry=registry,
        )
        self.batches_certified = Counter(
            "avs_aggregator_batches_certified_total", "Batches certified on-chain", registry=registry
        )
        self.rejections = Counter("avs_aggregator_rejections_total", "Outputs a quorum rejected", registry=registry)
        self.leader = Gauge(
            "avs_aggregator_leader",
            "1 while this aggregator holds the leader lease and drives the pipeline, 0 on standby",
            registry=registry,
        )
        self.equivocations = Counter(
            "avs_aggregator_equivocations_total",
            "Operators found signing conflicting attestations for one request (proven on-chain once)",
            registry=registry,
        )
        self.operator_calls = Counter(
            "avs_aggregator_operator_calls_total",
            "Calls to operators by outcome (ok, accept, reject, busy, error, bad_signature)",
            ["operator", "call", "outcome"],
            registry=registry,
        )
        self.operators_responding = Gauge(
            "avs_aggregator_operators_responding", "Operators that answered their last call", registry=registry
        )
