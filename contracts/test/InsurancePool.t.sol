// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {ChallengeFixture} from "./FaultManager.t.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {IInsurancePoolTypes, IInsurancePoolErrors, IInsurancePoolEvents} from "../src/interfaces/IInsurancePool.sol";
import {IFaultManagerTypes, IFaultManagerErrors} from "../src/interfaces/IFaultManager.sol";
import {IInferenceTaskManager} from "../src/interfaces/IInferenceTaskManager.sol";
import {InsurancePool} from "../src/InsurancePool.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";
import {TestToken} from "../src/tokens/TestToken.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @dev Quorum 0 total stake 310 ether; cap: what a fraud at the 66.67% threshold slashes (FRAUD_WAD,
///      half) less the 10% challenger reward, 310 * 0.6667 * 0.5 * 0.9 = 93.00465 ether (below the
///      50% `coverageCapBps`); premium 1%; coverage term 1,000 blocks; challenge window 50 blocks.
abstract contract PoolFixture is ChallengeFixture {
    uint256 internal constant CAP_Q0 = 93.00465 ether;
    uint256 internal constant TERM = 1_000;
    uint256 internal constant WINDOW = 50;

    AvsMessages.InferenceRequest internal request;
    bytes32 internal requestHash;
    AvsMessages.BatchHeader internal insuredBatch;
    bytes32 internal insuredRecord;
    bytes32[] internal insuredProof;

    function setUp() public virtual override {
        super.setUp();
        (request, requestHash) = _request(1);
    }

    function _buy(uint96 amount) internal returns (uint256 premium) {
        vm.prank(REQUESTER);
        (, premium) = pool.buyCoverage(request, 0, amount);
    }

    /// @dev Certifies batch 5 holding (requestHash, "bad") with all signers, a block after the coverage
    ///      was bought (coverage is bought before the request is even submitted).
    function _certifyInsured() internal {
        vm.roll(block.number + 1);
        (insuredBatch, insuredRecord, insuredProof) = _certifyLeaf(5, requestHash, "bad", _none());
        vm.roll(block.number + 1);
    }

    function _upholdFraud() internal {
        (uint256 id, IFaultManagerTypes.BatchSigners memory s) = _resolveInsured();
        while (faults.getPendingSlashing(id).signersHash != 0) {
            faults.continueSlashing(id, s);
        }
    }

    /// @dev Certifies the insured batch, challenges its leaf and resolves it REJECT (the signers
    ///      beyond `maxSlashesPerCall` left pending).
    function _resolveInsured() internal returns (uint256 id, IFaultManagerTypes.BatchSigners memory s) {
        _certifyInsured();
        vm.prank(CHALLENGER);
        id = faults.challenge(insuredBatch, insuredRecord, requestHash, "bad", insuredProof);
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest(requestHash, "bad", AvsMessages.Verdict.Reject), hex"0001", _none());
        s = _batchSigners(insuredBatch, _none());
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
    }

    /// @dev Challenges the insured leaf (certified with `nonSigners`) now and upholds it, every signer slashed.
    function _challengeAndUphold(uint256[] memory nonSigners) internal returns (uint256 id) {
        vm.prank(CHALLENGER);
        id = faults.challenge(insuredBatch, insuredRecord, requestHash, "bad", insuredProof);
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest(requestHash, "bad", AvsMessages.Verdict.Reject), hex"0001", _none());
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(insuredBatch, nonSigners);
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
        while (faults.getPendingSlashing(id).signersHash != 0) {
            faults.continueSlashing(id, s);
        }
    }
}

