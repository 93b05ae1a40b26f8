// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {PoolFixture} from "./InsurancePool.t.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {LocalRestakingCore} from "../src/core/LocalRestakingCore.sol";
import {IInsurancePoolTypes, IInsurancePoolErrors, IInsurancePoolEvents} from "../src/interfaces/IInsurancePool.sol";
import {IFaultManagerTypes} from "../src/interfaces/IFaultManager.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";
import {OperatorSet} from "../src/interfaces/eigenlayer/IAllocationManager.sol";

/// @notice The mainnet flow since EigenLayer v1.13 (slash resolution delay, ELIP-016): a slash's
///         tokens reach the pool only when the slash is cleared, `SLASH_RESOLUTION_DELAY_BLOCKS`
///         after it, so the registry's clearing in the slashing transaction fails and the fraud is
///         recorded with the pool (nearly) empty. The payout and the challenger's reward are then
///         owed, not cut: `claim` and `claimReward` pay them once the slash is cleared, and neither
///         governance nor a later fraud can take the money owed.
contract OwedPayoutsTest is PoolFixture {
    uint32 internal constant DELAY = 50_400;
    address internal constant KEEPER = address(0x4EE9E4);

    bytes32 internal otherHash;
    AvsMessages.InferenceRequest internal otherRequest;

    function setUp() public virtual override {
        super.setUp();
        core.setSlashResolutionDelay(DELAY);
        (otherRequest, otherHash) = _request(2);
    }

    /// @dev Empties the pool (premiums) so that it holds nothing when the fraud is recorded.
    function _emptyPool() internal {
        pool.withdrawSurplus(address(this), pool.freeBalance());
        vm.assertEq(token.balanceOf(address(pool)), 0, "empty");
    }

    function _set0() internal view returns (OperatorSet memory) {
        return OperatorSet(address(registry), 0);
    }

    /// @dev Clears slashes `from`..`to` of quorum 0 (by a keeper: anyone may).
    function _clear(uint256 from, uint256 to) internal {
        for (uint256 id = from; id <= to; ++id) {
            vm.prank(KEEPER);
            core.clearBurnOrRedistributableShares(_set0(), id);
        }
    }

    function _slashCount() internal view returns (uint256) {
        return core.getSlashCount(_set0());
    }

    /// @dev The pool's money rules, checked after each step.
    function _assertMoneyRules() internal view {
        uint256 balance = token.balanceOf(address(pool));
        uint256 held = pool.totalClaimable() + pool.totalOwed();
        vm.assertGe(balance, pool.totalClaimable(), "solvent");
        vm.assertEq(pool.freeBalance(), balance > held ? balance - held : 0, "free = balance - claimable - owed");
    }

    /// @dev Certifies batch `index` with (req, "bad") signed by everyone, challenges the leaf and
    ///      upholds it, every signer slashed.
    function _fraudOn(uint64 index, bytes32 req) internal returns (uint256 id) {
        vm.roll(block.number + 1);
        (AvsMessages.BatchHeader memory h, bytes32 rec, bytes32[] memory proof) =
            _certifyLeaf(index, req, "bad", _none());
        vm.roll(block.number + 1);
        vm.prank(CHALLENGER);
        id = faults.challenge(h, rec, req, "bad", proof);
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest(req, "bad", AvsMessages.Verdict.Reject), hex"0001", _none());
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(h, _none());
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
        while (faults.getPendingSlashing(id).signersHash != 0) {
            faults.continueSlashing(id, s);
        }
    }

    function test_clear_RevertWhen_BeforeTheDelay() public {
        uint256 slashed = _slashCount();
        _buy(90 ether);
        _upholdFraud();
        vm.assertGt(_slashCount(), slashed, "slashed");
        uint256 clearableAt = core.slashClearableAt(_set0(), slashed + 1);
        vm.assertEq(clearableAt, block.number + DELAY, "the slash's block + the delay");
        vm.expectRevert(abi.encodeWithSelector(LocalRestakingCore.SlashNotResolved.selector, slashed + 1, clearableAt));
        core.clearBurnOrRedistributableShares(_set0(), slashed + 1);
        vm.expectRevert(abi.encodeWithSelector(LocalRestakingCore.SlashNotResolved.selector, slashed + 1, clearableAt));
        core.clearBurnOrRedistributableSharesByStrategy(_set0(), slashed + 1, strategy);
        vm.roll(clearableAt);
        _clear(slashed + 1, slashed + 1);
    }

    function test_setSlashResolutionDelay_RevertWhen_NotTheOwner() public {
        vm.prank(KEEPER);
        vm.expectRevert(abi.encodeWithSignature("InvalidCaller()"));
        core.setSlashResolutionDelay(1);
    }

    function test_owedPayout_PaidInFullOnceTheSlashIsCleared() public {
        _buy(90 ether);
        _emptyPool();
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        uint256 slashedBefore = _slashCount();
        _upholdFraud();
        uint256 slashValue = faults.batchSlashedAmount(5);
        uint256 reward = slashValue * 1_000 / 10_000;
        vm.assertEq(token.balanceOf(address(pool)), 0, "the slash is not cleared: the pool is still empty");

        IInsurancePoolTypes.Coverage memory c = pool.getCoverage(requestHash);
        vm.assertTrue(c.status == IInsurancePoolTypes.CoverageStatus.Claimable, "claimable");
        vm.assertEq(c.payout, 90 ether, "entitled in full, not cut to the empty pool");
        vm.assertEq(pool.payoutOwed(requestHash), 90 ether, "all owed");
        vm.assertEq(pool.totalClaimable(), 0, "nothing reserved");
        vm.assertEq(pool.rewardOwed(CHALLENGER), reward, "the reward is owed");
        vm.assertEq(pool.totalOwed(), 90 ether + reward, "owed");
        vm.assertEq(token.balanceOf(CHALLENGER), challengerBefore, "bond back, reward owed");
        _assertMoneyRules();

        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.ClaimNotFunded.selector, requestHash, 90 ether));
        pool.claim(requestHash);
        vm.prank(CHALLENGER);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.RewardNotFunded.selector, CHALLENGER, reward));
        pool.claimReward();

        // Money arriving meanwhile (a premium, say) is owed, not surplus.
        token.mint(address(pool), 5 ether);
        vm.assertEq(pool.freeBalance(), 0, "nothing free");
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.InsufficientSurplus.selector, 1, 0));
        pool.withdrawSurplus(address(this), 1);
        _assertMoneyRules();

        // After the delay anyone clears the slash: the tokens reach the pool, and the claims pay.
        vm.roll(block.number + DELAY);
        _clear(slashedBefore + 1, _slashCount());
        vm.assertEq(token.balanceOf(address(pool)), 5 ether + slashValue, "the slash arrived (1 token a share)");
        vm.assertEq(pool.freeBalance(), 5 ether + slashValue - 90 ether - reward, "free once the owed is covered");
        _assertMoneyRules();

        uint256 requesterBefore = token.balanceOf(REQUESTER);
        vm.expectEmit();
        emit IInsurancePoolEvents.Claimed(requestHash, REQUESTER, 90 ether);
        vm.prank(KEEPER); // anyone may claim for the beneficiary
        vm.assertEq(pool.claim(requestHash), 90 ether, "paid in full");
        vm.assertEq(token.balanceOf(REQUESTER), requesterBefore + 90 ether, "to the requester");
        vm.assertTrue(pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Claimed, "claimed");
        vm.assertEq(pool.payoutPaid(requestHash), 90 ether, "paid");
        vm.assertEq(pool.payoutOwed(requestHash), 0, "nothing owed");
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.AlreadyClaimed.selector, requestHash));
        pool.claim(requestHash);

        vm.expectEmit();
        emit IInsurancePoolEvents.RewardClaimed(CHALLENGER, reward, 0);
        vm.prank(CHALLENGER);
        vm.assertEq(pool.claimReward(), reward, "the reward");
        vm.assertEq(token.balanceOf(CHALLENGER), challengerBefore + reward, "bond and reward");
        vm.prank(CHALLENGER);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.NoRewardOwed.selector, CHALLENGER));
        pool.claimReward();

        vm.assertEq(pool.totalOwed(), 0, "nothing owed");
        vm.assertEq(pool.totalClaimable(), 0, "nothing reserved");
        uint256 free = pool.freeBalance();
        vm.assertEq(free, token.balanceOf(address(pool)), "the rest is surplus");
        pool.withdrawSurplus(address(this), free);
        _assertMoneyRules();
    }

    function test_recordFraud_ReservesWhatThePoolHoldsAndOwesTheRest() public {
        _buy(90 ether);
        _emptyPool();
        token.mint(address(pool), 30 ether);
        _upholdFraud();
        uint256 reward = faults.batchSlashedAmount(5) * 1_000 / 10_000;
        vm.assertEq(pool.getCoverage(requestHash).payout, 90 ether, "entitled in full");
        vm.assertEq(pool.totalClaimable(), 30 ether, "what the pool held is reserved (the requester first)");
        vm.assertEq(pool.payoutOwed(requestHash), 60 ether, "the rest owed");
        vm.assertEq(pool.rewardOwed(CHALLENGER), reward, "nothing left for the challenger now");
        _assertMoneyRules();
    }

    function test_claim_PartlyFundedThenTheRest() public {
        _buy(90 ether);
        _emptyPool();
        uint256 slashedBefore = _slashCount();
        _upholdFraud();
        uint256 reward = pool.rewardOwed(CHALLENGER);

        // 30 tokens arrive (premiums): a claim takes them and the rest stays owed.
        token.mint(address(pool), 30 ether);
        vm.expectEmit();
        emit IInsurancePoolEvents.Claimed(requestHash, REQUESTER, 30 ether);
        vm.expectEmit();
        emit IInsurancePoolEvents.PayoutOwed(requestHash, 60 ether);
        vm.assertEq(pool.claim(requestHash), 30 ether, "partly paid");
        vm.assertTrue(pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Claimable, "still");
        vm.assertEq(pool.payoutPaid(requestHash), 30 ether, "paid so far");
        vm.assertEq(pool.payoutOwed(requestHash), 60 ether, "still owed");
        vm.assertEq(pool.totalOwed(), 60 ether + reward, "owed");
        _assertMoneyRules();
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.ClaimNotFunded.selector, requestHash, 60 ether));
        pool.claim(requestHash);

        // Money arriving while a payout is owed is the requester's: the challenger's reward waits.
        token.mint(address(pool), 1 ether);
        vm.assertEq(pool.rewardClaimable(CHALLENGER), 0, "payouts first");
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.RewardNotFunded.selector, CHALLENGER, reward));
        vm.prank(CHALLENGER);
        pool.claimReward();

        vm.roll(block.number + DELAY);
        _clear(slashedBefore + 1, _slashCount());
        vm.assertEq(pool.rewardClaimable(CHALLENGER), reward, "the slash covers both");
        uint256 before = token.balanceOf(REQUESTER);
        vm.assertEq(pool.claim(requestHash), 60 ether, "the rest");
        vm.assertEq(token.balanceOf(REQUESTER), before + 60 ether, "paid");
        vm.assertTrue(pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Claimed, "claimed");
        vm.assertEq(pool.payoutPaid(requestHash), 90 ether, "paid in full over two claims");
        vm.prank(CHALLENGER);
        pool.claimReward();
        vm.assertEq(pool.totalOwed(), 0, "nothing owed");
        _assertMoneyRules();
    }

    /// @dev Fraud A is owed; money arrives; fraud B is recorded later: B reserves nothing of it (it is
    ///      owed to A), so A's claim takes it and B's reverts until more arrives.
    function test_recordFraud_ALaterFraudDoesNotTakeMoneyOwedToAnEarlierOne() public {
        _buy(45 ether);
        vm.prank(REQUESTER);
        pool.buyCoverage(otherRequest, 0, 45 ether);
        _emptyPool();
        uint256 slashedBefore = _slashCount();
        _fraudOn(5, requestHash);
        uint256 rewardA = pool.rewardOwed(CHALLENGER);
        vm.assertEq(pool.payoutOwed(requestHash), 45 ether, "A owed");

        token.mint(address(pool), 40 ether); // less than owed to A
        _fraudOn(6, otherHash);
        vm.assertEq(pool.getCoverage(otherHash).payout, 45 ether, "B entitled in full");
        vm.assertEq(pool.payoutOwed(otherHash), 45 ether, "B owed: nothing reserved of the money owed to A");
        vm.assertEq(pool.totalClaimable(), 0, "nothing reserved");
        vm.assertGt(pool.rewardOwed(CHALLENGER), rewardA, "B's reward owed too");
        _assertMoneyRules();

        vm.assertEq(pool.claim(requestHash), 40 ether, "A takes the money that arrived");
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.ClaimNotFunded.selector, otherHash, 45 ether));
        pool.claim(otherHash);

        vm.roll(block.number + DELAY);
        _clear(slashedBefore + 1, _slashCount());
        vm.assertEq(pool.claim(requestHash), 5 ether, "A's rest");
        vm.assertEq(pool.claim(otherHash), 45 ether, "B in full");
        vm.prank(CHALLENGER);
        pool.claimReward();
        vm.assertEq(pool.totalOwed(), 0, "nothing owed");
        _assertMoneyRules();
    }

    /// @dev Without a delay (the devnet, `slashResolutionDelayBlocks` 0) the slash is cleared in the
    ///      slashing transaction and nothing is owed: the pool behaves as before.
    function test_noDelay_NothingOwed() public {
        core.setSlashResolutionDelay(0);
        _buy(90 ether);
        _emptyPool();
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        _upholdFraud();
        uint256 reward = faults.batchSlashedAmount(5) * 1_000 / 10_000;
        vm.assertEq(pool.totalOwed(), 0, "nothing owed");
        vm.assertEq(pool.totalClaimable(), 90 ether, "reserved");
        vm.assertEq(token.balanceOf(CHALLENGER), challengerBefore + reward, "reward sent");
        vm.assertEq(pool.claim(requestHash), 90 ether, "paid");
    }

    /// @dev Any coverage amount and any money in the pool when the fraud is recorded: entitlements
    ///      are whole, split into reserved/sent and owed by what the pool held (the requester first),
    ///      and once the slash is cleared everyone is paid exactly what it is entitled to.
    /// forge-config: default.fuzz.runs = 64
    function testFuzz_owedPayouts_PaidExactlyOnceFunded(uint96 amount, uint256 inPool, uint8 clearedEarly) public {
        amount = uint96(bound(amount, 1, CAP_Q0));
        inPool = bound(inPool, 0, 300 ether);
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        uint256 requesterBefore = token.balanceOf(REQUESTER);
        (uint256 slashedBefore, uint256 slashValue, uint256 reward) = _fraudWithInPool(amount, inPool);
        requesterBefore -= (uint256(amount) + 99) / 100; // the 1% premium (rounded up)

        // Some of the slashes may be cleared early, and both claim what they can (or revert).
        vm.roll(block.number + DELAY);
        uint256 last = _slashCount();
        uint256 early = slashedBefore + bound(clearedEarly, 0, last - slashedBefore);
        _clear(slashedBefore + 1, early);
        try pool.claim(requestHash) {} catch {}
        vm.prank(CHALLENGER);
        try pool.claimReward() {} catch {}
        _assertMoneyRules();

        _clear(early + 1, last);
        if (pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Claimable) {
            pool.claim(requestHash);
        }
        if (pool.rewardOwed(CHALLENGER) != 0) {
            vm.prank(CHALLENGER);
            pool.claimReward();
        }
        vm.assertEq(token.balanceOf(REQUESTER), requesterBefore + amount, "the requester paid exactly its payout");
        vm.assertEq(token.balanceOf(CHALLENGER), challengerBefore + reward, "the challenger its reward");
        vm.assertEq(pool.totalOwed(), 0, "nothing owed");
        vm.assertEq(pool.totalClaimable(), 0, "nothing reserved");
        vm.assertEq(token.balanceOf(address(pool)), inPool + slashValue - amount - reward, "the rest stays");
        vm.assertEq(pool.freeBalance(), token.balanceOf(address(pool)), "all free");
    }

    /// @dev Insures `amount`, leaves `inPool` in the pool and upholds the fraud; checks the split.
    function _fraudWithInPool(uint96 amount, uint256 inPool)
        internal
        returns (uint256 slashedBefore, uint256 slashValue, uint256 reward)
    {
        _buy(amount);
        _emptyPool();
        token.mint(address(pool), inPool);
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        slashedBefore = _slashCount();
        _upholdFraud();
        slashValue = faults.batchSlashedAmount(5);
        reward = slashValue * 1_000 / 10_000;
        uint256 reserved = amount < inPool ? amount : inPool;
        uint256 rewardSent = reward < inPool - reserved ? reward : inPool - reserved;
        vm.assertEq(pool.getCoverage(requestHash).payout, amount, "entitled in full");
        vm.assertEq(pool.totalClaimable(), reserved, "reserved");
        vm.assertEq(pool.payoutOwed(requestHash), amount - reserved, "owed");
        vm.assertEq(token.balanceOf(CHALLENGER), challengerBefore + rewardSent, "reward sent");
        vm.assertEq(pool.rewardOwed(CHALLENGER), reward - rewardSent, "reward owed");
        _assertMoneyRules();
    }
}
