"""Clearing slashed funds to the insurance pool.

A slash only marks the operator's shares as redistributable; EigenLayer's permissionless
``StrategyManager.clearBurnOrRedistributableShares`` then sends their tokens to the operator set's
redistribution recipient, the insurance pool. The registry calls it in the slashing transaction;
where that fails (since EigenLayer v1.13 a slash is cleared only after its slash resolution delay,
about a week) it emits ``SlashedFundsNotCleared(quorumNumber, slashId)``, and the payouts and
challenger rewards of the fault stay owed until someone clears the slash. EigenLayer runs a keeper
that does; the challenger does it too, so that the pool does not hang on that keeper: each poll it
reads the new events, and for each slash still holding shares it simulates the clear and sends it
once the call would succeed (the delay over); when the whole slash cannot be cleared, each strategy
is cleared on its own, as the registry does, so that one token whose transfer reverts holds back only
its own tokens. After a restart it reads the events of the last ``lookback_blocks`` again.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from avs.chain.abi import load_abi
from avs.chain.client import ContractRevertError, Web3AvsClient
from avs.monitoring.chain_exporter import compute_block_ranges, get_logs_splitting

logger = logging.getLogger(__name__)

Slash = tuple[int, int]  # (quorum number, slash id)
LOG_CHUNK_BLOCKS = 10_000


class SlashChain(Protocol):
    def get_block_number(self) -> int: ...

    def find_not_cleared(self, from_block: int, to_block: int) -> list[Slash]: ...  # SlashedFundsNotCleared

    def get_pending_shares(self, slash: Slash) -> int: ...  # shares of the slash not sent out yet

    def clear(self, slash: Slash) -> int: ...  # transactions sent for what can be cleared now (simulated first)


class SlashClearer:
    """``tick()`` once a poll: reads new ``SlashedFundsNotCleared`` events up to ``confirmations``
    blocks below the head and clears every slash that can be cleared now; answers how many it cleared."""

    def __init__(self, chain: SlashChain, lookback_blocks: int = 100_000, confirmations: int = 0) -> None:
        self._chain = chain
        self._lookback = lookback_blocks
        self._confirmations = confirmations
        self._next_block: int | None = None
        self._pending: set[Slash] = set()

    @property
    def pending(self) -> int:
        """Slashes seen not cleared, whose shares were still held at the last tick."""
        return len(self._pending)

    def tick(self) -> int:
        self._scan()
        cleared = 0
        for slash in sorted(self._pending):
            if self._chain.get_pending_shares(slash) == 0:  # cleared by someone else (or reorged away)
                self._pending.discard(slash)
                continue
            try:
                sent = self._chain.clear(slash)
            except ContractRevertError as exc:  # someone else's clear was mined first
                logger.info("clearing a slash was refused", extra={"slash": list(slash), "error": str(exc)})
                continue
            if not sent:  # within its resolution delay, most likely: asked again next poll
                continue
            if self._chain.get_pending_shares(slash) != 0:  # a strategy that cannot be cleared yet
                logger.info("slash cleared in part", extra={"quorum": slash[0], "slash_id": slash[1]})
                continue
            self._pending.discard(slash)
            cleared += 1
            logger.info("slashed funds cleared to the pool", extra={"quorum": slash[0], "slash_id": slash[1]})
        return cleared

    def _scan(self) -> None:
        last = self._chain.get_block_number() - self._confirmations
        if self._next_block is None:
            self._next_block = max(0, last - self._lookback + 1)
        if last < self._next_block:
            return
        for lo, hi in compute_block_ranges(self._next_block, last, LOG_CHUNK_BLOCKS):
            found = self._chain.find_not_cleared(lo, hi)
            if found:
                logger.info("slashed funds not cleared to the pool", extra={"slashes": [list(s) for s in found]})
            self._pending.update(found)
            self._next_block = hi + 1


class Web3SlashChain:
    """``SlashChain`` over the registry's events and the deployment's StrategyManager, sending through
    the challenger's client (its transaction sender)."""

    def __init__(self, client: Web3AvsClient, strategy_manager: str) -> None:
        self._client = client
        w3 = client.w3
        self._registry = client.registry
        self._manager: Any = w3.eth.contract(
            address=w3.to_checksum_address(strategy_manager), abi=load_abi("LocalRestakingCore")
        )

    def _set(self, quorum: int) -> tuple[str, int]:
        return (self._registry.address, quorum)  # the registry is the AVS of its operator sets

    def get_block_number(self) -> int:
        return int(self._client.w3.eth.block_number)

    def find_not_cleared(self, from_block: int, to_block: int) -> list[Slash]:
        reader = self._registry.events.SlashedFundsNotCleared()
        logs = get_logs_splitting(
            lambda lo, hi: list(reader.get_logs(from_block=lo, to_block=hi)), from_block, to_block
        )
        return [(int(log["args"]["quorumNumber"]), int(log["args"]["slashId"])) for log in logs]

    def get_pending_shares(self, slash: Slash) -> int:
        return sum(self._get_pending(slash).values())

    def _get_pending(self, slash: Slash) -> dict[str, int]:
        """The strategies of ``slash`` still holding shares, and those shares."""
        fn = self._manager.functions.getBurnOrRedistributableShares(self._set(slash[0]), slash[1])
        strategies, shares = fn.call()
        return {str(s): int(n) for s, n in zip(strategies, shares, strict=True) if int(n)}

    def clear(self, slash: Slash) -> int:
        """The whole slash if that call would succeed, else each strategy whose own call would."""
        manager, operator_set = self._manager.functions, self._set(slash[0])
        whole = manager.clearBurnOrRedistributableShares(operator_set, slash[1])
        if self._would_succeed(whole):
            self._client.transact(whole)
            return 1
        sent = 0
        for strategy in self._get_pending(slash):
            one = manager.clearBurnOrRedistributableSharesByStrategy(operator_set, slash[1], strategy)
            if self._would_succeed(one):
                self._client.transact(one)
                sent += 1
        return sent

    def _would_succeed(self, fn: Any) -> bool:
        """The call, simulated, would send some tokens: it does not revert (SlashNotResolved, a token
        whose transfer reverts) and returns an amount above 0 (a StrategyManager that answers 0 within
        the delay rather than reverting would otherwise get a transaction every poll)."""
        sender = self._client.account
        try:
            sent = fn.call({"from": sender.address} if sender is not None else {})
        except Exception:  # asked again next poll
            return False
        return (sum(int(a) for a in sent) if isinstance(sent, (list, tuple)) else int(sent)) > 0
