"""The operator's metrics as Prometheus reads them: series an alert takes ``increase()`` of exist
from the start, and a quorum the operator left stops showing its stake."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from avs_operator.metrics import SIGNATURE_KINDS, OperatorMetrics


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(name, labels)


def test_signature_and_refusal_counters_start_at_zero() -> None:
    """``increase()`` of a series first seen at 1 is 0: the AvsSigningRefused alert missed the first
    refusal of every process (deploy/prometheus/alerts_test.yml has that case)."""
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    for kind in SIGNATURE_KINDS:
        assert _sample(registry, "avs_signing_refusals_total", {"kind": kind}) == 0
        assert _sample(registry, "avs_signatures_total", {"kind": kind}) == 0
    metrics.refusals.labels("batch").inc()
    assert _sample(registry, "avs_signing_refusals_total", {"kind": "batch"}) == 1


def test_a_quorum_the_operator_left_stops_showing_its_stake() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.set_registered_stakes({0: 32 * 10**18, 1: 5})
    metrics.set_registered_stakes({1: 7})  # ejected from quorum 0
    stake = {"quorum_number": "0", "quorum_name": "quorum 0"}
    assert _sample(registry, "eigen_registered_stakes", stake) is None
    assert _sample(registry, "eigen_registered_stakes", {"quorum_number": "1", "quorum_name": "quorum 1"}) == 7
    metrics.set_registered_stakes({})  # deregistered
    assert b"eigen_registered_stakes{" not in generate_latest(registry)