contract BuyCoverageTest is PoolFixture {
    function test_buyCoverage_ChargesPremium() public {
        vm.expectEmit();
        emit IInsurancePoolEvents.CoverageBought(
            requestHash, REQUESTER, 0, 90 ether, 0.9 ether, uint32(block.number + 1_000)
        );
        vm.assertEq(_buy(90 ether), 0.9 ether, "premium");
        vm.assertEq(token.balanceOf(address(pool)), 0.9 ether, "pool");
        vm.assertEq(pool.outstandingCoverage(0), 90 ether, "outstanding");
        vm.assertTrue(pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Active, "active");
    }

    function test_buyCoverage_RevertWhen_AboveCap() public {
        _buy(uint96(CAP_Q0 - 5 ether));
        (AvsMessages.InferenceRequest memory r2,) = _request(2);
        vm.prank(REQUESTER);
        vm.expectRevert(
            abi.encodeWithSelector(IInsurancePoolErrors.CoverageAboveCap.selector, uint8(0), 10 ether, 5 ether)
        );
        pool.buyCoverage(r2, 0, 10 ether);
    }

    function test_buyCoverage_RevertWhen_NotRequester() public {
        vm.expectRevert(IInsurancePoolErrors.NotRequester.selector);
        pool.buyCoverage(request, 0, 1 ether);
    }

    function test_buyCoverage_RevertWhen_Exists() public {
        _buy(1 ether);
        vm.prank(REQUESTER);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.CoverageExists.selector, requestHash));
        pool.buyCoverage(request, 0, 1 ether);
    }

    function test_buyCoverage_RevertWhen_Zero() public {
        vm.prank(REQUESTER);
        vm.expectRevert(IInsurancePoolErrors.ZeroCoverage.selector);
        pool.buyCoverage(request, 0, 0);
    }

    function test_buyCoverage_RevertWhen_UnderChallenge() public {
        _certifyInsured();
        vm.prank(CHALLENGER);
        faults.challenge(insuredBatch, insuredRecord, requestHash, "bad", insuredProof);
        vm.prank(REQUESTER);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.RequestUnderChallenge.selector, requestHash));
        pool.buyCoverage(request, 0, 1 ether);
    }

    function testFuzz_buyCoverage_NeverAboveCap(uint96 amount, uint8 quorum) public {
        quorum = uint8(bound(quorum, 0, 2));
        uint256 available = pool.availableCoverage(quorum);
        vm.prank(REQUESTER);
        if (amount == 0) {
            vm.expectRevert(IInsurancePoolErrors.ZeroCoverage.selector);
        } else if (amount > available) {
            vm.expectRevert(
                abi.encodeWithSelector(IInsurancePoolErrors.CoverageAboveCap.selector, quorum, amount, available)
            );
        }
        pool.buyCoverage(request, quorum, amount);
        // at most what a fraud at the threshold slashes (FRAUD_WAD of 66.67%), less the 10% reward
        uint256 stake = registry.getCurrentTotalStake(quorum);
        vm.assertLe(pool.outstandingCoverage(quorum), stake * 6_667 * FRAUD_WAD / 1e22 * 9_000 / 10_000, "cap");
    }
}

contract ExpireCoverageTest is PoolFixture {
    function test_expireCoverage_AfterTermAndWindow_PremiumKept() public {
        _buy(10 ether);
        vm.roll(block.number + TERM + WINDOW + 1);
        vm.expectEmit();
        emit IInsurancePoolEvents.CoverageExpired(requestHash);
        pool.expireCoverage(requestHash);
        vm.assertEq(pool.outstandingCoverage(0), 0, "released");
        vm.assertEq(token.balanceOf(address(pool)), 0.1 ether, "premium kept");
    }

    function test_expireCoverage_RevertWhen_InTerm() public {
        _buy(10 ether);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.CoverageNotExpired.selector, requestHash));
        pool.expireCoverage(requestHash);
    }

    function test_expireCoverage_RevertWhen_NotActive() public {
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.CoverageNotActive.selector, requestHash));
        pool.expireCoverage(requestHash);
    }
}

