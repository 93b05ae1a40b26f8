"""``TransactionSender`` over a scripted node: nonces after a give-up or a reorg, and the leader
fence at every broadcast. (Fee bumps and reorgs on a real anvil: test_integration_anvil and
tests/resilience.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
import rlp  # type: ignore[import-untyped]
from eth_account import Account
from web3 import Web3
from web3.exceptions import TransactionNotFound

from avs.chain.client import Web3AvsClient
from avs_aggregator.app import LeaderOnlySender
from avs_aggregator.leader import NotLeaderError
from avs_aggregator.txsender import SenderSettings, TransactionFailedError, TransactionSender

ACCOUNT = Account.from_key("0x" + "11" * 32)
QUICK = SenderSettings(receipt_timeout=0, max_bumps=2, poll_seconds=0)


def decode(raw: bytes) -> tuple[int, int]:
    """(nonce, maxFeePerGas) of a signed EIP-1559 transaction."""
    fields = rlp.decode(raw[1:])
    return int.from_bytes(fields[1], "big"), int.from_bytes(fields[3], "big")


class ScriptedNode:
    """One account's nonces, a mempool and receipts; with ``mine`` False everything stays pending."""

    def __init__(self) -> None:
        self.mined_nonce = 7
        self.head = 10
        self.mine = True
        self.refuse: str | None = None
        self.pending: set[int] = set()
        self.receipts: dict[bytes, dict[str, Any]] = {}
        self.broadcasts: list[tuple[int, int]] = []  # (nonce, maxFeePerGas)

    @property
    def block_number(self) -> int:
        self.head += 1
        return self.head

    def get_transaction_count(self, address: str, tag: str) -> int:
        count = self.mined_nonce
        while tag == "pending" and count in self.pending:
            count += 1
        return count

    def get_block(self, tag: Any) -> dict[str, Any]:
        return {"baseFeePerGas": 10**9}

    def send_raw_transaction(self, raw: bytes) -> bytes:
        nonce, fee = decode(raw)
        self.broadcasts.append((nonce, fee))
        if self.refuse:
            raise ValueError(self.refuse)
        if nonce < self.mined_nonce:
            raise ValueError(f"nonce too low: next nonce {self.mined_nonce}, tx nonce {nonce}")
        tx_hash = bytes(Web3.keccak(raw))
        if not self.mine:
            self.pending.add(nonce)
            return tx_hash
        receipt = {"transactionHash": tx_hash, "blockNumber": self.head, "blockHash": b"A" * 32, "status": 1}
        self.receipts[tx_hash] = {**receipt, "gasUsed": 21_000}
        self.mined_nonce = max(self.mined_nonce, nonce + 1)
        self.pending.discard(nonce)
        return tx_hash

    def get_transaction_receipt(self, tx_hash: bytes) -> dict[str, Any]:
        if bytes(tx_hash) in self.receipts:
            return self.receipts[bytes(tx_hash)]
        raise TransactionNotFound("none")


class ScriptedClient:
    def __init__(self) -> None:
        self.node = ScriptedNode()
        self.w3 = type("W3", (), {"eth": self.node})()

    def build_transaction(self, fn: Any, params: dict[str, Any]) -> dict[str, Any]:
        fees = {"maxFeePerGas": 2 * 10**9, "maxPriorityFeePerGas": 10**9}
        return {**params, **fees, "to": "0x" + "22" * 20, "value": 0, "gas": 50_000, "chainId": 1, "data": b""}


def make_sender(client: ScriptedClient, settings: SenderSettings = QUICK) -> TransactionSender:
    return TransactionSender(cast(Web3AvsClient, client), ACCOUNT, settings, sleep=lambda _: None)


def test_a_nonce_given_up_unmined_is_taken_over_by_the_next_send() -> None:
    """Its versions are still in the mempool: a send on the next nonce would queue behind it, and
    both could be mined later (the same call twice). The next send replaces it instead."""
    client = ScriptedClient()
    sender = make_sender(client)
    client.node.mine = False
    with pytest.raises(TransactionFailedError, match="nonce 7 not mined"):
        sender.send(cast(Any, None))
    last_fee = client.node.broadcasts[-1][1]
    client.node.mine = True
    sent = sender.send(cast(Any, None))
    nonce, fee = client.node.broadcasts[-1]
    assert nonce == 7 and fee > last_fee and sent.bumps == 0
    sender.send(cast(Any, None))
    assert client.node.broadcasts[-1][0] == 8  # mined: back to the next nonce


