"""The chain exporter's logic against a fake chain: incremental event scans, reorgs, families, units."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from avs.devnet import Anvil
from avs.errors import InvalidInputError
from avs.monitoring.chain_exporter import (
    ChainCollector,
    ChainExporter,
    EventTotals,
    PoolState,
    QuorumState,
    compute_block_ranges,
    compute_event_totals,
    compute_quorum_numbers,
    get_logs_splitting,
)

TOKEN = 10**18


@dataclass
class FakeChain:
    block: int = 10
    events: dict[int, EventTotals] = field(default_factory=dict)  # block -> events in it
    scanned: list[tuple[int, int]] = field(default_factory=list)

    def get_latest_block(self) -> tuple[int, int]:
        return self.block, 1_000 + self.block

    def get_block_timestamp(self, block: int) -> int:
        return 1_000 + block

    def get_token_decimals(self) -> int:
        return 18

    def get_quorums(self, block: int) -> tuple[QuorumState, ...]:
        return (QuorumState(0, 100 * TOKEN, 3, 5 * TOKEN, 45 * TOKEN),)

    def get_pool(self, block: int) -> PoolState | None:
        return PoolState(12 * TOKEN, 10 * TOKEN, 2 * TOKEN)

    def get_challenge_bonds(self, block: int) -> int | None:
        return TOKEN

    def get_event_totals(self, from_block: int, to_block: int) -> EventTotals:
        self.scanned.append((from_block, to_block))
        totals = EventTotals()
        for block in range(from_block, to_block + 1):
            if block in self.events:
                totals = totals.add(self.events[block])
        return totals


def _scrape(exporter: ChainExporter) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(ChainCollector(exporter))
    samples: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_polls_scan_each_block_once_and_accumulate() -> None:
    chain = FakeChain(
        events={
            3: EventTotals(batches_certified=1, last_batch_block=3, premiums=TOKEN // 10, coverage_bought=5 * TOKEN),
            8: EventTotals(slashings={0: 1}, slashed_shares={0: 2 * TOKEN}, ejections={0: 1}, churns={0: 2}),
        }
    )
    exporter = ChainExporter(chain, start_block=2, chunk_blocks=4, reorg_depth=0)
    exporter.process_poll(now=50.0)
    assert chain.scanned == [(2, 5), (6, 9), (10, 10)]
    chain.block = 12
    chain.events[12] = EventTotals(batches_certified=2, last_batch_block=12, claims_paid=TOKEN)
    exporter.process_poll(now=60.0)
    assert chain.scanned[-1] == (11, 12)
    samples = _scrape(exporter)
    assert samples["avs_chain_batches_certified_total"] == 3
    assert samples["avs_chain_last_batch_certified_timestamp_seconds"] == 1_012
    assert samples['avs_chain_operator_slashings_total{quorum="0"}'] == 1
    assert samples['avs_chain_slashed_shares_total{quorum="0"}'] == 2.0
    assert samples['avs_chain_operator_ejections_total{quorum="0"}'] == 1
    assert samples['avs_chain_operator_churns_total{quorum="0"}'] == 2
    assert samples['avs_chain_quorum_stake_tokens{quorum="0"}'] == 100.0
    assert samples['avs_chain_quorum_operators{quorum="0"}'] == 3
    assert samples['avs_chain_coverage_outstanding_tokens{quorum="0"}'] == 5.0
    assert samples["avs_chain_premiums_tokens_total"] == 0.1
    assert samples["avs_chain_claims_paid_tokens_total"] == 1.0
    assert samples["avs_chain_insurance_pool_balance_tokens"] == 12.0
    assert samples["avs_chain_challenge_bonds_tokens"] == 1.0
    assert samples["avs_chain_exporter_last_poll_timestamp_seconds"] == 60.0
    assert samples["avs_chain_exporter_poll_errors_total"] == 0


def test_no_batch_yet_means_no_last_batch_timestamp() -> None:
    exporter = ChainExporter(FakeChain(), start_block=0)
    assert "avs_chain_exporter_last_poll_timestamp_seconds" not in _scrape(exporter)  # nothing read yet
    exporter.process_poll()
    samples = _scrape(exporter)
    assert "avs_chain_last_batch_certified_timestamp_seconds" not in samples
    assert samples["avs_chain_batches_certified_total"] == 0
    assert samples['avs_chain_operator_slashings_total{quorum="0"}'] == 0  # present at 0: increase() works
    assert samples['avs_chain_operator_ejections_total{quorum="0"}'] == 0
    assert samples['avs_chain_operator_churns_total{quorum="0"}'] == 0


def test_pure_helpers() -> None:
    assert compute_quorum_numbers(0b1011) == (0, 1, 3)
    assert compute_block_ranges(5, 4, 10) == []
    assert compute_block_ranges(0, 9, 5) == [(0, 4), (5, 9)]
    totals = compute_event_totals(
        batches=[{"blockNumber": 4, "args": {}}, {"blockNumber": 9, "args": {}}],
        slashes=[{"blockNumber": 9, "args": {"quorumNumber": 1, "slashedShares": 7}}],
        bought=[{"blockNumber": 2, "args": {"amount": 100, "premium": 3}}],
        claims=[{"blockNumber": 5, "args": {"amount": 40}}],
        challenges=2,
        ejected=[{"blockNumber": 6, "args": {"quorumNumber": 0}}, {"blockNumber": 7, "args": {"quorumNumber": 0}}],
    )
    assert totals == EventTotals(2, 9, {1: 1}, {1: 7}, 100, 3, 40, 2, {0: 2})


def test_cli_refuses_a_bad_deployment_or_rpc_cleanly(tmp_path: Path) -> None:
    """One line, never a traceback, and never the RPC URL's path (providers put API keys there)."""
    command = [sys.executable, "-m", "avs.monitoring.chain_exporter", "--rpc-url", "http://127.0.0.1:1/v3/SECRETKEY"]
    missing = subprocess.run([*command, "--deployment", str(tmp_path / "none.json")], capture_output=True, text=True)
    assert missing.returncode == 2 and "chain-exporter:" in missing.stderr and "Traceback" not in missing.stderr
    deployment: dict[str, object] = {"chain_id": 1, "start_block": 0}
    deployment |= {key: "0x" + "11" * 20 for key in ("deployer", "aggregator", "allocation_manager")}
    deployment |= {key: "0x" + "22" * 20 for key in ("delegation_manager", "strategy", "stake_token")}
    deployment |= {key: "0x" + "33" * 20 for key in ("operator_registry", "model_registry", "task_manager")}
    (tmp_path / "deployment.json").write_text(json.dumps(deployment))
    no_rpc = subprocess.run(
        [*command, "--deployment", str(tmp_path / "deployment.json")], capture_output=True, text=True
    )
    assert no_rpc.returncode == 2 and "chain-exporter:" in no_rpc.stderr and "Traceback" not in no_rpc.stderr
    assert "SECRETKEY" not in no_rpc.stderr, no_rpc.stderr
    chain = Anvil()  # chain 31337, while the deployment says chain 1
    try:
        url = chain.url.replace("://", "://user:SECRETKEY@")  # anvil answers 404 on a path, not on user info
        wrong = [sys.executable, "-m", "avs.monitoring.chain_exporter", "--rpc-url", url]
        other = subprocess.run(
            [*wrong, "--deployment", str(tmp_path / "deployment.json")], capture_output=True, text=True
        )
        # The URL from $ETH_RPC_URL instead of argv, where any user of the machine could read it.
        from_env = subprocess.run(
            [sys.executable, "-m", "avs.monitoring.chain_exporter", "--deployment", str(tmp_path / "deployment.json")],
            capture_output=True,
            text=True,
            env={**os.environ, "ETH_RPC_URL": url},
        )
    finally:
        chain.stop()
    for run in (other, from_env):
        assert run.returncode == 2 and "is chain 31337, the deployment" in run.stderr, run.stderr
        assert "SECRETKEY" not in run.stderr and "Traceback" not in run.stderr
    no_url = subprocess.run(
        [sys.executable, "-m", "avs.monitoring.chain_exporter", "--deployment", str(tmp_path / "deployment.json")],
        capture_output=True,
        text=True,
        env={key: value for key, value in os.environ.items() if key != "ETH_RPC_URL"},
    )
    assert no_url.returncode == 2 and "--rpc-url or $ETH_RPC_URL is required" in no_url.stderr


