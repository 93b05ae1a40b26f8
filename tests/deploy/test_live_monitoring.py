"""A real Prometheus (Debian's package) scraping a real devnet: ``avs.devnet.Devnet`` (anvil, the
contracts, one operator process with a tiny model, the aggregator process), plus the challenger
and the chain exporter as processes.

Traffic: one request through the aggregator (generated, batched, certified on-chain, re-checked by
the challenger), a Verify and a SignBatch that slashing protection refuses sent straight to the
operator, insurance coverage bought, and an equivocation proven (the operator's key signing two
conflicting attestations), so every series the dashboards use exists. Then each dashboard panel's
query must parse and return data through Prometheus's HTTP API, the rules must load, and the
slashing alert must fire.
"""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest
import yaml
from eth_account import Account
from eth_account.signers.local import LocalAccount
from prometheus_client import CollectorRegistry
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient
from avs.chain.deployment import Deployment
from avs.chain.faults import SignedAttestation, Web3FaultClient
from avs.client import AggregatorClient
from avs.crypto import bls
from avs.devnet import ANVIL_KEY_0, DEVNET_PASSWORD, Devnet, DevnetOperator, ServiceProcess, get_free_port
from avs.gateway.cli import build_service
from avs.gateway.config import load_config
from avs.gateway.metrics import GatewayMetrics
from avs.gateway.server import GatewayServer
from avs.httpserver import start_metrics_server
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import (
    Attestation,
    BatchHeader,
    Domain,
    InferenceRequest,
    Verdict,
    compute_digest,
    compute_request_hash,
    compute_stop_sequences_hash,
)
from avs.monitoring.dashboards import DASHBOARDS, Dashboard, compute_promql
from avs.monitoring.prometheus import PrometheusError, PrometheusProcess, find_prometheus
from avs.monitoring.stack import start_monitoring
from avs.monitoring.targets import ScrapeJob, ScrapeTarget
from avs.rpc import convert
from avs.rpc.operator_client import OperatorClient
from tests.inference.conftest import build_tiny_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_prometheus() is None,
        reason="prometheus not installed: apt-get install -y --no-install-recommends prometheus",
    ),
]

QUORUMS = b"\x00"
DATA_TIMEOUT_SECONDS = 30.0


@dataclass
class Monitored:
    prometheus: PrometheusProcess
    deployment: Deployment
    operator: DevnetOperator
    w3: Web3


def _wait(condition: str, check: Callable[[], bool], timeout: float = DATA_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(0.25)


def _has_data(prometheus: PrometheusProcess, expr: str) -> bool:
    return not prometheus.query(expr).is_empty()


def _is_http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextmanager
def _gateway(devnet: Devnet) -> Iterator[tuple[GatewayServer, int]]:
    """The gateway in front of the devnet's aggregator, with its /metrics on a port of its own."""
    config = load_config(
        aggregator=devnet.aggregator_url,
        requester=Account.from_key(ANVIL_KEY_0).address,
        model_dirs=[devnet.model_dir],
        deployment=devnet.deployment_file,
        listen="127.0.0.1:0",
        request_timeout_seconds=60,
    )
    metrics = GatewayMetrics(CollectorRegistry())
    metrics_server, _ = start_metrics_server("127.0.0.1", 0, metrics.registry)
    with AggregatorClient(devnet.aggregator_url) as intake:
        server = GatewayServer(build_service(intake, config, metrics), config, metrics)
        server.start()
        try:
            yield server, metrics_server.server_port
        finally:
            server.stop()
            metrics_server.shutdown()
            metrics_server.server_close()


def _request_through_the_gateway(gateway: GatewayServer, model: str, content: str) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], max_tokens=8)


def _send_operator_traffic(node: DevnetOperator, model_dir: Path, deployment: Deployment) -> None:
    """A Verify straight to the operator, and a second header for the certified batch 1 (refused)."""
    from avs.inference.engine import load_engine

    engine = load_engine(model_dir)
    domain = Domain(deployment.chain_id, deployment.task_manager)
    aggregator: LocalAccount = Account.from_key(ANVIL_KEY_0)
    messages = ({"role": "user", "content": "the quick brown fox"},)
    request = InferenceRequest(
        engine.profile_hash,
        engine.encode_chat(list(messages)).prompt_hash,
        0,
        0,
        1_000_000,
        0,
        8,
        compute_stop_sequences_hash([]),
        aggregator.address,
        7,
    )
    envelope = convert.RequestEnvelope(request, messages, ())
    with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
        client = OperatorClient(channel, domain, node.key_pair.operator_id, bytes(aggregator.key))
        generated = client.generate(envelope)
        verified = client.verify(envelope, list(generated.output_token_ids))
        assert convert.attestation_from_proto(verified.attestation.attestation).verdict == Verdict.ACCEPT
        leaf = BatchLeaf(compute_request_hash(domain, request), generated.output_hash)
        conflicting = BatchHeader(1, compute_merkle_tree([leaf]).root, 1, QUORUMS)
        with pytest.raises(grpc.RpcError) as refused:
            client.sign_batch(conflicting, [leaf])
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _buy_coverage(w3: Web3, deployment: Deployment) -> None:
    assert deployment.insurance_pool is not None
    requester: LocalAccount = Account.create()
    w3.provider.make_request("anvil_setBalance", [requester.address, hex(10**20)])  # type: ignore[arg-type]
    deployer = Web3AvsClient(w3, deployment, Account.from_key(ANVIL_KEY_0))
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment.stake_token), abi=load_abi("TestToken"))
    deployer.transact(token.functions.mint(requester.address, 10**18))
    deployer.transact(token.functions.approve(deployment.insurance_pool, 10**18), requester)
    request = InferenceRequest(
        Web3.keccak(text="model"), Web3.keccak(text="prompt"), 0, 0, 1_000_000, 1, 16, b"\0" * 32, requester.address, 1
    )
    Web3FaultClient(Web3AvsClient(w3, deployment, requester)).buy_coverage(request, 0, 10**18, requester)


