// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {FaultFixture} from "./utils/FaultFixture.sol";
import {BN254} from "../src/libraries/BN254.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {
    IFaultManager,
    IFaultManagerTypes,
    IFaultManagerErrors,
    IFaultManagerEvents
} from "../src/interfaces/IFaultManager.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";
import {IInferenceTaskManager} from "../src/interfaces/IInferenceTaskManager.sol";
import {IAllocationManagerTypes} from "../src/interfaces/eigenlayer/IAllocationManager.sol";

contract IsConflictingTest is FaultFixture {
    /// @dev Matches avs.messages.Attestation.is_conflicting on every combination.
    function testFuzz_isConflicting_MatchesPythonRule(bytes32 reqA, bytes32 outA, uint8 choice, bytes32 other)
        public
        view
    {
        AvsMessages.Attestation memory a = _att(reqA, outA, AvsMessages.Verdict(1 + (choice & 1)));
        AvsMessages.Attestation memory b = _att(
            (choice >> 2) & 1 == 1 ? reqA : other,
            (choice >> 3) & 1 == 1 ? outA : keccak256(abi.encode(outA)),
            AvsMessages.Verdict(1 + ((choice >> 1) & 1))
        );
        bool expected;
        if (a.requestHash == b.requestHash) {
            expected = a.outputHash == b.outputHash
                ? a.verdict != b.verdict
                : (a.verdict == AvsMessages.Verdict.Accept && b.verdict == AvsMessages.Verdict.Accept);
        }
        vm.assertEq(faults.isConflicting(a, b), expected, "rule");
    }

    function test_isConflicting_RejectThenAcceptOtherIsHonest() public view {
        vm.assertFalse(
            faults.isConflicting(
                _att("r", "o1", AvsMessages.Verdict.Reject), _att("r", "o2", AvsMessages.Verdict.Accept)
            ),
            "retry"
        );
        vm.assertFalse(
            faults.isConflicting(
                _att("r", "o1", AvsMessages.Verdict.Reject), _att("r", "o2", AvsMessages.Verdict.Reject)
            ),
            "two rejects"
        );
    }

    function test_isConflicting_RevertWhen_NoVerdict() public {
        vm.expectRevert(IFaultManagerErrors.InvalidVerdict.selector);
        faults.isConflicting(_att("r", "o", AvsMessages.Verdict.None), _att("r", "o", AvsMessages.Verdict.Accept));
    }
}

