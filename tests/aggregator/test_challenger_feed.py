"""The challenger's scan of ``BatchCertified`` events asks for bounded block ranges: providers
refuse an ``eth_getLogs`` over too many blocks, and after a long downtime the range is long. The
transaction of a challenge it adopts is read from its ``ChallengeOpened`` log, in one block."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from avs.chain.client import LOG_CHUNK_BLOCKS
from avs_aggregator.challenger.chain import Web3BatchFeed, Web3Escalator


class CappedLogs:
    """``BatchCertified.get_logs`` of a provider that refuses ranges over LOG_CHUNK_BLOCKS blocks;
    one batch is certified every 5,000 blocks."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    def get_logs(self, from_block: int, to_block: int) -> list[dict[str, Any]]:
        if to_block - from_block + 1 > LOG_CHUNK_BLOCKS:
            raise ValueError("query exceeds max block range")
        self.ranges.append((from_block, to_block))
        return [self._log(block) for block in range(from_block, to_block + 1) if block % 5_000 == 0]

    @staticmethod
    def _log(block: int) -> dict[str, Any]:
        args = {
            "batchIndex": block // 5_000,
            "leavesRoot": b"\x01" * 32,
            "referenceBlock": block - 1,
            "quorumNumbers": b"\x00",
            "signatoryRecordHash": b"\x02" * 32,
        }
        return {"args": args, "blockNumber": block}


@pytest.mark.parametrize(("start", "end"), [(1, 35_000), (10_000, 10_000), (4_999, 15_001)])
def test_a_long_range_is_scanned_in_chunks_and_nothing_is_missed(start: int, end: int) -> None:
    logs = CappedLogs()
    client: Any = SimpleNamespace(task_manager=SimpleNamespace(events=SimpleNamespace(BatchCertified=logs)))
    batches = Web3BatchFeed(client).get_certified_batches(start, end)
    expected = [block for block in range(start, end + 1) if block % 5_000 == 0]
    assert [b.block for b in batches] == expected
    assert [b.header.batch_index for b in batches] == [block // 5_000 for block in expected]
    covered = [block for lo, hi in logs.ranges for block in range(lo, hi + 1)]
    assert covered == list(range(start, end + 1))  # every block once, in order


class OpenedLogs:
    """``ChallengeOpened.get_logs`` over a few logs: (challenge id, block, transaction)."""

    def __init__(self, logs: list[tuple[int, int, bytes]]) -> None:
        self.logs = logs
        self.queries: list[tuple[dict[str, Any], int, int]] = []

    def get_logs(self, argument_filters: dict[str, Any], from_block: int, to_block: int) -> list[dict[str, Any]]:
        self.queries.append((argument_filters, from_block, to_block))
        return [
            {"args": {"challengeId": cid}, "blockNumber": block, "transactionHash": tx}
            for cid, block, tx in self.logs
            if from_block <= block <= to_block and cid == argument_filters["challengeId"]
        ]


def test_an_adopted_challenges_transaction_is_read_from_its_opened_log() -> None:
    """One ``eth_getLogs``, on the challenge's opened block and its id's topic only."""
    logs = OpenedLogs([(1, 10, b"\x01" * 32), (2, 12, b"\x02" * 32), (3, 12, b"\x03" * 32)])
    faults: Any = SimpleNamespace(fault_manager=SimpleNamespace(events=SimpleNamespace(ChallengeOpened=logs)))
    escalator = Web3Escalator(faults)
    assert escalator.find_challenge_tx(2, 12) == b"\x02" * 32
    assert logs.queries == [({"challengeId": 2}, 12, 12)]
    assert escalator.find_challenge_tx(2, 13) is None  # not in that block (a reorg moved it): not known
