"""Per-request insurance in the ``InsurancePool``: what a requester buys and what the aggregator checks.

A requester insures one request (by its EIP-712 request hash) against one quorum, paying a premium
in the pool's asset (the stake token). ``buy_coverage`` approves the premium and calls
``InsurancePool.buyCoverage`` from the requester's own key (the contract insists that the caller is
the request's requester); ``claim_payout`` collects a payout once fraud on the request has been
proven (an upheld escalated challenge, ``FaultManager.resolveChallenge`` -> ``recordFraud``).
A payout the pool could not fund when the fraud was recorded (on EigenLayer with a slash resolution
delay the slashed tokens arrive only when the slash is cleared, days later) is owed: a claim pays
what the pool holds and says what stays owed, and a later claim pays the rest. A challenger collects
a reward owed to it the same way (``claim_reward``).

The aggregator refuses a request submitted as insured unless ``compute_coverage_problem`` finds
nothing wrong with what a ``CoverageReader`` reads: active, at least ``MIN_COVERAGE_BLOCKS_LEFT``
blocks of its term left (a certification after the term pays nothing, so a request whose coverage
ends before it can be certified is refused up front), held by the request's requester, against one
of the request's quorums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from avs.chain.abi import load_abi
from avs.chain.client import ContractRevertError, Web3AvsClient
from avs.chain.deployment import Deployment
from avs.chain.faults import Coverage, CoverageStatus, encode_inference_request
from avs.client import verify_on_chain
from avs.errors import AvsError
from avs.messages import BPS, InferenceRequest, is_same_address
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.types import Address


class InsuranceError(AvsError):
    """Coverage that cannot be bought, claimed, or relied on (see the message)."""


class CoverageReader(Protocol):
    """What the aggregator reads from the chain to check an insured request at intake."""

    def get_coverage(self, request_hash: bytes) -> Coverage: ...

    def get_block_number(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PoolTerms:
    """``InsurancePool.config()`` and its asset."""

    asset: Address
    premium_bps: int
    coverage_cap_bps: int
    challenger_reward_bps: int
    coverage_term_blocks: int


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What one ``InsurancePool.claim`` paid, and what of the payout stays owed (claim again once the
    pool holds it: 0 when the coverage is now fully paid)."""

    request_hash: bytes
    paid: int
    still_owed: int
    tx_hash: bytes


@dataclass(frozen=True, slots=True)
class RewardClaim:
    """What one ``InsurancePool.claimReward`` paid the challenger, and what stays owed to it."""

    challenger: Address
    paid: int
    still_owed: int
    tx_hash: bytes


@dataclass(frozen=True, slots=True)
class CoveragePurchase:
    request_hash: bytes
    quorum_number: int
    amount: int
    premium: int
    expires_at_block: int
    tx_hash: bytes


def compute_premium(amount: int, premium_bps: int) -> int:
    """The contract's premium: ``amount * premiumBps / 10_000`` rounded up."""
    return (amount * premium_bps + BPS - 1) // BPS


_REVERT_REASONS = {
    "CoverageExists": "the request is already insured",
    "NotRequester": "only the request's requester may insure it",
    "RequestUnderChallenge": "the request is under an open challenge",
    "FraudAlreadyProven": "fraud was already proven for the request",
    "CoverageAboveCap": "the coverage is above what one fraud would slash from the quorum's stake",
    "ZeroCoverage": "the coverage amount is zero",
    "NothingToClaim": "nothing is claimable for the request (no upheld challenge on it)",
    "AlreadyClaimed": "the coverage was already claimed",
    "ClaimNotFunded": "the payout is owed and the pool holds nothing to pay it with yet (the slash that funds it"
    " is not cleared to the pool yet?): claim again later",
    "NoRewardOwed": "no challenger reward is owed to this address",
    "RewardNotFunded": "the reward is owed and the pool holds nothing to pay it with yet (the slash that funds it"
    " is not cleared to the pool yet?): claim again later",
}


def describe_revert(error: ContractRevertError) -> str:
    """A custom error of the pool, in words, with its name (e.g. "... (CoverageExists)")."""
    reason = _REVERT_REASONS.get(error.name)
    return f"{reason} ({error.name})" if reason else str(error)


# Blocks of coverage term a request must have left when it is submitted as insured: room for its
# generation, verification, batching and certification (seconds on the devnet, a few blocks on
# mainnet; more after retries).
MIN_COVERAGE_BLOCKS_LEFT = 32
# Blocks between buying coverage and the aggregator's check of the insured submit: a pool term
# below MIN_COVERAGE_BLOCKS_LEFT plus these sells coverage that no request could be submitted with.
PURCHASE_TO_SUBMIT_BLOCKS = 8


