"""The aggregator's stake keeper on a real anvil with the real contracts: a quorum whose stakes went
stale (no ``updateOperatorsForQuorum`` within the registry's ``maxStakeAgeBlocks``) refuses
certificates with ``StaleStakes``; the keeper in the leader's batch loop refreshes it at start and
before it goes stale again, and certificates go through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from avs.monitoring.chain_exporter import Web3ChainStateReader
from avs_aggregator.app import PipelineRunner
from avs_aggregator.chain import Web3OperatorSetReader
from avs_aggregator.keeper import StakeKeeper
from avs_aggregator.store import BatchState
from tests.resilience.chain_fixture import Chain, make_pipeline, start_chain
from tests.resilience.test_chain_faults import all_certified, submit_all, wait_until

MAX_STAKE_AGE = 20  # blocks; the look-ahead stays the default (the core's DEALLOCATION_DELAY)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with start_chain(tmp_path_factory.mktemp("keeper-chain"), {"MAX_STAKE_AGE": str(MAX_STAKE_AGE)}) as started:
        yield started


def _last_refresh(chain: Chain) -> int:
    return int(chain.client.registry.functions.quorumUpdateBlockNumber(0).call())


def _make_stale(chain: Chain) -> None:
    chain.anvil.mine(MAX_STAKE_AGE + 2)
    head = chain.anvil.w3.eth.block_number
    assert head - 1 > _last_refresh(chain) + MAX_STAKE_AGE  # a certificate at head - 1 is refused


def test_deployment_sets_the_stake_freshness(chain: Chain) -> None:
    registry = chain.client.registry.functions
    assert registry.maxStakeAgeBlocks().call() == MAX_STAKE_AGE
    assert registry.stakeLookAheadBlocks().call() == 100_800  # the core's DEALLOCATION_DELAY


def test_stale_quorum_refuses_certificates(chain: Chain, tmp_path: Path) -> None:
    _make_stale(chain)
    pipeline, caller = make_pipeline(chain, tmp_path / "agg.sqlite")
    try:
        submit_all(pipeline, "stale", 2)
        pipeline.run_until_idle(max_rounds=8)
        errors = [b.error or "" for b in pipeline.store.list_batches([BatchState.ABANDONED])]
        assert errors and all("StaleStakes" in e for e in errors), errors
        assert chain.certified_logs() == []
    finally:
        pipeline.close()
        caller.close()


def test_keeper_refreshes_a_stale_quorum_and_certificates_go_through(chain: Chain, tmp_path: Path) -> None:
    _make_stale(chain)
    stale = _last_refresh(chain)
    pipeline, caller = make_pipeline(chain, tmp_path / "agg.sqlite")
    keeper = StakeKeeper(chain.client, pipeline.reader, pipeline.writer.client.transact)  # type: ignore[attr-defined]
    runner = PipelineRunner(pipeline, 4, keeper)
    try:
        hashes = submit_all(pipeline, "fresh", 3)
        runner.start()  # the first batch-loop tick refreshes the stale quorum
        # blocks keep coming (anvil mines only on transactions): a reference block after the refresh
        wait_until(lambda: all_certified(pipeline, hashes), 60, tick=lambda: chain.rpc("evm_mine"))
        refreshed = _last_refresh(chain)
        assert refreshed > stale
        for h in hashes:
            request = pipeline.store.get_request(h)
            assert request is not None and request.batch_index is not None
            batch = pipeline.store.get_batch(request.batch_index)
            assert batch is not None
            at, age = chain.client.registry.functions.getStakeFreshness(0, batch.reference_block).call()
            assert stale < at <= batch.reference_block <= at + age  # certified on a keeper refresh
    finally:
        runner.stop()
        pipeline.close()
        caller.close()


def test_keeper_refreshes_at_half_the_stake_age(chain: Chain, tmp_path: Path) -> None:
    pipeline, caller = make_pipeline(chain, tmp_path / "agg.sqlite")
    keeper = StakeKeeper(chain.client, pipeline.reader, pipeline.writer.client.transact)  # type: ignore[attr-defined]
    try:
        if keeper.tick():  # stale or due after the previous tests: refreshed now
            assert keeper.tick() == []
        last = _last_refresh(chain)
        chain.anvil.mine(max(0, last + MAX_STAKE_AGE // 2 - 1 - chain.anvil.w3.eth.block_number))
        assert keeper.tick() == []  # not due yet
        chain.anvil.mine(1)
        assert keeper.tick() == [0]
        assert _last_refresh(chain) > last
        members = keeper.get_members(0, chain.anvil.w3.eth.block_number)
        assert len(members) == 3 and members == sorted(members, key=lambda a: int(a, 16))
    finally:
        pipeline.close()
        caller.close()


def test_keeper_ejects_the_members_below_a_raised_minimum(chain: Chain) -> None:
    """Governance raises quorum 0's minimum above two members' stake (30 of 40/30/30 tokens): the
    keeper's next refresh records them at zero and ejects them, freeing their places; the staked
    member stays. (The chain is reverted afterwards: the module's other tests keep three members.)"""
    snapshot = chain.rpc("evm_snapshot")
    client = chain.client
    registry = client.registry.functions
    keeper = StakeKeeper(client, Web3OperatorSetReader(client), client.transact, eject_understaked=True)
    try:
        max_count, _ = registry.quorumConfig(0).call()
        client.transact(registry.setQuorumConfig(0, (max_count, 35 * 10**18)))
        chain.anvil.mine(MAX_STAKE_AGE)  # the quorum is due for a refresh
        before = chain.anvil.w3.eth.block_number
        assert len(keeper.get_members(0, before)) == 3
        assert keeper.tick() == [0]
        head = chain.anvil.w3.eth.block_number
        assert registry.operatorCount(0).call() == 1
        (staked,) = keeper.operators.get_operator_set(head).operators
        assert staked.stakes == {0: 40 * 10**18}
        ejected = client.registry.events.OperatorEjected.get_logs(from_block=before + 1, to_block=head)
        assert sorted(e["args"]["operator"] for e in ejected) == sorted(
            set(keeper.get_members(0, before)) - {staked.address}
        )
        assert keeper.eject(0, head) == []  # nobody left below the minimum
        exported = Web3ChainStateReader(chain.anvil.w3, chain.deployment).get_event_totals(before + 1, head)
        assert exported.ejections == {0: 2}  # what the chain exporter counts
    finally:
        chain.rpc("evm_revert", snapshot)
