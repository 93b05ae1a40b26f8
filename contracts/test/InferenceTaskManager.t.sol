// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {AvsFixture} from "./utils/AvsFixture.sol";
import {BN254} from "../src/libraries/BN254.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {QuorumBitmaps} from "../src/libraries/QuorumBitmaps.sol";
import {IInferenceTaskManager} from "../src/interfaces/IInferenceTaskManager.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";

/// @dev Eight operators (keys 1..8, stakes 10..80 ether) in quorum 0; operators 1..4 also in quorum 1.
abstract contract CertifyFixture is AvsFixture {
    function setUp() public virtual override {
        super.setUp();
        for (uint256 sk = 1; sk <= 8; ++sk) {
            _register(sk, sk * 10 ether, sk <= 4 ? bytes(hex"0001") : bytes(hex"00"));
        }
        vm.roll(block.number + 1);
    }

    function _certify(uint64 index, bytes32 root, bytes memory quorums, uint256[] memory nonSigners) internal {
        AvsMessages.BatchHeader memory h = _header(index, root, quorums);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, nonSigners);
        taskManager.certifyBatch(h, p);
    }

    function _sigs(AvsMessages.BatchHeader memory h, uint256[] memory nonSigners)
        internal
        view
        returns (IBLSSignatureChecker.NonSignerStakesAndSignature memory)
    {
        uint256[] memory signers = _complement(nonSigners, _members(h.quorumNumbers));
        if (h.quorumNumbers.length == 2) signers = _withMultiplicity(signers);
        return _params(taskManager.batchDigest(h), h, signers, _sortById(nonSigners));
    }

    /// @dev A signer in k of the signed quorums signs k times (its key is k times in the quorum apks):
    ///      operators 1..4 are in both quorums.
    function _withMultiplicity(uint256[] memory signers) internal pure returns (uint256[] memory r) {
        uint256 extra;
        for (uint256 i; i < signers.length; ++i) {
            if (_inBothQuorums(signers[i])) ++extra;
        }
        r = new uint256[](signers.length + extra);
        uint256 n;
        for (uint256 i; i < signers.length; ++i) {
            r[n++] = signers[i];
            if (_inBothQuorums(signers[i])) r[n++] = signers[i];
        }
    }

    /// @dev Whether operator `sk` is in quorums 0 and 1.
    function _inBothQuorums(uint256 sk) internal pure virtual returns (bool) {
        return sk <= 4;
    }

    function _members(bytes memory quorums) internal pure virtual returns (uint256[] memory) {
        for (uint256 i; i < quorums.length; ++i) {
            if (uint8(quorums[i]) == 0) return _range(1, 8);
        }
        return _range(1, 4);
    }

    function _complement(uint256[] memory out, uint256[] memory all) internal pure returns (uint256[] memory r) {
        uint256[] memory tmp = new uint256[](all.length);
        uint256 n;
        for (uint256 i; i < all.length; ++i) {
            bool skip;
            for (uint256 j; j < out.length; ++j) {
                if (out[j] == all[i]) skip = true;
            }
            if (!skip) tmp[n++] = all[i];
        }
        r = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            r[i] = tmp[i];
        }
    }
}