contract ExpireCoverageOnFinalBatchTest is PoolFixture {
    address internal constant STRANGER = address(0xBAD);

    function test_expireCoverageOnFinalBatch() public {
        _buy(10 ether);
        _certifyInsured();
        vm.roll(block.number + 50);
        vm.prank(REQUESTER);
        pool.expireCoverageOnFinalBatch(insuredBatch, insuredRecord, requestHash, "bad", insuredProof);
        vm.assertTrue(pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Expired, "expired");
        vm.assertEq(pool.outstandingCoverage(0), 0, "capacity released");
    }

    function test_expireCoverageOnFinalBatch_RevertWhen_NotFinal() public {
        _buy(10 ether);
        _certifyInsured();
        vm.prank(REQUESTER);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.BatchNotFinal.selector, uint64(5)));
        pool.expireCoverageOnFinalBatch(insuredBatch, insuredRecord, requestHash, "bad", insuredProof);
    }

    function test_expireCoverageOnFinalBatch_RevertWhen_NotALeaf() public {
        _buy(10 ether);
        _certifyInsured();
        vm.roll(block.number + 50);
        vm.prank(REQUESTER);
        vm.expectRevert(IInsurancePoolErrors.LeafNotCertified.selector);
        pool.expireCoverageOnFinalBatch(insuredBatch, insuredRecord, requestHash, "good", insuredProof);
    }

    /// @dev Batch 5 holds the request with the right output and is final; batch 6, certified within
    ///      the term, holds it with the wrong output the requester was given. Anyone could end the
    ///      coverage on batch 5 before batch 6 was challenged, and the upheld fraud then paid nothing.
    function test_expireCoverageOnFinalBatch_RevertWhen_NotTheBeneficiary_FraudInAnotherBatchPaid() public {
        _buy(10 ether);
        vm.roll(block.number + 1);
        (AvsMessages.BatchHeader memory good, bytes32 goodRecord, bytes32[] memory goodProof) =
            _certifyLeaf(5, requestHash, "good", _none());
        vm.roll(block.number + WINDOW + 1);
        vm.assertTrue(taskManager.isBatchFinal(5), "batch 5 final");
        (insuredBatch, insuredRecord, insuredProof) = _certifyLeaf(6, requestHash, "bad", _none());
        vm.roll(block.number + 1);
        vm.prank(STRANGER);
        vm.expectRevert(IInsurancePoolErrors.NotRequester.selector);
        pool.expireCoverageOnFinalBatch(good, goodRecord, requestHash, "good", goodProof);
        _challengeAndUphold(_none());
        vm.prank(REQUESTER);
        vm.assertEq(pool.claim(requestHash), 10 ether, "paid");
    }
}

contract RecordFraudTest is PoolFixture {
    /// @dev While an upheld challenge still has signers to slash, its request's coverage is neither
    ///      claimable nor expirable, and no new coverage is sold on it.
    function test_coverage_WaitsForTheLastSlash() public {
        _buy(10 ether);
        _setMaxSlashes(2);
        (uint256 id, IFaultManagerTypes.BatchSigners memory s) = _resolveInsured();
        vm.roll(block.number + TERM + WINDOW + 1); // past the coverage's term and its window
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.RequestUnderChallenge.selector, requestHash));
        pool.expireCoverage(requestHash);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.NothingToClaim.selector, requestHash));
        pool.claim(requestHash);
        while (faults.getPendingSlashing(id).signersHash != 0) {
            faults.continueSlashing(id, s);
        }
        vm.assertEq(pool.claim(requestHash), 10 ether, "paid after the last slash");
    }

    /// @dev Coverage bought once the batch was certified (its output visible to the requester) is
    ///      insurance after the fact: nothing paid for that batch's fraud; the coverage stays as it
    ///      was (premium kept) and ends by its term.
    function test_recordFraud_CoverageBoughtAfterTheBatchIsNotPaid() public {
        _certifyInsured();
        _buy(90 ether); // the wrong output is certified and public already
        vm.prank(CHALLENGER);
        uint256 id = faults.challenge(insuredBatch, insuredRecord, requestHash, "bad", insuredProof);
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest(requestHash, "bad", AvsMessages.Verdict.Reject), hex"0001", _none());
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(insuredBatch, _none());
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
        while (faults.getPendingSlashing(id).signersHash != 0) {
            faults.continueSlashing(id, s);
        }
        IInsurancePoolTypes.Coverage memory c = pool.getCoverage(requestHash);
        vm.assertTrue(c.status == IInsurancePoolTypes.CoverageStatus.Active, "not claimable");
        vm.assertEq(c.payout, 0, "nothing paid");
        vm.assertEq(pool.totalClaimable(), 0, "nothing reserved");
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.NothingToClaim.selector, requestHash));
        pool.claim(requestHash);
        vm.roll(c.expiresAtBlock + WINDOW + 1);
        pool.expireCoverage(requestHash);
        vm.assertEq(pool.outstandingCoverage(0), 0, "ended by its term");
    }

    function test_recordFraud_RevertWhen_NotFaultManager() public {
        vm.expectRevert(IInsurancePoolErrors.OnlyFaultManager.selector);
        pool.recordFraud(requestHash, 5, hex"00", 0, CHALLENGER, 1 ether, 1 ether);
    }

    function test_recordFraud_CoverageClaimable() public {
        _buy(90 ether);
        _upholdFraud();
        IInsurancePoolTypes.Coverage memory c = pool.getCoverage(requestHash);
        vm.assertTrue(c.status == IInsurancePoolTypes.CoverageStatus.Claimable, "claimable");
        vm.assertEq(c.payout, 90 ether, "full payout");
        vm.assertEq(pool.totalClaimable(), 90 ether, "reserved");
        vm.assertEq(pool.outstandingCoverage(0), 0, "no longer outstanding");
        vm.assertTrue(pool.fraudProven(requestHash), "fraud");
    }
}

