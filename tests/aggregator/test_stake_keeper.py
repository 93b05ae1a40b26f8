"""The stake keeper's schedule against a fake registry: a quorum whose refresh fails is retried at the
next block and does not keep the others from being refreshed."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from avs_aggregator.keeper import StakeKeeper
from avs_aggregator.ports import OperatorSet
from tests.aggregator.fakes import FakeNetwork


@dataclass
class FakeRegistry:
    """``OperatorRegistry``'s freshness views; ``updateOperatorsForQuorum`` records the refresh."""

    head: int = 100
    max_age: int = 20
    last: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    members: int = 2

    def call(self, value: Any) -> Any:
        return SimpleNamespace(call=lambda block_identifier=None: value)

    @property
    def functions(self) -> Any:
        return SimpleNamespace(
            maxStakeAgeBlocks=lambda: self.call(self.max_age),
            quorumUpdateBlockNumber=lambda q: self.call(self.last[q]),
            quorumBitmap=lambda: self.call(0b11),
            operatorCount=lambda q: self.call(self.members),
            updateOperatorsForQuorum=lambda q, members: ("update", q, tuple(members)),
        )


def test_a_quorum_that_fails_to_refresh_does_not_starve_the_others() -> None:
    registry = FakeRegistry()
    network = FakeNetwork([{0: 10, 1: 10}, {0: 10, 1: 10}])
    client: Any = SimpleNamespace(w3=SimpleNamespace(eth=registry), registry=registry)
    registry.block_number = registry.head  # type: ignore[attr-defined]
    sent: list[int] = []
    attempts: list[int] = []

    def send(fn: Any) -> None:  # what updateOperatorsForQuorum built: ("update", quorum, members)
        _, quorum, members = fn
        attempts.append(quorum)
        if quorum == 0:
            raise RuntimeError("out of gas")
        assert len(members) == 2 and list(members) == sorted(members, key=lambda a: int(a, 16))
        sent.append(quorum)
        registry.last[quorum] = registry.head

    class Reader:
        def get_operator_set(self, block: int) -> OperatorSet:
            return network.get_operator_set(block)

    keeper = StakeKeeper(client, Reader(), send, recheck_seconds=0.0)
    assert keeper.tick() == [1]  # quorum 0 failed, quorum 1 was still refreshed
    assert (attempts, sent) == ([0, 1], [1])
    registry.head += 1
    registry.block_number = registry.head  # type: ignore[attr-defined]
    assert keeper.tick() == []  # quorum 0 tried again at the next block (and fails again); 1 not due
    assert (attempts, sent) == ([0, 1, 0], [1])
