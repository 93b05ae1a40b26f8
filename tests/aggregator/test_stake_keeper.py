"""The stake keeper's schedule against a fake registry: a quorum whose refresh fails is retried at the
next block and does not keep the others from being refreshed."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from avs_aggregator.keeper import MAX_EJECTIONS_PER_REFRESH, StakeKeeper
from avs_aggregator.ports import OperatorSet
from tests.aggregator.fakes import FakeNetwork


@dataclass
class FakeRegistry:
    """``OperatorRegistry``'s freshness views; ``updateOperatorsForQuorum`` records the refresh."""

    head: int = 100
    max_age: int = 20
    last: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    members: int = 2
    minimum: int = 10**18

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
            ejectUnderstaked=lambda address, q: ("eject", q, address),
            quorumConfig=lambda q: self.call((32, self.minimum)),
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


def test_members_with_zero_stake_are_ejected_after_a_refresh_and_one_failure_does_not_stop_the_rest() -> None:
    registry = FakeRegistry(last={0: 0, 1: 100}, members=3)  # quorum 1 is not due
    network = FakeNetwork([{0: 10}, {0: 0}, {0: 0}])  # two members recorded below the minimum
    client: Any = SimpleNamespace(w3=SimpleNamespace(eth=registry), registry=registry)
    registry.block_number = registry.head  # type: ignore[attr-defined]
    members = network.get_operator_set(0).operators
    understaked = sorted((o.address for o in members if o.stakes[0] == 0), key=lambda a: int(a, 16))
    sent: list[tuple[str, int, Any]] = []

    def send(fn: Any) -> None:
        sent.append(fn)
        if fn[0] == "eject" and fn[2] == understaked[0]:
            raise RuntimeError("StakeNotBelowMinimum")  # it topped up since

    class Reader:
        def get_operator_set(self, block: int) -> OperatorSet:
            return network.get_operator_set(block)

    keeper = StakeKeeper(client, Reader(), send, recheck_seconds=0.0, eject_understaked=True)
    assert keeper.tick() == [0]
    assert [fn[0] for fn in sent] == ["update", "eject", "eject"]
    assert [fn[2] for fn in sent[1:]] == understaked  # the second was still sent after the first failed
    assert keeper.eject(0, registry.head) == understaked[1:]  # what it returns: those ejected
    sent.clear()
    registry.last[0] = 0  # due again
    StakeKeeper(client, Reader(), send, recheck_seconds=0.0).tick()
    assert [fn[0] for fn in sent] == ["update"]  # no ejections unless asked for


def test_ejections_are_capped_per_refresh_and_skipped_without_a_minimum() -> None:
    registry = FakeRegistry()
    network = FakeNetwork([{0: 10}] + [{0: 0}] * (MAX_EJECTIONS_PER_REFRESH + 2))
    client: Any = SimpleNamespace(w3=SimpleNamespace(eth=registry), registry=registry)
    sent: list[Any] = []

    class Reader:
        def get_operator_set(self, block: int) -> OperatorSet:
            return network.get_operator_set(block)

    keeper = StakeKeeper(client, Reader(), sent.append, eject_understaked=True)
    assert len(keeper.eject(0, registry.head)) == MAX_EJECTIONS_PER_REFRESH == len(sent)  # the rest next time
    registry.minimum = 0  # nobody is below a minimum of zero (the contract would revert every one)
    assert keeper.eject(0, registry.head) == [] and len(sent) == MAX_EJECTIONS_PER_REFRESH


def test_a_refresh_by_someone_else_is_followed_by_ejections_once() -> None:
    """Another party (the challenger's keeper, anyone) refreshes quorum 0 first, every time: the
    keeper is never due itself, yet the members that refresh recorded at zero are ejected, once per
    refresh."""
    registry = FakeRegistry(last={0: 95, 1: 100}, members=3)  # neither quorum is due
    network = FakeNetwork([{0: 10}, {0: 0}, {0: 0}])
    client: Any = SimpleNamespace(w3=SimpleNamespace(eth=registry), registry=registry)
    registry.block_number = registry.head  # type: ignore[attr-defined]
    sent: list[Any] = []

    class Reader:
        def get_operator_set(self, block: int) -> OperatorSet:
            return network.get_operator_set(block)

    keeper = StakeKeeper(client, Reader(), sent.append, recheck_seconds=0.0, eject_understaked=True)
    assert keeper.tick() == []  # nothing refreshed by us ...
    assert [fn[0] for fn in sent] == ["eject", "eject"]  # ... but the stakes recorded at 95 are acted on
    sent.clear()
    registry.head += 1
    registry.block_number = registry.head  # type: ignore[attr-defined]
    assert keeper.tick() == [] and sent == []  # the same refresh is not scanned twice
    registry.last[0] = registry.head  # someone refreshes again
    registry.head += 1
    registry.block_number = registry.head  # type: ignore[attr-defined]
    reads_fail = [True]
    real_read = network.get_operator_set

    def flaky(block: int) -> OperatorSet:
        if reads_fail.pop(0) if reads_fail else False:
            raise ConnectionError("node erring")
        return real_read(block)

    network.get_operator_set = flaky  # type: ignore[method-assign, assignment]
    keeper.tick()
    assert sent == []  # the scan failed: this refresh is not marked scanned ...
    registry.head += 1
    registry.block_number = registry.head  # type: ignore[attr-defined]
    keeper.tick()
    assert [fn[0] for fn in sent] == ["eject", "eject"]  # ... and is scanned at the next tick