contract CertifyBatchTest is CertifyFixture {
    using BN254 for BN254.G1Point;

    function test_certifyBatch_AllSigners() public {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        vm.expectEmit();
        emit IInferenceTaskManager.BatchCertified(
            0, h.leavesRoot, h.referenceBlock, h.quorumNumbers, keccak256(abi.encodePacked(h.referenceBlock))
        );
        taskManager.certifyBatch(h, p);
        vm.assertEq(taskManager.getBatch(0).certifiedBlock, block.number, "certified block");
    }

    function test_certifyBatch_NonSignersBelowThreshold_StakesReturned() public view {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"0001");
        uint256[] memory non = new uint256[](2);
        non[0] = 2; // in quorums 0 and 1: counted in both
        non[1] = 7;
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, non);
        (IBLSSignatureChecker.QuorumStakeTotals memory t,) =
            taskManager.checkSignatures(taskManager.batchDigest(h), h.quorumNumbers, h.referenceBlock, p);
        // quorum 0: stakes 10..80 halved for 1..4 (allocated half to each quorum)
        vm.assertEq(
            t.totalStakeForQuorum[0],
            5 ether + 10 ether + 15 ether + 20 ether + 50 ether + 60 ether + 70 ether + 80 ether,
            "total q0"
        );
        vm.assertEq(t.signedStakeForQuorum[0], t.totalStakeForQuorum[0] - 10 ether - 70 ether, "signed q0");
        vm.assertEq(t.totalStakeForQuorum[1], 50 ether, "total q1");
        vm.assertEq(t.signedStakeForQuorum[1], 40 ether, "signed q1");
    }

    function test_certifyBatch_MultiQuorumNonSigner() public {
        uint256[] memory non = _one(3);
        _certify(0, keccak256("root"), hex"0001", non);
        vm.assertTrue(taskManager.getBatch(0).certifiedBlock != 0, "certified");
    }

    function test_certifyBatch_RevertWhen_NotAggregator() public {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        vm.prank(address(0xdead));
        vm.expectRevert(IInferenceTaskManager.OnlyAggregator.selector);
        taskManager.certifyBatch(h, p);
    }

    function test_getRingSlot_WithoutARingIsTheIndexItself() public {
        _certify(7, keccak256("root"), hex"00", _none());
        (uint64 held, IInferenceTaskManager.BatchRecord memory record) = taskManager.getRingSlot(7);
        vm.assertEq(held, 7, "its own");
        vm.assertEq(record.certifiedBlock, block.number, "its record");
        (held,) = taskManager.getRingSlot(8);
        vm.assertEq(held, 0, "empty");
    }

    function test_certifyBatch_RevertWhen_Replayed() public {
        _certify(7, keccak256("root"), hex"00", _none());
        AvsMessages.BatchHeader memory h = _header(7, keccak256("other"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        vm.expectRevert(abi.encodeWithSelector(IInferenceTaskManager.BatchAlreadyCertified.selector, uint64(7)));
        taskManager.certifyBatch(h, p);
    }

    function test_certifyBatch_RevertWhen_StaleReferenceBlock() public {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        vm.roll(block.number + 101);
        vm.expectRevert(abi.encodeWithSelector(IInferenceTaskManager.StaleReferenceBlock.selector, h.referenceBlock));
        taskManager.certifyBatch(h, p);
    }

    function test_certifyBatch_RevertWhen_FutureReferenceBlock() public {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        h.referenceBlock = uint32(block.number);
        vm.expectRevert(IBLSSignatureChecker.FutureReferenceBlock.selector);
        taskManager.certifyBatch(h, p);
    }

    function test_certifyBatch_RevertWhen_NonSignersUnsorted() public {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        uint256[] memory non = new uint256[](2);
        non[0] = 5;
        non[1] = 6;
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, non);
        (p.nonSignerPubkeys[0], p.nonSignerPubkeys[1]) = (p.nonSignerPubkeys[1], p.nonSignerPubkeys[0]);
        vm.expectRevert(IBLSSignatureChecker.NonSignerPubkeysNotSorted.selector);
        taskManager.certifyBatch(h, p);
    }

    function test_certifyBatch_RevertWhen_NonSignerDuplicated() public {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        uint256[] memory non = new uint256[](2);
        non[0] = 5;
        non[1] = 6;
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, non);
        p.nonSignerPubkeys[1] = p.nonSignerPubkeys[0];
        vm.expectRevert(IBLSSignatureChecker.NonSignerPubkeysNotSorted.selector);
        taskManager.certifyBatch(h, p);
    }

    function test_certifyBatch_RevertWhen_ThresholdNotMet() public {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        uint256[] memory non = new uint256[](2);
        non[0] = 8;
        non[1] = 7;
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, non);
        vm.expectRevert(
            abi.encodeWithSelector(IInferenceTaskManager.ThresholdNotMet.selector, uint8(0), 160 ether, 310 ether)
        );
        taskManager.certifyBatch(h, p);
    }

    function test_certifyBatch_RevertWhen_WrongApk() public {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        p.quorumApks[0] = _g1(1);
        vm.expectRevert(IBLSSignatureChecker.InvalidQuorumApkHash.selector);
        taskManager.certifyBatch(h, p);
    }

    function test_certifyBatch_RevertWhen_UnsortedQuorums() public {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"0100");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        vm.expectRevert(QuorumBitmaps.InvalidQuorumNumbers.selector);
        taskManager.certifyBatch(h, p);
    }

    function testFuzz_certifyBatch_RevertWhen_TamperedHeader(bytes32 root, bytes32 otherRoot) public {
        vm.assume(root != otherRoot);
        AvsMessages.BatchHeader memory h = _header(0, root, hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        h.leavesRoot = otherRoot;
        vm.expectRevert(IBLSSignatureChecker.InvalidBLSSignature.selector);
        taskManager.certifyBatch(h, p);
    }

    function testFuzz_certifyBatch_RevertWhen_WrongSigner(uint256 extra) public {
        extra = bound(extra, 1, 100);
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        p.sigma = BN254.hashToG1(taskManager.batchDigest(h)).scalar_mul(36 + extra);
        vm.expectRevert(IBLSSignatureChecker.InvalidBLSSignature.selector);
        taskManager.certifyBatch(h, p);
    }

    /// @dev The fast path (verified key pair, no γ) refuses every wrong signature the γ path refuses.
    function testFuzz_certifyBatch_VerifiedKeyPair_RevertWhen_WrongSigner(uint256 extra) public {
        extra = bound(extra, 1, 100);
        taskManager.verifyKeyPair(_g1(36), _g2(36));
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        p.sigma = BN254.hashToG1(taskManager.batchDigest(h)).scalar_mul(36 + extra);
        vm.expectRevert(IBLSSignatureChecker.InvalidBLSSignature.selector);
        taskManager.certifyBatch(h, p);
    }

    /// @dev A verified pair of another signing set does not vouch for this one's apkG2: a G2 key of
    ///      `k` signers with a matching signature is refused when the on-chain apk is of 36.
    function testFuzz_certifyBatch_VerifiedKeyPair_RevertWhen_OtherSetsPair(uint256 k) public {
        k = bound(k, 1, 100);
        vm.assume(k != 36);
        taskManager.verifyKeyPair(_g1(k), _g2(k));
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        p.apkG2 = _g2(k);
        p.sigma = BN254.hashToG1(taskManager.batchDigest(h)).scalar_mul(k);
        vm.expectRevert(IBLSSignatureChecker.InvalidBLSSignature.selector);
        taskManager.certifyBatch(h, p);
    }

    function test_certifyBatch_VerifiedKeyPair_AllSigners() public {
        taskManager.verifyKeyPair(_g1(36), _g2(36));
        _certify(0, keccak256("root"), hex"00", _none());
        vm.assertTrue(taskManager.getBatch(0).certifiedBlock != 0, "certified");
    }

    /// @dev Any subset of non-signers: certified iff signed stake meets 66.67% in every quorum.
    function testFuzz_certifyBatch_NonSignerSubsets(uint8 mask, bool twoQuorums) public {
        bytes memory quorums = twoQuorums ? bytes(hex"0001") : bytes(hex"00");
        uint256 count;
        for (uint256 i; i < 8; ++i) {
            if ((mask >> i) & 1 == 1) ++count;
        }
        uint256[] memory non = new uint256[](count);
        count = 0;
        for (uint256 i; i < 8; ++i) {
            if ((mask >> i) & 1 == 1) non[count++] = i + 1;
        }
        vm.assume(non.length < 8);
        AvsMessages.BatchHeader memory h = _header(1, keccak256(abi.encode(mask)), quorums);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, non);
        (IBLSSignatureChecker.QuorumStakeTotals memory t,) =
            taskManager.checkSignatures(taskManager.batchDigest(h), h.quorumNumbers, h.referenceBlock, p);
        bool ok = true;
        for (uint256 i; i < quorums.length; ++i) {
            if (uint256(t.signedStakeForQuorum[i]) * 10_000 < uint256(t.totalStakeForQuorum[i]) * 6667) ok = false;
        }
        if (!ok) vm.expectRevert();
        taskManager.certifyBatch(h, p);
    }
}

