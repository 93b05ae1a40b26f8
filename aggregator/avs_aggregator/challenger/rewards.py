"""Collecting the challenger's rewards that the insurance pool owes it.

An upheld challenge rewards its challenger at once only up to what the pool holds: on EigenLayer
with a slash resolution delay (v1.13) the slashed tokens reach the pool days after the resolution,
and the rest of the reward is owed (``InsurancePool.rewardOwed``; docs/contracts.md). At each poll
the challenger reads what it is owed and what the pool could pay it now (``rewardClaimable``: owed
rewards come after every owed payout to insured requesters), and sends ``claimReward`` once the
whole of it can be paid: one transaction per reward, not one per premium that trickles in. A part
that the pool has been able to pay for ``partial_after_seconds`` while the rest stays owed (a slash
that never reaches the pool, another claimant first in line for the rest) is claimed as it is: the
pool pays owed rewards in the order they are claimed, so money left there may go to someone else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from avs.chain.client import ContractRevertError
from avs.chain.insurance import InsuranceBuyer, InsuranceError

logger = logging.getLogger(__name__)


class RewardPool(Protocol):
    def get_reward_owed(self) -> int: ...

    def get_reward_claimable(self) -> int: ...

    def claim_reward(self) -> int: ...  # what the call paid; ContractRevertError when it cannot


class RewardCollector:
    """``tick()`` once a poll: claims what the pool owes this challenger once it can pay all of it, or
    the part it can pay once that part has waited ``partial_after_seconds`` (0: any part at once);
    answers the amount paid (0 when nothing is owed or nothing is claimed yet)."""

    def __init__(
        self, pool: RewardPool, partial_after_seconds: float = 86_400.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pool = pool
        self._partial_after = partial_after_seconds
        self._clock = clock
        self._partial_since: float | None = None  # when the pool could first pay a part, not all

    def tick(self) -> int:
        owed = self._pool.get_reward_owed()
        if owed == 0:
            self._partial_since = None
            return 0
        claimable = self._pool.get_reward_claimable()
        if claimable == 0:
            self._partial_since = None
            logger.debug("challenger reward owed; the pool cannot pay it yet", extra={"owed": str(owed)})
            return 0
        if claimable < owed and not self._partial_waited():
            logger.debug(
                "challenger reward owed; the pool can pay a part",
                extra={"owed": str(owed), "claimable": str(claimable)},
            )
            return 0
        try:
            paid = self._pool.claim_reward()
        except ContractRevertError as exc:
            if exc.name != "RewardNotFunded":
                raise
            logger.info("challenger reward owed; the pool cannot pay it yet", extra={"owed": str(owed)})
            return 0
        self._partial_since = None
        logger.info("challenger reward collected", extra={"paid": str(paid), "still_owed": str(owed - paid)})
        return paid

    def _partial_waited(self) -> bool:
        now = self._clock()
        if self._partial_since is None:
            self._partial_since = now
        return now - self._partial_since >= self._partial_after


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