def test_a_log_range_the_node_refuses_is_halved_until_it_answers() -> None:
    """Providers cap eth_getLogs below the default chunk: the exporter failed every poll for good."""
    calls: list[tuple[int, int]] = []

    def capped(lo: int, hi: int) -> list[int]:
        calls.append((lo, hi))
        if hi - lo + 1 > 1_000:
            raise ValueError("query exceeds max block range 1000")
        return [block for block in range(lo, hi + 1) if block % 997 == 0]

    assert get_logs_splitting(capped, 0, 4_999) == [block for block in range(5_000) if block % 997 == 0]
    assert len(calls) < 20

    def broken(lo: int, hi: int) -> list[int]:  # refused at any size: raised after one path down
        calls.append((lo, hi))
        raise ValueError("execution reverted")

    calls.clear()
    with pytest.raises(ValueError, match="execution reverted"):
        get_logs_splitting(broken, 0, 4_999)
    assert len(calls) <= 14 and calls[-1][0] == calls[-1][1]

    def unreachable(lo: int, hi: int) -> list[int]:  # the node down: no point splitting
        calls.append((lo, hi))
        raise ConnectionError("connection refused")

    calls.clear()
    with pytest.raises(ConnectionError):
        get_logs_splitting(unreachable, 0, 4_999)
    assert calls == [(0, 4_999)]