contract VerifyLeafTest is CertifyFixture {
    function testFuzz_verifyLeaf(bytes32 req, bytes32 out, bytes32 sibling) public {
        bytes32 leaf = AvsMessages.leafHash(req, out);
        bytes32 root = leaf < sibling ? keccak256(abi.encode(leaf, sibling)) : keccak256(abi.encode(sibling, leaf));
        _certify(3, root, hex"00", _none());
        AvsMessages.BatchHeader memory h = _header(3, root, hex"00");
        h.referenceBlock = uint32(block.number - 1);
        bytes32 record = keccak256(abi.encodePacked(h.referenceBlock));
        bytes32[] memory proof = new bytes32[](1);
        proof[0] = sibling;
        vm.assertTrue(taskManager.verifyLeaf(h, record, req, out, proof), "leaf");
        vm.assertFalse(taskManager.verifyLeaf(h, record, req, keccak256(abi.encode(out)), proof), "tampered leaf");
        vm.assertFalse(taskManager.verifyLeaf(h, bytes32(0), req, out, proof), "wrong record");
    }
}

contract IsBatchFinalTest is CertifyFixture {
    function test_isBatchFinal_AfterWindow() public {
        _certify(0, keccak256("root"), hex"00", _none());
        vm.assertFalse(taskManager.isBatchFinal(0), "in window");
        vm.roll(block.number + 50);
        vm.assertFalse(taskManager.isBatchFinal(0), "last block of window");
        vm.roll(block.number + 1);
        vm.assertTrue(taskManager.isBatchFinal(0), "final");
        vm.assertFalse(taskManager.isBatchFinal(1), "uncertified");
    }

    /// @dev Lowering the window keeps it for the batches certified before (read live, it made them
    ///      final at once), and for those certified after until the earlier ones are final.
    function test_isBatchFinal_ALoweredWindowKeepsTheBatchesCertifiedBefore() public {
        uint256 start = block.number;
        _certify(0, keccak256("root"), hex"00", _none()); // window 50
        vm.roll(start + 10);
        taskManager.setConfig(IInferenceTaskManager.Config(6667, 100, 5));
        vm.roll(start + 20);
        _certify(1, keccak256("root1"), hex"00", _none());
        vm.assertEq(taskManager.challengeDeadline(uint32(start)), start + 50, "kept for the batch before");
        vm.assertEq(taskManager.challengeDeadline(uint32(start + 20)), start + 60, "until the earlier ones are final");
        vm.assertEq(taskManager.challengeDeadline(uint32(start + 70)), start + 75, "then the new window");
        vm.roll(start + 50);
        vm.assertFalse(taskManager.isBatchFinal(0), "last block of its window");
        vm.roll(start + 51);
        vm.assertTrue(taskManager.isBatchFinal(0), "final");
        vm.assertFalse(taskManager.isBatchFinal(1), "not before the batch before it");
        vm.roll(start + 61);
        vm.assertTrue(taskManager.isBatchFinal(1), "final");
    }
}

