"""Operators down, slow, answering garbage or bad signatures, through the real gRPC caller.

The pipeline runs with the real ``GrpcOperatorCaller`` against fake operators on loopback gRPC
(``grpc_operators.py``: real protobuf, real BLS signatures) and the in-memory chain of
``tests.aggregator.fakes`` (which checks the aggregate signature like the contract). One of four
equally staked operators misbehaves in every call (as primary, verifier and batch signer): every
request is still certified, once, and the faulty operator is a non-signer. With half the stake
faulty, requests fail with a clear reason and nothing is certified.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from avs.messages import compute_request_hash
from avs.types import RequestHash
from avs_aggregator.operators import GrpcOperatorCaller
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.ports import OperatorSet
from avs_aggregator.protocol import select_primary
from avs_aggregator.store import BatchState, RequestState, Store
from tests.aggregator.fakes import DOMAIN, FakeNetwork, make_envelope
from tests.resilience.grpc_operators import FakeOperatorServer, FakeOperatorServicer

# Seconds: the generate, verify and sign_batch deadlines. Only a run with a "slow" operator needs one
# that cuts an answer; every other run gets one that no honest answer misses, however long CI pauses
# this process (the faults there answer at once: refused, garbage, bad signatures).
DEADLINE = 30.0
SLOW_DEADLINE = 6.0  # an honest answer held back by a pause of up to ~6 s (a loaded CI machine) still counts
SLOW_SECONDS = 60.0  # "slow" answers long after it (stop() ends its wait)


def settings(deadline: float) -> PipelineSettings:
    return PipelineSettings(
        batch_max_size=8,
        batch_max_latency=0.0,
        workers=8,
        generate_timeout=deadline,
        verify_timeout=deadline,
        sign_timeout=deadline,
        sign_backoff=0.0,  # a signing round short of an honest signer is retried at once, within run_until_idle
    )


REQUESTS = 5


class GrpcNetwork(FakeNetwork):
    """``FakeNetwork``'s chain and stakes, with each operator's socket pointing at a gRPC server."""

    def __init__(self, behaviours: list[str]) -> None:
        super().__init__([{0: 25}] * len(behaviours))
        self.servers = [
            FakeOperatorServer(o.keys, DOMAIN, b, slow_seconds=SLOW_SECONDS)
            for o, b in zip(self.operators, behaviours, strict=True)
        ]
        for server, behaviour in zip(self.servers, behaviours, strict=True):
            if behaviour == "down":
                server.stop()

    def get_operator_set(self, reference_block: int) -> OperatorSet:
        base = super().get_operator_set(reference_block)
        sockets = {o.keys.operator_id: s.socket for o, s in zip(self.operators, self.servers, strict=True)}
        operators = tuple(dataclasses.replace(o, socket=sockets[o.operator_id]) for o in base.operators)
        return dataclasses.replace(base, operators=operators)

    def close(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def make_network() -> Iterator[list[GrpcNetwork]]:
    networks: list[GrpcNetwork] = []
    yield networks
    for network in networks:
        network.close()


def run(network: GrpcNetwork, db: Path, deadline: float = DEADLINE) -> tuple[Pipeline, list[RequestHash], float]:
    caller = GrpcOperatorCaller(DOMAIN, bytes(Account.create().key))
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{db}"), network, caller, network, settings(deadline))
    hashes = [pipeline.submit(make_envelope(i, f"operator faults {i}")) for i in range(REQUESTS)]
    started = time.monotonic()
    pipeline.run_until_idle()
    elapsed = time.monotonic() - started
    pipeline.close()
    caller.close()
    return pipeline, hashes, elapsed


@pytest.mark.parametrize("behaviour", ["down", "slow", "garbage", "garbage_bytes", "bad_signature"])
def test_one_faulty_operator_loses_nothing(make_network: list[GrpcNetwork], tmp_path: Path, behaviour: str) -> None:
    network = GrpcNetwork(["honest", "honest", "honest", behaviour])
    make_network.append(network)
    faulty = network.operators[3].keys.operator_id
    pipeline, hashes, elapsed = run(
        network, tmp_path / "agg.sqlite", SLOW_DEADLINE if behaviour == "slow" else DEADLINE
    )
    rows = [pipeline.store.get_request(h) for h in hashes]
    assert all(r is not None and r.state == RequestState.CERTIFIED for r in rows), [r and r.error for r in rows]
    operator_set = network.get_operator_set(network.block - 1)
    for row in rows:
        assert row is not None
        first_primary = select_primary(operator_set, b"\x00", row.request_hash, 0).operator_id
        assert row.attempt == (1 if first_primary == faulty else 0)  # a faulty primary is replaced once
        assert row.primary_id != faulty
    certified = pipeline.store.list_batches([BatchState.CERTIFIED])
    assert sorted(network.certify_calls) == sorted({b.batch_index for b in certified})  # each sent once
    for batch in certified:
        certificate = json.loads(batch.certificate or "{}")
        assert certificate["non_signer_ids"] == ["0x" + faulty.hex()]
    if behaviour != "down":
        assert network.servers[3].servicer.calls  # it was really asked
    # The deadlines cut every slow call (about 7 of them, 3 s each): waiting out even one takes 60 s.
    assert elapsed < SLOW_SECONDS


@pytest.mark.parametrize("behaviour", ["down", "slow", "bad_signature"])
def test_half_the_stake_faulty_fails_clearly_and_certifies_nothing(
    make_network: list[GrpcNetwork], tmp_path: Path, behaviour: str
) -> None:
    network = GrpcNetwork(["honest", "honest", behaviour, behaviour])
    make_network.append(network)
    # A late honest answer only makes these fail sooner: a short deadline keeps the slow run short.
    pipeline, hashes, _ = run(network, tmp_path / "agg.sqlite", 1.5 if behaviour == "slow" else DEADLINE)
    for request_hash in hashes:
        row = pipeline.store.get_request(request_hash)
        assert row is not None and row.state == RequestState.FAILED
        assert "stake" in (row.error or "") or "attempts" in (row.error or ""), row.error
    assert network.certify_calls == []


def test_operator_back_up_after_an_outage_is_used_again(make_network: list[GrpcNetwork], tmp_path: Path) -> None:
    """Operators down for the first requests, restarted on new ports (a new socket on-chain): later
    requests are certified with every operator signing."""
    network = GrpcNetwork(["honest", "honest", "down", "down"])
    make_network.append(network)
    first, first_hashes, _ = run(network, tmp_path / "first.sqlite")
    assert {first.store.get_request(h).state for h in first_hashes} == {RequestState.FAILED}  # type: ignore[union-attr]
    for i in (2, 3):
        network.servers[i] = FakeOperatorServer(network.operators[i].keys, DOMAIN)
    second, _, _ = run(network, tmp_path / "second.sqlite")
    assert {second.store.get_request(h).state for h in first_hashes} == {RequestState.CERTIFIED}  # type: ignore[union-attr]
    [batch] = second.store.list_batches([BatchState.CERTIFIED])
    assert json.loads(batch.certificate or "{}")["non_signer_ids"] == []
    assert compute_request_hash(DOMAIN, make_envelope(0, "operator faults 0").request) in first_hashes


def make_late_once(servicer: FakeOperatorServicer, method: str, seconds: float) -> None:
    """The servicer's first ``method`` call answers ``seconds`` late; every other call at once."""
    late = threading.Event()

    def enter(called: str) -> None:
        FakeOperatorServicer._enter(servicer, called)
        if called == method and not late.is_set():
            late.set()
            servicer.stopped.wait(seconds)

    servicer._enter = enter  # type: ignore[method-assign,assignment]


def test_verifiers_late_once_are_asked_again_and_the_requests_certified(
    make_network: list[GrpcNetwork], tmp_path: Path
) -> None:
    """Two honest operators miss the deadline on their first Verify (a cold start, a pause) and one
    is down: short of the threshold after round 1, certified after round 2, which asks only those."""
    network = GrpcNetwork(["honest", "honest", "honest", "down"])
    make_network.append(network)
    for server in network.servers[1:3]:
        make_late_once(server.servicer, "verify", SLOW_DEADLINE + 2)
    pipeline, hashes, _ = run(network, tmp_path / "agg.sqlite", SLOW_DEADLINE)
    rows = [pipeline.store.get_request(h) for h in hashes]
    assert all(r is not None and r.state == RequestState.CERTIFIED for r in rows), [r and r.error for r in rows]
    assert max(r.verify_rounds for r in rows if r is not None) == 1  # some needed the second round, none a third