@pytest.mark.parametrize(
    ("after_the_reorg", "failure"),
    [
        # re-broadcast refused: its fee cap is now below the base fee
        ({"refuse": "max fee per gas less than block base fee"}, "refused again"),
        # re-broadcast and still in the mempool when the send gives up: a next send on the following
        # nonce would queue behind it, and the given-up call could be mined beside its retry
        ({"mine": False}, "not mined again"),
    ],
)
def test_a_reorged_transaction_not_mined_again_leaves_its_nonce_to_the_next_send(
    after_the_reorg: dict[str, Any], failure: str
) -> None:
    client = ScriptedClient()
    node = client.node
    sender = make_sender(client, SenderSettings(confirmations=2, poll_seconds=0, receipt_timeout=0, max_bumps=1))
    reads = {"count": 0}
    original = node.get_transaction_receipt

    def reorged(tx_hash: bytes) -> dict[str, Any]:
        reads["count"] += 1
        if reads["count"] == 2:  # the confirmation's re-read: the block is gone
            node.receipts.clear()
            node.mined_nonce = 7
            for name, value in after_the_reorg.items():
                setattr(node, name, value)
            raise TransactionNotFound("reorged")
        return original(tx_hash)

    node.get_transaction_receipt = reorged  # type: ignore[method-assign]
    with pytest.raises(TransactionFailedError, match=failure):
        sender.send(cast(Any, None))
    node.get_transaction_receipt, node.refuse, node.mine = original, None, True  # type: ignore[method-assign]
    sender.send(cast(Any, None))
    assert node.broadcasts[-1][0] == 7 and node.mined_nonce == 8


def test_a_demoted_sender_stops_bumping_and_a_queued_send_does_not_start() -> None:
    client = ScriptedClient()
    client.node.mine = False
    leading = [True]
    original = client.node.send_raw_transaction

    def broadcast_then_demote(raw: bytes) -> bytes:
        tx_hash = original(raw)
        leading[0] = False  # the lease is lost right after the first broadcast
        return tx_hash

    client.node.send_raw_transaction = broadcast_then_demote  # type: ignore[method-assign]
    settings = SenderSettings(receipt_timeout=0, max_bumps=5, poll_seconds=0)
    sender = LeaderOnlySender(cast(Web3AvsClient, client), ACCOUNT, settings, lambda: leading[0])
    with pytest.raises(NotLeaderError):
        sender.send(cast(Any, None))
    assert len(client.node.broadcasts) == 1  # no fee bump after the demotion
    with pytest.raises(NotLeaderError):
        sender.send(cast(Any, None))
    leading[0] = True
    client.node.mine, client.node.send_raw_transaction = True, original  # type: ignore[method-assign]
    sender.send(cast(Any, None))
    assert client.node.broadcasts[-1][0] == 7  # re-elected: the nonce left in the mempool is taken over


def test_a_given_up_nonce_mined_before_its_takeover_moves_the_send_to_a_fresh_nonce() -> None:
    """The version given up was mined after the next send read the nonce: the node answers "nonce
    too low" to every version of the takeover, which can never be mined. Waiting for it used to
    cost every fee bump's receipt timeout and then fail; the send goes on at the next nonce now."""
    client = ScriptedClient()
    node = client.node
    sender = make_sender(client)
    node.mine = False
    with pytest.raises(TransactionFailedError, match="nonce 7 not mined"):
        sender.send(cast(Any, None))
    node.mine = True
    build = client.build_transaction

    def given_up_version_mined_meanwhile(fn: Any, params: dict[str, Any]) -> dict[str, Any]:
        node.mined_nonce, node.pending = 8, set()
        return build(fn, params)

    client.build_transaction = given_up_version_mined_meanwhile  # type: ignore[method-assign]
    sent = sender.send(cast(Any, None))
    assert [nonce for nonce, _ in node.broadcasts[-2:]] == [7, 8]
    assert node.receipts[sent.tx_hash]["transactionHash"] == sent.tx_hash and node.mined_nonce == 9