/// @notice Whatever governance does to the window, a batch keeps the window it was certified under.
contract ChallengeDeadlineTest is CertifyFixture {
    /// @dev Eight changes of the window at random gaps; after each, every block's batches (certified
    ///      before or after a change in that block) still have at least the window in force then,
    ///      and the deadline never goes down as the certified block grows.
    function testFuzz_challengeDeadline_NeverShortensAWindow(uint8[8] memory gaps, uint8[8] memory windows) public {
        // The promise: the deadline challengeDeadline gave a batch in the block it was certified.
        uint256[] memory certifiedAt = new uint256[](17);
        uint256[] memory promised = new uint256[](17);
        (certifiedAt[0], promised[0]) = (block.number, taskManager.challengeDeadline(uint32(block.number)));
        for (uint256 i; i < 8; ++i) {
            vm.roll(block.number + bound(gaps[i], 0, 40));
            uint32 next = uint32(bound(windows[i], 1, 120));
            uint256 now_ = block.number;
            (certifiedAt[2 * i + 1], promised[2 * i + 1]) = (now_, taskManager.challengeDeadline(uint32(now_))); // before the change
            taskManager.setConfig(IInferenceTaskManager.Config(6667, 100, next));
            (certifiedAt[2 * i + 2], promised[2 * i + 2]) = (now_, taskManager.challengeDeadline(uint32(now_))); // after, same block
            vm.assertGe(promised[2 * i + 2], now_ + next, "shorter than the window");
            for (uint256 j; j <= 2 * i + 2; ++j) {
                if (now_ <= promised[j]) {
                    vm.assertGe(
                        taskManager.challengeDeadline(uint32(certifiedAt[j])), promised[j], "a window shortened"
                    );
                }
            }
        }
        uint256 last;
        for (uint256 b = certifiedAt[0]; b <= block.number + 200; ++b) {
            uint256 deadline = taskManager.challengeDeadline(uint32(b));
            vm.assertGe(deadline, last, "not monotonic");
            last = deadline;
        }
    }

    function test_challengeDeadline_WithoutALoweringIsTheCurrentWindow() public {
        taskManager.setConfig(IInferenceTaskManager.Config(6667, 100, 80)); // raised
        vm.assertEq(taskManager.challengeDeadline(uint32(block.number)), block.number + 80, "raised window");
        vm.assertEq(taskManager.challengeDeadline(7), 87, "for an older batch too");
    }
}

