"""The Grafana dashboards, defined once here and written to ``deploy/grafana/dashboards/*.json``.

``python -m avs.monitoring.dashboards`` regenerates the JSON files (commit the diff);
``tests/deploy`` checks the committed files equal the generated ones and runs every panel's
query against a live Prometheus. Panels use the provisioned datasource (uid ``prometheus``),
Grafana's ``$__rate_interval`` and the ``$instance`` template variable; ``compute_promql``
replaces them to run a query outside Grafana.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # or "stat"
    unit: str = "short"
    description: str = ""
    width: int = 12


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    query: str  # label_values(...)


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[Variable, ...] = ()


def _q(expr: str, legend: str = "") -> tuple[Query, ...]:
    return (Query(expr, legend),)


def _median_and_p95(histogram: str) -> tuple[Query, ...]:
    """p50 and p95 of a histogram over all its series (``histogram`` without ``_bucket``)."""
    return tuple(
        Query(f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{RATE}])))", legend)
        for q, legend in (("0.5", "p50"), ("0.95", "p95"))
    )


OP = 'instance=~"$instance"'

OPERATORS = Dashboard(
    uid="avs-operators",
    title="AVS operators",
    description="Each operator's health, gRPC traffic, inference and signing (operator /metrics).",
    variables=(Variable("instance", 'label_values(eigen_performance_score{job="operators"}, instance)'),),
    panels=(
        Panel("Operators up", _q(f'up{{job="operators", {OP}}}', "{{instance}}"), "stat", width=6),
        Panel(
            "Performance score",
            _q(f"eigen_performance_score{{{OP}}}", "{{instance}}"),
            "stat",
            description="100 when every model is loaded and serving (EigenLayer node spec).",
            width=6,
        ),
        Panel(
            "Registered stake",
            _q(f"eigen_registered_stakes{{{OP}}} / 1e18", "{{instance}} q{{quorum_number}}"),
            "stat",
            description="Stake registered with the AVS per quorum, in tokens.",
            width=6,
        ),
        Panel("Requests in flight", _q(f"sum by (instance) (avs_requests_in_flight{{{OP}}})", "{{instance}}"), width=6),
        Panel(
            "gRPC requests by method and code",
            _q(
                f"sum by (instance, method, code) (rate(avs_grpc_requests_total{{{OP}}}[{RATE}]))",
                "{{instance}} {{method}} {{code}}",
            ),
            unit="reqps",
        ),
        Panel(
            "gRPC latency p95",
            _q(
                "histogram_quantile(0.95, sum by (le, method) "
                f"(rate(avs_grpc_request_duration_seconds_bucket{{{OP}}}[{RATE}])))",
                "{{method}}",
            ),
            unit="s",
        ),
        Panel(
            "Inference time p95 by stage",
            _q(
                f"histogram_quantile(0.95, sum by (le, stage) (rate(avs_inference_seconds_bucket{{{OP}}}[{RATE}])))",
                "{{stage}}",
            ),
            unit="s",
        ),
        Panel(
            "Tokens generated",
            _q(
                f"sum by (instance, model) (rate(avs_tokens_generated_total{{{OP}}}[{RATE}]))", "{{instance}} {{model}}"
            ),
            unit="short",
            description="Output tokens per second generated as primary.",
        ),
        Panel(
            "Verification verdicts",
            _q(
                f"sum by (instance, verdict) (rate(avs_verification_verdicts_total{{{OP}}}[{RATE}]))",
                "{{instance}} {{verdict}}",
            ),
            unit="ops",
        ),
        Panel(
            "Signatures released",
            _q(f"sum by (instance, kind) (rate(avs_signatures_total{{{OP}}}[{RATE}]))", "{{instance}} {{kind}}"),
            unit="ops",
        ),
        Panel(
            "Slashing-protection refusals (1h)",
            _q(
                f"sum by (instance, kind) (increase(avs_signing_refusals_total{{{OP}}}[1h]))",
                "{{instance}} {{kind}}",
            ),
            "stat",
            description="Signatures refused because they would conflict with one already given. Should be 0.",
        ),
    ),
)

AGGREGATOR = Dashboard(
    uid="avs-aggregator",
    title="AVS aggregator and challenger",
    description="Request pipeline, batches, signed stake, calls to operators; challenger checks.",
    panels=(
        Panel("Aggregator up", _q('up{job="aggregator"}', "{{instance}}"), "stat", width=6),
        Panel("Challenger up", _q('up{job="challenger"}', "{{instance}}"), "stat", width=6),
        Panel(
            "Operators answering (5m)",
            _q(
                "count(sum by (operator) (rate(avs_aggregator_operator_calls_total"
                '{outcome=~"ok|accept|reject"}[5m])) > 0) or vector(0)',
                "operators",
            ),
            "stat",
            description="Operators that answered at least one aggregator call with a signature in 5 minutes "
            "(avs_aggregator_operators_responding counts those whose last call was answered).",
            width=6,
        ),
        Panel(
            "Batches certified (1h)",
            _q("sum(increase(avs_aggregator_batches_certified_total[1h]))", "batches"),
            "stat",
            width=6,
        ),
        Panel(
            "Requests entering each state",
            _q(f"sum by (state) (rate(avs_aggregator_requests_total[{RATE}]))", "{{state}}"),
            unit="reqps",
        ),
        Panel("Requests in each state", _q("sum by (state) (avs_aggregator_requests_in_state)", "{{state}}")),
        Panel(
            "Submit to certificate",
            _median_and_p95("avs_aggregator_request_seconds"),
            unit="s",
        ),
        Panel(
            "Pipeline step p95",
            _q(
                f"histogram_quantile(0.95, sum by (le, stage) (rate(avs_aggregator_stage_seconds_bucket[{RATE}])))",
                "{{stage}}",
            ),
            unit="s",
        ),
        Panel(
            "Signed stake share of the last batch",
            _q("avs_aggregator_signed_stake_ratio", "quorum {{quorum}}"),
            unit="percentunit",
        ),
        Panel(
            "Gas per certifyBatch",
            _q(
                f"sum(rate(avs_aggregator_batch_gas_used_sum[{RATE}])) / "
                f"sum(rate(avs_aggregator_batch_gas_used_count[{RATE}]))",
                "gas",
            ),
        ),
        Panel(
            "Calls to operators by outcome",
            _q(
                f"sum by (operator, call, outcome) (rate(avs_aggregator_operator_calls_total[{RATE}]))",
                "{{operator}} {{call}} {{outcome}}",
            ),
            unit="reqps",
        ),
        Panel(
            "Operator signing rate",
            _q(
                "sum by (operator) (rate(avs_aggregator_operator_calls_total"
                f'{{outcome=~"ok|accept|reject"}}[{RATE}])) / sum by (operator) '
                f'(rate(avs_aggregator_operator_calls_total{{outcome!="busy"}}[{RATE}]))',
                "{{operator}}",
            ),
            unit="percentunit",
            description="Share of calls answered with a valid signature (alert AvsOperatorSigningRateLow below 90%).",
        ),
        Panel("Outputs rejected (1h)", _q("sum(increase(avs_aggregator_rejections_total[1h]))", "rejected"), "stat"),
        Panel(
            "Challenger: leaves re-verified",
            _q(f"sum by (verdict) (rate(avs_challenger_leaves_checked_total[{RATE}]))", "{{verdict}}"),
            unit="ops",
        ),
        Panel("Challenger: challenges opened", _q("sum(avs_challenger_challenges_total)", "challenges"), "stat"),
        Panel("Challenger: challenges open", _q("sum(avs_challenger_open_challenges)", "open"), "stat"),
        Panel(
            "Aggregator leader",
            _q("avs_aggregator_leader", "{{instance}}"),
            "stat",
            description="1 on the aggregator that holds the leader lease (alert AvsNoAggregatorLeader when none does).",
        ),
        Panel("Equivocations proven", _q("sum(avs_aggregator_equivocations_total)", "equivocations"), "stat"),
        Panel("Challenger: last block processed", _q("avs_challenger_last_block", "{{instance}}"), "stat"),
    ),
)

ECONOMICS = Dashboard(
    uid="avs-economics",
    title="AVS economics",
    description="Stake, coverage, premiums, slashing and certified batches, read from the contracts "
    "by the chain exporter (avs.monitoring.chain_exporter). Amounts in tokens.",
    panels=(
        Panel("Total stake per quorum", _q("avs_chain_quorum_stake_tokens", "quorum {{quorum}}"), "stat", width=6),
        Panel("Operators registered", _q("avs_chain_quorum_operators", "quorum {{quorum}}"), "stat", width=6),
        Panel("Batches certified", _q("avs_chain_batches_certified_total", "batches"), "stat", width=6),
        Panel(
            "Since the last certified batch",
            _q("time() - avs_chain_last_batch_certified_timestamp_seconds", "age"),
            "stat",
            unit="s",
            width=6,
        ),
        Panel(
            "Stake per quorum",
            _q("avs_chain_quorum_stake_tokens", "quorum {{quorum}}"),
        ),
        Panel(
            "Coverage outstanding and available",
            (
                Query("avs_chain_coverage_outstanding_tokens", "outstanding q{{quorum}}"),
                Query("avs_chain_coverage_available_tokens", "available q{{quorum}}"),
            ),
            description=(
                "Coverage sold never exceeds coverageCap(q): what one fraud certified at the threshold"
                " slashes, less the challenger's reward."
            ),
        ),
        Panel(
            "Insurance pool",
            (
                Query("avs_chain_insurance_pool_balance_tokens", "balance"),
                Query("avs_chain_insurance_pool_free_balance_tokens", "free"),
                Query("avs_chain_insurance_claimable_tokens", "claimable"),
            ),
        ),
        Panel(
            "Premiums, coverage bought, claims paid",
            (
                Query("avs_chain_premiums_tokens_total", "premiums"),
                Query("avs_chain_coverage_bought_tokens_total", "coverage bought"),
                Query("avs_chain_claims_paid_tokens_total", "claims paid"),
            ),
        ),
        Panel(
            "Stake slashed",
            _q("avs_chain_slashed_shares_total", "quorum {{quorum}}"),
            description="Strategy shares slashed by the fault manager (1:1 with tokens in the local core).",
        ),
        Panel(
            "Slashings, ejections and churn (24h)",
            (
                Query(
                    "sum by (quorum) (increase(avs_chain_operator_slashings_total[24h]))", "slashed, quorum {{quorum}}"
                ),
                Query(
                    "sum by (quorum) (increase(avs_chain_operator_ejections_total[24h]))", "ejected, quorum {{quorum}}"
                ),
                Query(
                    "sum by (quorum) (increase(avs_chain_operator_churns_total[24h]))", "replaced, quorum {{quorum}}"
                ),
            ),
            "stat",
            description="Ejected: members below the quorum minimum removed (OperatorRegistry.ejectUnderstaked). "
            "Replaced: members of a full quorum whose place a larger newcomer took (churn).",
        ),
        Panel(
            "Challenges",
            (
                Query("avs_chain_challenges_opened_total", "opened"),
                Query("avs_chain_challenge_bonds_tokens", "bonds locked"),
            ),
        ),
        Panel(
            "Certified batches per hour",
            _q(f"rate(avs_chain_batches_certified_total[{RATE}]) * 3600", "batches/h"),
        ),
    ),
)

GATEWAY = Dashboard(
    uid="avs-gateway",
    title="AVS gateway",
    description="The OpenAI-compatible gateway (avs.gateway): completions by outcome, time to a certified "
    "answer, tokens, HTTP answers. Scraped from its --metrics-listen port.",
    panels=(
        Panel("Gateway up", _q('up{job="gateway"}', "{{instance}}"), "stat", width=6),
        Panel("Completions in flight", _q("sum(avs_gateway_completions_in_flight)", "in flight"), "stat", width=6),
        Panel(
            "Certified completions (1h)",
            _q('sum(increase(avs_gateway_completions_total{outcome="ok"}[1h]))', "completions"),
            "stat",
            width=6,
        ),
        Panel(
            "Certificates refused (1h)",
            _q('sum(increase(avs_gateway_completions_total{outcome="certificate_mismatch"}[1h]))', "refused"),
            "stat",
            description="Certified completions whose certificate did not verify at the gateway "
            "(alert AvsGatewayCertificateMismatch): the aggregator answered a certificate that is not "
            "for the request sent, or a forged one.",
            width=6,
        ),
        Panel(
            "Completions by outcome",
            _q(f"sum by (route, outcome) (rate(avs_gateway_completions_total[{RATE}]))", "{{route}} {{outcome}}"),
            unit="reqps",
        ),
        Panel(
            "Time to a certified answer",
            _median_and_p95("avs_gateway_completion_seconds"),
            unit="s",
        ),
        Panel(
            "HTTP answers by code",
            _q(f"sum by (route, code) (rate(avs_gateway_http_responses_total[{RATE}]))", "{{route}} {{code}}"),
            unit="reqps",
        ),
        Panel(
            "Tokens of certified completions",
            _q(f"sum by (kind) (rate(avs_gateway_tokens_total[{RATE}]))", "{{kind}}"),
            unit="short",
            description="Tokens per second: the prompts (counted at the gateway) and the certified outputs.",
        ),
    ),
)

DASHBOARDS = {"operators": OPERATORS, "aggregator": AGGREGATOR, "economics": ECONOMICS, "gateway": GATEWAY}


def compute_promql(expr: str, rate_interval: str = "1m") -> str:
    """A panel's query as plain PromQL: Grafana's variables replaced (``$instance`` -> all)."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    return re.sub(r"\$\{?instance\}?", ".*", expr)


def compute_panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    height = 5 if panel.kind == "stat" else 8
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend}
            for i, q in enumerate(panel.queries)
        ],
    }
    if panel.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    else:
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    return out


def compute_variable_json(variable: Variable) -> dict[str, Any]:
    return {
        "name": variable.name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": variable.query, "refId": "var"},
        "definition": variable.query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def compute_dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    x = y = row_height = 0
    for panel_id, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(compute_panel_json(panel, panel_id, x, y))
        row_height = max(row_height, panels[-1]["gridPos"]["h"])
        x += panel.width
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["avs", "verifiable-inference"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": [compute_variable_json(v) for v in dashboard.variables]},
        "annotations": {"list": []},
        "panels": panels,
    }


def compute_dashboard_text(dashboard: Dashboard) -> str:
    return json.dumps(compute_dashboard_json(dashboard), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write deploy/grafana/dashboards/*.json")
    parser.add_argument("--out", type=Path, default=DASHBOARDS_DIR)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, dashboard in DASHBOARDS.items():
        (args.out / f"{name}.json").write_text(compute_dashboard_text(dashboard))
    return 0


if __name__ == "__main__":
    sys.exit(main())
