// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {AvsMessages} from "../libraries/AvsMessages.sol";
import {IBLSSignatureChecker} from "./IBLSSignatureChecker.sol";

/// @title IInferenceTaskManager
/// @notice Batch certificates: one aggregate BLS check per batch of attested (request, output) leaves.
interface IInferenceTaskManager is IBLSSignatureChecker {
    /// @notice Governance parameters (one storage slot).
    struct Config {
        uint16 thresholdBps;
        uint32 maxReferenceAge;
        uint32 challengeWindowBlocks;
    }

    /// @notice The window before its last lowering (the longest still in force for some batch) and
    ///         the block it was lowered in: batches certified up to then keep it
    ///         (`challengeDeadline`). Read live, a lowered window made batches final at once that
    ///         were still in theirs (challenges refused, coverage expired early). Zero: never lowered.
    struct LoweredWindow {
        uint32 keptBlocks;
        uint32 loweredAt;
    }

    /// @notice What is stored per certified batch (one slot): a 24-byte commitment to
    ///         (batch struct hash, signatory record hash), the block it was certified in, and the
    ///         batch's ring epoch (`batchIndex / recordRing`; 0 when every record is kept).
    struct BatchRecord {
        bytes24 commitment;
        uint32 certifiedBlock;
        uint32 ringEpoch;
    }

    /// @notice The caller is not an authorised aggregator.
    error OnlyAggregator();
    /// @notice The batch index is already certified.
    error BatchAlreadyCertified(uint64 batchIndex);
    /// @notice The batch's ring slot holds a later batch index: this index can never be certified.
    error BatchIndexSuperseded(uint64 batchIndex);
    /// @notice The batch's ring slot still holds a batch in its challenge window; retry later.
    error BatchSlotNotFinal(uint64 batchIndex);
    /// @notice `batchIndex / recordRing` does not fit the record's 32-bit epoch.
    error BatchIndexTooLarge(uint64 batchIndex);
    /// @notice `batchIndex`'s ring epoch is more than `MAX_EPOCH_STEP` past the epoch its slot holds.
    error BatchIndexTooFar(uint64 batchIndex);
    /// @notice The batch index is not certified.
    error BatchNotCertified(uint64 batchIndex);
    /// @notice The reference block is older than `maxReferenceAge` blocks.
    error StaleReferenceBlock(uint32 referenceBlock);
    /// @notice A quorum's signed stake is below the threshold.
    error ThresholdNotMet(uint8 quorumNumber, uint96 signedStake, uint96 totalStake);
    /// @notice A threshold above 100% or zero.
    error InvalidThreshold();
    /// @notice A zero `maxReferenceAge` (no reference block could ever be recent enough) or a zero
    ///         challenge window (no batch could be challenged).
    error InvalidConfig();
    /// @notice The given header or signatory record does not match the certified batch.
    error BatchMismatch();

    /// @notice Emitted when a batch is certified.
    event BatchCertified(
        uint64 indexed batchIndex,
        bytes32 indexed leavesRoot,
        uint32 referenceBlock,
        bytes quorumNumbers,
        bytes32 signatoryRecordHash
    );
    /// @notice Emitted when an aggregator is authorised or revoked.
    event AggregatorSet(address indexed aggregator, bool allowed);
    /// @notice Emitted when governance parameters change.
    event ConfigSet(uint16 thresholdBps, uint32 maxReferenceAge, uint32 challengeWindowBlocks);

    /// @notice Certifies a batch: checks the aggregate signature over the header's EIP-712 digest.
    function certifyBatch(AvsMessages.BatchHeader calldata header, NonSignerStakesAndSignature calldata signatures)
        external;

    /// @notice Whether (requestHash, outputHash) is a leaf of the certified batch `header`.
    function verifyLeaf(
        AvsMessages.BatchHeader calldata header,
        bytes32 signatoryRecordHash,
        bytes32 requestHash,
        bytes32 outputHash,
        bytes32[] calldata proof
    ) external view returns (bool);

    /// @notice Whether batch `batchIndex` is certified and its challenge window is over
    ///         (`block.number > challengeDeadline(certifiedBlock)`).
    function isBatchFinal(uint64 batchIndex) external view returns (bool);

    /// @notice The last block in which a batch certified in block `certifiedBlock` (or before it)
    ///         can be challenged: `certifiedBlock + challengeWindowBlocks`, except that lowering the
    ///         window shortens it for no batch already certified: those keep the longer window,
    ///         and until they are final, so do the batches certified after the change.
    function challengeDeadline(uint32 certifiedBlock) external view returns (uint256);

    /// @notice The record of the last lowering of the challenge window (`LoweredWindow`), which
    ///         with `config` gives `challengeDeadline` of every block (off-chain readers).
    function loweredWindow() external view returns (uint32 keptBlocks, uint32 loweredAt);

    /// @notice The record of batch `batchIndex`: zero if it is not certified, or if its ring slot
    ///         was reused by a later batch once it was final (then the `BatchCertified` event is
    ///         the record).
    function getBatch(uint64 batchIndex) external view returns (BatchRecord memory);

    /// @notice What `batchIndex`'s ring slot holds now: the batch index it holds (0 and an empty
    ///         record when the slot is empty) and its record. A held index above `batchIndex`
    ///         means `batchIndex` can no longer be certified, and if it was, its record is gone
    ///         (its `BatchCertified` event remains). Without a ring: `batchIndex` and its record.
    function getRingSlot(uint64 batchIndex) external view returns (uint64 heldIndex, BatchRecord memory record);

    /// @notice The EIP-712 domain separator of the AVS's messages (chain id, this contract).
    function domainSeparator() external view returns (bytes32);
}
