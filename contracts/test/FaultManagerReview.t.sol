// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {ChallengeFixture} from "./FaultManager.t.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {IFaultManagerTypes, IFaultManagerErrors} from "../src/interfaces/IFaultManager.sol";
import {IInsurancePoolTypes} from "../src/interfaces/IInsurancePool.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";

/// @notice Faults found by a review of the fault manager with the insurance pool (2026-11-28),
///         each fixed and kept here as a regression test.
contract FaultManagerReviewTest is ChallengeFixture {
    /// A rejected output's fault was one id whatever the quorums: whoever proved first chose them,
    /// so a REJECT by a small quorum (say the operator's allies) used the fault up and the proof by
    /// the quorum holding its real stake reverted. Each quorum is now slashed once for the fault.
    function test_rejectedOutput_EachQuorumIsSlashedOnceWhoeverProvesFirst() public {
        IFaultManagerTypes.SignedAttestation memory a = _signed(1, _att("req", "bad", AvsMessages.Verdict.Accept));
        bytes32 d = _verdictDigest("req", "bad", AvsMessages.Verdict.Reject);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory small = _cert(d, hex"01", _one(1));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory full = _cert(d, hex"00", _one(1));
        uint32 ref = uint32(block.number - 1);
        uint96 q0Before = registry.getCurrentStake(_id(1), 0);
        uint96 q1Before = registry.getCurrentStake(_id(1), 1);
        bytes32 faultId = faults.proveRejectedOutput(_id(1), a, hex"01", ref, small);
        vm.assertEq(registry.getCurrentStake(_id(1), 0), q0Before, "quorum 0 untouched by quorum 1's proof");
        vm.assertLt(registry.getCurrentStake(_id(1), 1), q1Before, "quorum 1 slashed");
        vm.assertEq(faults.proveRejectedOutput(_id(1), a, hex"00", ref, full), faultId, "the same fault");
        vm.assertLt(registry.getCurrentStake(_id(1), 0), q0Before, "quorum 0 slashed by its own majority");
        uint96 q1After = registry.getCurrentStake(_id(1), 1);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.FaultAlreadySlashed.selector, faultId));
        faults.proveRejectedOutput(_id(1), a, hex"01", ref, small);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.FaultAlreadySlashed.selector, faultId));
        faults.proveRejectedOutput(_id(1), a, hex"00", ref, full);
        vm.assertEq(registry.getCurrentStake(_id(1), 1), q1After, "never twice");
    }

    bytes32 internal insuredRequest;

    /// @dev Coverage for the whole available amount on request R; batch 1 (quorum 0, all 8 sign)
    ///      certifies two wrong outputs, ("reqX", "outX") and (R, "bad"), both challenged.
    function _certifyTwoFrauds()
        internal
        returns (uint96 amount, uint256 other, uint256 insured, IFaultManagerTypes.BatchSigners memory s)
    {
        AvsMessages.InferenceRequest memory r;
        (r, insuredRequest) = _request(1);
        amount = uint96(pool.availableCoverage(0));
        vm.prank(REQUESTER);
        pool.buyCoverage(r, 0, amount);
        vm.roll(block.number + 1);
        (other, insured, s) = _challengeTwoLeaves([bytes32("reqX"), "outX", insuredRequest, "bad"]);
    }

    function _reject(uint256 id, bytes32 req, bytes32 out, IFaultManagerTypes.BatchSigners memory s) internal {
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest(req, out, AvsMessages.Verdict.Reject), hex"0001", _none());
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
    }

    /// The insured challenge closed first while a sibling challenge of its batch had slashed most
    /// signers and was still slashing: its budget held only its own two signers' shares, and the
    /// rest of the batch's slash arrived later and stayed unused. Now the pool is told every share
    /// slashed in the batch so far, and the requester is paid in full.
    function test_splitSlashing_TheInsuredRequesterIsPaidInFull() public {
        (uint96 amount, uint256 otherChallenge, uint256 insuredChallenge, IFaultManagerTypes.BatchSigners memory s) =
            _certifyTwoFrauds();
        uint256 poolBefore = token.balanceOf(address(pool));
        _setMaxSlashes(6);
        _reject(otherChallenge, "reqX", "outX", s); // 6 of the 8 signers, then pending
        uint256 slashedByOther = faults.batchSlashedAmount(1);
        _reject(insuredChallenge, insuredRequest, "bad", s); // the last 2, and closes
        IInsurancePoolTypes.Coverage memory c = pool.getCoverage(insuredRequest);
        vm.assertTrue(c.status == IInsurancePoolTypes.CoverageStatus.Claimable, "claimable");
        vm.assertEq(c.payout, amount, "paid in full");
        vm.assertGt(slashedByOther, faults.batchSlashedAmount(1) - slashedByOther, "mostly the sibling's slash");
        faults.continueSlashing(otherChallenge, s);
        vm.assertTrue(faults.getChallenge(otherChallenge).status == IFaultManagerTypes.ChallengeStatus.Upheld, "upheld");
        vm.assertEq(pool.claim(insuredRequest), amount, "claimed");
        uint256 slashed = faults.batchSlashedAmount(1);
        vm.assertGe(token.balanceOf(address(pool)) + amount, poolBefore, "never more than the slash out");
        vm.assertLe(token.balanceOf(address(pool)), poolBefore + slashed, "slash in");
    }

    /// A reward raised by governance between a share's report (by the sibling that closed first) and
    /// the close of the challenge that slashed it was paid from other money in the pool: the rewards
    /// come from what the batch's reports set aside (`batchRewardReserve`).
    function test_splitSlashing_ARaisedRewardIsNotPaidFromOtherMoney() public {
        (, uint256 otherChallenge, uint256 insuredChallenge, IFaultManagerTypes.BatchSigners memory s) =
            _certifyTwoFrauds();
        token.mint(address(pool), 1000 ether); // other money: premiums, other batches
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        _setMaxSlashes(6);
        _reject(otherChallenge, "reqX", "outX", s);
        _reject(insuredChallenge, insuredRequest, "bad", s); // the budget is told of all 8 signers
        uint256 payout = pool.getCoverage(insuredRequest).payout;
        pool.setConfig(IInsurancePoolTypes.Config(100, 5_000, 10_000, 10_000)); // every slashed share to the challenger
        faults.continueSlashing(otherChallenge, s);
        uint256 rewards = token.balanceOf(CHALLENGER) - challengerBefore - 2 * BOND;
        uint256 slashed = faults.batchSlashedAmount(1);
        vm.assertLe(payout + rewards, slashed, "payouts + rewards within the batch's slash");
        vm.assertEq(pool.batchRewardReserve(1), 0, "the reserve is spent");
    }

    /// Lowering the resolution window let anyone expire challenges already open (bond back, nobody
    /// slashed). A challenge keeps the window it was opened with.
    function test_resolutionWindow_AChallengeKeepsTheWindowItWasOpenedWith() public {
        uint256 id = _challenge();
        vm.roll(block.number + 2);
        IFaultManagerTypes.Config memory cfg = _faultConfig(MAX_SLASHES);
        cfg.resolutionWindowBlocks = 1;
        faults.setConfig(cfg, hex"0001");
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.ChallengeNotExpired.selector, id));
        faults.expireChallenge(id);
        vm.assertEq(faults.getChallenge(id).resolutionWindowBlocks, RESOLUTION_WINDOW, "the window it opened with");
        (uint256 later,,) = _challengeBothLeaves();
        vm.assertEq(faults.getChallenge(later).resolutionWindowBlocks, 1, "opened under the new window");
        vm.roll(uint256(faults.getChallenge(id).openedBlock) + RESOLUTION_WINDOW);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.ChallengeNotExpired.selector, id));
        faults.expireChallenge(id);
        vm.roll(block.number + 1);
        faults.expireChallenge(id);
        faults.expireChallenge(later);
    }
}