contract ClaimTest is PoolFixture {
    function test_claim_PaysOnce() public {
        _buy(90 ether);
        _upholdFraud();
        uint256 before = token.balanceOf(REQUESTER);
        vm.expectEmit();
        emit IInsurancePoolEvents.Claimed(requestHash, REQUESTER, 90 ether);
        pool.claim(requestHash);
        vm.assertEq(token.balanceOf(REQUESTER), before + 90 ether, "paid");
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.AlreadyClaimed.selector, requestHash));
        pool.claim(requestHash);
    }

    /// @dev Found in review: with the balance below `totalClaimable` (an asset rebased down) the
    ///      checked subtraction reverted every `recordFraud`, so no other fraud could be upheld.
    function test_recordFraud_WhenTheBalanceFellBelowWhatIsReserved() public {
        _buy(90 ether);
        _upholdFraud();
        uint256 reserved = pool.totalClaimable();
        vm.mockCall(address(token), abi.encodeCall(token.balanceOf, (address(pool))), abi.encode(reserved - 1));
        vm.assertEq(pool.freeBalance(), 0, "nothing free");
        vm.prank(address(faults));
        (uint256 payout, uint256 reward) =
            pool.recordFraud(keccak256("another request"), 9, hex"00", 1, CHALLENGER, 10 ether, 10 ether);
        vm.assertEq(payout, 0, "no coverage on it");
        vm.assertEq(reward, 1 ether, "the reward, owed");
        vm.assertEq(pool.rewardOwed(CHALLENGER), 1 ether, "owed, not sent");
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.RewardNotFunded.selector, CHALLENGER, 1 ether));
        vm.prank(CHALLENGER);
        pool.claimReward();
    }

    function test_claim_RevertWhen_NoFraud() public {
        _buy(90 ether);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.NothingToClaim.selector, requestHash));
        pool.claim(requestHash);
    }
}

contract WithdrawSurplusTest is PoolFixture {
    function test_withdrawSurplus_KeepsClaimsReserved() public {
        _buy(90 ether);
        _upholdFraud();
        uint256 free = pool.freeBalance();
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.InsufficientSurplus.selector, free + 1, free));
        pool.withdrawSurplus(address(this), free + 1);
        pool.withdrawSurplus(address(this), free);
        pool.claim(requestHash);
        vm.assertEq(token.balanceOf(address(pool)), 0, "exactly solvent");
    }
}

/// @dev Slashed stake of a strategy whose token is not the pool's asset lands in the pool too.
contract RecoverTokenTest is PoolFixture {
    function test_recoverToken_SendsAnotherTokenOut() public {
        TestToken lst = new TestToken("Liquid staked", "LST");
        lst.mint(address(pool), 7 ether);
        uint256 assetBefore = token.balanceOf(address(pool));
        vm.expectEmit();
        emit IInsurancePoolEvents.TokenRecovered(address(lst), address(0xCAFE), 7 ether);
        pool.recoverToken(lst, address(0xCAFE), 7 ether);
        vm.assertEq(lst.balanceOf(address(0xCAFE)), 7 ether, "recovered");
        vm.assertEq(token.balanceOf(address(pool)), assetBefore, "asset untouched");
    }

    function test_recoverToken_RevertWhen_Asset() public {
        _buy(90 ether); // premium in the pool
        vm.expectRevert(IInsurancePoolErrors.CannotRecoverAsset.selector);
        pool.recoverToken(token, address(this), 1);
    }

    function testFuzz_recoverToken_RevertWhen_NotOwner(address caller) public {
        vm.assume(caller != address(this));
        TestToken lst = new TestToken("Liquid staked", "LST");
        lst.mint(address(pool), 1 ether);
        vm.prank(caller);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, caller));
        pool.recoverToken(lst, caller, 1 ether);
    }
}

