// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {AvsMessages} from "./libraries/AvsMessages.sol";
import {BLSSignatureChecker} from "./BLSSignatureChecker.sol";
import {IOperatorRegistry} from "./interfaces/IOperatorRegistry.sol";
import {IInferenceTaskManager} from "./interfaces/IInferenceTaskManager.sol";

/// @title InferenceTaskManager
/// @notice Certifies batches of attested inferences with one aggregate BLS check each, and keeps
///         what a later challenge needs. Its address is the EIP-712 verifying contract of every
///         message the operators sign (`AvsMessages`).
/// @dev Batch records live in a ring of `recordRing` slots (slot `batchIndex % recordRing`), like
///      EIP-2935's block-hash history: a slot is reused once the batch in it is final, which writes
///      a non-zero slot (5,000 gas) instead of a new one (22,100). The price: once reused, the old
///      batch's `verifyLeaf`/`isCertified`/`getBatch` answer as for an uncertified one, and its
///      `BatchCertified` event is the record. A challenge keeps what its resolution needs, so
///      nothing open depends on a reusable slot. A batch index is still certified at most once: a
///      slot only moves to a higher index (`BatchIndexSuperseded` for a lower one), by at most
///      `MAX_EPOCH_STEP` epochs at a time (`BatchIndexTooFar`): a slot at the last of its 2^32
///      epochs could never move on, so an aggregator that could jump there would stop the ring for
///      good (one certification per slot), while an honest aggregator, numbering its batches one
///      after another, moves a slot one epoch at a time (two past an index it abandoned). `recordRing`
///      0 keeps every record for ever, in its own slot.
contract InferenceTaskManager is IInferenceTaskManager, BLSSignatureChecker, Ownable {
    /// @notice Governance parameters.
    Config public config;

    /// @inheritdoc IInferenceTaskManager
    LoweredWindow public loweredWindow;

    /// @dev An aggregator's permission with a copy of what certifyBatch needs of `config` and
    ///      `loweredWindow`, packed in one slot (a nested struct would start a second one): certifyBatch
    ///      reads one cold slot instead of three; `setConfig` refreshes every copy.
    struct AggregatorEntry {
        bool allowed;
        uint16 thresholdBps;
        uint32 maxReferenceAge;
        uint32 challengeWindowBlocks;
        uint32 keptWindowBlocks;
        uint32 windowLoweredAt;
    }

    mapping(address => AggregatorEntry) private _aggregators;
    /// @dev Every address ever passed to `setAggregator` (governance keeps this short).
    address[] private _aggregatorList;

    /// @notice Slots of the batch record ring (0: no ring, every batch keeps its record).
    uint64 public immutable recordRing;
    /// @notice The most epochs a ring slot moves forward at one certification (`BatchIndexTooFar`):
    ///         running through the 2^32 epochs then takes 2^16 certifications per slot.
    uint32 public constant MAX_EPOCH_STEP = 1 << 16;

    /// @dev Keyed by ring slot (by batch index when `recordRing` is 0).
    mapping(uint64 => BatchRecord) private _batches;
    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedSeparator;

    /// @param registry_ The operator registry.
    /// @param owner_ Governance.
    /// @param config_ Threshold, reference age and challenge window.
    /// @param recordRing_ Slots of the batch record ring; at least the most batches certified in
    ///        one challenge window (more wait, `BatchSlotNotFinal`); 0 keeps every record.
    constructor(IOperatorRegistry registry_, address owner_, Config memory config_, uint64 recordRing_)
        BLSSignatureChecker(registry_)
        Ownable(owner_)
    {
        recordRing = recordRing_;
        _setConfig(config_);
        _cachedChainId = block.chainid;
        _cachedSeparator = AvsMessages.domainSeparator(block.chainid, address(this));
    }

    /// @notice Authorises or revokes an aggregator.
    function setAggregator(address aggregator, bool allowed) external onlyOwner {
        if (_aggregators[aggregator].thresholdBps == 0) _aggregatorList.push(aggregator); // first time
        (Config memory c, LoweredWindow memory w) = (config, loweredWindow);
        _aggregators[aggregator] = AggregatorEntry(
            allowed, c.thresholdBps, c.maxReferenceAge, c.challengeWindowBlocks, w.keptBlocks, w.loweredAt
        );
        emit AggregatorSet(aggregator, allowed);
    }

    /// @notice Whether `aggregator` may certify batches.
    function isAggregator(address aggregator) external view returns (bool) {
        return _aggregators[aggregator].allowed;
    }

    /// @notice Sets threshold (basis points of each quorum's stake), reference age and challenge window.
    function setConfig(Config calldata config_) external onlyOwner {
        _setConfig(config_);
    }

    /// @inheritdoc IInferenceTaskManager
    function certifyBatch(AvsMessages.BatchHeader calldata header, NonSignerStakesAndSignature calldata signatures)
        external
    {
        AggregatorEntry memory aggregator = _aggregators[msg.sender];
        if (!aggregator.allowed) revert OnlyAggregator();
        (uint64 slot, uint32 epoch) = _ringSlot(header.batchIndex);
        BatchRecord storage record = _batches[slot];
        _requireSlotFree(header.batchIndex, record, epoch, aggregator);
        if (uint256(header.referenceBlock) + aggregator.maxReferenceAge < block.number) {
            revert StaleReferenceBlock(header.referenceBlock);
        }
        bytes32 structHash = AvsMessages.hash(header);
        (QuorumStakeTotals memory totals, bytes32 signatoryRecordHash) = _checkSignatures(
            AvsMessages.digest(domainSeparator(), structHash), header.quorumNumbers, header.referenceBlock, signatures
        );
        _requireThreshold(header.quorumNumbers, totals, aggregator.thresholdBps);
        (record.commitment, record.certifiedBlock, record.ringEpoch) =
        (_commitment(structHash, signatoryRecordHash), uint32(block.number), epoch);
        emit BatchCertified(
            header.batchIndex, header.leavesRoot, header.referenceBlock, header.quorumNumbers, signatoryRecordHash
        );
    }

    /// @inheritdoc IInferenceTaskManager
    function verifyLeaf(
        AvsMessages.BatchHeader calldata header,
        bytes32 signatoryRecordHash,
        bytes32 requestHash,
        bytes32 outputHash,
        bytes32[] calldata proof
    ) external view returns (bool) {
        if (!isCertified(header, signatoryRecordHash)) return false;
        return AvsMessages.verifyLeaf(proof, header.leavesRoot, requestHash, outputHash);
    }

    /// @notice Whether `header` with `signatoryRecordHash` is exactly what was certified.
    function isCertified(AvsMessages.BatchHeader calldata header, bytes32 signatoryRecordHash)
        public
        view
        returns (bool)
    {
        BatchRecord memory r = getBatch(header.batchIndex);
        return r.certifiedBlock != 0 && r.commitment == _commitment(AvsMessages.hash(header), signatoryRecordHash);
    }

    /// @inheritdoc IInferenceTaskManager
    function isBatchFinal(uint64 batchIndex) external view returns (bool) {
        uint32 at = getBatch(batchIndex).certifiedBlock;
        return at != 0 && block.number > challengeDeadline(at);
    }

    /// @inheritdoc IInferenceTaskManager
    function challengeDeadline(uint32 certifiedBlock) public view returns (uint256) {
        LoweredWindow memory w = loweredWindow;
        return _deadline(certifiedBlock, config.challengeWindowBlocks, w.keptBlocks, w.loweredAt);
    }

    /// @inheritdoc IInferenceTaskManager
    function getBatch(uint64 batchIndex) public view returns (BatchRecord memory r) {
        uint64 held;
        (held, r) = getRingSlot(batchIndex);
        if (held != batchIndex) delete r; // the slot holds another batch
    }

    /// @inheritdoc IInferenceTaskManager
    function getRingSlot(uint64 batchIndex) public view returns (uint64 heldIndex, BatchRecord memory record) {
        if (recordRing != 0 && batchIndex / recordRing > type(uint32).max) return (0, record);
        (uint64 slot,) = _ringSlot(batchIndex);
        record = _batches[slot];
        if (record.certifiedBlock == 0) return (0, record);
        heldIndex = recordRing == 0 ? batchIndex : uint64(record.ringEpoch) * recordRing + slot;
    }

    /// @inheritdoc IInferenceTaskManager
    function domainSeparator() public view returns (bytes32) {
        if (block.chainid == _cachedChainId) return _cachedSeparator;
        return AvsMessages.domainSeparator(block.chainid, address(this));
    }

    /// @notice The digest operators sign for `header`.
    function batchDigest(AvsMessages.BatchHeader calldata header) external view returns (bytes32) {
        return AvsMessages.digest(domainSeparator(), AvsMessages.hash(header));
    }

    function _requireThreshold(bytes calldata quorumNumbers, QuorumStakeTotals memory totals, uint16 thresholdBps)
        private
        pure
    {
        for (uint256 i; i < quorumNumbers.length; ++i) {
            uint96 signed = totals.signedStakeForQuorum[i];
            uint96 total = totals.totalStakeForQuorum[i];
            if (total == 0 || uint256(signed) * 10_000 < uint256(total) * thresholdBps) {
                revert ThresholdNotMet(uint8(quorumNumbers[i]), signed, total);
            }
        }
    }

    /// @dev A batch index's ring slot and epoch: (batchIndex, 0) without a ring.
    function _ringSlot(uint64 batchIndex) private view returns (uint64 slot, uint32 epoch) {
        uint64 ring = recordRing;
        if (ring == 0) return (batchIndex, 0);
        uint64 e = batchIndex / ring;
        if (e > type(uint32).max) revert BatchIndexTooLarge(batchIndex);
        return (batchIndex % ring, uint32(e));
    }

    /// @dev `held` (the slot's record) may be replaced by `batchIndex` (of `epoch`): the slot is
    ///      empty, or holds a lower index whose batch is final; either way at most `MAX_EPOCH_STEP`
    ///      epochs ahead.
    function _requireSlotFree(uint64 batchIndex, BatchRecord storage held, uint32 epoch, AggregatorEntry memory copy)
        private
        view
    {
        (uint32 at, uint32 heldEpoch) = (held.certifiedBlock, held.ringEpoch);
        if (epoch > uint256(heldEpoch) + MAX_EPOCH_STEP) revert BatchIndexTooFar(batchIndex); // an empty slot: epoch 0
        if (at == 0) return;
        if (heldEpoch == epoch) revert BatchAlreadyCertified(batchIndex);
        if (heldEpoch > epoch) revert BatchIndexSuperseded(batchIndex);
        if (block.number <= _deadline(at, copy.challengeWindowBlocks, copy.keptWindowBlocks, copy.windowLoweredAt)) {
            revert BatchSlotNotFinal(batchIndex);
        }
    }

    /// @dev `challengeDeadline` from the window and the lowering record: a batch certified up to
    ///      the lowering keeps the kept window, and none is final before those are (the deadline is
    ///      the latest of any batch certified by `at`, so it never goes down as `at` grows).
    function _deadline(uint32 at, uint32 window, uint32 kept, uint32 loweredAt)
        private
        pure
        returns (uint256 deadline)
    {
        deadline = uint256(at) + window;
        if (kept > window) {
            uint256 before = uint256(at < loweredAt ? at : loweredAt) + kept;
            if (before > deadline) deadline = before;
        }
    }

    function _commitment(bytes32 structHash, bytes32 signatoryRecordHash) private pure returns (bytes24) {
        return bytes24(AvsMessages.batchCommitment(structHash, signatoryRecordHash));
    }

    function _setConfig(Config memory c) private {
        if (c.thresholdBps == 0 || c.thresholdBps > 10_000) revert InvalidThreshold();
        if (c.maxReferenceAge == 0 || c.challengeWindowBlocks == 0) revert InvalidConfig();
        uint32 current = config.challengeWindowBlocks;
        LoweredWindow memory w = loweredWindow;
        if (c.challengeWindowBlocks < current) {
            // Batches certified up to now keep the longest window any of them may still be in:
            // the current one, or the one kept at an earlier lowering if its batches are not final.
            uint32 kept = current;
            if (w.keptBlocks > kept && block.number <= uint256(w.loweredAt) + w.keptBlocks) kept = w.keptBlocks;
            w = LoweredWindow(kept, uint32(block.number));
            loweredWindow = w;
        }
        config = c;
        for (uint256 i; i < _aggregatorList.length; ++i) {
            AggregatorEntry storage e = _aggregators[_aggregatorList[i]];
            (e.thresholdBps, e.maxReferenceAge, e.challengeWindowBlocks, e.keptWindowBlocks, e.windowLoweredAt) =
            (c.thresholdBps, c.maxReferenceAge, c.challengeWindowBlocks, w.keptBlocks, w.loweredAt);
        }
        emit ConfigSet(c.thresholdBps, c.maxReferenceAge, c.challengeWindowBlocks);
    }
}