def compute_coverage_problem(
    coverage: Coverage,
    requester: str,
    quorums: bytes,
    block_number: int,
    min_blocks_left: int = MIN_COVERAGE_BLOCKS_LEFT,
) -> str | None:
    """Why ``coverage`` does not insure a request of ``requester`` certified by ``quorums`` at
    ``block_number``; None when it does. ``min_blocks_left``: the term a new request needs left to be
    certified within it (0 for one already taken: it is on its way)."""
    problem = compute_coverage_holder_problem(coverage, requester, quorums)
    if problem is not None:
        return problem
    if coverage.status == CoverageStatus.EXPIRED or (
        coverage.status == CoverageStatus.ACTIVE and block_number > coverage.expires_at_block
    ):
        return f"the request's coverage expired at block {coverage.expires_at_block} (now {block_number})"
    if coverage.status != CoverageStatus.ACTIVE:
        return f"the request's coverage is {coverage.status.name.lower()}, not active"
    left = coverage.expires_at_block - block_number
    if left < min_blocks_left:
        return (
            f"the request's coverage ends at block {coverage.expires_at_block}, {left} blocks from now: too soon"
            f" to certify the request within it (at least {min_blocks_left})"
        )
    return None


def compute_coverage_holder_problem(coverage: Coverage, requester: str, quorums: bytes) -> str | None:
    """Why ``coverage`` was never this request's (none bought, another holder, another quorum);
    None when it is, whatever its state now (active, expired, claimed...)."""
    if coverage.status == CoverageStatus.NONE:
        return "the request has no coverage in the insurance pool (buy it for the request hash from Prepare)"
    if not is_same_address(coverage.beneficiary, requester):
        return f"the request's coverage is held by {coverage.beneficiary}, not by its requester {requester}"
    if coverage.quorum_number not in quorums:
        wanted = list(quorums)
        return f"the request's coverage is against quorum {coverage.quorum_number}, not one of its quorums {wanted}"
    return None


def compute_payout_problems(
    coverage: Coverage, bought_at_block: int, batch_quorums: bytes, certified_block: int
) -> list[str]:
    """Why a fraud proven in this certified batch would not pay ``coverage`` (``recordFraud``'s
    rule): the batch must be of the coverage's quorum, certified after the block that bought it and
    within its term. The request commits to none of these, so an aggregator could deliver an output
    of a batch that no coverage pays for; ``avs request --insure`` checks its certificate with this."""
    problems = []
    if coverage.quorum_number not in batch_quorums:
        problems.append(
            f"the batch is of quorums {list(batch_quorums)}, the coverage against quorum {coverage.quorum_number}"
        )
    certified = f"the batch was certified in block {certified_block}"
    if certified_block <= bought_at_block:
        problems.append(f"{certified}, not after the block that bought the coverage ({bought_at_block})")
    if certified_block > coverage.expires_at_block:
        problems.append(f"{certified}, after the coverage's term (block {coverage.expires_at_block})")
    return problems


class Web3CoverageReader:
    """``CoverageReader`` over web3.py."""

    def __init__(self, w3: Web3, insurance_pool: str) -> None:
        self.w3 = w3
        self.pool = w3.eth.contract(address=Web3.to_checksum_address(insurance_pool), abi=load_abi("InsurancePool"))

    def get_coverage(self, request_hash: bytes) -> Coverage:
        raw = self.pool.functions.getCoverage(request_hash).call()
        return Coverage(raw[0], raw[1], CoverageStatus(raw[2]), raw[3], raw[4], raw[5])

    def get_block_number(self) -> int:
        return int(self.w3.eth.block_number)