/// @dev Review finding A: `expireCoverage` after the term only could front-run the challenge of a
///      wrong output certified late in the term (its challenge window still open), and the insured
///      requester got nothing. Now the term expires only once every batch certified within it is final.
contract ExpireCoverageAfterWindowTest is PoolFixture {
    function _end() internal view returns (uint256) {
        return pool.getCoverage(requestHash).expiresAtBlock;
    }

    /// @dev Certifies batch 5 holding (requestHash, "bad"), every operator signing, in block `at`.
    function _certifyAt(uint256 at) internal {
        vm.roll(at);
        (insuredBatch, insuredRecord, insuredProof) = _certifyLeaf(5, requestHash, "bad", _none());
    }

    function test_expireCoverage_RevertWhen_ABatchOfTheTermCanStillBeChallenged() public {
        _buy(90 ether);
        uint256 end = _end();
        _certifyAt(end - 5); // a wrong output certified late in the term
        vm.roll(end + 1); // the term is over, the batch's challenge window is not
        vm.prank(address(0xBAD)); // a signer of the bad batch tries to front-run the challenge
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.CoverageNotExpired.selector, requestHash));
        pool.expireCoverage(requestHash);
        vm.roll(end - 5 + WINDOW); // the last block of the batch's challenge window
        _challengeAndUphold(_none());
        vm.assertEq(pool.claim(requestHash), 90 ether, "the insured requester is paid");
    }

    function test_expireCoverage_OnceTheWindowAfterTheTermIsOver() public {
        _buy(10 ether);
        uint256 end = _end();
        vm.roll(end + WINDOW);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.CoverageNotExpired.selector, requestHash));
        pool.expireCoverage(requestHash);
        vm.roll(end + WINDOW + 1);
        pool.expireCoverage(requestHash);
        vm.assertTrue(pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Expired, "expired");
        vm.assertEq(pool.outstandingCoverage(0), 0, "released");
    }

    /// @dev Lowering the window after the term does not let a signer of a bad batch certified in
    ///      the term expire the coverage before that batch's window (the one it was certified
    ///      under) is over.
    function test_expireCoverage_ALoweredWindowKeepsTheBatchesOfTheTermChallengeable() public {
        _buy(90 ether);
        uint256 end = _end();
        _certifyAt(end - 5);
        vm.roll(end + 1);
        taskManager.setConfig(IInferenceTaskManager.Config(6667, 100, 1));
        vm.roll(end + 10);
        vm.prank(address(0xBAD));
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.CoverageNotExpired.selector, requestHash));
        pool.expireCoverage(requestHash);
        vm.roll(end - 5 + WINDOW);
        _challengeAndUphold(_none());
        vm.assertEq(pool.claim(requestHash), 90 ether, "the insured requester is paid");
    }

    /// @dev The window is the task manager's current one, as `FaultManager.challenge` reads it.
    function test_expireCoverage_FollowsTheTaskManagersChallengeWindow() public {
        _buy(10 ether);
        taskManager.setConfig(IInferenceTaskManager.Config(6667, 100, 80));
        uint256 end = _end();
        vm.roll(end + 80);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.CoverageNotExpired.selector, requestHash));
        pool.expireCoverage(requestHash);
        vm.roll(end + 81);
        pool.expireCoverage(requestHash);
    }

    /// @dev The coverage pays for a certification within its term only: a batch certified after it
    ///      could otherwise be paid or not depending on whether `expireCoverage` came first.
    function test_recordFraud_BatchCertifiedAfterTheTermIsNotPaid() public {
        _buy(90 ether);
        uint256 end = _end();
        _certifyAt(end + 1);
        vm.roll(end + 2);
        _challengeAndUphold(_none());
        IInsurancePoolTypes.Coverage memory c = pool.getCoverage(requestHash);
        vm.assertTrue(c.status == IInsurancePoolTypes.CoverageStatus.Active, "not claimable");
        vm.assertEq(c.payout, 0, "nothing paid");
        vm.assertEq(pool.totalClaimable(), 0, "nothing reserved");
        vm.roll(end + 1_000); // its term is over, and every batch of the term final
        pool.expireCoverage(requestHash);
        vm.assertEq(pool.outstandingCoverage(0), 0, "no longer outstanding");
    }

    /// @dev Whenever a batch certified within the term (here in its last window's worth of blocks)
    ///      can still be challenged, the coverage cannot expire by its term; once none can, it can.
    function testFuzz_expireCoverage_NeverWhileABatchOfTheTermCanBeChallenged(uint256 certifyAt, uint256 expireAt)
        public
    {
        _buy(10 ether);
        uint256 end = _end();
        certifyAt = bound(certifyAt, end - WINDOW, end);
        _certifyAt(certifyAt);
        expireAt = bound(expireAt, certifyAt + 1, end + 2 * WINDOW);
        vm.roll(expireAt);
        (bool expired,) = address(pool).call(abi.encodeCall(pool.expireCoverage, (requestHash)));
        if (expireAt <= certifyAt + WINDOW) vm.assertFalse(expired, "expired while its batch can be challenged");
        if (expireAt > end + WINDOW) vm.assertTrue(expired, "not expired once every batch of its term is final");
        if (expired) {
            vm.prank(CHALLENGER);
            vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.ChallengeWindowClosed.selector, uint64(5)));
            faults.challenge(insuredBatch, insuredRecord, requestHash, "bad", insuredProof);
        }
    }
}