contract ProveEquivocationTest is FaultFixture {
    function _accepts(uint256 sk)
        internal
        view
        returns (IFaultManagerTypes.SignedAttestation memory a, IFaultManagerTypes.SignedAttestation memory b)
    {
        a = _signed(sk, _att("req", "out1", AvsMessages.Verdict.Accept));
        b = _signed(sk, _att("req", "out2", AvsMessages.Verdict.Accept));
    }

    function test_proveEquivocation_SlashesEveryQuorumToPool() public {
        (IFaultManagerTypes.SignedAttestation memory a, IFaultManagerTypes.SignedAttestation memory b) = _accepts(1);
        bytes32 faultId = keccak256(abi.encode(bytes32("EQUIVOCATION"), _id(1), bytes32("req")));
        vm.expectEmit();
        emit IFaultManagerEvents.EquivocationProven(faultId, _id(1), "req");
        vm.expectEmit();
        emit IFaultManagerEvents.OperatorSlashed(faultId, _id(1), 0, EQUIVOCATION_WAD, 0.5 ether);
        vm.expectEmit();
        emit IFaultManagerEvents.OperatorSlashed(faultId, _id(1), 1, EQUIVOCATION_WAD, 0.5 ether);
        vm.assertEq(faults.proveEquivocation(_id(1), a, b), faultId, "fault id");
        vm.assertEq(token.balanceOf(address(pool)), 1 ether, "pool received both quorums' slash");
        vm.assertEq(registry.getCurrentStake(_id(1), 0), 4.5 ether, "stake q0");
        vm.assertEq(registry.getCurrentStake(_id(1), 1), 4.5 ether, "stake q1");
        vm.assertTrue(faults.isFaultSlashed(faultId), "recorded");
    }

    function test_proveEquivocation_AcceptAndRejectOfSameOutput() public {
        faults.proveEquivocation(
            _id(6),
            _signed(6, _att("req", "out", AvsMessages.Verdict.Reject)),
            _signed(6, _att("req", "out", AvsMessages.Verdict.Accept))
        );
        vm.assertEq(token.balanceOf(address(pool)), 6 ether, "10% of 60");
    }

    function test_proveEquivocation_RevertWhen_RejectThenAcceptOther() public {
        IFaultManagerTypes.SignedAttestation memory a = _signed(1, _att("req", "out1", AvsMessages.Verdict.Reject));
        IFaultManagerTypes.SignedAttestation memory b = _signed(1, _att("req", "out2", AvsMessages.Verdict.Accept));
        vm.expectRevert(IFaultManagerErrors.NotConflicting.selector);
        faults.proveEquivocation(_id(1), a, b);
    }

    function test_proveEquivocation_RevertWhen_DifferentRequests() public {
        IFaultManagerTypes.SignedAttestation memory a = _signed(1, _att("req1", "out1", AvsMessages.Verdict.Accept));
        IFaultManagerTypes.SignedAttestation memory b = _signed(1, _att("req2", "out2", AvsMessages.Verdict.Accept));
        vm.expectRevert(IFaultManagerErrors.NotConflicting.selector);
        faults.proveEquivocation(_id(1), a, b);
    }

    function test_proveEquivocation_RevertWhen_AlreadySlashed() public {
        (IFaultManagerTypes.SignedAttestation memory a, IFaultManagerTypes.SignedAttestation memory b) = _accepts(1);
        bytes32 faultId = faults.proveEquivocation(_id(1), a, b);
        IFaultManagerTypes.SignedAttestation memory c = _signed(1, _att("req", "out3", AvsMessages.Verdict.Accept));
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.FaultAlreadySlashed.selector, faultId));
        faults.proveEquivocation(_id(1), a, c);
    }

    function test_proveEquivocation_RevertWhen_SignedByAnotherOperator() public {
        (IFaultManagerTypes.SignedAttestation memory a, IFaultManagerTypes.SignedAttestation memory b) = _accepts(2);
        vm.expectRevert(IFaultManagerErrors.InvalidAttestationSignature.selector);
        faults.proveEquivocation(_id(1), a, b);
    }

    function test_proveEquivocation_RevertWhen_SignatureOffCurve() public {
        (IFaultManagerTypes.SignedAttestation memory a, IFaultManagerTypes.SignedAttestation memory b) = _accepts(1);
        b.signature = BN254.G1Point(1, 3);
        vm.expectRevert(IFaultManagerErrors.InvalidAttestationSignature.selector);
        faults.proveEquivocation(_id(1), a, b);
    }

    function test_proveEquivocation_RevertWhen_UnknownOperator() public {
        (IFaultManagerTypes.SignedAttestation memory a, IFaultManagerTypes.SignedAttestation memory b) = _accepts(9);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.UnknownOperator.selector, _id(9)));
        faults.proveEquivocation(_id(9), a, b);
    }

    /// @dev Leaving the quorum after equivocating does not escape it (EigenLayer's DEALLOCATION_DELAY).
    function test_proveEquivocation_SlashesAnOperatorThatLeft() public {
        uint256 before = _allocated(5, 0);
        _leaveQuorum0(5);
        (IFaultManagerTypes.SignedAttestation memory a, IFaultManagerTypes.SignedAttestation memory b) = _accepts(5);
        faults.proveEquivocation(_id(5), a, b);
        vm.assertEq(_allocated(5, 0), before - before / 10, "slashed 10% after leaving");
    }

    function test_proveEquivocation_RevertWhen_NotSlashable() public {
        _leaveQuorum0(5);
        vm.roll(block.number + DEALLOCATION_DELAY_BLOCKS + 1); // its slashable window is over
        (IFaultManagerTypes.SignedAttestation memory a, IFaultManagerTypes.SignedAttestation memory b) = _accepts(5);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.NotSlashable.selector, _id(5)));
        faults.proveEquivocation(_id(5), a, b);
    }

    /// @dev A signature made over one attestation never proves another.
    function testFuzz_proveEquivocation_RevertWhen_TamperedAttestation(bytes32 req, bytes32 out, bytes32 tampered)
        public
    {
        vm.assume(out != tampered && tampered != keccak256(abi.encode(out)));
        IFaultManagerTypes.SignedAttestation memory a = _signed(3, _att(req, out, AvsMessages.Verdict.Accept));
        IFaultManagerTypes.SignedAttestation memory b =
            _signed(3, _att(req, keccak256(abi.encode(out)), AvsMessages.Verdict.Accept));
        b.attestation.outputHash = tampered;
        vm.expectRevert(IFaultManagerErrors.InvalidAttestationSignature.selector);
        faults.proveEquivocation(_id(3), a, b);
    }

    /// @dev Any conflicting pair by any operator slashes exactly equivocationWad of each allocation, once.
    function testFuzz_proveEquivocation_SlashesOnce(uint256 sk, bytes32 req, bool acceptReject) public {
        sk = bound(sk, 1, 8);
        IFaultManagerTypes.SignedAttestation memory a = _signed(sk, _att(req, "o1", AvsMessages.Verdict.Accept));
        IFaultManagerTypes.SignedAttestation memory b = acceptReject
            ? _signed(sk, _att(req, "o1", AvsMessages.Verdict.Reject))
            : _signed(sk, _att(req, "o2", AvsMessages.Verdict.Accept));
        faults.proveEquivocation(_id(sk), a, b);
        vm.assertEq(token.balanceOf(address(pool)), sk * 1 ether, "10% of stake");
        vm.expectRevert();
        faults.proveEquivocation(_id(sk), b, a);
    }
}

