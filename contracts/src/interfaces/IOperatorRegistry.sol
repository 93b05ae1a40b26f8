// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {BN254} from "../libraries/BN254.sol";
import {IAllocationManager} from "./eigenlayer/IAllocationManager.sol";

/// @title IOperatorRegistryTypes
interface IOperatorRegistryTypes {
    /// @notice Per-quorum limits, set by governance.
    struct QuorumConfig {
        uint32 maxOperatorCount;
        uint96 minimumStake;
    }

    /// @notice Churn limits of a quorum, in basis points (EigenLayer middleware's kick BIPs). A
    ///         newcomer may take a full quorum's place of a member whose stake is below
    ///         `kickBipsOfTotalStake` of the quorum's total, when its own stake is above
    ///         `kickBipsOfOperatorStake` of that member's. Both zero: no churn.
    struct ChurnConfig {
        uint16 kickBipsOfOperatorStake;
        uint16 kickBipsOfTotalStake;
    }

    /// @notice A member a registering operator replaces in a full quorum.
    struct OperatorKick {
        uint8 quorumNumber;
        address operator;
    }

    /// @notice What an operator passes (ABI-encoded after its socket) as registration `data`.
    struct PubkeyRegistrationParams {
        BN254.G1Point pubkeyRegistrationSignature;
        BN254.G1Point pubkeyG1;
        BN254.G2Point pubkeyG2;
    }

    /// @notice One entry of an operator's quorum-bitmap history (EigenLayer's QuorumBitmapUpdate).
    struct QuorumBitmapUpdate {
        uint32 updateBlockNumber;
        uint32 nextUpdateBlockNumber;
        uint192 quorumBitmap;
    }

    /// @notice One entry of a stake history (EigenLayer's StakeUpdate).
    struct StakeUpdate {
        uint32 updateBlockNumber;
        uint32 nextUpdateBlockNumber;
        uint96 stake;
    }

    /// @notice One entry of a quorum's aggregate-key history (EigenLayer's ApkUpdate).
    struct ApkUpdate {
        bytes24 apkHash;
        uint32 updateBlockNumber;
        uint32 nextUpdateBlockNumber;
    }

    /// @notice The history indices `checkSignatures` needs (EigenLayer's OperatorStateRetriever output).
    struct CheckSignaturesIndices {
        uint32[] nonSignerQuorumBitmapIndices;
        uint32[] quorumApkIndices;
        uint32[] totalStakeIndices;
        uint32[][] nonSignerStakeIndices;
    }
}

/// @title IOperatorRegistryErrors
interface IOperatorRegistryErrors {
    /// @notice Only the AllocationManager may call.
    error OnlyAllocationManager();
    /// @notice Only an authorised slasher may call.
    error OnlySlasher();
    /// @notice The registrar serves only this AVS.
    error InvalidAVS();
    /// @notice The quorum does not exist.
    error QuorumDoesNotExist(uint8 quorumNumber);
    /// @notice The quorum already exists.
    error QuorumAlreadyExists(uint8 quorumNumber);
    /// @notice A quorum number above 191.
    error InvalidQuorumNumber(uint32 operatorSetId);
    /// @notice A registration or deregistration naming no operator set (it would only grow the
    ///         operator's bitmap history).
    error NoOperatorSets();
    /// @notice The operator is already registered for the quorum.
    error AlreadyRegisteredForQuorum(uint8 quorumNumber);
    /// @notice The operator is not registered for the quorum.
    error NotRegisteredForQuorum(uint8 quorumNumber);
    /// @notice The operator's stake is below the quorum minimum.
    error InsufficientStake(uint8 quorumNumber, uint96 stake, uint96 minimumStake);
    /// @notice The quorum is full.
    error MaxOperatorsReached(uint8 quorumNumber);
    /// @notice The proof of possession of the BLS key is wrong.
    error InvalidProofOfPossession();
    /// @notice The BLS key is zero or off the curve.
    error InvalidPubkey();
    /// @notice The BLS key is already registered (by another operator).
    error PubkeyAlreadyRegistered();
    /// @notice The operator has no BLS key registered.
    error OperatorNotRegistered();
    /// @notice A history index does not cover the block asked for.
    error InvalidHistoryIndex();
    /// @notice The block is before the history starts.
    error BlockBeforeHistory();
    /// @notice The redistribution recipient is unset.
    error RecipientNotSet();
    /// @notice `updateOperatorsForQuorum` needs the quorum's complete operator list: `given`
    ///         addresses for a quorum of `expected` operators.
    error QuorumOperatorCountMismatch(uint8 quorumNumber, uint256 given, uint32 expected);
    /// @notice `updateOperatorsForQuorum`'s list is not strictly ascending (unsorted or duplicated).
    error QuorumOperatorsNotSorted();
    /// @notice `ejectUnderstaked`: the operator's stake in the quorum meets the quorum's minimum.
    error StakeNotBelowMinimum(uint8 quorumNumber, uint96 stake, uint96 minimumStake);
    /// @notice Churn limits out of range: `kickBipsOfOperatorStake` at least 10,000 (a newcomer
    ///         must outweigh whom it replaces), `kickBipsOfTotalStake` in 1..10,000; or both zero.
    error InvalidChurnConfig();
    /// @notice The quorum is full and does not allow churn.
    error ChurnDisabled(uint8 quorumNumber);
    /// @notice A registration's kicks must name quorums it joins, ascending, one each.
    error InvalidKick(uint8 quorumNumber);
    /// @notice Churn: the newcomer's `stake` is not above `required` (the member's stake times
    ///         `kickBipsOfOperatorStake`).
    error ChurnStakeTooLow(uint8 quorumNumber, uint96 stake, uint256 required);
    /// @notice Churn: the member's `stake` is not below `limit` (the quorum's total times
    ///         `kickBipsOfTotalStake`).
    error KickedStakeTooHigh(uint8 quorumNumber, uint96 stake, uint256 limit);
}

