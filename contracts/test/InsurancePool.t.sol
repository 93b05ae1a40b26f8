// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {ChallengeFixture} from "./FaultManager.t.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {IInsurancePoolTypes, IInsurancePoolErrors, IInsurancePoolEvents} from "../src/interfaces/IInsurancePool.sol";
import {IFaultManagerTypes} from "../src/interfaces/IFaultManager.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";
import {TestToken} from "../src/tokens/TestToken.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @dev Quorum 0 total stake 310 ether; cap 50% = 155 ether; premium 1%.
abstract contract PoolFixture is ChallengeFixture {
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
}

contract BuyCoverageTest is PoolFixture {
    function test_buyCoverage_ChargesPremium() public {
        vm.expectEmit();
        emit IInsurancePoolEvents.CoverageBought(
            requestHash, REQUESTER, 0, 100 ether, 1 ether, uint32(block.number + 1_000)
        );
        vm.assertEq(_buy(100 ether), 1 ether, "premium");
        vm.assertEq(token.balanceOf(address(pool)), 1 ether, "pool");
        vm.assertEq(pool.outstandingCoverage(0), 100 ether, "outstanding");
        vm.assertTrue(pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Active, "active");
    }

    function test_buyCoverage_RevertWhen_AboveCap() public {
        _buy(150 ether);
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
        vm.assertLe(pool.outstandingCoverage(quorum), uint256(registry.getCurrentTotalStake(quorum)) / 2, "cap");
    }
}

contract ExpireCoverageTest is PoolFixture {
    function test_expireCoverage_AfterTerm_PremiumKept() public {
        _buy(10 ether);
        vm.roll(block.number + 1_001);
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
    function test_expireCoverageOnFinalBatch() public {
        _buy(10 ether);
        _certifyInsured();
        vm.roll(block.number + 50);
        pool.expireCoverageOnFinalBatch(insuredBatch, insuredRecord, requestHash, "bad", insuredProof);
        vm.assertTrue(pool.getCoverage(requestHash).status == IInsurancePoolTypes.CoverageStatus.Expired, "expired");
    }

    function test_expireCoverageOnFinalBatch_RevertWhen_NotFinal() public {
        _buy(10 ether);
        _certifyInsured();
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.BatchNotFinal.selector, uint64(5)));
        pool.expireCoverageOnFinalBatch(insuredBatch, insuredRecord, requestHash, "bad", insuredProof);
    }

    function test_expireCoverageOnFinalBatch_RevertWhen_NotALeaf() public {
        _buy(10 ether);
        _certifyInsured();
        vm.roll(block.number + 50);
        vm.expectRevert(IInsurancePoolErrors.LeafNotCertified.selector);
        pool.expireCoverageOnFinalBatch(insuredBatch, insuredRecord, requestHash, "good", insuredProof);
    }
}

contract RecordFraudTest is PoolFixture {
    /// @dev While an upheld challenge still has signers to slash, its request's coverage is neither
    ///      claimable nor expirable, and no new coverage is sold on it.
    function test_coverage_WaitsForTheLastSlash() public {
        _buy(10 ether);
        _setMaxSlashes(2);
        (uint256 id, IFaultManagerTypes.BatchSigners memory s) = _resolveInsured();
        vm.roll(block.number + 1_001); // past the coverage's term
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
    ///      insurance after the fact: the fraud expires it, premium kept, nothing paid.
    function test_recordFraud_CoverageBoughtAfterTheBatchIsNotPaid() public {
        _certifyInsured();
        _buy(100 ether); // the wrong output is certified and public already
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
        vm.assertTrue(c.status == IInsurancePoolTypes.CoverageStatus.Expired, "expired, not claimable");
        vm.assertEq(pool.totalClaimable(), 0, "nothing reserved");
        vm.assertEq(pool.outstandingCoverage(0), 0, "no longer outstanding");
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.NothingToClaim.selector, requestHash));
        pool.claim(requestHash);
    }

    function test_recordFraud_RevertWhen_NotFaultManager() public {
        vm.expectRevert(IInsurancePoolErrors.OnlyFaultManager.selector);
        pool.recordFraud(requestHash, hex"00", 0, CHALLENGER, 1 ether);
    }

    function test_recordFraud_CoverageClaimable() public {
        _buy(100 ether);
        _upholdFraud();
        IInsurancePoolTypes.Coverage memory c = pool.getCoverage(requestHash);
        vm.assertTrue(c.status == IInsurancePoolTypes.CoverageStatus.Claimable, "claimable");
        vm.assertEq(c.payout, 100 ether, "full payout");
        vm.assertEq(pool.totalClaimable(), 100 ether, "reserved");
        vm.assertEq(pool.outstandingCoverage(0), 0, "no longer outstanding");
        vm.assertTrue(pool.fraudProven(requestHash), "fraud");
    }
}

contract ClaimTest is PoolFixture {
    function test_claim_PaysOnce() public {
        _buy(100 ether);
        _upholdFraud();
        uint256 before = token.balanceOf(REQUESTER);
        vm.expectEmit();
        emit IInsurancePoolEvents.Claimed(requestHash, REQUESTER, 100 ether);
        pool.claim(requestHash);
        vm.assertEq(token.balanceOf(REQUESTER), before + 100 ether, "paid");
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.AlreadyClaimed.selector, requestHash));
        pool.claim(requestHash);
    }

    function test_claim_RevertWhen_NoFraud() public {
        _buy(100 ether);
        vm.expectRevert(abi.encodeWithSelector(IInsurancePoolErrors.NothingToClaim.selector, requestHash));
        pool.claim(requestHash);
    }
}

contract WithdrawSurplusTest is PoolFixture {
    function test_withdrawSurplus_KeepsClaimsReserved() public {
        _buy(100 ether);
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
        _buy(100 ether); // premium in the pool
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