contract ProveRejectedOutputTest is FaultFixture {
    function _prove(uint256 primary, uint256[] memory nonSigners) internal returns (bytes32) {
        IFaultManagerTypes.SignedAttestation memory a = _signed(primary, _att("req", "out", AvsMessages.Verdict.Accept));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"00", nonSigners);
        return faults.proveRejectedOutput(_id(primary), a, hex"00", uint32(block.number - 1), cert);
    }

    function test_proveRejectedOutput_SlashesPrimaryInCertificateQuorums() public {
        bytes32 faultId = keccak256(abi.encode(bytes32("REJECTED_OUTPUT"), _id(2), bytes32("req")));
        vm.expectEmit();
        emit IFaultManagerEvents.RejectedOutputProven(faultId, _id(2), "req", "out");
        vm.expectEmit();
        emit IFaultManagerEvents.OperatorSlashed(faultId, _id(2), 0, REJECTED_OUTPUT_WAD, 2 ether);
        vm.assertEq(_prove(2, _one(2)), faultId, "fault id");
        vm.assertEq(token.balanceOf(address(pool)), 2 ether, "20% of the 10 allocated to quorum 0");
        vm.assertEq(registry.getCurrentStake(_id(2), 1), 10 ether, "quorum 1 untouched");
    }

    function test_proveRejectedOutput_RevertWhen_AlreadySlashed() public {
        bytes32 faultId = _prove(2, _one(2));
        IFaultManagerTypes.SignedAttestation memory a = _signed(2, _att("req", "out", AvsMessages.Verdict.Accept));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"00", _one(2));
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.FaultAlreadySlashed.selector, faultId));
        faults.proveRejectedOutput(_id(2), a, hex"00", ref, cert);
    }

    function test_proveRejectedOutput_RevertWhen_PrimaryRejected() public {
        IFaultManagerTypes.SignedAttestation memory a = _signed(2, _att("req", "out", AvsMessages.Verdict.Reject));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"00", _none());
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(IFaultManagerErrors.InvalidVerdict.selector);
        faults.proveRejectedOutput(_id(2), a, hex"00", ref, cert);
    }

    function test_proveRejectedOutput_RevertWhen_CertificateOfAccept() public {
        IFaultManagerTypes.SignedAttestation memory a = _signed(2, _att("req", "out", AvsMessages.Verdict.Accept));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Accept), hex"00", _none());
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(IBLSSignatureChecker.InvalidBLSSignature.selector);
        faults.proveRejectedOutput(_id(2), a, hex"00", ref, cert);
    }

    function test_proveRejectedOutput_RevertWhen_ThresholdNotMet() public {
        uint256[] memory non = new uint256[](2);
        non[0] = 7;
        non[1] = 8;
        IFaultManagerTypes.SignedAttestation memory a = _signed(2, _att("req", "out", AvsMessages.Verdict.Accept));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"00", non);
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(
            abi.encodeWithSelector(IFaultManagerErrors.ThresholdNotMet.selector, uint8(0), 160 ether, 310 ether)
        );
        faults.proveRejectedOutput(_id(2), a, hex"00", ref, cert);
    }

    /// @dev With a 5% certification threshold, a REJECT certificate still needs a majority of the stake.
    function test_proveRejectedOutput_NeedsAMajorityUnderALowThreshold() public {
        taskManager.setConfig(IInferenceTaskManager.Config(500, 100, 50));
        uint256[] memory minority = new uint256[](3);
        (minority[0], minority[1], minority[2]) = (6, 7, 8); // signed 100 of 310 ether: over 5%, under half
        IFaultManagerTypes.SignedAttestation memory a = _signed(2, _att("req", "out", AvsMessages.Verdict.Accept));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"00", minority);
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(
            abi.encodeWithSelector(IFaultManagerErrors.ThresholdNotMet.selector, uint8(0), 100 ether, 310 ether)
        );
        faults.proveRejectedOutput(_id(2), a, hex"00", ref, cert);
        uint256[] memory majority = new uint256[](2);
        (majority[0], majority[1]) = (7, 8); // signed 160 of 310 ether
        _prove(2, majority);
        vm.assertEq(token.balanceOf(address(pool)), 2 ether, "the primary is slashed");
    }

    function test_proveRejectedOutput_RevertWhen_StaleReferenceBlock() public {
        IFaultManagerTypes.SignedAttestation memory a = _signed(2, _att("req", "out", AvsMessages.Verdict.Accept));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"00", _none());
        uint32 ref = uint32(block.number - 1);
        vm.roll(block.number + 101);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.StaleReferenceBlock.selector, ref));
        faults.proveRejectedOutput(_id(2), a, hex"00", ref, cert);
    }

    function testFuzz_proveRejectedOutput_RevertWhen_ForgedAccept(uint256 forger) public {
        forger = bound(forger, 1, 8);
        vm.assume(forger != 2);
        IFaultManagerTypes.SignedAttestation memory a = _signed(forger, _att("req", "out", AvsMessages.Verdict.Accept));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"00", _none());
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(IFaultManagerErrors.InvalidAttestationSignature.selector);
        faults.proveRejectedOutput(_id(2), a, hex"00", ref, cert);
    }
}

/// @dev Challenges of leaf ("req", "out") of batch 0 (quorum 0) certified with non-signer 8.
abstract contract ChallengeFixture is FaultFixture {
    AvsMessages.BatchHeader internal batch;
    bytes32 internal record;
    bytes32[] internal leafProof;

    function setUp() public virtual override {
        super.setUp();
        (batch, record, leafProof) = _certifyLeaf(0, "req", "out", _one(8));
        vm.roll(block.number + 1);
    }

    function _challenge() internal returns (uint256 id) {
        vm.prank(CHALLENGER);
        return faults.challenge(batch, record, "req", "out", leafProof);
    }

    /// @dev Batch 1 (quorum 0, everyone signs) with two leaves, ("req", "out") and ("req2", "out2"),
    ///      both challenged; returns the two challenge ids and the batch's signers.
    function _challengeBothLeaves()
        internal
        returns (uint256 first, uint256 second, IFaultManagerTypes.BatchSigners memory s)
    {
        return _challengeTwoLeaves([bytes32("req"), "out", "req2", "out2"]);
    }

    /// @dev Batch 1 (quorum 0, everyone signs) with leaves (l[0], l[1]) and (l[2], l[3]) as
    ///      (request, output), both challenged in that order.
    function _challengeTwoLeaves(bytes32[4] memory l)
        internal
        returns (uint256 first, uint256 second, IFaultManagerTypes.BatchSigners memory s)
    {
        bytes32 leafA = AvsMessages.leafHash(l[0], l[1]);
        bytes32 leafB = AvsMessages.leafHash(l[2], l[3]);
        bytes32 root = leafA < leafB ? keccak256(abi.encode(leafA, leafB)) : keccak256(abi.encode(leafB, leafA));
        AvsMessages.BatchHeader memory h = _header(1, root, hex"00");
        taskManager.certifyBatch(h, _sigs(h, _none()));
        bytes32 rec = keccak256(abi.encodePacked(h.referenceBlock));
        vm.roll(block.number + 1);
        bytes32[] memory proof = new bytes32[](1);
        proof[0] = leafB;
        vm.prank(CHALLENGER);
        first = faults.challenge(h, rec, l[0], l[1], proof);
        proof[0] = leafA;
        vm.prank(CHALLENGER);
        second = faults.challenge(h, rec, l[2], l[3], proof);
        vm.roll(block.number + 1);
        s = _batchSigners(h, _none());
    }

    /// @dev An escalation certificate (quorums 0 and 1, everyone signs) on `verdict` at the last block.
    function _escalation(AvsMessages.Verdict verdict)
        internal
        view
        returns (IBLSSignatureChecker.NonSignerStakesAndSignature memory)
    {
        return _cert(_verdictDigest("req", "out", verdict), hex"0001", _none());
    }
}

