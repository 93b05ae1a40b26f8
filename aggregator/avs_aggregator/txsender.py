"""Sending transactions that survive reality: one ``TransactionSender`` per sender key.

- **Nonces**: sends are serialised under a lock and the next nonce is kept locally (never below
  the chain's pending count), so concurrent callers never race for a nonce.
- **Stuck transactions**: if no receipt arrives within ``receipt_timeout``, the same nonce is
  re-sent with fees raised by ``bump_percent`` and the fee cap at least the market's (at most
  ``max_bumps`` times); a receipt of *any* of the sent versions ends the wait. A version the node
  refuses because its fee cap is below the base fee (underpriced) is re-priced at once. A nonce
  given up unmined is still in the mempool: the next send takes that nonce over (fees a minimal
  replacement step above its last version), so the given-up call cannot be mined later beside its
  re-send on another nonce. A send that raises once a version is broadcast (an RPC error while
  waiting for its receipt, the fence, a refused fee bump) leaves its nonce to the next send the same
  way. So does a fresh sender (a restart, a new leader) with transactions of its key pending that
  it did not send: it starts at the lowest unmined nonce instead of queueing behind one that may
  never be mined.
- **A fee ceiling**: no version's fee cap (or tip) goes above ``max_fee_per_gas``, however many
  bumps and give-ups: when nothing mines for a while, fees would otherwise compound without bound
  and be paid in full once the chain moves.
- **A fence** (``_check_may_broadcast``, a subclass's): asked before every broadcast, fee bumps
  included, under the lock, so a send waiting for the lock or bumping fees stops once its
  aggregator is demoted.
- **Transient RPC errors**: retried with exponential backoff (``max_retries``).
- **Confirmations and reorgs**: after inclusion it waits ``confirmations`` blocks and reads the
  receipt again; if the transaction vanished (a reorg), the signed transaction is broadcast
  again and the wait starts over.
- **Reverts**: gas estimation runs the call first, so a custom error surfaces as
  ``ContractRevertError`` before anything is sent; a mined failure raises ``TransactionFailedError``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import TransactionNotFound, Web3RPCError
from web3.types import Nonce, TxParams

from avs.chain.client import ContractRevertError, Web3AvsClient
from avs.errors import AvsError

logger = logging.getLogger(__name__)


class TransactionFailedError(AvsError):
    """A transaction that was mined but failed, or could not be mined after every fee bump."""


_BENIGN_BROADCAST_ERRORS = ("already known", "replacement transaction underpriced")
_NONCE_TOO_LOW = "nonce too low"
# The node refuses a version whose fee cap is below the base fee (anvil: "max fee per gas less than
# block base fee"; geth: "fee cap less than block base fee", "transaction underpriced").
_FEE_CAP_TOO_LOW_ERRORS = ("less than block base fee", "fee cap too low", "feecap too low", "transaction underpriced")


class _FeeCapTooLow(Exception):
    """The node refused this version for its fees: re-price and send the next version now."""


class _NonceTooLow(Exception):
    """The node refused this version: its nonce is already mined."""


class _NonceTaken(Exception):
    """Another transaction was mined at this nonce (a version given up earlier, or another sender of
    the same key): none of this send's versions can be mined any more, so it starts on a fresh nonce."""


FEE_KEYS = ("maxFeePerGas", "maxPriorityFeePerGas", "gasPrice")


@dataclass(frozen=True, slots=True)
class SenderSettings:
    receipt_timeout: float = 30.0
    bump_percent: int = 25  # replacement needs >= 10% more on geth/anvil
    max_bumps: int = 5
    confirmations: int = 0
    max_reorg_resends: int = 3
    max_retries: int = 3
    poll_seconds: float = 0.25
    max_fee_per_gas: int = 1_000 * 10**9  # wei (1,000 gwei): the most any version offers


REPLACEMENT_PERCENT = 12  # what a replacement of a pending transaction needs at least (10% on geth/anvil)


@dataclass(frozen=True, slots=True)
class SentTransaction:
    tx_hash: bytes
    block_number: int
    gas_used: int
    bumps: int


