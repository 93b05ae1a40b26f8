"""The challenger clears slashed funds the registry could not send to the pool (EigenLayer's slash
resolution delay), once they can be. The anvil test of the owed flow (tests/test_insurance_anvil.py)
clears real slashes of the local core through ``Web3SlashChain``."""

from __future__ import annotations

from dataclasses import dataclass, field

from avs.chain.client import ContractRevertError
from avs_aggregator.challenger.slashes import LOG_CHUNK_BLOCKS, Slash, SlashClearer


@dataclass
class FakeChain:
    head: int = 0
    events: dict[int, list[Slash]] = field(default_factory=dict)  # block -> SlashedFundsNotCleared
    shares: dict[Slash, int] = field(default_factory=dict)
    clearable_at: dict[Slash, int] = field(default_factory=dict)
    stuck: dict[Slash, int] = field(default_factory=dict)  # shares of a strategy whose token cannot move
    scanned: list[tuple[int, int]] = field(default_factory=list)
    cleared: list[Slash] = field(default_factory=list)
    raced: bool = False  # someone else's clear mined between the simulation and ours

    def get_block_number(self) -> int:
        return self.head

    def find_not_cleared(self, from_block: int, to_block: int) -> list[Slash]:
        self.scanned.append((from_block, to_block))
        return [s for b in range(from_block, to_block + 1) for s in self.events.get(b, [])]

    def get_pending_shares(self, slash: Slash) -> int:
        return self.shares.get(slash, 0)

    def clear(self, slash: Slash) -> int:
        if self.head < self.clearable_at.get(slash, 0):
            return 0  # the simulation reverts: nothing sent
        if self.raced:
            self.shares[slash] = 0
            raise ContractRevertError("SlashNotFound", ())
        self.shares[slash] = self.stuck.get(slash, 0)
        self.cleared.append(slash)
        return 1


def test_a_slash_not_cleared_is_cleared_once_its_delay_is_over() -> None:
    chain = FakeChain(head=100, events={90: [(0, 7)]}, shares={(0, 7): 5}, clearable_at={(0, 7): 110})
    clearer = SlashClearer(chain, lookback_blocks=50)
    assert clearer.tick() == 0 and clearer.pending == 1  # within the delay: nothing sent
    assert chain.scanned == [(51, 100)]
    chain.head = 109
    assert clearer.tick() == 0 and chain.scanned[-1] == (101, 109)
    chain.head = 110
    assert clearer.tick() == 1 and chain.cleared == [(0, 7)] and clearer.pending == 0
    chain.head = 111
    assert clearer.tick() == 0 and chain.cleared == [(0, 7)]


def test_slashes_cleared_by_others_or_gone_are_dropped_and_a_lost_race_is_no_error() -> None:
    events = {5: [(0, 1), (1, 1)], 6: [(0, 2)]}
    chain = FakeChain(head=10, events=events, shares={(0, 1): 3, (0, 2): 4}, clearable_at={(0, 1): 99, (0, 2): 99})
    clearer = SlashClearer(chain, lookback_blocks=100)
    assert clearer.tick() == 0 and clearer.pending == 2  # (1, 1) holds no shares (EigenLayer's keeper was first)
    chain.shares[(0, 1)] = 0
    assert clearer.tick() == 0 and clearer.pending == 1
    chain.head, chain.raced = 99, True
    assert clearer.tick() == 0 and clearer.pending == 1  # refused: asked again, then seen cleared
    assert clearer.tick() == 0 and clearer.pending == 0 and chain.cleared == []


def test_events_are_read_in_chunks_below_the_confirmations() -> None:
    chain = FakeChain(head=3 * LOG_CHUNK_BLOCKS, events={LOG_CHUNK_BLOCKS + 3: [(0, 9)]}, shares={(0, 9): 1})
    clearer = SlashClearer(chain, lookback_blocks=10 * LOG_CHUNK_BLOCKS, confirmations=2)
    assert clearer.tick() == 1 and chain.cleared == [(0, 9)]
    assert chain.scanned == [
        (0, LOG_CHUNK_BLOCKS - 1),
        (LOG_CHUNK_BLOCKS, 2 * LOG_CHUNK_BLOCKS - 1),
        (2 * LOG_CHUNK_BLOCKS, 3 * LOG_CHUNK_BLOCKS - 2),
    ]
    chain.head += 1
    clearer.tick()
    assert chain.scanned[-1] == (3 * LOG_CHUNK_BLOCKS - 1, 3 * LOG_CHUNK_BLOCKS - 1)


def test_a_slash_cleared_in_part_stays_pending_until_the_rest_moves() -> None:
    chain = FakeChain(head=10, events={5: [(0, 3)]}, shares={(0, 3): 10}, stuck={(0, 3): 4})
    clearer = SlashClearer(chain, lookback_blocks=100)
    assert clearer.tick() == 0 and clearer.pending == 1 and chain.shares[(0, 3)] == 4
    chain.stuck.clear()  # the token moves again
    assert clearer.tick() == 1 and clearer.pending == 0 and chain.shares[(0, 3)] == 0