contract ChallengeTest is ChallengeFixture {
    function test_challenge_LocksBond() public {
        vm.expectEmit();
        emit IFaultManagerEvents.ChallengeOpened(1, 0, "req", "out", CHALLENGER, BOND);
        uint256 id = _challenge();
        vm.assertEq(id, 1, "id");
        vm.assertEq(token.balanceOf(address(faults)), BOND, "bond held");
        vm.assertEq(faults.openChallenges("req"), 1, "open");
        vm.assertTrue(faults.getChallenge(id).status == IFaultManagerTypes.ChallengeStatus.Open, "status");
    }

    function test_challenge_RevertWhen_AfterWindow() public {
        vm.roll(block.number + 50);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.ChallengeWindowClosed.selector, uint64(0)));
        _challenge();
    }

    /// @dev The window was read live: lowering it closed the challenges of batches still in theirs.
    function test_challenge_ALoweredWindowStillAdmitsBatchesCertifiedBefore() public {
        taskManager.setConfig(IInferenceTaskManager.Config(6667, 100, 5));
        vm.roll(block.number + 48); // the last block of the window the batch was certified under
        _challenge();
    }

    function test_challenge_RevertWhen_AlreadyChallenged() public {
        _challenge();
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.LeafAlreadyChallenged.selector, uint256(1)));
        _challenge();
    }

    function test_challenge_AgainAfterExpiry() public {
        _challenge();
        vm.roll(block.number + RESOLUTION_WINDOW + 1);
        faults.expireChallenge(1);
        vm.roll(block.number - RESOLUTION_WINDOW); // back inside the batch's window (test only)
        vm.assertEq(_challenge(), 2, "re-challenged");
    }

    function testFuzz_challenge_RevertWhen_NotALeaf(bytes32 out) public {
        vm.assume(out != "out");
        vm.expectRevert(IFaultManagerErrors.LeafNotCertified.selector);
        vm.prank(CHALLENGER);
        faults.challenge(batch, record, "req", out, leafProof);
    }

    function test_challenge_RevertWhen_NoBondAllowance() public {
        vm.prank(CHALLENGER);
        token.approve(address(faults), 0);
        vm.expectRevert();
        _challenge();
    }
}

contract ResolveChallengeTest is ChallengeFixture {
    function test_resolveChallenge_Reject_SlashesSignersPaysChallengerAndRequester() public {
        uint256 id = _challenge();
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Reject);
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, _one(8));
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        // signers 1..7 in quorum 0: (5+10+15+20+50+60+70) / 2 = 115 ether slashed
        vm.expectEmit();
        emit IFaultManagerEvents.ChallengeClosed(id, IFaultManagerTypes.ChallengeStatus.Upheld, 115 ether, 11.5 ether);
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
        vm.assertEq(token.balanceOf(CHALLENGER), challengerBefore + BOND + 11.5 ether, "bond back + 10% reward");
        vm.assertEq(registry.getCurrentStake(_id(8), 0), 80 ether, "non-signer untouched");
        vm.assertEq(registry.getCurrentStake(_id(7), 0), 35 ether, "signer halved");
        vm.assertEq(registry.getCurrentStake(_id(1), 1), 5 ether, "quorum 1 untouched");
        vm.assertEq(token.balanceOf(address(faults)), 0, "no bond left");
        vm.assertTrue(faults.isFaultSlashed(keccak256(abi.encode(bytes32("BATCH_FRAUD"), _id(3), uint64(0)))), "fault");
    }

    /// @dev A signer that leaves the quorum once the challenge is open is slashed all the same.
    function test_resolveChallenge_Reject_SlashesASignerThatLeft() public {
        uint256 id = _challenge();
        uint256 before = _allocated(7, 0);
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Reject);
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, _one(8));
        _leaveQuorum0(7); // after the escalation certificate's reference block (the challenge's)
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
        vm.assertEq(_allocated(7, 0), before / 2, "halved after leaving");
        vm.assertEq(registry.getCurrentStake(_id(6), 0), 30 ether, "the others as before");
    }

    function test_resolveChallenge_Accept_ForfeitsBondToPool() public {
        uint256 id = _challenge();
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Accept);
        IFaultManagerTypes.BatchSigners memory s = _noSigners();
        vm.expectEmit();
        emit IFaultManagerEvents.ChallengeClosed(id, IFaultManagerTypes.ChallengeStatus.Dismissed, 0, 0);
        faults.resolveChallenge(id, AvsMessages.Verdict.Accept, uint32(block.number - 1), cert, s);
        vm.assertEq(token.balanceOf(address(pool)), BOND, "bond to pool");
        vm.assertEq(faults.openChallenges("req"), 0, "closed");
    }

    function test_resolveChallenge_RevertWhen_SignerOmitted() public {
        uint256 id = _challenge();
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Reject);
        uint256[] memory non = new uint256[](2);
        non[0] = 8;
        non[1] = 7; // 7 signed but is left out of the signer list
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, non);
        s.nonSignerIds = _ids(_one(8));
        s.nonSignerBitmapIndices = _batchSigners(batch, _one(8)).nonSignerBitmapIndices;
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.SignerSetIncomplete.selector, uint8(0)));
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, ref, cert, s);
    }

    function test_resolveChallenge_RevertWhen_WrongNonSigners() public {
        uint256 id = _challenge();
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Reject);
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, _one(7));
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(IFaultManagerErrors.BatchMismatch.selector);
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, ref, cert, s);
    }

    function test_resolveChallenge_RevertWhen_BelowEscalationThreshold() public {
        uint256 id = _challenge();
        vm.roll(block.number + 1);
        // 230/310 = 74% of quorum 0 signs: enough for a batch (66.67%), not for escalation (80%)
        uint256[] memory non = new uint256[](1);
        non[0] = 8;
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"0001", non);
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, _one(8));
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(
            abi.encodeWithSelector(IFaultManagerErrors.ThresholdNotMet.selector, uint8(0), 230 ether, 310 ether)
        );
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, ref, cert, s);
    }

    function test_resolveChallenge_RevertWhen_Expired() public {
        uint256 id = _challenge();
        vm.roll(block.number + RESOLUTION_WINDOW + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Accept);
        IFaultManagerTypes.BatchSigners memory s = _noSigners();
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.ChallengeExpired.selector, id));
        faults.resolveChallenge(id, AvsMessages.Verdict.Accept, ref, cert, s);
    }

    function test_resolveChallenge_RevertWhen_ReferenceBeforeChallenge() public {
        uint256 id = _challenge();
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Accept);
        IFaultManagerTypes.BatchSigners memory s = _noSigners();
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.ReferenceBlockBeforeChallenge.selector, ref));
        faults.resolveChallenge(id, AvsMessages.Verdict.Accept, ref, cert, s);
    }

    function test_resolveChallenge_RevertWhen_NotOpen() public {
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Accept);
        IFaultManagerTypes.BatchSigners memory s = _noSigners();
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.ChallengeNotOpen.selector, uint256(5)));
        faults.resolveChallenge(5, AvsMessages.Verdict.Accept, 0, cert, s);
    }

    function test_resolveChallenge_SecondLeafOfSameBatch_NoDoubleSlash() public {
        // batch 1 with two fraudulent leaves; both challenged and upheld: each signer slashed once
        (uint256 id1, uint256 id2, IFaultManagerTypes.BatchSigners memory s) = _challengeBothLeaves();
        faults.resolveChallenge(
            id1, AvsMessages.Verdict.Reject, uint32(block.number - 1), _escalation(AvsMessages.Verdict.Reject), s
        );
        uint256 stake7 = registry.getCurrentStake(_id(7), 0);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert2 =
            _cert(_verdictDigest("req2", "out2", AvsMessages.Verdict.Reject), hex"0001", _none());
        vm.expectEmit();
        emit IFaultManagerEvents.ChallengeClosed(id2, IFaultManagerTypes.ChallengeStatus.Upheld, 0, 0);
        faults.resolveChallenge(id2, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert2, s);
        vm.assertEq(registry.getCurrentStake(_id(7), 0), stake7, "not slashed twice");
    }
}

