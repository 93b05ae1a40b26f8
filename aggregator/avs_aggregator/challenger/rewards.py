"""Collecting the challenger's rewards that the insurance pool owes it.

An upheld challenge rewards its challenger at once only up to what the pool holds: on EigenLayer
with a slash resolution delay (v1.13) the slashed tokens reach the pool days after the resolution,
and the rest of the reward is owed (``InsurancePool.rewardOwed``; docs/contracts.md). At each poll
the challenger reads what it is owed and what the pool could pay it now (``rewardClaimable``: owed
rewards come after every owed payout to insured requesters), and sends ``claimReward`` once the
whole of it can be paid: one transaction per reward, not one per premium that trickles in.
"""

from __future__ import annotations

import logging
from typing import Protocol

from avs.chain.client import ContractRevertError
from avs.chain.insurance import InsuranceBuyer, InsuranceError

logger = logging.getLogger(__name__)


class RewardPool(Protocol):
    def get_reward_owed(self) -> int: ...

    def get_reward_claimable(self) -> int: ...

    def claim_reward(self) -> int: ...  # what the call paid; ContractRevertError when it cannot


class RewardCollector:
    """``tick()`` once a poll: claims what the pool owes this challenger once it can pay all of it;
    answers the amount paid (0 when nothing is owed or the pool cannot pay it all yet)."""

    def __init__(self, pool: RewardPool) -> None:
        self._pool = pool

    def tick(self) -> int:
        owed = self._pool.get_reward_owed()
        if owed == 0:
            return 0
        if self._pool.get_reward_claimable() < owed:
            logger.debug("challenger reward owed; the pool cannot pay all of it yet", extra={"owed": str(owed)})
            return 0
        try:
            paid = self._pool.claim_reward()
        except ContractRevertError as exc:
            if exc.name != "RewardNotFunded":
                raise
            logger.info("challenger reward owed; the pool cannot pay it yet", extra={"owed": str(owed)})
            return 0
        logger.info("challenger reward collected", extra={"paid": str(paid), "still_owed": str(owed - paid)})
        return paid


class Web3RewardPool:
    """``RewardPool`` on the deployment's insurance pool through an ``InsuranceBuyer`` of the
    challenger's own client (its transaction sender keeps the nonces of every challenger
    transaction); a refusal is the contract's revert."""

    def __init__(self, pool: InsuranceBuyer) -> None:
        self._pool = pool

    def get_reward_owed(self) -> int:
        return self._pool.get_reward_owed()

    def get_reward_claimable(self) -> int:
        return self._pool.get_reward_claimable()

    def claim_reward(self) -> int:
        try:
            return self._pool.claim_reward().paid
        except InsuranceError as exc:
            if isinstance(exc.__cause__, ContractRevertError):
                raise exc.__cause__ from None
            raise