def test_a_send_whose_own_version_was_mined_during_a_bump_takes_that_receipt() -> None:
    """ "Nonce too low" to a fee bump because the previous version of the same send was just mined:
    that version's receipt is the result, not a reason to move to another nonce."""
    client = ScriptedClient()
    node = client.node
    node.mine = False
    sender = make_sender(client)
    original = node.send_raw_transaction
    hashes: list[bytes] = []

    def first_version_mined_before_the_bump(raw: bytes) -> bytes:
        if hashes:
            receipt = {"transactionHash": hashes[0], "blockNumber": 11, "blockHash": b"A" * 32, "status": 1}
            node.receipts[hashes[0]] = {**receipt, "gasUsed": 21_000}
            node.mined_nonce, node.pending = 8, set()
        hashes.append(original(raw))
        return hashes[-1]

    node.send_raw_transaction = first_version_mined_before_the_bump  # type: ignore[method-assign]
    sent = sender.send(cast(Any, None))
    assert sent.tx_hash == hashes[0] and [nonce for nonce, _ in node.broadcasts] == [7, 7]
    node.mine = True
    assert sender.send(cast(Any, None)).tx_hash == hashes[-1] and node.broadcasts[-1][0] == 8


def test_a_transaction_a_reorg_moved_to_another_block_is_confirmed_there() -> None:
    """The confirmation finds the receipt in another block (the reorg re-included it): the
    re-broadcast is refused with "nonce too low", and the receipt in the new block is the answer."""
    client = ScriptedClient()
    node = client.node
    sender = make_sender(client, SenderSettings(confirmations=2, poll_seconds=0, receipt_timeout=0, max_bumps=1))
    original = node.get_transaction_receipt
    reads = {"count": 0}

    def moved(tx_hash: bytes) -> dict[str, Any]:
        reads["count"] += 1
        receipt = original(tx_hash)
        return receipt if reads["count"] == 1 else {**receipt, "blockHash": b"B" * 32, "blockNumber": 12}

    node.get_transaction_receipt = moved  # type: ignore[method-assign]
    sent = sender.send(cast(Any, None))
    assert sent.block_number == 12 and [nonce for nonce, _ in node.broadcasts] == [7, 7]


def test_a_fresh_sender_takes_over_a_pending_transaction_it_did_not_send() -> None:
    """An earlier process (or a demoted leader) left nonce 7 pending, its fee cap now below the base
    fee: a restarted sender queueing on nonce 8 behind it would never be mined."""
    client = ScriptedClient()
    client.node.pending = {7}  # in the mempool, never to be mined at its price
    sent = make_sender(client).send(cast(Any, None))
    assert client.node.broadcasts == [(7, 2 * 10**9)] and sent.bumps == 0
    assert client.node.mined_nonce == 8


def test_fees_never_go_above_the_ceiling_however_many_bumps_and_give_ups() -> None:
    """Nothing mines for a while: each give-up's takeover and every bump would compound the fees
    (x3.8 per send by default), to be paid in full once the chain moves."""
    client = ScriptedClient()
    client.node.mine = False
    ceiling = 5 * 10**9
    settings = SenderSettings(receipt_timeout=0, max_bumps=5, poll_seconds=0, max_fee_per_gas=ceiling)
    sender = make_sender(client, settings)
    for _ in range(4):
        with pytest.raises(TransactionFailedError, match="not mined"):
            sender.send(cast(Any, None))
    fees = [fee for _, fee in client.node.broadcasts]
    assert max(fees) == ceiling and all(fee <= ceiling for fee in fees)
    assert {nonce for nonce, _ in client.node.broadcasts} == {7}  # every send took the stuck nonce over


def test_a_version_mined_while_its_receipt_lags_is_not_sent_again_on_another_nonce() -> None:
    """ "Nonce too low" to a fee bump, and the receipts come from a backend a few reads behind: the
    send waits for its versions' receipts, instead of taking the nonce for someone else's and
    executing the same call a second time on the next one."""
    client = ScriptedClient()
    node = client.node
    node.mine = False
    ticks = iter(range(10**6))
    settings = SenderSettings(receipt_timeout=5, max_bumps=2, poll_seconds=0)
    sender = TransactionSender(
        cast(Web3AvsClient, client), ACCOUNT, settings, sleep=lambda _: None, clock=lambda: next(ticks)
    )
    original_send, original_receipt = node.send_raw_transaction, node.get_transaction_receipt
    hashes: list[bytes] = []
    lagging = {"reads": 0}

    def first_version_mined_before_the_bump(raw: bytes) -> bytes:
        if hashes and hashes[0] not in node.receipts:
            receipt = {"transactionHash": hashes[0], "blockNumber": 11, "blockHash": b"A" * 32, "status": 1}
            node.receipts[hashes[0]] = {**receipt, "gasUsed": 21_000}
            node.mined_nonce, node.pending = 8, set()
        hashes.append(original_send(raw))
        return hashes[-1]

    def lagging_receipt(tx_hash: bytes) -> dict[str, Any]:
        if bytes(tx_hash) in node.receipts and lagging["reads"] < 3:
            lagging["reads"] += 1
            raise TransactionNotFound("not on this backend yet")
        return original_receipt(tx_hash)

    node.send_raw_transaction = first_version_mined_before_the_bump  # type: ignore[method-assign]
    node.get_transaction_receipt = lagging_receipt  # type: ignore[method-assign]
    sent = sender.send(cast(Any, None))
    assert sent.tx_hash == hashes[0]
    assert [nonce for nonce, _ in node.broadcasts] == [7, 7]  # never on nonce 8