/// @dev A ring of 4 batch record slots: indices 1, 5, 9, ... share slot 1.
abstract contract RingFixture is CertifyFixture {
    function _recordRing() internal pure override returns (uint64) {
        return 4;
    }
}

contract BatchRecordRingTest is RingFixture {
    uint256 internal constant WINDOW = 50;

    function _headerAndRecord(uint64 index) internal view returns (AvsMessages.BatchHeader memory h, bytes32 rec) {
        h = _header(index, keccak256(abi.encode("root", index)), hex"00");
        rec = keccak256(abi.encodePacked(h.referenceBlock));
    }

    function _certifyIndex(uint64 index) internal returns (AvsMessages.BatchHeader memory h, bytes32 rec) {
        (h, rec) = _headerAndRecord(index);
        taskManager.certifyBatch(h, _sigs(h, _none()));
    }

    function _expectCertifyRevert(uint64 index, bytes memory err) internal {
        (AvsMessages.BatchHeader memory h,) = _headerAndRecord(index);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        vm.expectRevert(err);
        taskManager.certifyBatch(h, p);
    }

    function test_ring_ReusesASlotOnceItsBatchIsFinal() public {
        (AvsMessages.BatchHeader memory first, bytes32 firstRecord) = _certifyIndex(1);
        _certifyIndex(2); // another slot: no wait
        bytes memory busy = abi.encodeWithSelector(IInferenceTaskManager.BatchSlotNotFinal.selector, uint64(5));
        _expectCertifyRevert(5, busy);
        vm.roll(block.number + WINDOW);
        _expectCertifyRevert(5, busy); // the last block of batch 1's challenge window
        vm.roll(block.number + 1);
        (AvsMessages.BatchHeader memory second, bytes32 secondRecord) = _certifyIndex(5);
        IInferenceTaskManager.BatchRecord memory r = taskManager.getBatch(5);
        vm.assertEq(r.certifiedBlock, block.number, "certified block");
        vm.assertEq(r.ringEpoch, 1, "epoch");
        vm.assertTrue(taskManager.isCertified(second, secondRecord), "new batch certified");
        vm.assertEq(taskManager.getBatch(1).certifiedBlock, 0, "old record gone");
        vm.assertFalse(taskManager.isCertified(first, firstRecord), "old batch no longer checkable");
        vm.assertFalse(taskManager.isBatchFinal(1), "old batch unknown");
        vm.assertTrue(taskManager.getBatch(2).certifiedBlock != 0, "the other slot kept");
        (uint64 held, IInferenceTaskManager.BatchRecord memory slot) = taskManager.getRingSlot(1);
        vm.assertEq(held, 5, "slot 1 holds batch 5");
        vm.assertEq(slot.certifiedBlock, block.number, "batch 5's record");
        (held, slot) = taskManager.getRingSlot(3);
        vm.assertEq(held, 0, "slot 3 empty");
        vm.assertEq(slot.certifiedBlock, 0, "no record");
    }

    function test_ring_FollowsTheChallengeWindowSetByGovernance() public {
        _certifyIndex(1);
        taskManager.setConfig(IInferenceTaskManager.Config(6667, 100, 80));
        vm.roll(block.number + WINDOW + 1);
        _expectCertifyRevert(5, abi.encodeWithSelector(IInferenceTaskManager.BatchSlotNotFinal.selector, uint64(5)));
        vm.roll(block.number + 30);
        _certifyIndex(5);
    }

    function test_ring_ALoweredWindowKeepsTheSlotOfABatchCertifiedBefore() public {
        _certifyIndex(1);
        taskManager.setConfig(IInferenceTaskManager.Config(6667, 100, 5));
        vm.roll(block.number + WINDOW); // past the new window, within batch 1's
        _expectCertifyRevert(5, abi.encodeWithSelector(IInferenceTaskManager.BatchSlotNotFinal.selector, uint64(5)));
        vm.roll(block.number + 1);
        _certifyIndex(5);
    }

    function test_ring_RevertWhen_LowerIndexAfterAHigherOne() public {
        _certifyIndex(5);
        vm.roll(block.number + WINDOW + 1);
        _expectCertifyRevert(1, abi.encodeWithSelector(IInferenceTaskManager.BatchIndexSuperseded.selector, uint64(1)));
        _expectCertifyRevert(5, abi.encodeWithSelector(IInferenceTaskManager.BatchAlreadyCertified.selector, uint64(5)));
    }

    function test_ring_RevertWhen_EpochOverflows() public {
        uint64 last = 4 * (uint64(type(uint32).max) + 1) - 1;
        vm.assertEq(taskManager.getBatch(last + 1).certifiedBlock, 0, "beyond the ring's range: not certified");
        _expectCertifyRevert(
            last + 1, abi.encodeWithSelector(IInferenceTaskManager.BatchIndexTooLarge.selector, uint64(last + 1))
        );
    }

    /// @dev Found in review: an aggregator certifying each slot's last epoch (index
    ///      `recordRing * (2^32 - 1) + slot`) stopped every later certification for good.
    function test_ring_RevertWhen_AnIndexJumpsMoreThanMaxEpochStep() public {
        uint64 step = taskManager.MAX_EPOCH_STEP();
        for (uint64 slot; slot < 4; ++slot) {
            uint64 lastEpoch = 4 * uint64(type(uint32).max) + slot;
            _expectCertifyRevert(
                lastEpoch, abi.encodeWithSelector(IInferenceTaskManager.BatchIndexTooFar.selector, lastEpoch)
            );
        }
        uint64 farthest = 4 * step + 1; // slot 1, epoch MAX_EPOCH_STEP: the farthest from an empty slot
        _expectCertifyRevert(
            farthest + 4, abi.encodeWithSelector(IInferenceTaskManager.BatchIndexTooFar.selector, farthest + 4)
        );
        _certifyIndex(farthest);
        vm.roll(block.number + WINDOW + 1);
        uint64 beyond = farthest + 4 * (step + 1);
        _expectCertifyRevert(beyond, abi.encodeWithSelector(IInferenceTaskManager.BatchIndexTooFar.selector, beyond));
        _certifyIndex(farthest + 4 * step); // MAX_EPOCH_STEP past the slot's epoch
        vm.assertEq(taskManager.getBatch(farthest + 4 * step).ringEpoch, 2 * step, "epoch");
        _certifyIndex(2); // the other slots, from epoch 0, one after another as an honest aggregator goes
    }

    function test_setConfig_RevertWhen_ZeroReferenceAgeOrWindow() public {
        vm.expectRevert(IInferenceTaskManager.InvalidConfig.selector);
        taskManager.setConfig(IInferenceTaskManager.Config(6667, 0, 50));
        vm.expectRevert(IInferenceTaskManager.InvalidConfig.selector);
        taskManager.setConfig(IInferenceTaskManager.Config(6667, 100, 0));
        taskManager.setConfig(IInferenceTaskManager.Config(6667, 1, 1));
    }

    /// @dev Whatever the order, a batch index is certified at most once: a second certification of
    ///      `a` after `b` took or passed by its slot always reverts.
    function testFuzz_ring_AnIndexIsCertifiedAtMostOnce(uint64 a, uint64 b) public {
        a = uint64(bound(a, 0, (1 << 18) - 1)); // epochs up to MAX_EPOCH_STEP - 1: every jump allowed
        b = uint64(bound(b, 0, (1 << 18) - 1));
        _certifyIndex(a);
        vm.roll(block.number + WINDOW + 1);
        bool sameSlot = a % 4 == b % 4;
        if (a == b) {
            _expectCertifyRevert(b, abi.encodeWithSelector(IInferenceTaskManager.BatchAlreadyCertified.selector, b));
            return;
        }
        if (sameSlot && b < a) {
            _expectCertifyRevert(b, abi.encodeWithSelector(IInferenceTaskManager.BatchIndexSuperseded.selector, b));
            return;
        }
        _certifyIndex(b);
        vm.roll(block.number + WINDOW + 1);
        bytes4 expected = sameSlot
            ? IInferenceTaskManager.BatchIndexSuperseded.selector
            : IInferenceTaskManager.BatchAlreadyCertified.selector;
        _expectCertifyRevert(a, abi.encodeWithSelector(expected, a));
        vm.assertEq(taskManager.getBatch(a).certifiedBlock != 0, !sameSlot, "a's record kept iff its slot was");
    }
}

