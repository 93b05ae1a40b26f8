"""The batch loop over a node that has pruned old state (found by a review helper): a batch left
SIGNING by a long outage used to fail its every signing round (its operator set could not be read)
and, failing first in every pass, held back every later batch."""

from __future__ import annotations

import time
from pathlib import Path

from avs_aggregator.app import PipelineRunner, Retention
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.store import BatchState, RequestState, Store
from tests.aggregator.fakes import DOMAIN, FakeNetwork, make_envelope

STATE_KEPT_BLOCKS = 128  # a full node's recent state; older reads fail


class PrunedNode(FakeNetwork):
    def __init__(self, *args: object, broken: set[int] | None = None) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.broken = broken or set()

    def get_operator_set(self, reference_block: int):  # type: ignore[no-untyped-def]
        if reference_block < self.block - STATE_KEPT_BLOCKS or reference_block in self.broken:
            raise ValueError(f"missing trie node (state of block {reference_block} pruned)")
        return super().get_operator_set(reference_block)


def _one_request_accepted(tmp_path: Path) -> tuple[PrunedNode, Store, Pipeline, bytes]:
    network = PrunedNode([{0: 100}, {0: 100}, {0: 100}])
    store = Store(f"sqlite:///{tmp_path / 'agg.sqlite'}")
    pipeline = Pipeline(DOMAIN, store, network, network, network, PipelineSettings(workers=2, batch_max_latency=0.0))
    request_hash = pipeline.submit(make_envelope(1))
    while pipeline.advance_request(request_hash):
        pass
    return network, store, pipeline, request_hash


def _wait_certified(store: Store, request_hash: bytes, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = store.get_request(request_hash)
        if row is not None and row.state == RequestState.CERTIFIED:
            return
        time.sleep(0.1)
    raise AssertionError(f"not certified: {row.state if row else None}")


def test_a_batch_signing_since_before_an_outage_is_abandoned_and_later_batches_go_on(tmp_path: Path) -> None:
    network, store, pipeline, first_request = _one_request_accepted(tmp_path)
    [first] = pipeline.form_batches(force=True)  # the aggregator stops here, the batch SIGNING
    network.block += 500  # and is back 500 blocks later
    later_request = pipeline.submit(make_envelope(2))
    runner = PipelineRunner(pipeline, 2)
    runner.start()
    try:
        _wait_certified(store, later_request)
        _wait_certified(store, first_request)  # re-batched under a fresh reference block
    finally:
        runner.stop(timeout=5)
        pipeline.close()
    abandoned = store.get_batch(first)
    assert abandoned is not None and abandoned.state == BatchState.ABANDONED


def test_a_batch_whose_step_keeps_failing_does_not_hold_back_later_ones(tmp_path: Path) -> None:
    network, store, pipeline, _ = _one_request_accepted(tmp_path)
    [first] = pipeline.form_batches(force=True)
    batch = store.get_batch(first)
    assert batch is not None
    network.broken = {batch.reference_block}  # this batch's reads fail, not yet stale
    network.block += 1
    later_request = pipeline.submit(make_envelope(2))
    runner = PipelineRunner(pipeline, 2)
    runner.start()
    try:
        _wait_certified(store, later_request)
    finally:
        runner.stop(timeout=5)
        pipeline.close()
    failing = store.get_batch(first)
    assert failing is not None and failing.state == BatchState.SIGNING


def test_the_batch_loop_prunes_what_the_retention_lets_go(tmp_path: Path) -> None:
    """Finished requests were never deleted: the database grew with every request for ever."""
    network, store, pipeline, request_hash = _one_request_accepted(tmp_path)
    later = [0.0]
    retention = Retention(keep_seconds=3600.0, every_seconds=0.0)
    runner = PipelineRunner(pipeline, 2, retention=retention, clock=lambda: time.time() + later[0])
    runner.start()
    try:
        _wait_certified(store, request_hash)
        row = store.get_request(request_hash)
        assert row is not None and row.batch_index is not None
        batch_index = row.batch_index
        network.block += 2  # the certification is confirmed (a reorg could still reopen it before)
        deadline = time.monotonic() + 10
        while (batch := store.get_batch(batch_index)) and batch.confirmed_block is None:
            assert time.monotonic() < deadline, "never confirmed"
            time.sleep(0.1)
        time.sleep(1.0)  # several ticks within the hour: nothing goes
        assert store.get_request(request_hash) is not None and store.get_batch(batch_index) is not None
        later[0] = 7200.0  # two hours on
        deadline = time.monotonic() + 10
        while store.get_request(request_hash) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        runner.stop(timeout=5)
        pipeline.close()
    assert store.get_request(request_hash) is None
    assert store.get_batch(batch_index) is not None  # the highest batch stays: the next index follows it


def test_certify_batch_waits_for_its_receipt_not_for_the_confirmations() -> None:
    """Found in review: sent with the sender's wait for ``confirmations`` blocks, each batch held the
    batch thread and the sender (every other transaction waits for it) that long, one batch after
    the other; the pipeline waits for the confirmations itself (``_confirm_batch``)."""
    from types import SimpleNamespace

    from avs.chain.client import CheckSignaturesIndices, NonSignerStakesAndSignature
    from avs.crypto.curve import G1Point, G2Point
    from avs.messages import BatchHeader
    from avs_aggregator.chain import Web3ChainWriter

    sent: list[tuple[object, bool]] = []

    class Client:
        task_manager = SimpleNamespace(functions=SimpleNamespace(certifyBatch=lambda header, sigs: "certifyBatch"))

        def send(self, fn: object, account: object = None, *, confirm: bool = True) -> SimpleNamespace:
            sent.append((fn, confirm))
            return SimpleNamespace(tx_hash=b"\x01" * 32, gas_used=150_000)

    one = G1Point(1, 2)
    signatures = NonSignerStakesAndSignature(
        (one,), (one,), G2Point(1, 2, 3, 4), one, CheckSignaturesIndices((0,), (0,), (0,), ((0,),))
    )
    writer = Web3ChainWriter(Client())  # type: ignore[arg-type]
    assert writer.certify_batch(BatchHeader(1, b"\x00" * 32, 10, b"\x00"), signatures) == (b"\x01" * 32, 150_000)
    assert sent == [("certifyBatch", False)]


def test_a_failure_to_form_batches_does_not_stop_the_batches_already_formed(tmp_path: Path) -> None:
    """Forming new batches reads the chain (a reference block, the first free index): while that
    fails, the batches formed already are still signed, submitted and confirmed."""
    _, store, pipeline, request_hash = _one_request_accepted(tmp_path)
    pipeline.form_batches(force=True)

    def broken_form_batches(force: bool = False) -> list[int]:
        raise ConnectionError("the node is unreachable for this call")

    pipeline.form_batches = broken_form_batches  # type: ignore[method-assign]
    runner = PipelineRunner(pipeline, 2)
    runner.start()
    try:
        _wait_certified(store, request_hash, seconds=10.0)
    finally:
        runner.stop(timeout=5)