/// @dev Review finding B: coverage capped at 50% of the quorum's stake could exceed what one fraud
///      slashes (FRAUD_WAD of the signers' stake, which need only 66.67% of it), so a requester
///      colluding with the signers (and challenging itself) profited from other money in the pool.
///      Now the cap is what a fraud at the threshold slashes, less the challenger's reward.
contract CoverageCapTest is PoolFixture {
    function test_coverageCap_IsTheFraudSlashAtTheThresholdLessTheReward() public view {
        vm.assertEq(pool.coverageCap(0), CAP_Q0, "quorum 0: 310 * 0.6667 * 0.5 * 0.9");
        vm.assertEq(pool.availableCoverage(0), CAP_Q0, "available");
        vm.assertEq(pool.coverageCap(1), 15.00075 ether, "quorum 1: 50 * 0.6667 * 0.5 * 0.9");
    }

    function test_buyCoverage_RevertWhen_AboveTheFraudSlash() public {
        vm.prank(REQUESTER);
        vm.expectRevert(
            abi.encodeWithSelector(IInsurancePoolErrors.CoverageAboveCap.selector, uint8(0), CAP_Q0 + 1, CAP_Q0)
        );
        pool.buyCoverage(request, 0, uint96(CAP_Q0 + 1));
        _buy(uint96(CAP_Q0));
        vm.assertEq(pool.availableCoverage(0), 0, "all sold");
    }

    function test_coverageCap_FollowsThresholdFraudWadRewardAndGovernanceCap() public {
        taskManager.setConfig(IInferenceTaskManager.Config(10_000, 100, 50));
        vm.assertEq(pool.coverageCap(0), 139.5 ether, "310 * 1 * 0.5 * 0.9");
        IFaultManagerTypes.Config memory fc = _faultConfig(MAX_SLASHES);
        fc.fraudWad = 0.2e18;
        fc.escalationThresholdBps = 10_000; // at least the batch threshold
        faults.setConfig(fc, hex"0001");
        vm.assertEq(pool.coverageCap(0), 55.8 ether, "310 * 1 * 0.2 * 0.9");
        pool.setConfig(IInsurancePoolTypes.Config(100, 5_000, 0, 1_000));
        vm.assertEq(pool.coverageCap(0), 62 ether, "310 * 1 * 0.2, no reward");
        pool.setConfig(IInsurancePoolTypes.Config(100, 1_000, 0, 1_000));
        vm.assertEq(pool.coverageCap(0), 31 ether, "coverageCapBps 10% binds");
    }

    function test_coverageCap_ZeroWithoutAFaultManager() public {
        InsurancePool fresh = new InsurancePool(
            token, registry, taskManager, address(this), IInsurancePoolTypes.Config(100, 5_000, 1_000, 1_000)
        );
        vm.assertEq(fresh.coverageCap(0), 0, "nothing slashes yet");
        vm.assertEq(fresh.availableCoverage(0), 0, "nothing to sell");
    }

    /// @dev The reviewer's scenario: the requester buys the whole cap, operators 5..8 (260 of 310
    ///      ether) certify a wrong output, the fraud is upheld; the pool loses nothing.
    function test_colludingRequester_CannotProfitFromItsOwnFraud() public {
        _fraudCostsThePoolNothing(_range(1, 4));
    }

    /// @dev Any set of signers that meets the threshold: payout + reward <= what the fraud slashes.
    function testFuzz_fraudAtAnyCertifiableSignerSet_CostsThePoolNothing(uint8 nonSignerMask) public {
        uint256 nonSignerStake;
        uint256 count;
        for (uint256 sk = 1; sk <= 8; ++sk) {
            if (nonSignerMask & (1 << (sk - 1)) != 0) {
                nonSignerStake += sk <= 4 ? sk * 5 ether : sk * 10 ether; // quorum 0 stakes
                ++count;
            }
        }
        vm.assume((310 ether - nonSignerStake) * 10_000 >= 310 ether * uint256(6_667));
        uint256[] memory nonSigners = new uint256[](count);
        count = 0;
        for (uint256 sk = 1; sk <= 8; ++sk) {
            if (nonSignerMask & (1 << (sk - 1)) != 0) nonSigners[count++] = sk;
        }
        _fraudCostsThePoolNothing(nonSigners);
    }

    function _fraudCostsThePoolNothing(uint256[] memory nonSigners) internal {
        token.mint(address(pool), 100 ether); // third-party money already in the pool
        uint256 amount = pool.availableCoverage(0);
        _buy(uint96(amount)); // the whole cap
        uint256 poolBefore = token.balanceOf(address(pool)); // third-party money + premium
        vm.roll(block.number + 1);
        (insuredBatch, insuredRecord, insuredProof) = _certifyLeaf(5, requestHash, "bad", nonSigners);
        vm.roll(block.number + 1);
        _challengeAndUphold(nonSigners);
        vm.assertEq(pool.claim(requestHash), amount, "the coverage is paid in full");
        vm.assertGe(token.balanceOf(address(pool)), poolBefore, "payout + reward <= slashed");
    }
}

