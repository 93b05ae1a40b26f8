"""The chain side breaking under a running pipeline: the RPC endpoint down for a while, a dropped
transaction, and reorgs before and after certification, on a real anvil with the real contracts.

Operators are fake gRPC servers with real BLS keys registered on-chain (``chain_fixture.py``); the
pipeline is the real one with the real web3 reader, writer and ``TransactionSender``, driven by the
daemon's ``PipelineRunner`` (which retries a failed step). "Certified once" is read from the
chain: one ``BatchCertified`` event per batch index, and every request in a certified batch.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hexbytes import HexBytes

from avs.chain.client import Web3AvsClient
from avs_aggregator.app import PipelineRunner
from avs_aggregator.pipeline import Pipeline
from avs_aggregator.store import BatchState, RequestState
from avs_aggregator.txsender import SenderSettings, TransactionFailedError, TransactionSender
from tests.aggregator.fakes import make_envelope
from tests.resilience.chain_fixture import AGGREGATOR, Chain, PausableProxy, make_pipeline, start_chain

MODEL_ENVELOPES = 6


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with start_chain(tmp_path_factory.mktemp("resilience-chain")) as started:
        yield started


def submit_all(pipeline: Pipeline, tag: str, count: int = MODEL_ENVELOPES) -> list[bytes]:
    return [pipeline.submit(make_envelope(i, f"{tag} {i}")) for i in range(count)]


def wait_until(condition: Callable[[], bool], timeout: float, tick: Callable[[], object] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        tick()
        time.sleep(0.05)


def all_certified(pipeline: Pipeline, hashes: list[bytes]) -> bool:
    rows = [pipeline.store.get_request(h) for h in hashes]
    failed = [r.error for r in rows if r is not None and r.state == RequestState.FAILED]
    assert not failed, failed
    return all(r is not None and r.state == RequestState.CERTIFIED for r in rows)


def assert_certified_once_on_chain(chain: Chain, pipeline: Pipeline, hashes: list[bytes]) -> None:
    logs = Counter(chain.certified_logs())
    batches = {pipeline.store.get_request(h).batch_index for h in hashes}  # type: ignore[union-attr]
    for index in batches:
        assert index is not None and logs[index] == 1, (index, logs)
        assert chain.client.get_certified_block(index) > 0
        batch = pipeline.store.get_batch(index)
        assert batch is not None and batch.state == BatchState.CERTIFIED


def test_rpc_endpoint_down_for_a_while(chain: Chain, tmp_path: Path) -> None:
    proxy = PausableProxy(chain.anvil.port)
    pipeline, caller = make_pipeline(chain, tmp_path / "agg.sqlite", proxy.url)
    runner = PipelineRunner(pipeline, 4)
    try:
        hashes = submit_all(pipeline, "rpc outage")
        runner.start()
        # first outage: while requests are picked and verified (reference block reads fail)
        proxy.pause()
        time.sleep(2.0)
        proxy.resume()
        # second outage: as soon as a batch exists (signing / certifyBatch through the sender)
        wait_until(lambda: bool(pipeline.store.list_batches(list(BatchState))), 60)
        proxy.pause()
        time.sleep(3.0)
        proxy.resume()
        wait_until(lambda: all_certified(pipeline, hashes), 90)
        assert proxy.refused > 0  # the outage was real
        assert_certified_once_on_chain(chain, pipeline, hashes)
    finally:
        runner.stop()
        pipeline.close()
        caller.close()
        proxy.close()


def test_dropped_transaction_is_resent_with_higher_fees(
    chain: Chain, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w3 = chain.anvil.w3
    sender = SenderSettings(receipt_timeout=1.0, poll_seconds=0.1)
    pipeline, caller = make_pipeline(chain, tmp_path / "agg.sqlite", sender=sender)
    runner = PipelineRunner(pipeline, 4)
    chain.rpc("evm_setAutomine", False)
    try:
        hashes = submit_all(pipeline, "dropped tx", 3)
        runner.start()
        address = AGGREGATOR.address
        wait_until(lambda: w3.eth.get_transaction_count(address, "pending") > w3.eth.get_transaction_count(address), 60)
        chain.rpc("anvil_dropAllTransactions")  # the certifyBatch transaction vanishes from the mempool
        assert w3.eth.get_transaction_count(address, "pending") == w3.eth.get_transaction_count(address)
        time.sleep(1.5)  # no receipt within receipt_timeout: the sender re-sends the nonce, fees bumped
        wait_until(lambda: all_certified(pipeline, hashes), 60, tick=lambda: chain.rpc("evm_mine"))
    finally:
        chain.rpc("evm_setAutomine", True)
        runner.stop()
        pipeline.close()
        caller.close()
    assert "bumping fees" in caplog.text
    assert_certified_once_on_chain(chain, pipeline, hashes)


def test_reorg_within_the_confirmation_depth_is_recovered(
    chain: Chain, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """certifyBatch is mined, then the block is reorged away before ``confirmations`` blocks: the
    sender re-broadcasts, the batch is certified once on the surviving chain."""
    sender = SenderSettings(receipt_timeout=5.0, poll_seconds=0.05, confirmations=3)
    pipeline, caller = make_pipeline(chain, tmp_path / "agg.sqlite", sender=sender)
    runner = PipelineRunner(pipeline, 4)
    snapshot = chain.rpc("evm_snapshot")
    before = len(chain.certified_logs())  # earlier tests certified batches on this chain
    try:
        hashes = submit_all(pipeline, "shallow reorg", 3)
        runner.start()
        wait_until(lambda: len(chain.certified_logs()) > before, 60)
        batch = pipeline.store.list_batches(list(BatchState))[0]
        # mined, not confirmed: the sender waits for the receipt, the pipeline for the confirmations
        assert batch.state in (BatchState.SUBMITTING, BatchState.CERTIFIED) and batch.confirmed_block is None
        chain.rpc("evm_revert", snapshot)  # the block holding certifyBatch is gone
        assert len(chain.certified_logs()) == before
        wait_until(lambda: all_certified(pipeline, hashes), 60, tick=lambda: chain.rpc("evm_mine"))
    finally:
        runner.stop()
        pipeline.close()
        caller.close()
    reorged = ("dropped by a reorg", "bumping fees", "certification removed by a reorg")
    assert any(line in caplog.text for line in reorged), caplog.text[-2000:]
    assert_certified_once_on_chain(chain, pipeline, hashes)


def test_a_nonce_gap_left_by_a_reorg_is_closed_by_the_next_send(chain: Chain) -> None:
    """A reorg drops a mined transaction of ours and the node does not put it back: the sender's next
    nonce is ahead of the chain's. The send stuck behind that gap fails after its fee bumps and lets
    the node's pending count decide again, so the next send is mined (and the stuck one after it)."""
    settings = SenderSettings(receipt_timeout=0.5, poll_seconds=0.05, max_bumps=1)
    sender = TransactionSender(chain.client, AGGREGATOR, settings)
    update = chain.client.registry.functions.updateOperators([])
    snapshot = chain.rpc("evm_snapshot")
    sender.send(update)
    chain.rpc("evm_revert", snapshot)  # the block with it is gone, and so is the transaction
    with pytest.raises(TransactionFailedError, match="not mined"):
        sender.send(update)
    sent = sender.send(update)
    assert chain.anvil.w3.eth.get_transaction_receipt(HexBytes(sent.tx_hash))["status"] == 1


