// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {ChallengeFixture} from "./FaultManager.t.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {IFaultManagerTypes, IFaultManagerErrors} from "../src/interfaces/IFaultManager.sol";
import {IInferenceTaskManager} from "../src/interfaces/IInferenceTaskManager.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";

/// @dev The share that resolves a challenge is never below a majority nor below the batch threshold
///      in force when it is resolved, and a slashing's stall window is its challenge's own.
contract EscalationThresholdTest is ChallengeFixture {
    /// @dev Below a majority, valid ACCEPT and REJECT certificates of one leaf both exist, and the
    ///      first mined decided whether every signer of an honest batch was halved.
    function test_aMinorityCannotUpholdAChallenge() public {
        taskManager.setConfig(IInferenceTaskManager.Config(3_000, 100, 50));
        IFaultManagerTypes.Config memory cfg = _faultConfig(MAX_SLASHES);
        cfg.escalationThresholdBps = 3_000; // at least the batch threshold: accepted, but judged at 5,001
        faults.setConfig(cfg, hex"00");
        vm.assertEq(
            uint256(faults.escalationThresholdBps()), uint256(faults.MIN_REJECTION_THRESHOLD_BPS()), "a majority"
        );

        uint256 id = _challenge();
        vm.roll(block.number + 1);
        uint32 ref = uint32(block.number - 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory minority =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"00", _range(1, 6));
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, _one(8));
        vm.expectRevert(
            abi.encodeWithSelector(IFaultManagerErrors.ThresholdNotMet.selector, uint8(0), 150 ether, 310 ether)
        );
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, ref, minority, s);

        IBLSSignatureChecker.NonSignerStakesAndSignature memory majority =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Accept), hex"00", _range(7, 8));
        faults.resolveChallenge(id, AvsMessages.Verdict.Accept, ref, majority, _noSigners());
        vm.assertTrue(faults.getChallenge(id).status == IFaultManagerTypes.ChallengeStatus.Dismissed, "dismissed");
    }

    /// @dev The task manager's threshold raised after the fault manager's config: a batch certified
    ///      at the higher bar is judged at it too.
    function test_aBatchThresholdRaisedLaterRaisesTheEscalationThreshold() public {
        uint256 id = _challenge();
        taskManager.setConfig(IInferenceTaskManager.Config(9_500, 100, 50));
        vm.assertEq(uint256(faults.escalationThresholdBps()), 9_500, "the batch threshold");
        vm.roll(block.number + 1);
        uint32 ref = uint32(block.number - 1);
        // everyone but operator 1: 90% of quorum 1, enough at the configured 80%, not at 95%
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Accept), hex"0001", _one(1));
        vm.expectRevert(
            abi.encodeWithSelector(IFaultManagerErrors.ThresholdNotMet.selector, uint8(1), 45 ether, 50 ether)
        );
        faults.resolveChallenge(id, AvsMessages.Verdict.Accept, ref, cert, _noSigners());
        faults.resolveChallenge(
            id, AvsMessages.Verdict.Accept, ref, _escalation(AvsMessages.Verdict.Accept), _noSigners()
        );
    }

    function testFuzz_theThresholdIsTheHighestOfTheThree(uint16 batchBps, uint16 escalationBps) public {
        batchBps = uint16(bound(batchBps, 1, 10_000));
        escalationBps = uint16(bound(escalationBps, batchBps, 10_000));
        taskManager.setConfig(IInferenceTaskManager.Config(batchBps, 100, 50));
        IFaultManagerTypes.Config memory cfg = _faultConfig(MAX_SLASHES);
        cfg.escalationThresholdBps = escalationBps;
        faults.setConfig(cfg, hex"0001");
        uint256 expected =
            escalationBps < faults.MIN_REJECTION_THRESHOLD_BPS() ? faults.MIN_REJECTION_THRESHOLD_BPS() : escalationBps;
        vm.assertEq(uint256(faults.escalationThresholdBps()), expected, "the configured one or a majority");
        taskManager.setConfig(IInferenceTaskManager.Config(10_000, 100, 50));
        vm.assertEq(uint256(faults.escalationThresholdBps()), 10_000, "the raised batch threshold");
    }

    /// @dev A window lowered while the challenge was open does not shorten its slashing's stall window.
    function test_theStallWindowIsTheChallengesOwn() public {
        uint256 id = _challenge();
        vm.roll(block.number + 1);
        IFaultManagerTypes.Config memory cfg = _faultConfig(1); // one slash per call: a pending slashing
        cfg.resolutionWindowBlocks = 1;
        faults.setConfig(cfg, hex"0001");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Reject);
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, _one(8));
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
        uint256 resolvedAt = block.number;
        vm.assertEq(uint256(faults.getPendingSlashing(id).stallBlocks), RESOLUTION_WINDOW, "the challenge's window");
        vm.roll(block.number + 2);
        vm.expectRevert(
            abi.encodeWithSelector(IFaultManagerErrors.SlashingNotStalled.selector, id, resolvedAt + RESOLUTION_WINDOW)
        );
        faults.abandonSlashing(id, s);
    }
}