class TransactionSender:
    def __init__(
        self,
        client: Web3AvsClient,
        account: LocalAccount,
        settings: SenderSettings = SenderSettings(),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.w3: Web3 = client.w3
        self.account = account
        self.settings = settings
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._next_nonce: int | None = None
        # The last version broadcast of a nonce left unmined (given up, or its send raised): the next
        # send takes that nonce over. ``_next_nonce`` is None while one is outstanding.
        self._given_up: dict[str, Any] | None = None

    def _retry(self, action: Callable[[], Any]) -> Any:
        delay = 0.2
        for attempt in range(self.settings.max_retries + 1):
            try:
                return action()
            except (ContractRevertError, TransactionFailedError):
                raise
            except (ConnectionError, TimeoutError, OSError) as exc:
                if attempt == self.settings.max_retries:
                    raise
                logger.warning("rpc error; retrying", extra={"error": str(exc), "delay": delay})
                self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _nonce(self) -> int:
        pending = int(self._retry(lambda: self.w3.eth.get_transaction_count(self.account.address, "pending")))
        if self._next_nonce is not None:  # the last send was mined (``_given_up`` is None then)
            return max(pending, self._next_nonce)
        mined = int(self._retry(lambda: self.w3.eth.get_transaction_count(self.account.address, "latest")))
        if self._given_up is not None and mined <= int(self._given_up["nonce"]):
            # Still unmined: take it over (or fill a gap below it, which the pending count names).
            return min(pending, int(self._given_up["nonce"]))
        self._given_up = None
        if mined < pending:  # pending transactions this sender did not send (an earlier process's)
            logger.warning("taking over a pending transaction of this key", extra={"nonce": mined})
        return mined

    def _check_may_broadcast(self) -> None:
        """Raise to stop before a broadcast (``LeaderOnlySender``: the lease is gone)."""

    def _over_given_up(self, tx: dict[str, Any]) -> dict[str, Any]:
        """``tx`` with fees above the given-up version of its nonce, so that it replaces it."""
        if self._given_up is None or int(self._given_up["nonce"]) != int(tx["nonce"]):
            return tx
        above = self._bumped(self._given_up, REPLACEMENT_PERCENT)
        return {**tx, **{k: max(int(tx.get(k, 0)), int(above[k])) for k in FEE_KEYS if k in above and k in tx}}

    def send(self, fn: ContractFunction, *, confirm: bool = True) -> SentTransaction:
        """Sends ``fn`` and waits for its receipt, then (``confirm``) for ``confirmations`` blocks on
        top of it. ``confirm=False`` is for a transaction whose loss in a reorg costs nothing but
        sending it again (``verifyKeyPair``): waiting would only delay what follows it."""
        with self._lock:
            for _ in range(self.settings.max_retries):
                try:
                    return self._send_on_one_nonce(fn, confirm)
                except _NonceTaken as exc:
                    logger.warning("nonce taken by another transaction; sending on a fresh one", extra=exc.args[0])
                    self._next_nonce, self._given_up = None, None
            raise TransactionFailedError(
                f"every nonce tried was taken by other transactions ({self.settings.max_retries})"
            )

    def _send_on_one_nonce(self, fn: ContractFunction, confirm: bool) -> SentTransaction:
        self._check_may_broadcast()
        nonce = self._nonce()
        params: TxParams = {"from": self.account.address, "nonce": Nonce(nonce)}
        built = dict(self._retry(lambda: self.client.build_transaction(fn, params)))
        tx: dict[str, Any] = self._capped(self._over_given_up(built))
        sent: list[bytes] = []
        raw = b""
        receipt = None
        for bump in range(self.settings.max_bumps + 1):
            if bump:
                self._check_may_broadcast()
                tx = self._bumped(tx)
            raw = bytes(self.account.sign_transaction(tx).raw_transaction)
            try:
                sent.append(self._broadcast_version(raw, tx))
            except _NonceTooLow:
                # One of this send's versions was mined (take its receipt), or another transaction was.
                # A receipt can lag the node that refused the nonce (a load-balanced provider): it is
                # waited for as long as any receipt, or the same call would be sent again on a new nonce.
                receipt = self._wait_for_any(sent, self.settings.receipt_timeout) if sent else None
                if receipt is not None:
                    break
                raise _NonceTaken({"nonce": nonce}) from None
            except _FeeCapTooLow as exc:
                logger.warning("fee cap below the base fee; bumping fees", extra={"nonce": nonce, "error": str(exc)})
                receipt = self._wait_for_any(sent, 0) if sent else None
                if receipt is not None:
                    break
                continue
            receipt = self._wait_for_any(sent, self.settings.receipt_timeout)
            if receipt is not None:
                break
            logger.warning("transaction not mined in time; bumping fees", extra={"nonce": nonce, "bump": bump + 1})
        if receipt is None:
            # Its versions are still in the mempool (or stuck behind a gap a reorg left below it):
            # the next send takes this nonce over, or fills the gap, rather than queueing behind.
            self._next_nonce, self._given_up = None, tx
            raise TransactionFailedError(f"nonce {nonce} not mined after {self.settings.max_bumps} fee bumps")
        try:
            if confirm:
                receipt = self._confirm(receipt, raw)
        except _FeeCapTooLow as exc:  # dropped by a reorg, and its fee cap is now below the base fee
            self._next_nonce, self._given_up = None, None  # the nonce is free again: the next send takes it
            raise TransactionFailedError(f"dropped by a reorg and refused again: {exc}") from exc
        except Exception:  # dropped by a reorg and not mined again (yet), or an RPC error meanwhile
            self._next_nonce, self._given_up = None, tx  # the next send takes the nonce over if unmined
            raise
        self._next_nonce, self._given_up = nonce + 1, None
        if int(receipt["status"]) != 1:
            raise TransactionFailedError(f"transaction 0x{bytes(receipt['transactionHash']).hex()} failed")
        return SentTransaction(
            bytes(receipt["transactionHash"]), int(receipt["blockNumber"]), int(receipt["gasUsed"]), len(sent) - 1
        )

    def _capped(self, tx: dict[str, Any]) -> dict[str, Any]:
        """``tx`` with no fee above ``max_fee_per_gas``."""
        ceiling = self.settings.max_fee_per_gas
        return {**tx, **{key: min(int(tx[key]), ceiling) for key in FEE_KEYS if key in tx}}

    def _bumped(self, tx: dict[str, Any], percent: int | None = None) -> dict[str, Any]:
        """Every fee raised by ``percent`` (default ``bump_percent``; a replacement needs >= 10% more),
        and the fee cap at least what a fresh transaction would get now (twice the latest base fee
        plus the tip): after a base-fee jump, fixed-percent bumps alone could stay below it for many
        rounds. Never above ``max_fee_per_gas`` (the node then keeps the earlier version)."""
        factor = 100 + (self.settings.bump_percent if percent is None else percent)
        bumped = dict(tx)
        for key in FEE_KEYS:
            if key in bumped:
                bumped[key] = int(bumped[key]) * factor // 100 + 1
        if "maxFeePerGas" in bumped:
            base_fee = int(self._retry(lambda: self.w3.eth.get_block("latest")).get("baseFeePerGas", 0))
            market = 2 * base_fee + int(bumped.get("maxPriorityFeePerGas", 0))
            bumped["maxFeePerGas"] = max(int(bumped["maxFeePerGas"]), market)
        return self._capped(bumped)

    def _broadcast_version(self, raw: bytes, tx: dict[str, Any]) -> bytes:
        """Broadcasts ``raw`` (``tx`` signed) and, once the node may hold it, records its nonce as
        outstanding until a receipt is seen: whatever ends the send early (an RPC error while waiting
        for the receipt or reading the base fee, the fence, a refused fee bump), the next send takes
        that nonce over instead of queueing behind it on the next one. A version the node refused
        with an error is not recorded: the version recorded before it is the one in the mempool, and
        outbidding a refused one would raise fees at every refusal (``insufficient funds``). The
        benign answers ``_broadcast`` takes as sent ("already known", "replacement underpriced")
        are recorded: the next send then bids a step above a version that may not be in the
        mempool, a little more than needed."""
        try:
            tx_hash = self._broadcast(raw)
        except (ConnectionError, TimeoutError, OSError):
            self._next_nonce, self._given_up = None, tx  # it may have reached the node all the same
            raise
        self._next_nonce, self._given_up = None, tx
        return tx_hash

    def _broadcast(self, raw: bytes) -> bytes:
        try:
            return bytes(self._retry(lambda: self.w3.eth.send_raw_transaction(raw)))
        except (ValueError, Web3RPCError) as exc:
            # "already known" / "replacement underpriced": an earlier version of this nonce is pending;
            # keep waiting for any of them. "nonce too low": the nonce is mined, by one of them or by
            # another transaction, which the caller tells apart. Anything else is a real error.
            message = str(exc).lower()
            if _NONCE_TOO_LOW in message:
                raise _NonceTooLow(str(exc)) from exc
            if any(text in message for text in _FEE_CAP_TOO_LOW_ERRORS) and "replacement" not in message:
                raise _FeeCapTooLow(str(exc)) from exc
            if not any(text in message for text in _BENIGN_BROADCAST_ERRORS):
                raise
            logger.info("broadcast refused", extra={"error": str(exc)})
            return bytes(Web3.keccak(raw))

    def _receipt(self, tx_hash: bytes) -> Any:
        try:
            return self._retry(lambda: self.w3.eth.get_transaction_receipt(HexBytes(tx_hash)))
        except TransactionNotFound:
            return None

    def _wait_for_any(self, hashes: list[bytes], timeout: float) -> Any:
        deadline = self._clock() + timeout
        while True:
            for tx_hash in hashes:
                receipt = self._receipt(tx_hash)
                if receipt is not None:
                    return receipt
            if self._clock() >= deadline:
                return None
            self._sleep(self.settings.poll_seconds)

    def _confirm(self, receipt: Any, raw: bytes) -> Any:
        """Wait for ``confirmations`` blocks on top; re-broadcast if a reorg dropped the transaction."""
        if self.settings.confirmations == 0:
            return receipt
        for _ in range(self.settings.max_reorg_resends + 1):
            target = int(receipt["blockNumber"]) + self.settings.confirmations
            while int(self._retry(lambda: self.w3.eth.block_number)) < target:
                self._sleep(self.settings.poll_seconds)
            again = self._receipt(bytes(receipt["transactionHash"]))
            if again is not None and again["blockHash"] == receipt["blockHash"]:
                return again
            logger.warning("transaction dropped by a reorg; re-broadcasting")
            try:
                tx_hash = self._broadcast(raw)
            except _NonceTooLow:  # mined again already (or its nonce taken: then no receipt comes)
                tx_hash = bytes(Web3.keccak(raw))
            receipt = self._wait_for_any([tx_hash, bytes(receipt["transactionHash"])], self.settings.receipt_timeout)
            if receipt is None:
                raise TransactionFailedError("the transaction was dropped by a reorg and not mined again")
        raise TransactionFailedError("the transaction kept being dropped by reorgs")