/// @title IOperatorRegistryEvents
interface IOperatorRegistryEvents {
    /// @notice Emitted when a quorum (operator set) is created.
    event QuorumCreated(uint8 indexed quorumNumber, uint32 maxOperatorCount, uint96 minimumStake);
    /// @notice Emitted when a quorum's limits change.
    event QuorumConfigSet(uint8 indexed quorumNumber, uint32 maxOperatorCount, uint96 minimumStake);
    /// @notice Emitted when an operator registers its BLS key.
    event NewPubkeyRegistration(address indexed operator, BN254.G1Point pubkeyG1, BN254.G2Point pubkeyG2);
    /// @notice Emitted when an operator joins quorums.
    event OperatorRegistered(address indexed operator, bytes32 indexed operatorId, bytes quorumNumbers);
    /// @notice Emitted when an operator leaves quorums.
    event OperatorDeregistered(address indexed operator, bytes32 indexed operatorId, bytes quorumNumbers);
    /// @notice Emitted when an operator's socket changes.
    event OperatorSocketUpdate(bytes32 indexed operatorId, string socket);
    /// @notice Emitted when an operator's recorded stake in a quorum changes.
    event OperatorStakeUpdate(bytes32 indexed operatorId, uint8 quorumNumber, uint96 stake);
    /// @notice Emitted when a slasher is authorised or revoked.
    event SlasherSet(address indexed slasher, bool allowed);
    /// @notice Emitted when the recipient of redistributed slashes is set.
    event RedistributionRecipientSet(address recipient);
    /// @notice Emitted when a slash's tokens could not be sent to the recipient in the slashing
    ///         transaction; anyone can send them later with the StrategyManager's
    ///         `clearBurnOrRedistributableShares(operatorSet, slashId)`.
    event SlashedFundsNotCleared(uint8 indexed quorumNumber, uint256 slashId);
    /// @notice Emitted when governance sets the stake look-ahead and the maximum stake age.
    event StakeFreshnessSet(uint32 stakeLookAheadBlocks, uint32 maxStakeAgeBlocks);
    /// @notice Emitted when every operator's stake in `quorumNumber` was re-read in one call
    ///         (`updateOperatorsForQuorum`): certificates may use its stakes for `maxStakeAgeBlocks`.
    event QuorumStakesUpdated(uint8 indexed quorumNumber, uint32 blockNumber);
    /// @notice Emitted when anyone removes an operator whose stake fell below the quorum's minimum
    ///         from the quorum (`ejectUnderstaked`; `OperatorDeregistered` comes with it).
    event OperatorEjected(address indexed operator, bytes32 indexed operatorId, uint8 quorumNumber, uint96 stake);
    /// @notice Emitted when governance sets a quorum's churn limits.
    event ChurnConfigSet(uint8 indexed quorumNumber, uint16 kickBipsOfOperatorStake, uint16 kickBipsOfTotalStake);
    /// @notice Emitted when a registering operator takes the place of `kicked` in a full quorum
    ///         (`OperatorDeregistered` for `kicked` comes with it).
    event OperatorChurned(
        address indexed kicked,
        address indexed replacement,
        uint8 quorumNumber,
        uint96 kickedStake,
        uint96 replacementStake
    );
}

