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


def test_an_owed_reward_is_collected_as_the_pool_can_pay_it() -> None:
    pool = FakePool(owed=10, funded=0)
    collector = RewardCollector(pool)
    assert collector.tick() == 0  # the slash is not cleared to the pool yet: asked again next poll
    pool.funded = 4
    assert collector.tick() == 4
    pool.funded = 100
    assert collector.tick() == 6
    assert (pool.owed, pool.claims) == (0, [4, 6])
    assert collector.tick() == 0


def test_another_refusal_is_raised() -> None:
    with pytest.raises(ContractRevertError):
        RewardCollector(FakePool(owed=1, refusal="SomethingElse")).tick()