/// @dev An upheld challenge whose signers do not fit in `maxSlashesPerCall` slashes (the batch has
///      7 signers, each in quorum 0 only: one slash each).
/// @dev With a ring of 2 batch record slots, batch 0's slot is reused by batch 2 once batch 0 is
///      final, while its challenge is still open: the challenge resolves from what it copied.
contract RingResolveChallengeTest is ChallengeFixture {
    function _recordRing() internal pure override returns (uint64) {
        return 2;
    }

    /// @dev Challenges batch 0's leaf, then batch 2 takes batch 0's slot once batch 0 is final.
    function _challengeThenReuseTheSlot() internal returns (uint256 id) {
        id = _challenge();
        vm.assertEq(faults.getChallenge(id).certifiedBlock, taskManager.getBatch(0).certifiedBlock, "copied");
        vm.roll(block.number + 50);
        _certify(2, keccak256("next"), hex"00", _none());
        vm.assertEq(taskManager.getBatch(0).certifiedBlock, 0, "batch 0's record reused");
        vm.roll(block.number + 1);
    }

    function test_resolveChallenge_Reject_AfterTheBatchRecordWasReused() public {
        uint256 id = _challengeThenReuseTheSlot();
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Reject);
        faults.resolveChallenge(
            id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, _batchSigners(batch, _one(8))
        );
        vm.assertTrue(faults.getChallenge(id).status == IFaultManagerTypes.ChallengeStatus.Upheld, "upheld");
        vm.assertEq(registry.getCurrentStake(_id(7), 0), 35 ether, "signer halved");
    }

    function test_resolveChallenge_RevertWhen_OtherNonSignersAfterTheRecordWasReused() public {
        uint256 id = _challengeThenReuseTheSlot();
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Reject);
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, _one(7));
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(IFaultManagerErrors.BatchMismatch.selector);
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, ref, cert, s);
    }
}

