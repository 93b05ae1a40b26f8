"""A real ``avs-aggregator`` process killed with SIGKILL from outside, at each stage a client can
see, then started again on the same database: every request certified exactly once.

The chain is a real anvil with the deployed contracts and three fake gRPC operators registered
with real BLS keys (``chain_fixture.py``); the operators answer after a delay so that each stage
lasts long enough to be seen through ``GetStatus``. A kill from outside lands "at or after" the
stage it waits for; ``test_crash_stages.py`` hits each stage exactly with in-process injection.

This test found a real crash: two worker threads loading the mcl BLS backend at once (two
``mclBn_init`` calls) killed the process with SIGSEGV or SIGFPE right after its first requests.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from avs import keystore
from avs.client import AggregatorClient, verify_certificate, verify_on_chain
from avs.devnet import ANVIL_KEY_0, ServiceProcess, get_free_port, wait_http_ok
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from tests.aggregator.fakes import MODEL_ID, make_envelope
from tests.resilience.chain_fixture import Chain, start_chain

PASSWORD = "process-kill-test"
REQUESTS = 3
OPERATOR_DELAY_SECONDS = 0.8


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with start_chain(tmp_path_factory.mktemp("process-kill-chain")) as started:
        for server in started.servers:
            server.servicer.delay = OPERATOR_DELAY_SECONDS
        yield started


class AggregatorProcess:
    """The ``avs-aggregator`` binary on a fixed config and database, restartable."""

    def __init__(self, chain: Chain, home: Path) -> None:
        self.home = home
        key_file = home / "aggregator.ecdsa.json"
        keystore.save_ecdsa_keystore(key_file, bytes.fromhex(ANVIL_KEY_0[2:]), PASSWORD, 1 << 12)
        self.ports = {name: get_free_port() for name in ("grpc", "metrics", "health")}
        config = {
            "chain": {"rpc_url": chain.anvil.url, "deployment_file": str(chain.deployment_file)},
            "keys": {"ecdsa_keystore": str(key_file)},
            "models": [{"name": "fake", "model_id": "0x" + MODEL_ID.hex()}],
            "database_url": f"sqlite:///{home / 'aggregator.sqlite'}",
            "grpc_listen": f"127.0.0.1:{self.ports['grpc']}",
            "metrics_listen": f"127.0.0.1:{self.ports['metrics']}",
            "health_listen": f"127.0.0.1:{self.ports['health']}",
            "batch": {"max_size": REQUESTS, "max_latency_seconds": 0.5},
            "workers": 4,
        }
        self.config_path = home / "aggregator.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.process: ServiceProcess | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def start(self) -> None:
        self.starts += 1
        logs = self.home / f"run-{self.starts}"
        logs.mkdir()
        env = {**os.environ, "AGGREGATOR_ECDSA_KEY_PASSWORD": PASSWORD, "HF_HUB_OFFLINE": "1"}
        env["PYTHONFAULTHANDLER"] = "1"  # a native crash prints every thread's Python stack
        args = [sys.executable, "-m", "avs_aggregator.cli", "run", "--config", str(self.config_path)]
        self.process = ServiceProcess("aggregator", args, env, logs)
        wait_http_ok(f"http://127.0.0.1:{self.ports['health']}/health", self.process)

    def kill(self) -> None:
        assert self.process is not None and self.process.process.poll() is None
        os.kill(self.process.process.pid, signal.SIGKILL)
        self.process.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log_tail(self) -> str:
        assert self.process is not None
        status = self.process.process.poll()
        stderr = self.process.log_path.read_text()
        crash = stderr.partition("Fatal Python")[2]
        return f"exit status {status}\n" + (f"Fatal Python{crash[:3000]}" if crash else stderr[-3000:])


def submit_requests(client: AggregatorClient, tag: str) -> list[bytes]:
    hashes = []
    for i in range(REQUESTS):
        envelope = make_envelope(10_000 + i, f"{tag} {i}")
        request = envelope.request
        hashes.append(
            client.submit(
                envelope.messages,
                requester=request.requester,
                model="fake",
                prompt_hash=request.prompt_hash,
                nonce=request.nonce,
                max_tokens=request.max_tokens,
            )
        )
    return hashes


def wait_for_state(client: AggregatorClient, request_hash: bytes, state: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get_status(request_hash).state < state:
        assert time.monotonic() < deadline, f"never reached {ag.RequestState.Name(state)}"  # type: ignore[arg-type]
        time.sleep(0.02)


def wait_all_certified(client: AggregatorClient, hashes: list[bytes], timeout: float = 120) -> list[ag.RequestStatus]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = [client.get_status(h) for h in hashes]
        failed = [s.error for s in statuses if s.state == ag.REQUEST_STATE_FAILED]
        assert not failed, failed
        if all(s.state == ag.REQUEST_STATE_CERTIFIED for s in statuses):
            return statuses
        assert time.monotonic() < deadline, [ag.RequestState.Name(s.state) for s in statuses]
        time.sleep(0.2)


STAGES = {
    "received": ag.REQUEST_STATE_RECEIVED,
    "generating": ag.REQUEST_STATE_GENERATING,
    "verifying": ag.REQUEST_STATE_VERIFYING,
    "accepted": ag.REQUEST_STATE_ACCEPTED,
    "batched": ag.REQUEST_STATE_BATCHED,
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_at_stage_then_restart_certifies_every_request_once(chain: Chain, tmp_path: Path, stage: str) -> None:
    aggregator = AggregatorProcess(chain, tmp_path)
    aggregator.start()
    try:
        with AggregatorClient(aggregator.target, timeout=10) as client:
            hashes = submit_requests(client, f"kill at {stage}")
            wait_for_state(client, hashes[0], STAGES[stage])
            aggregator.kill()
            with pytest.raises(grpc.RpcError):  # really gone
                client.get_status(hashes[0])
        aggregator.start()
        with AggregatorClient(aggregator.target, timeout=10) as client:
            statuses = wait_all_certified(client, hashes)
    except BaseException:
        print(aggregator.log_tail())
        raise
    finally:
        aggregator.stop()
    assert_certified_once(chain, statuses)


def test_two_kills_in_a_row_while_signing_then_restart(chain: Chain, tmp_path: Path) -> None:
    aggregator = AggregatorProcess(chain, tmp_path)
    aggregator.start()
    try:
        with AggregatorClient(aggregator.target, timeout=10) as client:
            hashes = submit_requests(client, "two kills")
            wait_for_state(client, hashes[0], ag.REQUEST_STATE_VERIFYING)
            aggregator.kill()
        aggregator.start()
        with AggregatorClient(aggregator.target, timeout=10) as client:
            wait_for_state(client, hashes[0], ag.REQUEST_STATE_BATCHED)
            aggregator.kill()
        aggregator.start()
        with AggregatorClient(aggregator.target, timeout=10) as client:
            statuses = wait_all_certified(client, hashes)
    except BaseException:
        print(aggregator.log_tail())
        raise
    finally:
        aggregator.stop()
    assert_certified_once(chain, statuses)


def assert_certified_once(chain: Chain, statuses: list[ag.RequestStatus]) -> None:
    """Each request's batch has exactly one BatchCertified event; its certificate verifies offline
    and with verifyLeaf on-chain."""
    certified = Counter(chain.certified_logs())
    for status in statuses:
        assert certified[status.batch_index] == 1, (status.batch_index, certified)
        check = verify_certificate(status.certificate)
        assert check.ok, check.problems
        assert verify_on_chain(status.certificate, chain.client.task_manager)