/// @title IOperatorRegistry
/// @notice The AVS's operator registry: the EigenLayer registrar of its operator sets (quorums),
///         BLS keys with proof of possession, sockets, and the block-indexed histories of quorum
///         membership, stake and aggregate keys that signature checks read.
interface IOperatorRegistry is IOperatorRegistryTypes, IOperatorRegistryErrors, IOperatorRegistryEvents {
    /// @notice EigenLayer's AllocationManager (the local core on devnets).
    function allocationManager() external view returns (IAllocationManager);

    /// @notice The operator id (keccak of the G1 key) of `operator`, zero if none.
    function getOperatorId(address operator) external view returns (bytes32);

    /// @notice The address that registered the key with id `operatorId`.
    function getOperatorFromId(bytes32 operatorId) external view returns (address);

    /// @notice The quorum bitmap of `operatorId` at `blockNumber`, from history entry `index`.
    function getQuorumBitmapAtBlockNumberByIndex(bytes32 operatorId, uint32 blockNumber, uint256 index)
        external
        view
        returns (uint192);

    /// @notice The quorum bitmaps of `operatorIds` at `blockNumber`, 0 for an id not registered then
    ///         (or never). From the history, so a past block's members are read at the latest
    ///         block: a challenger resolving an old batch needs no archive node.
    function getQuorumBitmapsAtBlockNumber(bytes32[] calldata operatorIds, uint32 blockNumber)
        external
        view
        returns (uint192[] memory bitmaps);

    /// @notice How many operators `quorumNumber` had at `blockNumber` (not before its creation).
    function getOperatorCountAtBlockNumber(uint8 quorumNumber, uint32 blockNumber) external view returns (uint32);

    /// @notice The aggregate-key hash of `quorumNumber` at `blockNumber`, from history entry `index`.
    function getApkHashAtBlockNumberAndIndex(uint8 quorumNumber, uint32 blockNumber, uint256 index)
        external
        view
        returns (bytes24);

    /// @notice `getApkHashAtBlockNumberAndIndex` and `getTotalStakeAtBlockNumberFromIndex` in one call
    ///         (what a signature check reads per quorum; one external call less).
    function getQuorumApkHashAndTotalStake(
        uint8 quorumNumber,
        uint32 blockNumber,
        uint256 apkIndex,
        uint256 totalStakeIndex
    ) external view returns (bytes24 apkHash, uint96 totalStake);

    /// @notice The total stake of `quorumNumber` at `blockNumber`, from history entry `index`.
    function getTotalStakeAtBlockNumberFromIndex(uint8 quorumNumber, uint32 blockNumber, uint256 index)
        external
        view
        returns (uint96);

    /// @notice The stake of `operatorId` in `quorumNumber` at `blockNumber`, from history entry `index`.
    function getStakeAtBlockNumberAndIndex(uint8 quorumNumber, uint32 blockNumber, bytes32 operatorId, uint256 index)
        external
        view
        returns (uint96);

    /// @notice The registered G1 and G2 keys of `operatorId` (zero if none); keys never change.
    function getOperatorPubkeys(bytes32 operatorId)
        external
        view
        returns (BN254.G1Point memory g1, BN254.G2Point memory g2);

    /// @notice The current quorum bitmap of `operatorId`.
    function getCurrentQuorumBitmap(bytes32 operatorId) external view returns (uint192);

    /// @notice The current recorded total stake of `quorumNumber`.
    function getCurrentTotalStake(uint8 quorumNumber) external view returns (uint96);

    /// @notice Bitmap of the quorums that exist.
    function quorumBitmap() external view returns (uint192);

    /// @notice For a certificate at `referenceBlock`: the last block at or before it in which every
    ///         operator stake of `quorumNumber` was re-read at once (0 if none), and the governance
    ///         bound `maxStakeAgeBlocks` on how far the reference block may lie after it (0: no bound).
    function getStakeFreshness(uint8 quorumNumber, uint32 referenceBlock)
        external
        view
        returns (uint32 updateBlock, uint32 maxStakeAge);

    /// @notice Whether quorum `quorumNumber`'s operator set can slash `operator` now: EigenLayer's
    ///         `isOperatorSlashable` (registered, or deregistered at most `DEALLOCATION_DELAY` blocks
    ///         ago, so that leaving after a fault does not escape it).
    function isOperatorSlashable(address operator, uint8 quorumNumber) external view returns (bool);

    /// @notice Slashes `operator` in `quorumNumber` by `wad` of every strategy (authorised slashers only).
    function slashOperator(address operator, uint8 quorumNumber, uint256 wad, string calldata description)
        external
        returns (uint256[] memory shares);
}
