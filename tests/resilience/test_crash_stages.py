"""Kill the aggregator at each pipeline stage (exactly, see ``crashing.py``), restart, and check that
every request is certified exactly once on the (file-backed) chain.

The child process is killed at the step named by the stage; the test checks the database really
holds that stage, restarts a fresh ``Pipeline`` over the same database and chain, runs it to the
end, and asserts: every request CERTIFIED, each in exactly one certified batch, each batch index
certified once on the chain and ``certifyBatch`` sent once per certified batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from avs_aggregator.pipeline import Pipeline
from avs_aggregator.store import BatchState, RequestState, load_hex_list
from tests.resilience.crashing import KILLED, FileChain, make_pipeline

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 4  # batch_max_size 3: two batches

# stage name -> (hook, nth call, before/after, request states in the database after the kill)
STAGES = {
    "received": ("submit", 1, "before", {RequestState.RECEIVED}),
    "generating": ("generate", 2, "before", {RequestState.GENERATING, RequestState.VERIFYING}),
    "verifying": ("verify", 3, "before", {RequestState.VERIFYING, RequestState.ACCEPTED, RequestState.RECEIVED}),
    "accepted": ("get_certification", 1, "before", {RequestState.ACCEPTED}),
    "batched": ("sign_batch", 1, "before", {RequestState.BATCHED}),
    "signing": ("get_check_signatures_indices", 1, "after", {RequestState.BATCHED}),
    "submitting": ("certify_batch", 1, "before", {RequestState.BATCHED}),
    "tx-sent": ("certify_batch", 1, "after", {RequestState.BATCHED}),
    "second-tx-sent": ("certify_batch", 2, "after", {RequestState.BATCHED, RequestState.CERTIFIED}),
}


def run_child(db: Path, chain: Path, hook: str, nth: int, when: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "tests.resilience.crashing", str(db), str(chain), hook, str(nth), when]
    return subprocess.run([*args, str(REQUESTS)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_certified_exactly_once(pipeline: Pipeline, chain: FileChain) -> None:
    rows = pipeline.store.list_requests(list(RequestState))
    assert len(rows) == REQUESTS
    assert {r.state for r in rows} == {RequestState.CERTIFIED}
    certified = pipeline.store.list_batches([BatchState.CERTIFIED])
    leaves = Counter(h for b in certified for h in load_hex_list(b.request_hashes))
    assert sorted(leaves) == sorted(r.request_hash for r in rows)
    assert set(leaves.values()) == {1}  # each request in exactly one certified batch
    on_chain = chain.load()
    indices = [int(i) for i, _, _ in on_chain["certified"]]
    assert sorted(indices) == sorted(b.batch_index for b in certified)
    assert len(indices) == len(set(indices))  # no batch index certified twice
    attempts = Counter(int(a[0]) for a in on_chain["attempts"])
    assert all(attempts[i] == 1 for i in indices), attempts  # certifyBatch never re-sent
    for batch in certified:
        assert chain.get_certification(batch.batch_index) == (batch.certified_block, batch.tx_hash)


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_at_stage_then_restart_certifies_every_request_once(tmp_path: Path, stage: str) -> None:
    hook, nth, when, expected = STAGES[stage]
    db, chain_file = tmp_path / "aggregator.sqlite", tmp_path / "chain.json"
    child = run_child(db, chain_file, hook, nth, when)
    assert child.returncode == KILLED, f"the crash point was not reached: {child.stderr[-2000:]}"
    chain = FileChain(chain_file)
    pipeline = make_pipeline(db, chain)
    try:
        states = {RequestState(r.state) for r in pipeline.store.list_requests(list(RequestState))}
        assert states <= expected and states & expected, f"killed at {stage}: the database holds {states}"
        if stage == "tx-sent":  # the transaction is on the chain, the database does not know yet
            assert {b.state for b in pipeline.store.list_batches(list(BatchState))} == {BatchState.SUBMITTING}
            assert len(chain.load()["certified"]) == 1
        pipeline.run_until_idle()
        assert_certified_exactly_once(pipeline, chain)
    finally:
        pipeline.close()
        pipeline.store.close()


def test_two_kills_in_a_row_still_certify_once(tmp_path: Path) -> None:
    """Killed after the first transaction, then again while re-signing nothing: state survives both."""
    db, chain_file = tmp_path / "aggregator.sqlite", tmp_path / "chain.json"
    assert run_child(db, chain_file, "certify_batch", 1, "after").returncode == KILLED
    # the restarted child first reconciles batch 1 with the chain, then dies sending batch 2
    assert run_child(db, chain_file, "certify_batch", 1, "after").returncode == KILLED
    chain = FileChain(chain_file)
    assert len(json.loads(chain_file.read_text())["certified"]) == 2
    pipeline = make_pipeline(db, chain)
    try:
        pipeline.run_until_idle()
        assert_certified_exactly_once(pipeline, chain)
    finally:
        pipeline.close()
        pipeline.store.close()
