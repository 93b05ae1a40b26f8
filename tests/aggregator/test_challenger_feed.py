"""The challenger's scan of ``BatchCertified`` events asks for bounded block ranges: providers
refuse an ``eth_getLogs`` over too many blocks, and after a long downtime the range is long."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from avs.chain.client import LOG_CHUNK_BLOCKS
from avs_aggregator.challenger.chain import Web3BatchFeed


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