contract ContinueSlashingTest is ChallengeFixture {
    uint256 internal constant SIGNERS = 7;

    function _resolveReject(uint256 id) internal returns (IFaultManagerTypes.BatchSigners memory s) {
        vm.roll(block.number + 1);
        s = _batchSigners(batch, _one(8));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Reject);
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
    }

    /// @dev How many of signers 1..7 have half their quorum-0 stake left, and the halves slashed.
    function _halvedSigners() internal view returns (uint256 count, uint256 slashed) {
        uint96[SIGNERS] memory stake = [uint96(5 ether), 10 ether, 15 ether, 20 ether, 50 ether, 60 ether, 70 ether];
        for (uint256 sk = 1; sk <= SIGNERS; ++sk) {
            uint256 left = registry.getCurrentStake(_id(sk), 0);
            if (left == stake[sk - 1]) continue;
            vm.assertEq(left, stake[sk - 1] / 2, "halved");
            ++count;
            slashed += left;
        }
    }

    function test_resolveChallenge_Reject_StopsAtMaxSlashes() public {
        _setMaxSlashes(3);
        uint256 id = _challenge();
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        vm.expectEmit();
        emit IFaultManagerEvents.SlashingPending(id, 3, SIGNERS);
        _resolveReject(id);
        vm.assertTrue(faults.getChallenge(id).status == IFaultManagerTypes.ChallengeStatus.Upheld, "upheld");
        (uint256 halved, uint256 halves) = _halvedSigners();
        vm.assertEq(halved, 3, "the first 3 signers (by id) slashed, the others not yet");
        vm.assertEq(token.balanceOf(CHALLENGER), challengerBefore + BOND, "bond back, no reward yet");
        vm.assertEq(faults.totalBonds(), 0, "no bond held");
        vm.assertEq(faults.openChallenges("req"), 1, "request still under challenge");
        vm.assertFalse(pool.fraudProven("req"), "pool not told yet");
        IFaultManagerTypes.PendingSlashing memory p = faults.getPendingSlashing(id);
        vm.assertEq(p.nextSigner, 3, "next");
        vm.assertEq(p.signerCount, SIGNERS, "count");
        vm.assertEq(p.slashedAmount, halves, "shares slashed so far");
    }

    function test_continueSlashing_FinishesLikeOneCall() public {
        _setMaxSlashes(3);
        uint256 id = _challenge();
        IFaultManagerTypes.BatchSigners memory s = _resolveReject(id);
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        vm.expectEmit();
        emit IFaultManagerEvents.SlashingPending(id, 6, SIGNERS);
        vm.prank(address(0xA11CE)); // anyone may continue
        faults.continueSlashing(id, s);
        // the same totals as test_resolveChallenge_Reject_SlashesSignersPaysChallengerAndRequester
        vm.expectEmit();
        emit IFaultManagerEvents.ChallengeClosed(id, IFaultManagerTypes.ChallengeStatus.Upheld, 115 ether, 11.5 ether);
        faults.continueSlashing(id, s);
        vm.assertEq(token.balanceOf(CHALLENGER), challengerBefore + 11.5 ether, "reward on all shares");
        vm.assertEq(registry.getCurrentStake(_id(7), 0), 35 ether, "last signer halved");
        vm.assertEq(registry.getCurrentStake(_id(8), 0), 80 ether, "non-signer untouched");
        vm.assertEq(faults.openChallenges("req"), 0, "closed");
        vm.assertTrue(pool.fraudProven("req"), "pool told");
        vm.assertEq(faults.getPendingSlashing(id).signersHash, bytes32(0), "nothing pending");
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.NoSlashingPending.selector, id));
        faults.continueSlashing(id, s);
    }

    /// @dev Whatever the budget, the signers end slashed exactly once, in ceil(7 / budget) calls.
    function testFuzz_continueSlashing_SameOutcomeForAnyBudget(uint16 budget) public {
        budget = uint16(bound(budget, 1, SIGNERS + 1));
        _setMaxSlashes(budget);
        uint256 id = _challenge();
        IFaultManagerTypes.BatchSigners memory s = _resolveReject(id);
        uint256 calls = 1;
        while (faults.getPendingSlashing(id).signersHash != 0) {
            faults.continueSlashing(id, s);
            ++calls;
        }
        vm.assertEq(calls, (SIGNERS + budget - 1) / budget, "calls");
        uint96[8] memory before =
            [uint96(5 ether), 10 ether, 15 ether, 20 ether, 50 ether, 60 ether, 70 ether, 80 ether];
        for (uint256 sk = 1; sk <= SIGNERS; ++sk) {
            vm.assertEq(registry.getCurrentStake(_id(sk), 0), before[sk - 1] / 2, "halved once");
        }
        vm.assertEq(faults.openChallenges("req"), 0, "closed");
        vm.assertTrue(pool.fraudProven("req"), "pool told");
    }

    function test_continueSlashing_RevertWhen_NothingPending() public {
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, _one(8));
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.NoSlashingPending.selector, uint256(1)));
        faults.continueSlashing(1, s);
        uint256 id = _challenge();
        _resolveReject(id); // 7 slashes fit in the default 64
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.NoSlashingPending.selector, id));
        faults.continueSlashing(id, s);
    }

    function testFuzz_continueSlashing_RevertWhen_OtherSigners(uint256 drop, uint32 index) public {
        _setMaxSlashes(2);
        uint256 id = _challenge();
        IFaultManagerTypes.BatchSigners memory s = _resolveReject(id);
        drop = bound(drop, 0, SIGNERS - 1);
        IFaultManagerTypes.BatchSigners memory t = _batchSigners(batch, _one(8));
        vm.assume(index != t.signerBitmapIndices[drop]);
        t.signerBitmapIndices[drop] = index;
        vm.expectRevert(IFaultManagerErrors.SignersMismatch.selector);
        faults.continueSlashing(id, t);
        t = _batchSigners(batch, _one(8));
        t.signerIds[drop] = _id(8);
        vm.expectRevert(IFaultManagerErrors.SignersMismatch.selector);
        faults.continueSlashing(id, t);
        faults.continueSlashing(id, s); // the original list still goes on
        vm.assertEq(faults.getPendingSlashing(id).nextSigner, 4, "next");
    }

    function testFuzz_continueSlashing_RevertWhen_OtherHeader(bytes32 root, uint32 referenceBlock) public {
        _setMaxSlashes(2);
        uint256 id = _challenge();
        IFaultManagerTypes.BatchSigners memory s = _resolveReject(id);
        vm.assume(root != s.header.leavesRoot && referenceBlock != s.header.referenceBlock);
        IFaultManagerTypes.BatchSigners memory t = _batchSigners(batch, _one(8));
        t.header.leavesRoot = root;
        vm.expectRevert(IFaultManagerErrors.SignersMismatch.selector);
        faults.continueSlashing(id, t);
        t = _batchSigners(batch, _one(8));
        t.header.referenceBlock = referenceBlock;
        vm.expectRevert(IFaultManagerErrors.SignersMismatch.selector);
        faults.continueSlashing(id, t);
    }

    /// @dev The wad is the one of the resolution: every signer of the batch loses the same share.
    function test_continueSlashing_KeepsTheWadOfTheResolution() public {
        _setMaxSlashes(3);
        uint256 id = _challenge();
        IFaultManagerTypes.BatchSigners memory s = _resolveReject(id);
        vm.assertEq(faults.getPendingSlashing(id).fraudWad, FRAUD_WAD, "stored");
        IFaultManagerTypes.Config memory changed = _faultConfig(3);
        changed.fraudWad = 1e18; // governance raises it to everything, mid-slashing
        faults.setConfig(changed, hex"0001");
        while (faults.getPendingSlashing(id).signersHash != 0) {
            faults.continueSlashing(id, s);
        }
        (uint256 halved,) = _halvedSigners();
        vm.assertEq(halved, SIGNERS, "all halved, none emptied");
    }

    /// @dev A second upheld challenge on another leaf of the batch slashes the signers the first one
    ///      has not reached yet; the first skips them: each signer slashed once, each challenge paid
    ///      its reward on the shares it slashed.
    function test_continueSlashing_SkipsSignersAnotherChallengeSlashed() public {
        (uint256 first, uint256 second, IFaultManagerTypes.BatchSigners memory s) = _challengeBothLeaves();
        _setMaxSlashes(3); // 8 signers: the first resolution stops after 3
        uint32 ref = uint32(block.number - 1);
        faults.resolveChallenge(first, AvsMessages.Verdict.Reject, ref, _escalation(AvsMessages.Verdict.Reject), s);
        uint256 firstShares = faults.getPendingSlashing(first).slashedAmount;
        _setMaxSlashes(64);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert2 =
            _cert(_verdictDigest("req2", "out2", AvsMessages.Verdict.Reject), hex"0001", _none());
        faults.resolveChallenge(second, AvsMessages.Verdict.Reject, ref, cert2, s); // the other 5
        vm.expectEmit();
        emit IFaultManagerEvents.ChallengeClosed(
            first, IFaultManagerTypes.ChallengeStatus.Upheld, firstShares, firstShares / 10
        );
        faults.continueSlashing(first, s); // nobody left to slash
        for (uint256 sk = 1; sk <= 8; ++sk) {
            vm.assertTrue(
                faults.isFaultSlashed(keccak256(abi.encode(bytes32("BATCH_FRAUD"), _id(sk), uint64(1)))), "slashed"
            );
        }
        vm.assertEq(faults.openChallenges("req"), 0, "first closed");
        vm.assertEq(faults.openChallenges("req2"), 0, "second closed");
    }

    function test_abandonSlashing_ClosesWithTheSharesSlashedSoFar() public {
        _setMaxSlashes(3);
        uint256 id = _challenge();
        IFaultManagerTypes.BatchSigners memory s = _resolveReject(id);
        uint256 shares = faults.getPendingSlashing(id).slashedAmount;
        vm.roll(block.number + RESOLUTION_WINDOW + 1);
        vm.prank(CHALLENGER);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, CHALLENGER));
        faults.abandonSlashing(id, s);
        vm.expectEmit();
        emit IFaultManagerEvents.SlashingAbandoned(id, 3, SIGNERS);
        vm.expectEmit();
        emit IFaultManagerEvents.ChallengeClosed(id, IFaultManagerTypes.ChallengeStatus.Upheld, shares, shares / 10);
        faults.abandonSlashing(id, s);
        (uint256 halved,) = _halvedSigners();
        vm.assertEq(halved, 3, "the rest not slashed");
        vm.assertEq(faults.openChallenges("req"), 0, "closed");
        vm.assertTrue(pool.fraudProven("req"), "pool told");
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.NoSlashingPending.selector, id));
        faults.continueSlashing(id, s);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.NoSlashingPending.selector, id));
        faults.abandonSlashing(id, s);
    }

    /// @dev Governance cannot spare the remaining signers of a slashing that still moves: only a
    ///      full resolution window after the last call that slashed (a continuation restarts it).
    function test_abandonSlashing_RevertWhen_TheSlashingMovedWithinAWindow() public {
        _setMaxSlashes(3);
        uint256 id = _challenge();
        IFaultManagerTypes.BatchSigners memory s = _resolveReject(id);
        uint256 resolved = block.number;
        vm.assertEq(faults.getPendingSlashing(id).progressBlock, resolved, "progress at resolution");
        vm.roll(resolved + RESOLUTION_WINDOW);
        vm.expectRevert(
            abi.encodeWithSelector(IFaultManagerErrors.SlashingNotStalled.selector, id, resolved + RESOLUTION_WINDOW)
        );
        faults.abandonSlashing(id, s);
        faults.continueSlashing(id, s); // anyone moves it on: signers 4 to 6
        vm.assertEq(faults.getPendingSlashing(id).progressBlock, block.number, "progress at continuation");
        vm.roll(block.number + RESOLUTION_WINDOW);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.SlashingNotStalled.selector, id, block.number));
        faults.abandonSlashing(id, s);
        IFaultManagerTypes.Config memory shorter = _faultConfig(3);
        shorter.resolutionWindowBlocks = 1; // a shorter window now does not shorten this slashing's
        faults.setConfig(shorter, hex"0001");
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.SlashingNotStalled.selector, id, block.number));
        faults.abandonSlashing(id, s);
        vm.roll(block.number + 1);
        vm.expectEmit();
        emit IFaultManagerEvents.SlashingAbandoned(id, 6, SIGNERS);
        faults.abandonSlashing(id, s);
    }

    function test_setConfig_RevertWhen_ZeroMaxSlashes() public {
        vm.expectRevert(IFaultManagerErrors.InvalidConfig.selector);
        faults.setConfig(_faultConfig(0), hex"0001");
    }
}