def test_a_send_without_confirmation_returns_at_its_receipt() -> None:
    """``confirm=False`` (verifyKeyPair): no wait for ``confirmations`` blocks on top, which on a
    chain that mines only on demand would hold the certificate behind it until someone mines."""
    client = ScriptedClient()
    sender = make_sender(client, SenderSettings(confirmations=5, poll_seconds=0, receipt_timeout=0))
    head = client.node.head
    sender.send(cast(Any, None), confirm=False)
    assert client.node.head == head  # the chain's height was never read
    sender.send(cast(Any, None))
    assert client.node.head >= head + 5  # the default waits for its confirmations


def _unreachable(*_: Any) -> Any:
    raise ConnectionError("node restarting")


def _break_receipt_reads(node: ScriptedNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node, "get_transaction_receipt", _unreachable)


def _break_base_fee_reads(node: ScriptedNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node, "get_block", _unreachable)  # read by the first fee bump


def _rate_limit_fee_bumps(node: ScriptedNode, monkeypatch: pytest.MonkeyPatch) -> None:
    original = node.send_raw_transaction

    def first_accepted_then_limited(raw: bytes) -> bytes:
        if node.pending:  # the first version is in the mempool: its fee bump is refused
            raise ValueError("rate limit exceeded")
        return original(raw)

    monkeypatch.setattr(node, "send_raw_transaction", first_accepted_then_limited)


@pytest.mark.parametrize(
    ("break_node", "error"),
    [
        (_break_receipt_reads, ConnectionError),
        (_break_base_fee_reads, ConnectionError),
        (_rate_limit_fee_bumps, ValueError),
    ],
)
def test_a_send_that_raises_after_its_broadcast_leaves_its_nonce_to_the_next_send(
    break_node: Callable[[ScriptedNode, pytest.MonkeyPatch], None],
    error: type[Exception],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The send raised with its transaction in the mempool. Forgetting it, the next send queued on
    the nonce above it, and every later give-up was taken over there: the forgotten one stayed
    pending, stuck or mined later beside a re-send of the same call."""
    client = ScriptedClient()
    node = client.node
    sender = make_sender(client)
    sender.send(cast(Any, None))  # nonce 7 mined: the sender counts from 8 on its own
    node.mine = False
    break_node(node, monkeypatch)
    with pytest.raises(error):
        sender.send(cast(Any, None))
    stuck_fee = max(fee for nonce, fee in node.broadcasts if nonce == 8)
    monkeypatch.undo()
    node.mine = True
    sender.send(cast(Any, None))
    nonce, fee = node.broadcasts[-1]
    assert nonce == 8 and fee > stuck_fee  # replaced, not queued behind
    assert node.pending == set() and node.mined_nonce == 9


def test_a_version_refused_outright_does_not_raise_the_next_sends_fees() -> None:
    """Nothing of it is in the mempool ("insufficient funds"): outbidding it would raise fees at each
    refusal, and with them the balance the next send needs."""
    client = ScriptedClient()
    sender = make_sender(client)
    sender.send(cast(Any, None))
    client.node.refuse = "insufficient funds for gas * price + value"
    for _ in range(3):
        with pytest.raises(ValueError, match="insufficient funds"):
            sender.send(cast(Any, None))
    client.node.refuse = None
    sender.send(cast(Any, None))
    assert client.node.broadcasts[-1] == (8, 2 * 10**9) and client.node.mined_nonce == 9
