"""The stake keeper: keeps the registry's recorded stakes fresh enough for certificates.

Certificates (certifyBatch, rejection proofs, escalation certificates) refuse a quorum whose stakes
were last refreshed in full more than the registry's ``maxStakeAgeBlocks`` before their reference
block (``StaleStakes``). A full refresh is the permissionless
``OperatorRegistry.updateOperatorsForQuorum(quorum, operators)`` with the quorum's complete operator
list, ascending by address. The leader's batch loop calls ``StakeKeeper.tick()`` every poll; it
refreshes a quorum once half its allowed stake age has passed (``refresh_fraction``), so a refresh
that fails (an operator registering in the same block changes the count) has the other half to be
retried, and it refreshes at once at start when a quorum is already stale. ``maxStakeAgeBlocks`` = 0
(no freshness bound) needs no refresh.

With ``eject_understaked``, every full refresh of a quorum's stakes (ours, or anyone's: another
party's keeper, the challenger's, refreshing first must not starve ejection) is followed by the
permissionless ``OperatorRegistry.ejectUnderstaked(operator, quorum)`` for each member whose
refreshed stake is zero (below the quorum's minimum): such a member has no say in certificates but
holds one of the quorum's ``maxOperatorCount`` places. The contract re-reads the stake, so a member
that has topped up since is not ejected (its transaction reverts and is logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from web3.contract.contract import ContractFunction

from avs.chain.client import Web3AvsClient
from avs_aggregator.ports import OperatorSet

logger = logging.getLogger(__name__)

MAX_QUORUM_BITS = 192
# Ejections are sent one by one from the batch loop: a few per refresh, the rest at the next ones.
MAX_EJECTIONS_PER_REFRESH = 4


class OperatorSetSource(Protocol):
    def get_operator_set(self, reference_block: int) -> OperatorSet: ...


class StakeKeeper:
    """Sends ``updateOperatorsForQuorum`` for each quorum whose last full refresh is older than
    ``refresh_fraction`` of ``maxStakeAgeBlocks``.

    ``send`` sends a contract call and waits for its receipt (the aggregator's leader-only
    ``TransactionSender.send``). Chain state is re-read when a quorum comes due, or every
    ``recheck_seconds`` (governance may lower the age, another party may refresh)."""

    def __init__(
        self,
        client: Web3AvsClient,
        operators: OperatorSetSource,
        send: Callable[[ContractFunction], Any],
        quorums: Sequence[int] | None = None,
        refresh_fraction: float = 0.5,
        recheck_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        eject_understaked: bool = False,
    ) -> None:
        if not 0 < refresh_fraction <= 1:
            raise ValueError("refresh_fraction must be in (0, 1]")
        self.client = client
        self.operators = operators
        self.send = send
        self.quorums = tuple(quorums) if quorums is not None else None
        self.refresh_fraction = refresh_fraction
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self.eject_understaked = eject_understaked
        self._next_block = 0  # no chain reads before this block ...
        self._next_time = float("-inf")  # ... or this time
        self._ejection_scanned: dict[int, int] = {}  # quorum -> the refresh (its block) scanned for ejections

    def tick(self) -> list[int]:
        """Refreshes the quorums that are due; returns them."""
        head = int(self.client.w3.eth.block_number)
        if head < self._next_block and self.clock() < self._next_time:
            return []
        registry = self.client.registry.functions
        max_age = int(registry.maxStakeAgeBlocks().call())
        self._next_time = self.clock() + self.recheck_seconds
        if max_age == 0:
            self._next_block = 2**63
            return []
        margin = max(1, int(max_age * self.refresh_fraction))
        refreshed: list[int] = []
        next_due: int | None = None
        for quorum in self._get_quorums():
            last = int(registry.quorumUpdateBlockNumber(quorum).call())
            due = last + margin
            if head >= due:
                try:
                    self.refresh(quorum, head)
                except Exception as exc:  # one quorum failing (gas, a registration in between) must
                    # not keep the others from being refreshed: this one is tried again next block
                    logger.warning("quorum stake refresh failed", extra={"quorum": quorum, "error": str(exc)})
                    due = head + 1
                else:
                    refreshed.append(quorum)
                    due = head + 1 + margin
                    if self.eject_understaked:
                        last = int(registry.quorumUpdateBlockNumber(quorum).call())  # ours, just mined
            # After every refresh, ours or anyone else's (or the last one before we started):
            # a scan that failed (the node erring) is tried again at the next tick.
            unscanned = self.eject_understaked and self._ejection_scanned.get(quorum) != last
            if unscanned and self._eject_quietly(quorum, int(self.client.w3.eth.block_number)):
                self._ejection_scanned[quorum] = last
            next_due = due if next_due is None else min(next_due, due)
        self._next_block = next_due if next_due is not None else head + margin
        return refreshed

    def refresh(self, quorum: int, block: int) -> None:
        """``updateOperatorsForQuorum(quorum, members at block)``; raises when the transaction fails."""
        members = self.get_members(quorum, block)
        expected = int(self.client.registry.functions.operatorCount(quorum).call(block_identifier=block))
        if len(members) != expected:
            found = f"found {len(members)} operators of quorum {quorum} at block {block}"
            raise RuntimeError(f"{found}, expected {expected}")
        logger.info("refreshing quorum stakes", extra={"quorum": quorum, "operators": len(members), "block": block})
        self.send(self.client.registry.functions.updateOperatorsForQuorum(quorum, members))

    def _eject_quietly(self, quorum: int, block: int) -> bool:
        """``eject``, logged rather than raised (a refresh stands whatever happens to the ejections);
        False when the scan itself failed."""
        try:
            self.eject(quorum, block)
        except Exception as exc:
            logger.warning("ejections failed", extra={"quorum": quorum, "error": str(exc)})
            return False
        return True

    def eject(self, quorum: int, block: int) -> list[str]:
        """``ejectUnderstaked`` for (at most ``MAX_EJECTIONS_PER_REFRESH`` of) the members recorded with
        zero stake at ``block``; returns those ejected. One that fails (it topped up, it left
        meanwhile) is logged and does not stop the rest. A quorum without a minimum has nobody below it."""
        _, minimum_stake = self.client.registry.functions.quorumConfig(quorum).call()
        if int(minimum_stake) == 0:
            return []
        operator_set = self.operators.get_operator_set(block)
        understaked = [op.address for op in operator_set.operators if op.stakes.get(quorum) == 0]
        ejected = []
        for address in sorted(understaked, key=lambda a: int(a, 16))[:MAX_EJECTIONS_PER_REFRESH]:
            try:
                self.send(self.client.registry.functions.ejectUnderstaked(address, quorum))
            except Exception as exc:
                logger.warning("ejection failed", extra={"quorum": quorum, "operator": address, "error": str(exc)})
                continue
            logger.info("ejected an operator below the minimum stake", extra={"quorum": quorum, "operator": address})
            ejected.append(address)
        return ejected

    def get_members(self, quorum: int, block: int) -> list[str]:
        """The quorum's operators at ``block``, ascending by address (what the registry requires)."""
        operator_set = self.operators.get_operator_set(block)
        members = [op.address for op in operator_set.operators if quorum in op.stakes]
        return sorted(members, key=lambda address: int(address, 16))

    def _get_quorums(self) -> list[int]:
        bitmap = int(self.client.registry.functions.quorumBitmap().call())
        existing = [q for q in range(MAX_QUORUM_BITS) if bitmap >> q & 1]
        if self.quorums is None:
            return existing
        return [q for q in existing if q in self.quorums]