contract ExpireChallengeTest is ChallengeFixture {
    function test_expireChallenge_RefundsBond() public {
        uint256 id = _challenge();
        uint256 before = token.balanceOf(CHALLENGER);
        vm.roll(block.number + RESOLUTION_WINDOW + 1);
        vm.expectEmit();
        emit IFaultManagerEvents.ChallengeClosed(id, IFaultManagerTypes.ChallengeStatus.Expired, 0, 0);
        faults.expireChallenge(id);
        vm.assertEq(token.balanceOf(CHALLENGER), before + BOND, "refunded");
        vm.assertEq(faults.openChallenges("req"), 0, "closed");
        vm.assertEq(faults.totalBonds(), 0, "no bonds");
    }

    function test_expireChallenge_RevertWhen_InWindow() public {
        uint256 id = _challenge();
        vm.roll(block.number + RESOLUTION_WINDOW);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.ChallengeNotExpired.selector, id));
        faults.expireChallenge(id);
    }

    function test_expireChallenge_RevertWhen_Twice() public {
        uint256 id = _challenge();
        vm.roll(block.number + RESOLUTION_WINDOW + 1);
        faults.expireChallenge(id);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.ChallengeNotOpen.selector, id));
        faults.expireChallenge(id);
    }
}

/// @notice Gas of the fault paths (snapshots/FaultGasTest.json): the call itself, 8 operators.
contract FaultGasTest is ChallengeFixture {
    function test_gas_proveEquivocation() public {
        IFaultManagerTypes.SignedAttestation memory a = _signed(5, _att("req", "o1", AvsMessages.Verdict.Accept));
        IFaultManagerTypes.SignedAttestation memory b = _signed(5, _att("req", "o2", AvsMessages.Verdict.Accept));
        faults.proveEquivocation(_id(5), a, b);
        vm.snapshotGasLastCall("proveEquivocation_1quorum");
    }

    function test_gas_proveRejectedOutput() public {
        IFaultManagerTypes.SignedAttestation memory a = _signed(5, _att("req", "out", AvsMessages.Verdict.Accept));
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"00", _one(5));
        faults.proveRejectedOutput(_id(5), a, hex"00", uint32(block.number - 1), cert);
        vm.snapshotGasLastCall("proveRejectedOutput_1nonSigner");
    }

    function test_gas_challenge() public {
        _challenge();
        vm.snapshotGasLastCall("challenge");
    }

    function test_gas_resolveChallenge_reject7Signers() public {
        uint256 id = _challenge();
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Reject);
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, _one(8));
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
        vm.snapshotGasLastCall("resolveChallenge_reject_7signers");
    }

    function test_gas_resolveChallenge_accept() public {
        uint256 id = _challenge();
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Accept);
        faults.resolveChallenge(id, AvsMessages.Verdict.Accept, uint32(block.number - 1), cert, _noSigners());
        vm.snapshotGasLastCall("resolveChallenge_accept");
    }
}