def _prove_equivocation(w3: Web3, deployment: Deployment, node: DevnetOperator) -> None:
    """The operator's key signs ACCEPT for two outputs of one request (two instances sharing a key)."""
    domain = Domain(deployment.chain_id, deployment.task_manager)
    request_hash = Web3.keccak(text="equivocated request")

    def signed(output: str) -> SignedAttestation:
        attestation = Attestation(request_hash, Web3.keccak(text=output), Verdict.ACCEPT)
        return SignedAttestation(attestation, bls.sign(node.key_pair.secret, compute_digest(domain, attestation)))

    prover = Web3FaultClient(Web3AvsClient(w3, deployment, Account.from_key(ANVIL_KEY_0)))
    prover.prove_equivocation(node.key_pair.operator_id, signed("output A"), signed("output B"))


def _start_challenger(devnet: Devnet, logs: Path) -> tuple[ServiceProcess, int]:
    """The challenger re-verifies every certified leaf (no escalation); it signs with the devnet's
    aggregator key, which the operators authorise."""
    assert devnet.anvil is not None
    port = get_free_port()
    config = {
        "rpc_url": devnet.anvil.url,
        "deployment_file": str(devnet.deployment_file),
        "aggregator": devnet.aggregator_url,
        "ecdsa_keystore": str(devnet.workdir / "aggregator" / "aggregator.ecdsa.key.json"),
        "sample_rate": 1.0,
        "escalate": False,
        "poll_seconds": 0.5,
        "start_block": 0,
        "metrics_listen": f"127.0.0.1:{port}",
        "database_url": f"sqlite:///{devnet.workdir / 'challenger.sqlite'}",
    }
    path = devnet.workdir / "challenger.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "CHALLENGER_ECDSA_KEY_PASSWORD": DEVNET_PASSWORD}
    args = [sys.executable, "-m", "avs_aggregator.challenger.cli", "run", "--config", str(path)]
    challenger = ServiceProcess("challenger", args, env, logs)
    deadline = time.monotonic() + 60
    while not _is_http_ok(f"http://127.0.0.1:{port}/metrics"):
        if challenger.process.poll() is not None or time.monotonic() > deadline:
            challenger.stop()
            raise AssertionError(f"the challenger did not serve /metrics; see {challenger.log_path}")
        time.sleep(0.3)
    return challenger, port


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    work = tmp_path_factory.mktemp("monitoring")
    model_dir = build_tiny_model(work / "tiny")
    net = Devnet(work / "devnet", model_dir, stakes=(("op-1", 10),))
    stoppers: list[Callable[[], None]] = []
    try:
        net.start()
        stoppers.append(net.stop)
        assert net.anvil is not None
        logs = net.workdir / "logs"
        challenger, challenger_port = _start_challenger(net, logs)
        stoppers.append(challenger.stop)
        gateway_stack = ExitStack()
        stoppers.append(gateway_stack.close)
        gateway, gateway_metrics_port = gateway_stack.enter_context(_gateway(net))
        targets = {
            ScrapeJob.OPERATORS: [
                ScrapeTarget(f"127.0.0.1:{op.metrics_port}", {"operator": op.name}) for op in net.operators
            ],
            ScrapeJob.AGGREGATOR: [ScrapeTarget(f"127.0.0.1:{net.aggregator_ports['metrics']}")],
            ScrapeJob.CHALLENGER: [ScrapeTarget(f"127.0.0.1:{challenger_port}")],
            ScrapeJob.GATEWAY: [ScrapeTarget(f"127.0.0.1:{gateway_metrics_port}")],
        }
        stack = start_monitoring(work, net.anvil.url, net.deployment_file, targets, "1s", poll_seconds=0.5)
        stoppers.append(stack.stop)
        prometheus = stack.prometheus
        assert prometheus is not None
        _wait("every target up", lambda: len(prometheus.query("up == 1").result) == 5)
        _wait("the slashing counter at 0", lambda: _has_data(prometheus, "avs_chain_operator_slashings_total"))

        # Two requests, the second after a scrape of the first, so that rate() sees counters grow.
        model = net.model_dir.name
        _request_through_the_gateway(gateway, model, "hello world")
        _wait("a scrape of the first request", lambda: _has_data(prometheus, "avs_aggregator_operator_calls_total"))
        _wait("the gateway's", lambda: _has_data(prometheus, 'avs_gateway_completions_total{outcome="ok"} > 0'))
        _request_through_the_gateway(gateway, model, "operators sign the same output hash")
        _send_operator_traffic(net.operators[0], model_dir, net.deployment)
        _buy_coverage(net.anvil.w3, net.deployment)
        _prove_equivocation(net.anvil.w3, net.deployment, net.operators[0])
        yield Monitored(prometheus, net.deployment, net.operators[0], net.anvil.w3)
    finally:
        for stop in reversed(stoppers):
            stop()  # Devnet.start stops what it started itself when it fails