/// @notice Gas of certifyBatch (recorded with snapshotGasLastCall under snapshots/ and in docs).
/// @dev certifyBatch reads the config from the aggregator's entry: every change must reach it.
contract SetConfigTest is CertifyFixture {
    function testFuzz_setConfig_AppliesToAuthorisedAggregators(uint32 maxAge) public {
        maxAge = uint32(bound(maxAge, 1, 50));
        taskManager.setConfig(IInferenceTaskManager.Config(6667, maxAge, 50));
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        vm.roll(uint256(h.referenceBlock) + maxAge + 1);
        vm.expectRevert(abi.encodeWithSelector(IInferenceTaskManager.StaleReferenceBlock.selector, h.referenceBlock));
        taskManager.certifyBatch(h, p);
        vm.roll(uint256(h.referenceBlock) + maxAge);
        taskManager.certifyBatch(h, p);
    }

    function test_setConfig_ThresholdReachesAggregatorAddedLater() public {
        taskManager.setConfig(IInferenceTaskManager.Config(10_000, 100, 50));
        taskManager.setAggregator(address(0xA66), true);
        uint256[] memory non = _one(1);
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, non);
        vm.prank(address(0xA66));
        vm.expectRevert(
            abi.encodeWithSelector(IInferenceTaskManager.ThresholdNotMet.selector, uint8(0), 305 ether, 310 ether)
        );
        taskManager.certifyBatch(h, p);
    }
}