def test_a_failure_in_a_long_scan_keeps_the_chunks_already_read() -> None:
    """The first scan runs from the deployment block to the head: one failing eth_getLogs must not
    send it back to the start (on a long chain it might never finish)."""

    @dataclass
    class Flaky(FakeChain):
        fail_at: int | None = None

        def get_event_totals(self, from_block: int, to_block: int) -> EventTotals:
            if from_block == self.fail_at:
                self.fail_at = None
                raise ConnectionError("rpc down")
            return super().get_event_totals(from_block, to_block)

    chain = Flaky(block=20, events={3: EventTotals(batches_certified=1, last_batch_block=3)}, fail_at=10)
    exporter = ChainExporter(chain, start_block=2, chunk_blocks=4, reorg_depth=0)
    try:
        exporter.process_poll()
    except ConnectionError:
        exporter.handle_poll_error()
    assert chain.scanned == [(2, 5), (6, 9)]
    exporter.process_poll()
    assert chain.scanned[2:] == [(10, 13), (14, 17), (18, 20)]  # resumed where it stopped
    samples = _scrape(exporter)
    assert samples["avs_chain_batches_certified_total"] == 1  # counted once
    assert samples["avs_chain_last_batch_certified_timestamp_seconds"] == 1_003
    assert samples["avs_chain_exporter_poll_errors_total"] == 1


