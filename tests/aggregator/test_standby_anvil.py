"""Integration: two aggregator daemons (``AggregatorApp``) on one PostgreSQL database, against anvil,
the deployed contracts and three in-process operators. The lease holder leads and certifies; the
standby serves the reads and refuses intake naming the leader; when the leader loses its database
the standby takes over after the lease expires and finishes the leader's pending requests; a clean
stop hands the lease back at once. Every request is certified exactly once on-chain."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import grpc
import pytest
from sqlalchemy.exc import OperationalError

from avs.client import AggregatorClient, verify_certificate
from avs.merkle import compute_merkle_tree
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs_aggregator.app import AggregatorApp, LeaderOnlySender, Role
from avs_aggregator.challenger.chain import AggregatorLeafSource
from avs_aggregator.store import BatchState, load_hex_list
from tests.aggregator.conftest import create_postgres_database
from tests.aggregator.test_integration_anvil import REQUESTER, Devnet, devnet, start_aggregator, submit

__all__ = ["devnet"]  # the module-scoped fixture (anvil, contracts, operators), used here by name

LEASE_SECONDS, RENEW_SECONDS = 6.0, 0.4  # a leader paused for 5.6 s (a loaded CI machine) still renews in time


def start(devnet: Devnet, url: str, holder: str) -> AggregatorApp:
    leader = {"lease_seconds": LEASE_SECONDS, "renew_seconds": RENEW_SECONDS, "holder_id": holder}
    return start_aggregator(devnet, url, leader=leader)


def get_health(app: AggregatorApp, path: str = "/health") -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.ports.health}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def refusal(call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    return str(info.value.details())


def test_standby_serves_reads_refuses_intake_and_takes_over(
    devnet: Devnet, postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = create_postgres_database(postgres_server)
    a = start(devnet, url, "aggregator-a")
    b = start(devnet, url, "aggregator-b")
    try:
        assert (a.role, b.role) == (Role.LEADER, Role.STANDBY)
        for app in (a, b):  # every transaction of the daemon's account goes through the leader fence
            client = app.pipeline.writer.client  # type: ignore[attr-defined]
            assert isinstance(client.sender, LeaderOnlySender)
            assert app.keeper is None or app.keeper.send == client.transact
            assert app.pipeline.reporter is None or app.pipeline.reporter.faults.avs is client  # type: ignore[attr-defined]
        assert get_health(a) == (200, {"status": "ok", "role": "leader", "holder": "aggregator-a"})
        assert get_health(b) == (200, {"status": "ok", "role": "standby", "holder": "aggregator-b"})
        assert get_health(a, "/health/leader")[0] == 200
        assert get_health(b, "/health/leader")[0] == 503
        assert [app.registry.get_sample_value("avs_aggregator_leader") for app in (a, b)] == [1.0, 0.0]
        to_a, to_b = AggregatorClient(f"127.0.0.1:{a.ports.grpc}"), AggregatorClient(f"127.0.0.1:{b.ports.grpc}")
        with to_a, to_b:
            # the standby refuses intake, naming the leader, and serves the reads
            assert "the leader is aggregator-a" in refusal(lambda: submit(to_b, "to the standby", nonce=1))
            message = [{"role": "user", "content": "x"}]
            assert "aggregator-a" in refusal(lambda: to_b.prepare(message, model="tiny", requester=REQUESTER))
            assert to_b.list_models() == {"tiny": devnet.model_id}
            first = submit(to_a, "led by a", nonce=2)
            status = to_b.wait(first, timeout=60)  # WatchStatus on the standby, from the shared database
            assert verify_certificate(status.certificate).ok
            assert first in to_b.get_batch(status.batch_index).request_hashes
            watched = AggregatorLeafSource(to_b).get_batch_leaves(status.batch_index)  # the challenger's view
            assert compute_merkle_tree(watched).root == bytes(status.certificate.batch_header.leaves_root)

            # a stops forming batches (its requests wait ACCEPTED), then loses its database
            monkeypatch.setattr(a.pipeline, "form_batches", lambda force=False: [])
            pending = [submit(to_a, f"pending {i}", nonce=10 + i) for i in range(2)]
            wait_for(lambda: all(to_b.get_status(h).state == ag.REQUEST_STATE_ACCEPTED for h in pending))

            def unreachable() -> bool:
                raise OperationalError("SELECT", {}, ConnectionError("the database is unreachable"))

            monkeypatch.setattr(a.elector.lease, "try_acquire", unreachable)  # type: ignore[union-attr]
            wait_for(lambda: a.role is Role.STANDBY)
            assert a.runner is None and not a.is_leader()
            assert get_health(a, "/health/leader")[0] == 503
            # b takes the expired lease in a new term and certifies a's pending requests
            wait_for(lambda: b.role is Role.LEADER, timeout=LEASE_SECONDS + 10)
            assert [app.registry.get_sample_value("avs_aggregator_leader") for app in (a, b)] == [0.0, 1.0]
            assert b.elector is not None and b.elector.lease.term == 2
            statuses = [to_a.wait(h, timeout=60) for h in pending]  # read through the demoted one
            assert all(verify_certificate(s.certificate).ok for s in statuses)
            assert "the leader is aggregator-b (term 2)" in refusal(lambda: submit(to_a, "to a", nonce=3))

            # a's database is back; a clean stop of b releases the lease: a leads again at its next
            # try (long before the lease would expire), with a new runner
            monkeypatch.undo()
            stopping = time.monotonic()
            b.stop(1)
            wait_for(lambda: a.role is Role.LEADER, timeout=LEASE_SECONDS + 10)
            # an expiry instead of a release would take at least LEASE - RENEW after b's last renewal
            assert time.monotonic() - stopping < LEASE_SECONDS - RENEW_SECONDS
            assert a.elector is not None and a.elector.lease.term == 3
            last = submit(to_a, "after the hand-over", nonce=20)
            assert verify_certificate(to_a.wait(last, timeout=60).certificate).ok

        # each request certified exactly once: in one certified batch, and that batch once on-chain
        hashes = [first, *pending, last]
        certified = a.store.list_batches([BatchState.CERTIFIED])
        leaves = [h for batch in certified for h in load_hex_list(batch.request_hashes)]
        assert sorted(leaves) == sorted(hashes)
        event = devnet.client.task_manager.events.BatchCertified
        for batch in certified:
            logs = event.get_logs(from_block=0, argument_filters={"batchIndex": batch.batch_index})
            assert len(logs) == 1, batch.batch_index
    finally:
        a.stop(1)
        b.stop(1)
