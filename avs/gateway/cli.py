"""``avs-gateway``: the OpenAI-compatible HTTP gateway in front of an aggregator.

    avs-gateway --aggregator 127.0.0.1:50060 --listen 127.0.0.1:8080 --requester 0xYourAddress \
        --model-dir models/smollm2-135m --deployment deployment.json

Every flag also reads from ``AVS_GATEWAY_<NAME>`` (flags win); API keys only from
``AVS_GATEWAY_API_KEYS`` (comma-separated). Logs are JSON on stderr; one ``{"event": "ready", ...}``
line on stdout once it listens. SIGTERM and SIGINT stop it. Exit status 2 with one line on stderr
for configuration errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from avs.chain.deployment import load_deployment
from avs.client import AggregatorClient
from avs.errors import AvsError
from avs.gateway.config import GatewayConfig, load_config, parse_host_port
from avs.gateway.metrics import GatewayMetrics
from avs.gateway.models import load_local_models
from avs.gateway.server import GatewayServer
from avs.gateway.service import ChainCheck, GatewayService, build_certificate_checker, connect_chain_check
from avs.httpserver import start_metrics_server
from avs.logs import configure_json_logging
from avs.messages import Domain

logger = logging.getLogger("avs.gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avs-gateway", description="OpenAI-compatible HTTP API for the verifiable-inference AVS."
    )
    parser.add_argument("--aggregator", help="the aggregator's intake gRPC host:port (default 127.0.0.1:50060)")
    parser.add_argument("--listen", help="HTTP host:port to listen on (default 127.0.0.1:8080; port 0: any)")
    parser.add_argument(
        "--metrics-listen", help="host:port for Prometheus /metrics (default: none; 9099 by convention)"
    )
    parser.add_argument("--requester", help="0x address put in every request as its requester")
    parser.add_argument(
        "--model-dir",
        type=Path,
        action="append",
        dest="model_dirs",
        help="a prepared model folder (avs_profile.json + tokenizer files) to serve (repeatable; at least one)",
    )
    parser.add_argument(
        "--deployment", type=Path, help="the AVS's deployment JSON: certificates must be for its chain and task manager"
    )
    parser.add_argument(
        "--rpc-url",
        help="an RPC endpoint of the deployment's chain: certificates must also be certified on-chain "
        "(needs --deployment; or AVS_GATEWAY_RPC_URL, which keeps an API key off the command line)",
    )
    parser.add_argument("--quorum", type=int, action="append", dest="quorums", help="quorum number (repeatable)")
    parser.add_argument("--threshold-bps", type=int, help="stake share wanted per quorum (0: the aggregator's)")
    parser.add_argument("--default-max-tokens", type=int, help="max_tokens when a request omits it (128)")
    parser.add_argument("--default-temperature", type=float, help="temperature when a request omits it (1.0)")
    parser.add_argument("--max-body-bytes", type=int, help="largest request body accepted (1 MiB)")
    parser.add_argument("--request-timeout", type=float, dest="request_timeout_seconds", help="seconds to certify")
    parser.add_argument("--max-in-flight", type=int, help="completions followed at once, in all (192)")
    parser.add_argument("--max-in-flight-per-key", type=int, help="completions in flight per API key (32)")
    parser.add_argument(
        "--rate-limit-per-minute", type=int, help="completions started per minute per API key (without keys: in all; 0)"
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        help="a web page origin allowed to call from a browser, as https://app.example, or * for any (repeatable)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        help="a Host name answered besides localhost by a keyless gateway on a loopback address (repeatable)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        dest="shutdown_grace_seconds",
        help="seconds a stop waits for the completions in flight to be answered (30)",
    )
    parser.add_argument("--log-level", help="INFO, DEBUG, ...")
    return parser


def build_service(
    client: AggregatorClient, config: GatewayConfig, metrics: GatewayMetrics | None = None
) -> GatewayService:
    """The service with its models' tokenizers and a certificate check bound to the deployment, if
    given, and to its chain with ``rpc_url``."""
    domain = None
    chain: ChainCheck | None = None
    if config.deployment is not None:
        deployment = load_deployment(config.deployment)
        domain = Domain(deployment.chain_id, deployment.task_manager)
        if config.rpc_url is not None:
            chain = connect_chain_check(config.rpc_url.get_secret_value(), deployment, config.threshold_bps)
    checker = build_certificate_checker(domain, config.threshold_bps, chain)
    return GatewayService(client, config, load_local_models(config.model_dirs), checker, metrics=metrics)


def run(args: argparse.Namespace) -> int:
    config = load_config(**vars(args))
    configure_json_logging(config.log_level)
    stopped = threading.Event()
    with AggregatorClient(config.aggregator) as client:
        metrics, metrics_server, metrics_url = None, None, None
        if config.metrics_listen is not None:
            metrics = GatewayMetrics(CollectorRegistry())
            host, port = parse_host_port(config.metrics_listen)
            metrics_server, _ = start_metrics_server(host, port, metrics.registry)
            metrics_url = f"http://{config.metrics_listen.rpartition(':')[0]}:{metrics_server.server_port}/metrics"
        server = GatewayServer(build_service(client, config, metrics), config, metrics)

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            logger.info("stopping", extra={"signal": signal.Signals(signum).name})
            stopped.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        server.start()
        url = f"http://{server.host}:{server.port}/v1"
        auth = bool(config.get_api_keys())
        logger.info("listening", extra={"url": url, "aggregator": config.aggregator, "auth": auth})
        ready = {"event": "ready", "url": url, "aggregator": config.aggregator}
        if metrics_url is not None:
            ready["metrics"] = metrics_url
        print(json.dumps(ready), flush=True)
        while not stopped.wait(1.0):
            pass
        server.stop(config.shutdown_grace_seconds)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (AvsError, ValueError, OSError) as exc:
        print(f"avs-gateway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