def test_a_client_with_a_sender_sends_its_own_transactions_through_it(chain: Chain) -> None:
    """The challenger's client: its own transactions (challenge, resolve, slash) go through the
    TransactionSender (fee bumps); a call for another account still goes the plain way."""

    class Counting(TransactionSender):
        sent = 0

        def send(self, fn: Any, *, confirm: bool = True) -> Any:
            Counting.sent += 1
            return super().send(fn, confirm=confirm)

    client = Web3AvsClient(chain.anvil.w3, chain.deployment, AGGREGATOR)
    client.sender = Counting(client, AGGREGATOR, SenderSettings(receipt_timeout=5.0, poll_seconds=0.05))
    tx_hash = client.transact(client.registry.functions.updateOperators([]))
    assert Counting.sent == 1
    assert chain.anvil.w3.eth.get_transaction_receipt(HexBytes(tx_hash))["status"] == 1
    other = Account.create()
    chain.anvil.w3.provider.make_request("anvil_setBalance", [other.address, hex(10**18)])  # type: ignore[arg-type]
    client.transact(client.registry.functions.updateOperators([]), other)
    assert Counting.sent == 1


def test_reorg_after_certification_is_recovered(chain: Chain, tmp_path: Path) -> None:
    pipeline, caller = make_pipeline(chain, tmp_path / "agg.sqlite")
    snapshot = chain.rpc("evm_snapshot")
    try:
        hashes = submit_all(pipeline, "deep reorg", 2)
        pipeline.run_until_idle()
        assert all_certified(pipeline, hashes)
        chain.rpc("evm_revert", snapshot)  # a reorg deeper than the confirmations asked for
        chain.anvil.mine(3)
        restarted, caller2 = make_pipeline(chain, tmp_path / "agg.sqlite")
        restarted.run_until_idle()
        restarted.close()
        caller2.close()
        assert_certified_once_on_chain(chain, pipeline, hashes)
    finally:
        pipeline.close()
        caller.close()