/// @dev The cap is checked at purchase, against the stake of then. Colluders then lower the quorum's
///      stake (operators 5 and 6, never signers, leave: 310 -> 200 ether) and certify the fraud with
///      operators 7 and 8 (150 of the 200). The fraud slashes 75 ether, less than the 93 sold: the
///      payout is cut to the batch's budget (the slash less the challenger's reward), so the pool's
///      other money stays.
contract StakeFellAfterPurchaseTest is PoolFixture {
    AvsMessages.BatchHeader internal h;
    bytes32 internal fraudRecord;
    bytes32[] internal fraudProof;
    uint256[] internal nonSigners;
    uint256[] internal signers;

    function test_recordFraud_PaysNoMoreThanTheBatchSlashed() public {
        token.mint(address(pool), 100 ether); // third-party money already in the pool
        uint256 amount = pool.availableCoverage(0);
        _buy(uint96(amount));
        uint256 poolBefore = token.balanceOf(address(pool));
        _leaveQuorum0(5);
        _leaveQuorum0(6);
        vm.roll(block.number + 1);
        _certifyBySevenAndEight();
        vm.roll(block.number + 1);
        uint256 allocatedBefore = _allocated(7, 0) + _allocated(8, 0);
        vm.prank(CHALLENGER);
        uint256 id = faults.challenge(h, fraudRecord, requestHash, "bad", fraudProof);
        vm.roll(block.number + 1);
        faults.resolveChallenge(
            id,
            AvsMessages.Verdict.Reject,
            uint32(block.number - 1),
            _escalationCertificate(),
            _batchSigners(h, nonSigners, signers)
        );
        uint256 slashed = allocatedBefore - (_allocated(7, 0) + _allocated(8, 0));
        vm.assertEq(slashed, 75 ether, "half of 7's and 8's 150");
        uint256 paid = pool.claim(requestHash);
        vm.assertEq(paid, slashed - slashed / 10, "the slash less the challenger's 10%");
        vm.assertTrue(paid < amount, "less than the coverage sold");
        vm.assertEq(pool.batchPayoutBudget(5), 0, "the batch's budget is spent");
        vm.assertGe(token.balanceOf(address(pool)), poolBefore, "payout + reward <= slashed");
    }

    function _certifyBySevenAndEight() internal {
        signers.push(7);
        signers.push(8);
        nonSigners = _sortById(_range(1, 4));
        bytes32 root;
        (root, fraudProof) = _twoLeafRoot(requestHash, "bad");
        h = _header(5, root, hex"00");
        taskManager.certifyBatch(h, _params(taskManager.batchDigest(h), h, signers, nonSigners));
        fraudRecord = keccak256(abi.encodePacked(h.referenceBlock, _ids(nonSigners)));
    }

    function _escalationCertificate() internal view returns (IBLSSignatureChecker.NonSignerStakesAndSignature memory) {
        uint256[] memory escalation = new uint256[](10); // 1..4 sign in quorums 0 and 1, and 7, 8
        for (uint256 i; i < 4; ++i) {
            escalation[2 * i] = i + 1;
            escalation[2 * i + 1] = i + 1;
        }
        escalation[8] = 7;
        escalation[9] = 8;
        AvsMessages.BatchHeader memory quorums = _header(0, bytes32(0), hex"0001");
        return _params(_verdictDigest(requestHash, "bad", AvsMessages.Verdict.Reject), quorums, escalation, _none());
    }
}