def test_the_state_is_served_fresh_while_the_event_scan_fails() -> None:
    """The state was read only after a good event scan: an eth_getLogs the node kept refusing froze
    every stake, pool and bond gauge at its old value. Before the first good scan, the counters are
    left out (a counter starting at 0 and jumping would read as an increase)."""

    @dataclass
    class LogsDown(FakeChain):
        stake: int = 100 * TOKEN
        logs_down: bool = True

        def get_quorums(self, block: int) -> tuple[QuorumState, ...]:
            return (QuorumState(0, self.stake, 3, 0, 0),)

        def get_event_totals(self, from_block: int, to_block: int) -> EventTotals:
            if self.logs_down:
                raise ConnectionError("eth_getLogs: 429 Too Many Requests")
            return super().get_event_totals(from_block, to_block)

    chain = LogsDown(block=20, events={3: EventTotals(batches_certified=1, last_batch_block=3)})
    exporter = ChainExporter(chain, start_block=2, chunk_blocks=4, reorg_depth=0)
    with pytest.raises(ConnectionError):
        exporter.process_poll()
    samples = _scrape(exporter)
    assert samples['avs_chain_quorum_stake_tokens{quorum="0"}'] == 100.0 and samples["avs_chain_block_number"] == 20
    assert "avs_chain_batches_certified_total" not in samples
    chain.logs_down = False
    exporter.process_poll()
    chain.logs_down, chain.stake, chain.block = True, 90 * TOKEN, 25  # slashed meanwhile; the logs fail again
    with pytest.raises(ConnectionError):
        exporter.process_poll()
    samples = _scrape(exporter)
    assert samples['avs_chain_quorum_stake_tokens{quorum="0"}'] == 90.0 and samples["avs_chain_block_number"] == 25
    assert samples["avs_chain_batches_certified_total"] == 1  # the last good scan's
    assert samples["avs_chain_last_batch_certified_timestamp_seconds"] == 1_003


def test_a_reorg_within_the_depth_counts_a_moved_event_once_and_counters_never_go_down() -> None:
    chain = FakeChain(block=20, events={5: EventTotals(batches_certified=1, last_batch_block=5)})
    chain.events[18] = EventTotals(batches_certified=1, last_batch_block=18, slashings={0: 1}, slashed_shares={0: 9})
    exporter = ChainExporter(chain, start_block=2, chunk_blocks=100, reorg_depth=4)
    exporter.process_poll()
    assert chain.scanned == [(2, 16), (17, 20)]  # settled once, then the last 4 blocks
    samples = _scrape(exporter)
    assert samples["avs_chain_batches_certified_total"] == 2
    assert samples["avs_chain_last_batch_certified_timestamp_seconds"] == 1_018
    chain.events[19] = chain.events.pop(18)  # a reorg: the transactions of block 18 are mined in 19
    chain.events[19] = dataclasses.replace(chain.events[19], last_batch_block=19)
    chain.block = 21
    exporter.process_poll()
    assert chain.scanned[2:] == [(17, 17), (18, 21)]
    samples = _scrape(exporter)
    assert samples["avs_chain_batches_certified_total"] == 2  # once, not twice
    assert samples['avs_chain_operator_slashings_total{quorum="0"}'] == 1
    assert samples["avs_chain_last_batch_certified_timestamp_seconds"] == 1_019
    del chain.events[19]  # another reorg drops them for good: a counter never goes down
    chain.block = 22
    exporter.process_poll()
    samples = _scrape(exporter)
    assert samples["avs_chain_batches_certified_total"] == 2
    assert samples['avs_chain_slashed_shares_total{quorum="0"}'] == 9 / TOKEN
    assert samples["avs_chain_last_batch_certified_timestamp_seconds"] == 1_005  # the last batch still there
    chain.events[22] = EventTotals(batches_certified=1, last_batch_block=22)  # absorbed by the lost one
    chain.events[5] = EventTotals()  # deeper than the depth: settled, never read again
    chain.block = 30
    exporter.process_poll()
    assert all(lo > 5 for lo, _ in chain.scanned[4:])
    assert _scrape(exporter)["avs_chain_batches_certified_total"] == 2


def test_a_negative_reorg_depth_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="reorg_depth"):
        ChainExporter(FakeChain(), start_block=0, reorg_depth=-1)