/// @dev Two colluding operators whose keys cancel (sk and r - sk, each with a valid proof of
///      possession) sign a fraudulent batch; the resolution must still slash them: a signer list
///      that leaves both out keeps the keys' sum but not the quorum's operator count.
contract CancellingKeysTest is FaultFixture {
    uint256 internal constant SK = 9;
    uint256 internal constant MINUS_SK = BN254.FR_MODULUS - SK;
    AvsMessages.BatchHeader internal batch;
    bytes32 internal record;
    bytes32[] internal leafProof;

    function setUp() public override {
        super.setUp();
        _register(SK, 10 ether, hex"00");
        _register(MINUS_SK, 10 ether, hex"00");
        vm.roll(block.number + 1);
        (batch, record, leafProof) = _certifyLeaf(0, "req", "out", _none());
        vm.roll(block.number + 1);
    }

    function _members(bytes memory quorums) internal pure override returns (uint256[] memory r) {
        for (uint256 i; i < quorums.length; ++i) {
            if (uint8(quorums[i]) != 0) continue;
            r = new uint256[](10);
            for (uint256 j; j < 8; ++j) {
                r[j] = j + 1;
            }
            (r[8], r[9]) = (SK, MINUS_SK);
            return r;
        }
        return _range(1, 4);
    }

    function _id(uint256 sk) internal view override returns (bytes32) {
        return BN254.hashG1Point(_g1(sk));
    }

    function test_resolveChallenge_RevertWhen_CancellingSignersLeftOut() public {
        vm.prank(CHALLENGER);
        uint256 id = faults.challenge(batch, record, "req", "out", leafProof);
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"0001", _none());
        IFaultManagerTypes.BatchSigners memory all = _batchSigners(batch, _none());
        // (a second copy: _without edits the struct it is given)
        IFaultManagerTypes.BatchSigners memory omitting =
            _without(_batchSigners(batch, _none()), _id(SK), _id(MINUS_SK));
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.SignerSetIncomplete.selector, uint8(0)));
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, ref, cert, omitting);
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, ref, cert, all); // the full list slashes them
        vm.assertLe(_allocated(SK, 0), 10 ether - 1, "sk slashed");
        vm.assertLe(_allocated(MINUS_SK, 0), 10 ether - 1, "r - sk slashed");
    }

    function test_resolveChallenge_RevertWhen_ASignerIsAlsoANonSigner() public {
        (AvsMessages.BatchHeader memory h, bytes32 rec, bytes32[] memory proof) =
            _certifyLeaf(1, "req", "out", _one(SK));
        vm.roll(block.number + 1);
        vm.prank(CHALLENGER);
        uint256 id = faults.challenge(h, rec, "req", "out", proof);
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"0001", _none());
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(h, _one(SK));
        s.signerIds = _ids(_sortById(_members(hex"00")));
        s.signerBitmapIndices =
        registry.getCheckSignaturesIndices(h.referenceBlock, h.quorumNumbers, s.signerIds).nonSignerQuorumBitmapIndices;
        uint32 ref = uint32(block.number - 1);
        vm.expectRevert(abi.encodeWithSelector(IFaultManagerErrors.SignerIsNonSigner.selector, _id(SK)));
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, ref, cert, s);
    }

    function _without(IFaultManagerTypes.BatchSigners memory s, bytes32 a, bytes32 b)
        internal
        pure
        returns (IFaultManagerTypes.BatchSigners memory r)
    {
        r = s;
        uint256 n;
        bytes32[] memory ids = new bytes32[](s.signerIds.length - 2);
        uint32[] memory indices = new uint32[](s.signerIds.length - 2);
        for (uint256 i; i < s.signerIds.length; ++i) {
            if (s.signerIds[i] == a || s.signerIds[i] == b) continue;
            (ids[n], indices[n]) = (s.signerIds[i], s.signerBitmapIndices[i]);
            ++n;
        }
        (r.signerIds, r.signerBitmapIndices) = (ids, indices);
    }
}