contract CoverageTermConfigTest is PoolFixture {
    function test_setConfig_RevertWhen_TermWouldWrapOrIsZero() public {
        vm.expectRevert(IInsurancePoolErrors.InvalidConfig.selector);
        pool.setConfig(IInsurancePoolTypes.Config(100, 5_000, 0, type(uint32).max));
        vm.expectRevert(IInsurancePoolErrors.InvalidConfig.selector);
        pool.setConfig(IInsurancePoolTypes.Config(100, 5_000, 0, 0));
        uint32 longest = pool.MAX_COVERAGE_TERM_BLOCKS();
        pool.setConfig(IInsurancePoolTypes.Config(100, 5_000, 0, longest));
    }

    function testFuzz_buyCoverage_ExpiresAfterItsTerm(uint32 term, uint32 blockNumber) public {
        term = uint32(bound(term, 1, pool.MAX_COVERAGE_TERM_BLOCKS()));
        blockNumber = uint32(bound(blockNumber, block.number, type(uint32).max - pool.MAX_COVERAGE_TERM_BLOCKS()));
        pool.setConfig(IInsurancePoolTypes.Config(100, 5_000, 0, term));
        vm.roll(blockNumber);
        (AvsMessages.InferenceRequest memory r7, bytes32 h7) = _request(7);
        vm.prank(REQUESTER);
        pool.buyCoverage(r7, 0, 1 ether);
        vm.assertEq(uint256(pool.getCoverage(h7).expiresAtBlock), uint256(blockNumber) + term, "expires");
    }
}

/// @dev A request certified in two batches, both frauds upheld, one of them in a batch the coverage
///      does not pay for (certified before the purchase, or after the term): the insured batch's fraud
///      is paid whichever challenge is resolved first (it used to be nothing when the other came first).
contract RecordFraudOrderTest is PoolFixture {
    struct Leaf {
        AvsMessages.BatchHeader h;
        bytes32 rec;
        bytes32[] proof;
        bytes32 out;
        uint256 id;
    }

    function _certified(uint64 batchIndex, bytes32 out) internal returns (Leaf memory l) {
        l.out = out;
        (l.h, l.rec, l.proof) = _certifyLeaf(batchIndex, requestHash, out, _none());
    }

    function _open(Leaf memory l) internal {
        vm.prank(CHALLENGER);
        l.id = faults.challenge(l.h, l.rec, requestHash, l.out, l.proof);
    }

    function _uphold(Leaf memory l) internal {
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest(requestHash, l.out, AvsMessages.Verdict.Reject), hex"0001", _none());
        faults.resolveChallenge(
            l.id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, _batchSigners(l.h, _none())
        );
    }

    function _payoutAfter(Leaf memory first, Leaf memory second) internal returns (uint256) {
        _open(first);
        _open(second);
        vm.roll(block.number + 1);
        _uphold(first);
        vm.assertTrue(
            pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Active
                || pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Claimable,
            "not ended while a challenge of its request is open"
        );
        _uphold(second);
        return pool.getCoverage(requestHash).payout;
    }

    function _boughtBetween(bool uninsuredFirst) internal returns (uint256) {
        Leaf memory before = _certified(5, "bad0");
        vm.roll(block.number + 1);
        _buy(50 ether);
        vm.roll(block.number + 1);
        Leaf memory insured = _certified(6, "bad1");
        vm.roll(block.number + 1);
        return uninsuredFirst ? _payoutAfter(before, insured) : _payoutAfter(insured, before);
    }

    function test_recordFraud_AnEarlierBatchResolvedFirstDoesNotEndTheCoverage() public {
        vm.assertEq(_boughtBetween(true), 50 ether, "uninsured batch first");
        vm.prank(REQUESTER);
        vm.assertEq(pool.claim(requestHash), 50 ether, "claimed");
    }

    function test_recordFraud_TheInsuredBatchResolvedFirstIsPaid() public {
        vm.assertEq(_boughtBetween(false), 50 ether, "insured batch first");
    }

    function test_recordFraud_ABatchAfterTheTermResolvedFirstDoesNotEndTheCoverage() public {
        _buy(50 ether);
        uint256 end = pool.getCoverage(requestHash).expiresAtBlock;
        vm.roll(end);
        Leaf memory inTerm = _certified(6, "bad1");
        vm.roll(end + 1);
        Leaf memory late = _certified(7, "bad2");
        vm.roll(end + 2);
        vm.assertEq(_payoutAfter(late, inTerm), 50 ether, "in-term fraud paid");
    }
}
