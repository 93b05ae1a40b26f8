"""Load: 1,000 requests through the pipeline with bounded memory and nothing lost.

The pipeline runs over SQLite (WAL, synchronous=FULL, as in production) with the in-memory fakes
of ``tests.aggregator.fakes``: three operators with real BLS keys (every attestation and batch
signature is really signed and checked, every certifyBatch checks the aggregate like the contract).
A real anvil would measure anvil, not the pipeline; the chain path is covered by
``test_chain_faults.py``. Requests arrive in waves of 100; ``tracemalloc`` measures the Python heap
after each wave: growth between the second and the last wave stays under a few MB (nothing kept per
request in memory; the state is in the database).
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.store import BatchState, RequestState, Store, load_hex_list
from tests.aggregator.fakes import DOMAIN, FakeNetwork, make_envelope

TOTAL = 1000
WAVE = 100
SETTINGS = PipelineSettings(batch_max_size=64, batch_max_latency=0.0, workers=4, max_pending=2 * WAVE)


@pytest.mark.slow
def test_thousand_requests_bounded_memory_no_loss(tmp_path: Path) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{tmp_path / 'agg.sqlite'}"), network, network, network, SETTINGS)
    hashes: list[bytes] = []
    heap: list[int] = []
    started = time.monotonic()
    tracemalloc.start()
    try:
        for wave in range(TOTAL // WAVE):
            hashes += [pipeline.submit(make_envelope(wave * WAVE + i, f"load {wave}")) for i in range(WAVE)]
            pipeline.run_until_idle(max_rounds=1000)
            gc.collect()
            heap.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
        pipeline.close()
    elapsed = time.monotonic() - started
    rows = pipeline.store.list_requests(list(RequestState), limit=10 * TOTAL)
    assert len(rows) == len(set(hashes)) == TOTAL
    assert Counter(r.state for r in rows) == {RequestState.CERTIFIED: TOTAL}
    certified = pipeline.store.list_batches([BatchState.CERTIFIED])
    leaves = Counter(h for b in certified for h in load_hex_list(b.request_hashes))
    assert len(leaves) == TOTAL and set(leaves.values()) == {1}
    assert sorted(network.certify_calls) == sorted(network.certified) == sorted(b.batch_index for b in certified)
    growth = heap[-1] - heap[1]
    print(
        f"\n1000 requests in {elapsed:.1f} s ({TOTAL / elapsed:.0f}/s); heap after each wave (MB): "
        + ", ".join(f"{h / 2**20:.1f}" for h in heap)
    )
    assert growth < 8 * 2**20, f"heap grew {growth / 2**20:.1f} MB over {TOTAL - 2 * WAVE} requests"


def test_intake_is_bounded_by_max_pending(tmp_path: Path) -> None:
    """Backpressure instead of unbounded growth: past ``max_pending`` Submit answers OverloadedError."""
    from avs.errors import OverloadedError

    network = FakeNetwork([{0: 100}])
    settings = PipelineSettings(max_pending=20, workers=1)
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{tmp_path / 'agg.sqlite'}"), network, network, network, settings)
    try:
        for i in range(20):
            pipeline.submit(make_envelope(i))
        with pytest.raises(OverloadedError):
            pipeline.submit(make_envelope(99))
        pipeline.run_until_idle()
        pipeline.submit(make_envelope(99))  # accepted again once the backlog is certified
    finally:
        pipeline.close()


def test_batched_requests_count_towards_max_pending(tmp_path: Path) -> None:
    """A chain that takes no certificates (no gas funds, say) leaves requests BATCHED: they still count,
    so intake pushes back instead of storing requests without end."""
    from avs.errors import OverloadedError

    class Unfunded(FakeNetwork):
        def certify_batch(self, header: Any, signatures: Any) -> tuple[bytes, int]:
            raise ValueError("insufficient funds for gas * price + value")

    network = Unfunded([{0: 100}])
    settings = PipelineSettings(max_pending=3, workers=1, batch_max_latency=0.0)
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{tmp_path / 'agg.sqlite'}"), network, network, network, settings)
    try:
        for i in range(3):
            pipeline.submit(make_envelope(i))
        for h in pipeline.active_request_hashes():
            while pipeline.advance_request(h):
                pass
        pipeline.form_batches(force=True)
        for index in pipeline.active_batch_indices():
            assert pipeline.advance_batch(index)  # signed
            with pytest.raises(ValueError, match="insufficient funds"):
                pipeline.advance_batch(index)  # certifyBatch fails
        assert pipeline.store.count_requests([RequestState.BATCHED]) == 3
        with pytest.raises(OverloadedError):
            pipeline.submit(make_envelope(99))
    finally:
        pipeline.close()
