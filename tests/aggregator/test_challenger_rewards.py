"""The challenger collects the rewards the insurance pool owes it (owed when the pool could not pay
them at the fraud's resolution: EigenLayer's slash resolution delay). The anvil test of the owed
flow (tests/test_insurance_anvil.py) collects one through ``Web3RewardPool``."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from avs.chain.client import ContractRevertError
from avs_aggregator.challenger.rewards import RewardCollector


@dataclass
class FakePool:
    owed: int = 0
    funded: int = 0  # what the pool could pay now
    claims: list[int] = field(default_factory=list)
    refusal: str = "RewardNotFunded"

    def get_reward_owed(self) -> int:
        return self.owed

    def get_reward_claimable(self) -> int:
        return min(self.owed, self.funded)

    def claim_reward(self) -> int:
        paid = min(self.owed, self.funded)
        if paid == 0:
            raise ContractRevertError(self.refusal, ("0x", self.owed))
        self.owed -= paid
        self.funded -= paid
        self.claims.append(paid)
        return paid


def test_nothing_owed_sends_nothing() -> None:
    pool = FakePool()
    assert RewardCollector(pool).tick() == 0
    assert pool.claims == []


def test_an_owed_reward_is_collected_once_the_pool_can_pay_all_of_it() -> None:
    pool = FakePool(owed=10, funded=0)
    collector = RewardCollector(pool)
    assert collector.tick() == 0  # the slash is not cleared to the pool yet: asked again next poll
    pool.funded = 4
    assert collector.tick() == 0  # a premium trickled in: not worth a transaction of its own (yet)
    pool.funded = 100
    assert collector.tick() == 10
    assert (pool.owed, pool.claims) == (0, [10])
    assert collector.tick() == 0


def test_a_refusal_is_waited_out_and_another_raised() -> None:
    class Racing(FakePool):  # the pool paid someone else between the read and the claim
        def get_reward_claimable(self) -> int:
            return self.owed

    assert RewardCollector(Racing(owed=1)).tick() == 0
    with pytest.raises(ContractRevertError):
        RewardCollector(Racing(owed=1, refusal="SomethingElse")).tick()


def test_a_part_the_pool_can_pay_is_claimed_once_it_has_waited() -> None:
    """A slash that never reaches the pool would leave the reward unclaimed for ever, and the pool
    pays owed rewards as they are claimed: a part payable for a day is taken."""
    now = [0.0]
    pool = FakePool(owed=10, funded=4)
    collector = RewardCollector(pool, partial_after_seconds=100, clock=lambda: now[0])
    assert collector.tick() == 0
    now[0] = 99.0
    assert collector.tick() == 0
    now[0] = 100.0
    assert collector.tick() == 4 and pool.owed == 6
    pool.funded = 1
    assert collector.tick() == 0  # a new part waits its own while
    pool.funded = 0
    now[0] = 250.0
    assert collector.tick() == 0  # nothing payable: the wait starts again when something is
    pool.funded = 2
    assert collector.tick() == 0
    now[0] = 349.0
    assert collector.tick() == 0
    pool.funded = 50
    assert collector.tick() == 6  # all of it payable: at once
    assert pool.claims == [4, 6] and pool.owed == 0


def test_with_no_wait_any_part_is_claimed_at_once() -> None:
    pool = FakePool(owed=10, funded=3)
    assert RewardCollector(pool, partial_after_seconds=0).tick() == 3
    assert pool.claims == [3]