class InsuranceBuyer:
    """A requester's side of the pool: terms, buying coverage, claiming, balances (web3.py)."""

    def __init__(
        self, w3: Web3, deployment: Deployment, account: LocalAccount, client: Web3AvsClient | None = None
    ) -> None:
        """``client``: an existing client of ``account`` to send through (the challenger's, whose
        transaction sender keeps the nonces of all its transactions); by default a new one."""
        if deployment.insurance_pool is None:
            raise InsuranceError("the deployment has no insurance pool")
        self.client = client or Web3AvsClient(w3, deployment, account)
        self.account = account
        self.pool = w3.eth.contract(
            address=Web3.to_checksum_address(deployment.insurance_pool), abi=load_abi("InsurancePool")
        )
        self.reader = Web3CoverageReader(w3, deployment.insurance_pool)
        self._decimals: int | None = None

    def get_terms(self) -> PoolTerms:
        premium, cap, reward, term = self.client._call(self.pool.functions.config())
        asset = Address(Web3.to_checksum_address(self.client._call(self.pool.functions.asset())))
        return PoolTerms(asset, int(premium), int(cap), int(reward), int(term))

    def _asset(self, terms: PoolTerms) -> Contract:
        return self.client.w3.eth.contract(address=Web3.to_checksum_address(terms.asset), abi=load_abi("ERC20"))

    def get_balance(self, owner: str | None = None) -> int:
        """The pool asset held by ``owner`` (default: this requester)."""
        token = self._asset(self.get_terms())
        address = Web3.to_checksum_address(owner or self.account.address)
        return int(token.functions.balanceOf(address).call())

    def get_decimals(self) -> int:
        """The pool asset's decimals: what a whole token is in base units (6 for a USDC-like token).
        Read once: the asset never changes."""
        if self._decimals is None:
            self._decimals = int(self._asset(self.get_terms()).functions.decimals().call())
        return self._decimals

    def get_available(self, quorum_number: int) -> int:
        return int(self.client._call(self.pool.functions.availableCoverage(quorum_number)))

    def get_coverage(self, request_hash: bytes) -> Coverage:
        return self.reader.get_coverage(request_hash)

    def check_certificate_insured(self, certificate: ag.Certificate) -> list[str]:
        """``compute_payout_problems`` for the request's coverage and the batch of its certificate
        (an ``ag.Certificate``). The aggregator's word is not taken: the chain must have certified
        the certificate's leaf in that batch (``verify_on_chain``: the header's quorums with it), and
        the coverage and the batch's certified block are read from the chain. Otherwise an aggregator
        could name any batch certified in the coverage's term for an output no fraud proof can reach."""
        header = certificate.batch_header
        request_hash = bytes(certificate.request_hash)
        if not verify_on_chain(certificate, self.client.task_manager, self.client.deployment.start_block):
            return [f"the chain did not certify this certificate's output in batch {header.batch_index}"]
        coverage = self.get_coverage(request_hash)
        bought_at = int(self.client._call(self.pool.functions.coverageBoughtAt(request_hash)))
        certified_block = self.client.get_certified_block(header.batch_index)
        if certified_block == 0:
            return [f"batch {header.batch_index} has no certification record on chain (its slot was reused)"]
        return compute_payout_problems(coverage, bought_at, bytes(header.quorum_numbers), certified_block)

    def check_nothing_pending(self) -> None:
        """Refuse while a transaction of this requester is sent but not mined (a purchase whose
        receipt timed out, say): buying again then would race it, and one of the two would revert
        ``CoverageExists`` after paying its gas."""
        eth = self.client.w3.eth
        mined = int(eth.get_transaction_count(self.account.address, "latest"))
        sent = int(eth.get_transaction_count(self.account.address, "pending"))
        if sent > mined:
            raise InsuranceError(
                f"{sent - mined} transaction(s) of {self.account.address} are not mined yet (from nonce {mined}):"
                " wait until they are mined or dropped, then resume"
            )

    def approve_premium(self, amount: int) -> None:
        """Approve the premium of ``amount`` of coverage ahead of ``buy`` (which then sends one
        transaction instead of two)."""
        terms = self.get_terms()
        premium = compute_premium(amount, terms.premium_bps)
        try:
            self.client.transact(self._asset(terms).functions.approve(self.pool.address, premium))
        except (AvsError, ContractLogicError) as exc:
            raise InsuranceError(f"the premium ({premium} of {terms.asset}) cannot be approved: {exc}") from exc

    def buy(self, request: InferenceRequest, quorum_number: int, amount: int) -> CoveragePurchase:
        """Approve the premium in the pool's asset (unless already approved), then ``buyCoverage``;
        raises ``InsuranceError`` with the reason when it cannot be bought."""
        if not is_same_address(request.requester, self.account.address):
            raise InsuranceError(
                f"the requester key is {self.account.address}, but the request's requester is {request.requester}"
            )
        if amount <= 0:
            raise InsuranceError("the coverage amount must be positive")
        terms = self.get_terms()
        shortest = MIN_COVERAGE_BLOCKS_LEFT + PURCHASE_TO_SUBMIT_BLOCKS
        if terms.coverage_term_blocks < shortest:
            raise InsuranceError(
                f"the pool's coverage term is {terms.coverage_term_blocks} blocks: an aggregator takes an insured"
                f" request only with at least {MIN_COVERAGE_BLOCKS_LEFT} blocks of coverage left, so coverage is"
                f" bought only for a term of at least {shortest} blocks"
            )
        available = self.get_available(quorum_number)
        if amount > available:
            raise InsuranceError(
                f"only {available} of coverage can be sold against quorum {quorum_number} now (cap), asked {amount}"
            )
        premium = compute_premium(amount, terms.premium_bps)
        token = self._asset(terms)
        balance = int(token.functions.balanceOf(self.account.address).call())
        if balance < premium:
            raise InsuranceError(
                f"the premium ({premium} of {terms.asset}) cannot be approved: {self.account.address} holds {balance}"
            )
        try:
            allowance = int(token.functions.allowance(self.account.address, self.pool.address).call())
            if premium > allowance:
                self.client.transact(token.functions.approve(self.pool.address, premium))
            fn = self.pool.functions.buyCoverage(encode_inference_request(request), quorum_number, amount)
            tx_hash = self.client.transact(fn)
        except ContractRevertError as exc:
            raise InsuranceError(f"InsurancePool.buyCoverage refused: {describe_revert(exc)}") from exc
        except ContractLogicError as exc:  # an asset that reverts with a string (no custom error)
            raise InsuranceError(f"buying coverage was refused: {exc}") from exc
        except AvsError as exc:
            raise InsuranceError(f"buying coverage failed: {exc}") from exc
        receipt = self.client.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        (event,) = self.pool.events.CoverageBought().process_receipt(receipt, errors=DISCARD)
        args = event["args"]
        return CoveragePurchase(
            bytes(args["requestHash"]),
            quorum_number,
            amount,
            int(args["premium"]),
            int(args["expiresAtBlock"]),
            tx_hash,
        )

    def claim(self, request_hash: bytes) -> int:
        """Collect claimable coverage (paid to the requester); answers the amount this call paid
        (``claim_payout`` also says what stays owed)."""
        return self.claim_payout(request_hash).paid

    def claim_payout(self, request_hash: bytes) -> ClaimResult:
        """Collect claimable coverage (paid to the requester): what this call paid and what stays
        owed, from the receipt's ``Claimed`` and ``PayoutOwed`` events. Part of a payout stays owed
        when the pool does not hold it yet; claim again later for the rest."""
        tx_hash, receipt = self._send_claim(self.pool.functions.claim(request_hash), "claim")
        (event,) = self.pool.events.Claimed().process_receipt(receipt, errors=DISCARD)
        owed = self.pool.events.PayoutOwed().process_receipt(receipt, errors=DISCARD)
        still_owed = int(owed[-1]["args"]["owed"]) if owed else 0
        return ClaimResult(request_hash, int(event["args"]["amount"]), still_owed, tx_hash)

    def get_payout_owed(self, request_hash: bytes) -> int:
        """The part of the request's payout that is owed (not funded yet)."""
        return int(self.client._call(self.pool.functions.payoutOwed(request_hash)))

    def get_reward_owed(self, challenger: str | None = None) -> int:
        """Challenger rewards owed to ``challenger`` (default: this account), not paid yet."""
        address = Web3.to_checksum_address(challenger or self.account.address)
        return int(self.client._call(self.pool.functions.rewardOwed(address)))

    def get_reward_claimable(self, challenger: str | None = None) -> int:
        """What ``claimReward`` would pay ``challenger`` (default: this account) now."""
        address = Web3.to_checksum_address(challenger or self.account.address)
        return int(self.client._call(self.pool.functions.rewardClaimable(address)))

    def claim_reward(self) -> RewardClaim:
        """Collect challenger rewards owed to this account (``InsurancePool.claimReward``): what this
        call paid and what stays owed, from the receipt's ``RewardClaimed`` event."""
        tx_hash, receipt = self._send_claim(self.pool.functions.claimReward(), "claimReward")
        (event,) = self.pool.events.RewardClaimed().process_receipt(receipt, errors=DISCARD)
        args = event["args"]
        return RewardClaim(
            Address(Web3.to_checksum_address(self.account.address)),
            int(args["amount"]),
            int(args["stillOwed"]),
            tx_hash,
        )

    def _send_claim(self, fn: Any, name: str) -> tuple[bytes, Any]:
        """Sends a claim of the pool; its transaction hash and receipt. A refusal is an
        ``InsuranceError`` in words, with the amount owed when the pool cannot pay it yet."""
        try:
            tx_hash = self.client.transact(fn)
        except ContractRevertError as exc:
            raise InsuranceError(f"InsurancePool.{name} refused: {describe_revert(exc)}{_owed_note(exc)}") from exc
        return tx_hash, self.client.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]


def _owed_note(error: ContractRevertError) -> str:
    """The amount owed that a ``ClaimNotFunded`` or ``RewardNotFunded`` revert carries, in words."""
    if error.name in ("ClaimNotFunded", "RewardNotFunded") and len(error.args_) == 2:
        return f"; {int(error.args_[1])} owed"
    return ""