contract SetAggregatorTest is CertifyFixture {
    function test_setAggregator_RevokeAndRestore() public {
        AvsMessages.BatchHeader memory h = _header(0, keccak256("root"), hex"00");
        IBLSSignatureChecker.NonSignerStakesAndSignature memory p = _sigs(h, _none());
        taskManager.setAggregator(address(this), false);
        vm.assertFalse(taskManager.isAggregator(address(this)), "revoked");
        vm.expectRevert(IInferenceTaskManager.OnlyAggregator.selector);
        taskManager.certifyBatch(h, p);
        taskManager.setAggregator(address(this), true);
        vm.assertTrue(taskManager.isAggregator(address(this)), "restored");
        taskManager.certifyBatch(h, p);
    }
}

contract VerifyKeyPairTest is CertifyFixture {
    function testFuzz_verifyKeyPair_RecordsMatchingPair(uint256 k) public {
        k = bound(k, 1, 136);
        vm.assertFalse(taskManager.isKeyPairVerified(_g1(k), _g2(k)), "before");
        vm.expectEmit();
        emit IBLSSignatureChecker.KeyPairVerified(_g1(k), _g2(k));
        taskManager.verifyKeyPair(_g1(k), _g2(k));
        vm.assertTrue(taskManager.isKeyPairVerified(_g1(k), _g2(k)), "after");
    }

    function testFuzz_verifyKeyPair_RevertWhen_Mismatched(uint256 a, uint256 b) public {
        a = bound(a, 1, 136);
        b = bound(b, 1, 136);
        vm.assume(a != b);
        BN254.G1Point memory g1 = _g1(a);
        BN254.G2Point memory g2 = _g2(b);
        vm.expectRevert(IBLSSignatureChecker.InvalidKeyPair.selector);
        taskManager.verifyKeyPair(g1, g2);
    }

    function test_verifyKeyPair_RevertWhen_Infinity() public {
        BN254.G1Point memory infinity;
        BN254.G2Point memory g2Infinity;
        vm.expectRevert(IBLSSignatureChecker.InvalidKeyPair.selector);
        taskManager.verifyKeyPair(infinity, g2Infinity);
    }

    function test_verifyKeyPair_RevertWhen_G2NotOnCurve() public {
        BN254.G2Point memory bad = _g2(3);
        bad.Y[0] += 1;
        BN254.G1Point memory g1 = _g1(3);
        vm.expectRevert(IBLSSignatureChecker.InvalidKeyPair.selector);
        taskManager.verifyKeyPair(g1, bad);
    }
}

