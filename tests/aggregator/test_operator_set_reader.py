"""``Web3OperatorSetReader`` over a scripted chain: what a reorg does to the operators it knows and
to the operator sets it cached. (Its reads against real contracts are in the anvil tests.)"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from avs.crypto import bls
from avs_aggregator.chain import REORG_RESCAN_BLOCKS, Web3OperatorSetReader

KEYS = [bls.compute_key_pair(bls.SecretKey(500 + i)) for i in range(3)]


class ScriptedChain:
    """The registry's events and views, from ``registered_at`` (operator -> registration block) and a
    ``fork`` number that is part of every block hash (a reorg changes the hashes)."""

    def __init__(self) -> None:
        self.registered_at = {0: 10, 1: 10}
        self.fork = 0
        self.log_queries: list[tuple[int, int]] = []

    def _index(self, operator_id: bytes) -> int:
        return next(i for i, k in enumerate(KEYS) if k.operator_id == bytes(operator_id))

    def _registered(self, i: int, block: Any) -> bool:
        return self.registered_at.get(i, 10**9) <= (10**9 if block == "latest" else block)

    def get_logs(self, from_block: int, to_block: int) -> list[dict[str, Any]]:
        self.log_queries.append((from_block, to_block))
        return [
            {"args": {"operatorId": KEYS[i].operator_id, "operator": "0x" + "00" * 20}}
            for i, b in self.registered_at.items()
            if from_block <= b <= to_block
        ]

    def client(self) -> Any:
        def view(value: Any) -> Any:
            return SimpleNamespace(call=lambda block_identifier="latest": value(block_identifier))

        def pubkeys(operator_id: bytes) -> Any:
            k = KEYS[self._index(operator_id)]
            g1, g2 = k.pubkey_g1, k.pubkey_g2
            return SimpleNamespace(call=lambda: ((g1.x, g1.y), ((g2.x_im, g2.x_re), (g2.y_im, g2.y_re))))

        functions = SimpleNamespace(
            getOperatorPubkeys=pubkeys,
            getCurrentQuorumBitmap=lambda o: view(lambda b: int(self._registered(self._index(o), b))),
            getCurrentStake=lambda o, q: view(lambda b: 10),
            operatorSocket=lambda o: view(lambda b: "grpc://x:1"),
            getCurrentTotalStake=lambda q: view(lambda b: 10 * sum(self._registered(i, b) for i in range(3))),
        )
        block = lambda n: {"hash": self.fork.to_bytes(4, "big") + n.to_bytes(28, "big")}  # noqa: E731
        return SimpleNamespace(
            w3=SimpleNamespace(eth=SimpleNamespace(block_number=300, get_block=block)),
            deployment=SimpleNamespace(start_block=1),
            registry=SimpleNamespace(events=SimpleNamespace(OperatorRegistered=self), functions=functions),
        )


def test_a_registration_a_reorg_moved_into_scanned_blocks_is_found() -> None:
    chain = ScriptedChain()
    reader = Web3OperatorSetReader(chain.client())
    assert len(reader.get_operator_set(200).operators) == 2
    chain.registered_at[2], chain.fork = 200, 1  # a one-block reorg at the head: block 200 now registers 2
    at_200 = reader.get_operator_set(200)  # the cached set had the old block hash: read again
    assert len(at_200.operators) == 3 and at_200.total_stakes == {0: 30}
    assert len(reader.get_operator_set(201).operators) == 3


def test_the_rescan_is_bounded_to_the_reorg_window() -> None:
    chain = ScriptedChain()
    reader = Web3OperatorSetReader(chain.client())
    reader.get_operator_set(20_000)
    chain.log_queries.clear()
    reader.get_operator_set(20_010)
    assert chain.log_queries == [(20_001 - REORG_RESCAN_BLOCKS, 20_010)]
    chain.log_queries.clear()
    reader.get_operator_set(20_010)  # same block, same hash: the cached set, no scan
    assert chain.log_queries == []