def _queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    return [(panel.title, query.expr) for panel in dashboard.panels for query in panel.queries]


def _all_queries() -> list[tuple[str, str, str]]:
    return [(name, title, expr) for name, board in DASHBOARDS.items() for title, expr in _queries(board)]


def test_targets_are_scraped_and_rules_loaded(devnet: Monitored) -> None:
    targets = devnet.prometheus.get_active_targets()
    assert {t["labels"]["job"] for t in targets} == {job.value for job in ScrapeJob}
    # scrape_timeout is the 1 s scrape interval: one scrape of a busy process may time out; a target
    # that is really down stays down for the whole wait.
    _wait(
        "every target's last scrape up",
        lambda: all(t["health"] == "up" for t in devnet.prometheus.get_active_targets()),
    )
    groups = devnet.prometheus.get_api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 10 and all(rule["health"] == "ok" for rule in rules)


def test_every_panel_query_parses(devnet: Monitored) -> None:
    for board in DASHBOARDS.values():
        for title, expr in _queries(board):
            try:
                devnet.prometheus.query(compute_promql(expr))
            except PrometheusError as exc:
                raise AssertionError(f"{board.uid} / {title}: {expr}: {exc}") from None


def test_every_panel_returns_data(devnet: Monitored) -> None:
    missing: list[str] = []
    deadline = time.monotonic() + DATA_TIMEOUT_SECONDS
    for name, title, expr in _all_queries():
        promql = compute_promql(expr)
        while not _has_data(devnet.prometheus, promql):
            if time.monotonic() > deadline:
                missing.append(f"{name} / {title}: {promql}")
                break
            time.sleep(0.5)
    assert not missing, "panels without data:\n" + "\n".join(missing)


def test_template_variables_return_values(devnet: Monitored) -> None:
    for board in DASHBOARDS.values():
        for variable in board.variables:
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable.query)
            assert match, variable.query
            result = devnet.prometheus.query(match.group(1)).result
            assert result and all(match.group(2) in sample["metric"] for sample in result)


def test_the_values_are_the_chain_and_the_traffic(devnet: Monitored) -> None:
    def value(expr: str) -> float:
        result = devnet.prometheus.query(expr).result
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    _wait("the exporter to see the slash", lambda: _has_data(devnet.prometheus, "avs_chain_slashed_shares_total > 0"))
    assert value('avs_chain_quorum_operators{quorum="0"}') == 1
    assert value('avs_chain_operator_slashings_total{quorum="0"}') == 1
    assert value("avs_chain_premiums_tokens_total") > 0
    assert value('avs_chain_coverage_outstanding_tokens{quorum="0"}') == 1.0
    assert value("avs_chain_insurance_pool_balance_tokens") > 0
    assert value('sum(avs_grpc_requests_total{method="Generate", code="OK"})') >= 2  # aggregator's + ours
    _wait(
        "the chain and the aggregator to agree on batches",
        lambda: value("avs_chain_batches_certified_total") == value("avs_aggregator_batches_certified_total") >= 1,
    )
    assert value('sum(avs_aggregator_operator_calls_total{call="generate", outcome="ok"})') == 2
    operators_answering = next(p for p in DASHBOARDS["aggregator"].panels if p.title == "Operators answering (5m)")
    _wait("the second request's calls in rate()", lambda: value(operators_answering.queries[0].expr) == 1)
    # The series exists from the operator's start (at 0): the scrape after the refusal is waited for.
    _wait("the refused SignBatch scraped", lambda: value('avs_signing_refusals_total{kind="batch"}') == 1)
    assert value('eigen_performance_score{operator="op-1"}') == 100


def test_slashing_alert_fires(devnet: Monitored) -> None:
    def firing() -> bool:
        alerts = devnet.prometheus.get_api("alerts")["alerts"]
        return any(a["labels"]["alertname"] == "AvsOperatorSlashed" and a["state"] == "firing" for a in alerts)

    _wait("AvsOperatorSlashed to fire", firing)

    def operator_down() -> bool:  # pending after one timed-out scrape; listed for as long as it really is down
        alerts = devnet.prometheus.get_api("alerts")["alerts"]
        return any(a["labels"]["alertname"] == "AvsOperatorDown" for a in alerts)

    _wait("no AvsOperatorDown alert", lambda: not operator_down())