/// @dev Gas of `certifyBatch` itself. "verified": the signing set's (apk, apkG2) was recorded with
///      `verifyKeyPair` beforehand, in setUp so that its flag is a cold slot as in a real transaction
///      (the all-signers case after each membership change). Without it the γ-randomised check runs
///      (CertifyBatchUnverifiedGasTest).
contract CertifyBatchGasTest is CertifyFixture {
    function setUp() public override {
        super.setUp();
        taskManager.verifyKeyPair(_g1(36), _g2(36)); // all of quorum 0
        taskManager.verifyKeyPair(_g1(46), _g2(46)); // quorums 0 and 1, 1..4 twice
        taskManager.verifyKeyPair(_g1(35), _g2(35)); // quorum 0 without operator 1
    }

    function test_gas_certifyBatch_allSigners() public {
        _certify(0, keccak256("root"), hex"00", _none());
        vm.snapshotGasLastCall("certifyBatch_allSigners_1quorum");
    }

    function test_gas_certifyBatch_oneNonSigner_verifiedKeyPair() public {
        _certify(0, keccak256("root"), hex"00", _one(1));
        vm.snapshotGasLastCall("certifyBatch_1nonSigner_1quorum_verifiedKeyPair");
    }

    function test_gas_certifyBatch_allSigners_twoQuorums() public {
        _certify(0, keccak256("root"), hex"0001", _none());
        vm.snapshotGasLastCall("certifyBatch_allSigners_2quorums");
    }
}

contract CertifyBatchUnverifiedGasTest is CertifyFixture {
    function test_gas_certifyBatch_allSigners_unverifiedKeyPair() public {
        _certify(0, keccak256("root"), hex"00", _none());
        vm.snapshotGasLastCall("certifyBatch_allSigners_1quorum_unverifiedKeyPair");
    }

    function test_gas_certifyBatch_oneNonSigner() public {
        _certify(0, keccak256("root"), hex"00", _one(1));
        vm.snapshotGasLastCall("certifyBatch_1nonSigner_1quorum");
    }

    function test_gas_certifyBatch_twoNonSigners() public {
        uint256[] memory non = new uint256[](2);
        non[0] = 1;
        non[1] = 2;
        _certify(0, keccak256("root"), hex"00", non);
        vm.snapshotGasLastCall("certifyBatch_2nonSigners_1quorum");
    }

    function test_gas_verifyKeyPair() public {
        taskManager.verifyKeyPair(_g1(36), _g2(36));
        vm.snapshotGasLastCall("verifyKeyPair");
    }
}

/// @dev certifyBatch in a ring whose slot held a final batch (the steady state once the ring has
///      gone round once): the record overwrites a non-zero slot. Same digest as the fresh-slot
///      measurement below, so the difference is the storage alone.
contract CertifyBatchRingGasTest is RingFixture {
    function setUp() public override {
        super.setUp();
        taskManager.verifyKeyPair(_g1(36), _g2(36)); // all of quorum 0
        _certify(0, keccak256("previous"), hex"00", _none());
        vm.roll(block.number + 51); // batch 0 final: its slot can be reused
    }

    function test_gas_certifyBatch_allSigners_ringSlotReused() public {
        _certify(4, keccak256("root"), hex"00", _none());
        vm.snapshotGasLastCall("certifyBatch_allSigners_1quorum_ringSlotReused");
    }
}

contract CertifyBatchRingFreshGasTest is RingFixture {
    function setUp() public override {
        super.setUp();
        taskManager.verifyKeyPair(_g1(36), _g2(36));
        vm.roll(block.number + 51); // the same reference block as CertifyBatchRingGasTest
    }

    function test_gas_certifyBatch_allSigners_ringFreshSlot() public {
        _certify(4, keccak256("root"), hex"00", _none());
        vm.snapshotGasLastCall("certifyBatch_allSigners_1quorum_ringFreshSlot");
    }
}