def test_underpriced_transaction_is_replaced_with_higher_fees(
    chain: Chain, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The base fee jumps above certifyBatch's fee cap while it waits in the mempool: it cannot be
    mined, so the sender replaces it (same nonce), its fee cap re-priced from the new base fee."""
    w3 = chain.anvil.w3
    sender = SenderSettings(receipt_timeout=3.0, poll_seconds=0.1, bump_percent=25, max_bumps=5)
    pipeline, caller = make_pipeline(chain, tmp_path / "agg.sqlite", sender=sender)
    runner = PipelineRunner(pipeline, 4)
    address = AGGREGATOR.address
    chain.rpc("evm_setAutomine", False)
    try:
        hashes = submit_all(pipeline, "underpriced tx", 3)
        runner.start()
        wait_until(lambda: w3.eth.get_transaction_count(address, "pending") > w3.eth.get_transaction_count(address), 60)
        [first] = pending_transactions(chain, address)
        high_base_fee = int(first["maxFeePerGas"], 16) * 3 // 2  # above the cap; a 25% bump alone is not enough

        def mine_at_high_base_fee() -> None:
            chain.rpc("anvil_setNextBlockBaseFeePerGas", hex(high_base_fee))
            chain.rpc("evm_mine")

        mine_at_high_base_fee()
        assert w3.eth.get_transaction_count(address) == int(first["nonce"], 16)  # a block went by without it
        wait_until(lambda: all_certified(pipeline, hashes), 60, tick=mine_at_high_base_fee)
    finally:
        chain.rpc("evm_setAutomine", True)
        runner.stop()
        pipeline.close()
        caller.close()
    assert "bumping fees" in caplog.text
    assert "pipeline loop error" not in caplog.text  # the refused version was re-priced, not a failed step
    assert_certified_once_on_chain(chain, pipeline, hashes)
    batch = pipeline.store.get_batch(pipeline.store.get_request(hashes[0]).batch_index)  # type: ignore[union-attr,arg-type]
    mined = w3.eth.get_transaction(batch.tx_hash)  # type: ignore[arg-type,union-attr]
    assert mined["maxFeePerGas"] >= high_base_fee > int(first["maxFeePerGas"], 16)


def pending_transactions(chain: Chain, address: str) -> list[dict[str, str]]:
    content = chain.rpc("txpool_content")
    assert isinstance(content, dict)
    pending = content["pending"]
    for sender, by_nonce in pending.items():
        if sender.lower() == address.lower():
            return list(by_nonce.values())
    return []
