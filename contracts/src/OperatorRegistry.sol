// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {BN254} from "./libraries/BN254.sol";
import {BLSSignatures} from "./libraries/BLSSignatures.sol";
import {QuorumBitmaps} from "./libraries/QuorumBitmaps.sol";
import {StrategyOrder} from "./libraries/StrategyOrder.sol";
import {IStrategy} from "./interfaces/eigenlayer/IStrategy.sol";
import {IAVSRegistrar} from "./interfaces/eigenlayer/IAVSRegistrar.sol";
import {IAllocationManager, IAllocationManagerTypes, OperatorSet} from "./interfaces/eigenlayer/IAllocationManager.sol";
import {IStrategyManager} from "./interfaces/eigenlayer/IStrategyManager.sol";
import {IOperatorRegistry} from "./interfaces/IOperatorRegistry.sol";

/// @title OperatorRegistry
/// @notice The AVS's identity in EigenLayer (it creates the operator sets and slashes through the
///         AllocationManager) and the registrar of its operators: BN254 keys with proof of
///         possession, gRPC sockets, and block-indexed histories of quorum bitmaps, stakes and
///         aggregate keys, as EigenLayer middleware's RegistryCoordinator + BLSApkRegistry +
///         StakeRegistry keep them. Quorum number q is operator set id q.
/// @dev Stake of an operator in a quorum = sum over the set's strategies of its minimum slashable
///      stake (AllocationManager.getMinimumSlashableStake). Recorded stake below the quorum minimum
///      after an update is recorded as zero (the operator stays in the set but weighs nothing).
///
///      Slashable-stake look-ahead and freshness (EigenLayer middleware's
///      `slashableStakeLookAheadPerQuorum` and `staleStakesForbidden` / `quorumUpdateBlockNumber`):
///      a stake read at block u is `getMinimumSlashableStake(..., u + stakeLookAheadBlocks)`, which
///      leaves out every deallocation taking effect by then; certificates refuse a quorum whose
///      last complete refresh (`updateOperatorsForQuorum`) at or before the reference block r lies
///      more than `maxStakeAgeBlocks` (S) before r. Every stake counted at r was then read at some
///      u >= r - S. With W = maxReferenceAge + challenge window + resolution window (the last block
///      a fraud signed at r can be proven and slashed is r + W <= u + S + W):
///      - a deallocation pending at u is counted only if it takes effect after u + L (L the
///        look-ahead), so L >= S + W keeps it slashable until the proof;
///      - a deallocation started after u takes effect after u + DEALLOCATION_DELAY, so
///        S + W <= DEALLOCATION_DELAY keeps it slashable until the proof.
///      Hence S + W <= L <= DEALLOCATION_DELAY (a look-ahead past the delay adds nothing), which
///      Deploy.s.sol checks. Registration, deregistration and slashes re-read single operators
///      (a fresh read never makes a quorum staler) but do not count as a quorum refresh; creating
///      a quorum does (its operator list, empty, is complete).
contract OperatorRegistry is IOperatorRegistry, IAVSRegistrar, Ownable {
    using BN254 for BN254.G1Point;
    using QuorumBitmaps for uint256;

    uint16 private constant BIPS = 10_000;
    /// @notice The most members a quorum may have, whatever its `QuorumConfig.maxOperatorCount` (set
    ///         it at most this: a quorum this full takes no newcomer, churn neither).
    uint32 internal constant MAX_QUORUM_OPERATORS = 1024;
    /// @notice The most weight one operator counts for: a quorum's total (a uint96, as checkSignatures
    ///         reads it) then cannot overflow, which reverted every refresh, registration and slash of
    ///         the quorum (a token with a huge raw supply). ~7.7e25 base units: 77M tokens of 18 decimals.
    uint96 internal constant MAX_OPERATOR_WEIGHT = type(uint96).max / MAX_QUORUM_OPERATORS;

    /// @notice EigenLayer's AllocationManager (the local core on devnets).
    IAllocationManager public immutable allocationManager;
    /// @notice EigenLayer's StrategyManager (the local core on devnets): sends slashed tokens out.
    IStrategyManager public immutable strategyManager;
    /// @notice Where slashed funds of new quorums go (the insurance pool).
    address public redistributionRecipient;
    /// @notice Contracts allowed to slash through this AVS.
    mapping(address => bool) public isSlasher;
    /// @notice Limits of each quorum.
    mapping(uint8 => QuorumConfig) public quorumConfig;
    /// @notice Bitmap of existing quorums.
    uint192 public quorumBitmap;
    /// @notice Stakes are read as the minimum slashable stake this many blocks ahead (L).
    uint32 public stakeLookAheadBlocks;
    /// @notice Certificates refuse a quorum whose last complete stake refresh lies more than this many
    ///         blocks before the reference block (S; 0: no bound). Keep S + W <= L <= DEALLOCATION_DELAY.
    uint32 public maxStakeAgeBlocks;
    /// @notice Churn limits of each quorum (zero: a full quorum takes nobody new).
    mapping(uint8 => ChurnConfig) public churnConfig;
    /// @notice Number of operators registered in each quorum.
    mapping(uint8 => uint32) public operatorCount;
    /// @notice Socket string of each operator id.
    mapping(bytes32 => string) public operatorSocket;

    mapping(address => bytes32) private _operatorId;
    mapping(bytes32 => address) private _operatorOf;
    mapping(bytes32 => BN254.G1Point) private _pubkeyG1;
    mapping(bytes32 => BN254.G2Point) private _pubkeyG2;
    mapping(bytes32 => QuorumBitmapUpdate[]) private _bitmapHistory;
    mapping(uint8 => mapping(bytes32 => StakeUpdate[])) private _stakeHistory;
    mapping(uint8 => StakeUpdate[]) private _totalStakeHistory;
    mapping(uint8 => ApkUpdate[]) private _apkHistory;

    /// @dev Operator count of each quorum from a block on (fault proofs check a signer list's size).
    struct CountUpdate {
        uint32 updateBlockNumber;
        uint32 count;
    }

    mapping(uint8 => CountUpdate[]) private _countHistory;
    /// @dev Blocks of each quorum's complete stake refreshes, ascending.
    mapping(uint8 => uint32[]) private _quorumUpdates;

    /// @dev What a certificate reads per quorum, in one slot: the last two complete refreshes and a
    ///      copy of `maxStakeAgeBlocks` (older refreshes only from `_quorumUpdates`).
    struct Freshness {
        uint32 lastUpdate;
        uint32 previousUpdate;
        uint32 maxStakeAge;
    }

    mapping(uint8 => Freshness) private _freshness;
    mapping(uint8 => BN254.G1Point) private _currentApk;

    modifier onlyAllocationManager() {
        if (msg.sender != address(allocationManager)) revert OnlyAllocationManager();
        _;
    }

    /// @param allocationManager_ EigenLayer's AllocationManager.
    /// @param owner_ Governance.
    constructor(IAllocationManager allocationManager_, IStrategyManager strategyManager_, address owner_)
        Ownable(owner_)
    {
        allocationManager = allocationManager_;
        strategyManager = strategyManager_;
    }

    /*//////////////////////////////////////////////////////////////
                               governance
    //////////////////////////////////////////////////////////////*/

    /// @notice Announces the AVS to EigenLayer and makes this contract its registrar.
    function initializeAvs(string calldata metadataURI) external onlyOwner {
        allocationManager.updateAVSMetadataURI(address(this), metadataURI);
        allocationManager.setAVSRegistrar(address(this), this);
    }

    /// @notice Sets where slashed funds of quorums created from now on go.
    function setRedistributionRecipient(address recipient) external onlyOwner {
        redistributionRecipient = recipient;
        emit RedistributionRecipientSet(recipient);
    }

    /// @notice Authorises or revokes a slasher (the fault manager).
    function setSlasher(address slasher, bool allowed) external onlyOwner {
        isSlasher[slasher] = allowed;
        emit SlasherSet(slasher, allowed);
    }

    /// @notice Sets the slashable-stake look-ahead L and the maximum stake age S (see the contract
    ///         notes: keep maxReferenceAge + challenge window + resolution window + S <= L <=
    ///         DEALLOCATION_DELAY). Stakes recorded earlier keep their values until refreshed.
    function setStakeFreshness(uint32 lookAheadBlocks, uint32 maxStakeAge) external onlyOwner {
        stakeLookAheadBlocks = lookAheadBlocks;
        maxStakeAgeBlocks = maxStakeAge;
        uint256 quorums = quorumBitmap;
        for (uint8 q; q < 192 && quorums >> q != 0; ++q) {
            if (quorums.has(q)) _freshness[q].maxStakeAge = maxStakeAge;
        }
        emit StakeFreshnessSet(lookAheadBlocks, maxStakeAge);
    }

    /// @notice Creates quorum `quorumNumber` as a redistributing operator set over `strategies`.
    function createQuorum(uint8 quorumNumber, QuorumConfig calldata config, IStrategy[] calldata strategies)
        external
        onlyOwner
    {
        if (quorumNumber >= 192) revert InvalidQuorumNumber(quorumNumber);
        if (uint256(quorumBitmap).has(quorumNumber)) revert QuorumAlreadyExists(quorumNumber);
        if (redistributionRecipient == address(0)) revert RecipientNotSet();
        quorumBitmap |= uint192(1 << quorumNumber);
        quorumConfig[quorumNumber] = config;
        IAllocationManagerTypes.CreateSetParams[] memory params = new IAllocationManagerTypes.CreateSetParams[](1);
        params[0] = IAllocationManagerTypes.CreateSetParams(quorumNumber, strategies);
        address[] memory recipients = new address[](1);
        recipients[0] = redistributionRecipient;
        allocationManager.createRedistributingOperatorSets(address(this), params, recipients);
        _totalStakeHistory[quorumNumber].push(StakeUpdate(uint32(block.number), 0, 0));
        _apkHistory[quorumNumber].push(ApkUpdate(bytes24(0), uint32(block.number), 0));
        _countHistory[quorumNumber].push(CountUpdate(uint32(block.number), 0));
        _recordQuorumUpdate(quorumNumber); // no operators yet: every stake is fresh
        emit QuorumCreated(quorumNumber, config.maxOperatorCount, config.minimumStake);
    }

    /// @notice Changes a quorum's limits (applies to registrations and stake updates from now on).
    function setQuorumConfig(uint8 quorumNumber, QuorumConfig calldata config) external onlyOwner {
        _requireQuorum(quorumNumber);
        quorumConfig[quorumNumber] = config;
        emit QuorumConfigSet(quorumNumber, config.maxOperatorCount, config.minimumStake);
    }

    /// @notice Sets a quorum's churn limits (`ChurnConfig`; both zero turns churn off).
    function setChurnConfig(uint8 quorumNumber, ChurnConfig calldata config) external onlyOwner {
        _requireQuorum(quorumNumber);
        bool off = config.kickBipsOfOperatorStake == 0 && config.kickBipsOfTotalStake == 0;
        bool inRange = config.kickBipsOfOperatorStake >= BIPS && config.kickBipsOfTotalStake > 0
            && config.kickBipsOfTotalStake <= BIPS;
        if (!off && !inRange) {
            revert InvalidChurnConfig();
        }
        churnConfig[quorumNumber] = config;
        emit ChurnConfigSet(quorumNumber, config.kickBipsOfOperatorStake, config.kickBipsOfTotalStake);
    }

    /*//////////////////////////////////////////////////////////////
                          EigenLayer registrar
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IAVSRegistrar
    function supportsAVS(address avs) external view returns (bool) {
        return avs == address(this);
    }

    /// @inheritdoc IAVSRegistrar
    /// @dev `data` = abi.encode(string socket, PubkeyRegistrationParams, OperatorKick[] kicks); the key
    ///      part is only read on the operator's first registration (its key is permanent, as in
    ///      EigenLayer). `kicks` (ascending by quorum, each a quorum joined here) name the member to
    ///      replace in a quorum that is full; a kick for a quorum with a free place is not used.
    function registerOperator(address operator, address avs, uint32[] calldata operatorSetIds, bytes calldata data)
        external
        onlyAllocationManager
    {
        if (avs != address(this)) revert InvalidAVS();
        (string memory socket, PubkeyRegistrationParams memory params, OperatorKick[] memory kicks) =
            abi.decode(data, (string, PubkeyRegistrationParams, OperatorKick[]));
        bytes32 id = _operatorId[operator];
        if (id == bytes32(0)) id = _registerPubkey(operator, params);
        uint192 joining = _setIdsToBitmap(operatorSetIds);
        uint192 current = _currentBitmap(id);
        uint256 k;
        for (uint8 q; q < 192; ++q) {
            if (!uint256(joining).has(q)) continue;
            if (uint256(current).has(q)) revert AlreadyRegisteredForQuorum(q);
            if (k < kicks.length && kicks[k].quorumNumber == q) {
                if (operatorCount[q] >= quorumConfig[q].maxOperatorCount) _churn(operator, kicks[k].operator, q);
                ++k;
            }
            _joinQuorum(operator, id, q);
        }
        if (k < kicks.length) revert InvalidKick(kicks[k].quorumNumber); // unjoined, repeated or out of order
        _pushBitmap(id, current | joining);
        operatorSocket[id] = socket;
        emit OperatorSocketUpdate(id, socket);
        emit OperatorRegistered(operator, id, uint256(joining).toBytes());
    }

    /// @inheritdoc IAVSRegistrar
    function deregisterOperator(address operator, address avs, uint32[] calldata operatorSetIds)
        external
        onlyAllocationManager
    {
        if (avs != address(this)) revert InvalidAVS();
        bytes32 id = _operatorId[operator];
        if (id == bytes32(0)) revert OperatorNotRegistered();
        uint192 leaving = _setIdsToBitmap(operatorSetIds);
        uint192 current = _currentBitmap(id);
        for (uint8 q; q < 192; ++q) {
            if (!uint256(leaving).has(q)) continue;
            if (!uint256(current).has(q)) revert NotRegisteredForQuorum(q);
            _leaveQuorum(id, q);
        }
        _pushBitmap(id, current & ~leaving);
        emit OperatorDeregistered(operator, id, uint256(leaving).toBytes());
    }

    /*//////////////////////////////////////////////////////////////
                            operators, anyone
    //////////////////////////////////////////////////////////////*/

    /// @notice Updates the caller's gRPC socket.
    function updateSocket(string calldata socket) external {
        bytes32 id = _operatorId[msg.sender];
        if (id == bytes32(0)) revert OperatorNotRegistered();
        operatorSocket[id] = socket;
        emit OperatorSocketUpdate(id, socket);
    }

    /// @notice Permissionless: re-reads each operator's slashable stake from EigenLayer and records it
    ///         (zero when below the quorum minimum). Unknown operators are skipped.
    function updateOperators(address[] calldata operators) external {
        for (uint256 i; i < operators.length; ++i) {
            _updateOperatorStake(operators[i]);
        }
    }

    /// @notice Permissionless: re-reads the stake of every operator of `quorumNumber` and records the
    ///         quorum as refreshed now (certificates may use its stakes for `maxStakeAgeBlocks`).
    /// @param operators The quorum's complete current operator list, strictly ascending by address.
    function updateOperatorsForQuorum(uint8 quorumNumber, address[] calldata operators) external {
        _requireQuorum(quorumNumber);
        uint32 count = operatorCount[quorumNumber];
        if (operators.length != count) revert QuorumOperatorCountMismatch(quorumNumber, operators.length, count);
        OperatorSet memory set = OperatorSet(address(this), quorumNumber);
        IStrategy[] memory strategies = allocationManager.getStrategiesInOperatorSet(set);
        uint96 minimum = quorumConfig[quorumNumber].minimumStake;
        address previous;
        for (uint256 i; i < operators.length; ++i) {
            address operator = operators[i];
            if (operator <= previous) revert QuorumOperatorsNotSorted();
            previous = operator;
            bytes32 id = _memberId(operator, quorumNumber); // distinct members == operatorCount: the list is complete
            uint96 stake = _weightIn(operator, set, strategies);
            _recordStake(id, quorumNumber, stake < minimum ? 0 : stake);
        }
        _recordQuorumUpdate(quorumNumber);
    }

    /// @notice Permissionless: removes `operator` from `quorumNumber` when its slashable stake there,
    ///         read now, is below the quorum's minimum (it withdrew or deallocated, was slashed, or
    ///         governance raised the minimum). Such a member has no say in certificates (its stake
    ///         is recorded as zero) but would hold one of the quorum's `maxOperatorCount` places for
    ///         good, keeping staked operators out. It leaves through the AllocationManager, as if it
    ///         had deregistered itself: stays slashable for the deallocation delay, and may join again
    ///         with enough stake once that delay has passed (the AllocationManager refuses it before).
    function ejectUnderstaked(address operator, uint8 quorumNumber) external {
        _requireQuorum(quorumNumber);
        bytes32 id = _memberId(operator, quorumNumber);
        uint96 stake = _weight(operator, quorumNumber);
        uint96 minimum = quorumConfig[quorumNumber].minimumStake;
        if (stake >= minimum) revert StakeNotBelowMinimum(quorumNumber, stake, minimum);
        emit OperatorEjected(operator, id, quorumNumber, stake);
        _removeFromQuorum(operator, quorumNumber);
    }

    /// @inheritdoc IOperatorRegistry
    function slashOperator(address operator, uint8 quorumNumber, uint256 wad, string calldata description)
        external
        returns (uint256[] memory shares)
    {
        if (!isSlasher[msg.sender]) revert OnlySlasher();
        OperatorSet memory set = OperatorSet(address(this), quorumNumber);
        IStrategy[] memory strategies = StrategyOrder.sortAscending(allocationManager.getStrategiesInOperatorSet(set));
        uint256[] memory wads = new uint256[](strategies.length);
        for (uint256 i; i < wads.length; ++i) {
            wads[i] = wad;
        }
        uint256 slashId;
        (slashId, shares) = allocationManager.slashOperator(
            address(this), IAllocationManagerTypes.SlashingParams(operator, quorumNumber, strategies, wads, description)
        );
        _updateOperatorStake(operator);
        _sendSlashedTokens(set, slashId, strategies);
    }

    /// @dev EigenLayer sends slashed tokens out in a second, permissionless step that must never fail
    ///      the slash; taking it here puts them in the pool before a fault's payout is computed.
    ///      Low-level calls, so that nothing the StrategyManager does or returns can undo the slash;
    ///      when clearing the whole slash fails, each strategy is cleared on its own, so that one
    ///      token whose transfer reverts (a paused LST, say) holds back only its own tokens.
    function _sendSlashedTokens(OperatorSet memory set, uint256 slashId, IStrategy[] memory strategies) private {
        address manager = address(strategyManager);
        (bool sent,) = manager.call(abi.encodeCall(IStrategyManager.clearBurnOrRedistributableShares, (set, slashId)));
        if (sent) return;
        bool allSent = true;
        for (uint256 i; i < strategies.length; ++i) {
            (sent,) = manager.call(
                abi.encodeCall(
                    IStrategyManager.clearBurnOrRedistributableSharesByStrategy, (set, slashId, strategies[i])
                )
            );
            allSent = allSent && sent;
        }
        if (!allSent) emit SlashedFundsNotCleared(uint8(set.id), slashId);
    }

    /*//////////////////////////////////////////////////////////////
                                  views
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IOperatorRegistry
    function isOperatorSlashable(address operator, uint8 quorumNumber) external view returns (bool) {
        return allocationManager.isOperatorSlashable(operator, OperatorSet(address(this), quorumNumber));
    }

    /// @inheritdoc IOperatorRegistry
    function getOperatorId(address operator) external view returns (bytes32) {
        return _operatorId[operator];
    }

    /// @inheritdoc IOperatorRegistry
    function getOperatorFromId(bytes32 operatorId) external view returns (address) {
        return _operatorOf[operatorId];
    }

    /// @inheritdoc IOperatorRegistry
    function getOperatorPubkeys(bytes32 operatorId)
        external
        view
        returns (BN254.G1Point memory g1, BN254.G2Point memory g2)
    {
        return (_pubkeyG1[operatorId], _pubkeyG2[operatorId]);
    }

    /// @notice The current aggregate G1 key of `quorumNumber`.
    function getApk(uint8 quorumNumber) external view returns (BN254.G1Point memory) {
        return _currentApk[quorumNumber];
    }

    /// @inheritdoc IOperatorRegistry
    function getCurrentQuorumBitmap(bytes32 operatorId) external view returns (uint192) {
        return _currentBitmap(operatorId);
    }

    /// @notice The current recorded stake of `operatorId` in `quorumNumber`.
    function getCurrentStake(bytes32 operatorId, uint8 quorumNumber) public view returns (uint96) {
        StakeUpdate[] storage h = _stakeHistory[quorumNumber][operatorId];
        return h.length == 0 ? 0 : h[h.length - 1].stake;
    }

    /// @inheritdoc IOperatorRegistry
    function getCurrentTotalStake(uint8 quorumNumber) public view returns (uint96) {
        StakeUpdate[] storage h = _totalStakeHistory[quorumNumber];
        return h.length == 0 ? 0 : h[h.length - 1].stake;
    }

    /// @notice The last block in which every stake of `quorumNumber` was re-read at once (its
    ///         creation or `updateOperatorsForQuorum`); 0 if the quorum does not exist.
    function quorumUpdateBlockNumber(uint8 quorumNumber) external view returns (uint32) {
        return _freshness[quorumNumber].lastUpdate;
    }

    /// @inheritdoc IOperatorRegistry
    /// @dev One storage slot when the reference block is after one of the last two refreshes (a
    ///      reference block is at most maxReferenceAge old); else searches back through all of them.
    function getStakeFreshness(uint8 quorumNumber, uint32 referenceBlock)
        external
        view
        returns (uint32 updateBlock, uint32 maxStakeAge)
    {
        Freshness memory f = _freshness[quorumNumber];
        maxStakeAge = f.maxStakeAge;
        if (f.lastUpdate <= referenceBlock) return (f.lastUpdate, maxStakeAge);
        if (f.previousUpdate <= referenceBlock) return (f.previousUpdate, maxStakeAge);
        uint32[] storage h = _quorumUpdates[quorumNumber];
        for (uint256 i = h.length; i > 0; --i) {
            uint32 b = h[i - 1];
            if (b <= referenceBlock) return (b, maxStakeAge);
        }
    }

    /// @notice Whether quorum `quorumNumber` exists.
    function quorumExists(uint8 quorumNumber) public view returns (bool) {
        return uint256(quorumBitmap).has(quorumNumber);
    }

    /// @inheritdoc IOperatorRegistry
    function getQuorumBitmapAtBlockNumberByIndex(bytes32 operatorId, uint32 blockNumber, uint256 index)
        external
        view
        returns (uint192)
    {
        QuorumBitmapUpdate[] storage h = _bitmapHistory[operatorId];
        if (index >= h.length) revert InvalidHistoryIndex();
        QuorumBitmapUpdate memory u = h[index];
        _checkCovers(u.updateBlockNumber, u.nextUpdateBlockNumber, blockNumber);
        return u.quorumBitmap;
    }

    /// @inheritdoc IOperatorRegistry
    function getQuorumBitmapsAtBlockNumber(bytes32[] calldata operatorIds, uint32 blockNumber)
        external
        view
        returns (uint192[] memory bitmaps)
    {
        bitmaps = new uint192[](operatorIds.length);
        for (uint256 j; j < operatorIds.length; ++j) {
            QuorumBitmapUpdate[] storage h = _bitmapHistory[operatorIds[j]];
            for (uint256 i = h.length; i > 0; --i) {
                if (h[i - 1].updateBlockNumber <= blockNumber) {
                    bitmaps[j] = h[i - 1].quorumBitmap;
                    break;
                }
            }
        }
    }

    /// @inheritdoc IOperatorRegistry
    function getOperatorCountAtBlockNumber(uint8 quorumNumber, uint32 blockNumber) external view returns (uint32) {
        CountUpdate[] storage h = _countHistory[quorumNumber];
        for (uint256 i = h.length; i > 0; --i) {
            if (h[i - 1].updateBlockNumber <= blockNumber) return h[i - 1].count;
        }
        revert InvalidHistoryIndex();
    }

    /// @inheritdoc IOperatorRegistry
    function getApkHashAtBlockNumberAndIndex(uint8 quorumNumber, uint32 blockNumber, uint256 index)
        external
        view
        returns (bytes24)
    {
        return _apkHashAt(quorumNumber, blockNumber, index);
    }

    /// @inheritdoc IOperatorRegistry
    function getQuorumApkHashAndTotalStake(
        uint8 quorumNumber,
        uint32 blockNumber,
        uint256 apkIndex,
        uint256 totalStakeIndex
    ) external view returns (bytes24 apkHash, uint96 totalStake) {
        apkHash = _apkHashAt(quorumNumber, blockNumber, apkIndex);
        totalStake = _stakeAt(_totalStakeHistory[quorumNumber], blockNumber, totalStakeIndex);
    }

    /// @inheritdoc IOperatorRegistry
    function getTotalStakeAtBlockNumberFromIndex(uint8 quorumNumber, uint32 blockNumber, uint256 index)
        external
        view
        returns (uint96)
    {
        return _stakeAt(_totalStakeHistory[quorumNumber], blockNumber, index);
    }

    /// @inheritdoc IOperatorRegistry
    function getStakeAtBlockNumberAndIndex(uint8 quorumNumber, uint32 blockNumber, bytes32 operatorId, uint256 index)
        external
        view
        returns (uint96)
    {
        return _stakeAt(_stakeHistory[quorumNumber][operatorId], blockNumber, index);
    }

    /// @notice The history indices for a `checkSignatures` call at `referenceBlock` (what EigenLayer's
    ///         OperatorStateRetriever.getCheckSignaturesIndices returns). `nonSignerOperatorIds` in
    ///         the order they will be passed (sorted ascending).
    function getCheckSignaturesIndices(
        uint32 referenceBlock,
        bytes calldata quorumNumbers,
        bytes32[] calldata nonSignerOperatorIds
    ) external view returns (CheckSignaturesIndices memory r) {
        uint256 n = nonSignerOperatorIds.length;
        r.nonSignerQuorumBitmapIndices = new uint32[](n);
        uint192[] memory bitmaps = new uint192[](n);
        for (uint256 j; j < n; ++j) {
            QuorumBitmapUpdate[] storage h = _bitmapHistory[nonSignerOperatorIds[j]];
            uint256 idx = _findBitmap(h, referenceBlock);
            r.nonSignerQuorumBitmapIndices[j] = uint32(idx);
            bitmaps[j] = h[idx].quorumBitmap;
        }
        uint256 m = quorumNumbers.length;
        r.quorumApkIndices = new uint32[](m);
        r.totalStakeIndices = new uint32[](m);
        r.nonSignerStakeIndices = new uint32[][](m);
        for (uint256 i; i < m; ++i) {
            uint8 q = uint8(quorumNumbers[i]);
            r.quorumApkIndices[i] = uint32(_findApk(_apkHistory[q], referenceBlock));
            r.totalStakeIndices[i] = uint32(_findStake(_totalStakeHistory[q], referenceBlock));
            uint256 count;
            for (uint256 j; j < n; ++j) {
                if (uint256(bitmaps[j]).has(q)) ++count;
            }
            r.nonSignerStakeIndices[i] = new uint32[](count);
            count = 0;
            for (uint256 j; j < n; ++j) {
                if (!uint256(bitmaps[j]).has(q)) continue;
                r.nonSignerStakeIndices[i][count++] =
                    uint32(_findStake(_stakeHistory[q][nonSignerOperatorIds[j]], referenceBlock));
            }
        }
    }

    /*//////////////////////////////////////////////////////////////
                                internals
    //////////////////////////////////////////////////////////////*/

    function _requireQuorum(uint8 q) private view {
        if (!quorumExists(q)) revert QuorumDoesNotExist(q);
    }

    function _setIdsToBitmap(uint32[] calldata ids) private view returns (uint192 bitmap) {
        for (uint256 i; i < ids.length; ++i) {
            if (ids[i] >= 192) revert InvalidQuorumNumber(ids[i]);
            uint8 q = uint8(ids[i]);
            _requireQuorum(q);
            bitmap |= uint192(1 << q);
        }
        if (bitmap == 0) revert NoOperatorSets();
    }

    function _registerPubkey(address operator, PubkeyRegistrationParams memory p) private returns (bytes32 id) {
        if (!BN254.isOnCurve(p.pubkeyG1) || (p.pubkeyG1.X == 0 && p.pubkeyG1.Y == 0)) revert InvalidPubkey();
        id = BN254.hashG1Point(p.pubkeyG1);
        if (_operatorOf[id] != address(0)) revert PubkeyAlreadyRegistered();
        if (!BN254.isOnCurve(p.pubkeyRegistrationSignature)) revert InvalidProofOfPossession();
        BN254.G1Point memory messagePoint =
            BLSSignatures.pubkeyRegistrationMessageHash(operator, address(this), block.chainid);
        if (!BLSSignatures.verifyProofOfPossession(p.pubkeyG1, p.pubkeyG2, p.pubkeyRegistrationSignature, messagePoint))
        {
            revert InvalidProofOfPossession();
        }
        _operatorId[operator] = id;
        _operatorOf[id] = operator;
        _pubkeyG1[id] = p.pubkeyG1;
        _pubkeyG2[id] = p.pubkeyG2;
        emit NewPubkeyRegistration(operator, p.pubkeyG1, p.pubkeyG2);
    }

    function _joinQuorum(address operator, bytes32 id, uint8 q) private {
        QuorumConfig memory cfg = quorumConfig[q];
        uint32 count = operatorCount[q];
        if (count >= cfg.maxOperatorCount || count >= MAX_QUORUM_OPERATORS) revert MaxOperatorsReached(q);
        uint96 stake = _weight(operator, q);
        if (stake < cfg.minimumStake) revert InsufficientStake(q, stake, cfg.minimumStake);
        _recordCount(q, ++operatorCount[q]);
        _recordStake(id, q, stake);
        _updateApk(q, _pubkeyG1[id]);
    }

    /// @dev Takes `kicked`'s place in full quorum `q` for `newcomer` (EigenLayer middleware's churn,
    ///      without its approver: the limits are on-chain). Stakes are read now, the newcomer's
    ///      through its registration in progress; the total is the quorum's recorded one. `kicked`
    ///      leaves through the AllocationManager, as with `ejectUnderstaked`, whose callback
    ///      (`deregisterOperator`) frees the place.
    function _churn(address newcomer, address kicked, uint8 q) private {
        ChurnConfig memory cfg = churnConfig[q];
        if (cfg.kickBipsOfOperatorStake == 0) revert ChurnDisabled(q);
        _memberId(kicked, q);
        uint96 kickedStake = _weight(kicked, q);
        uint96 newStake = _weight(newcomer, q);
        uint256 required = uint256(kickedStake) * cfg.kickBipsOfOperatorStake / BIPS;
        if (newStake <= required) revert ChurnStakeTooLow(q, newStake, required);
        uint256 limit = uint256(getCurrentTotalStake(q)) * cfg.kickBipsOfTotalStake / BIPS;
        if (kickedStake >= limit) revert KickedStakeTooHigh(q, kickedStake, limit);
        emit OperatorChurned(kicked, newcomer, q, kickedStake, newStake);
        _removeFromQuorum(kicked, q);
        // `_joinQuorum` checks the count again: a kick that freed no place (or one in a quorum still
        // over a lowered maximum) refuses the newcomer instead of growing the quorum.
    }

    /// @dev `operator`'s id, if it is a member of quorum `q` (else `NotRegisteredForQuorum`).
    function _memberId(address operator, uint8 q) private view returns (bytes32 id) {
        id = _operatorId[operator];
        if (id == bytes32(0) || !uint256(_currentBitmap(id)).has(q)) revert NotRegisteredForQuorum(q);
    }

    /// @dev Deregisters `operator` from quorum `q` through the AllocationManager, as the AVS: its
    ///      callback (`deregisterOperator`) updates the histories, and EigenLayer keeps the operator
    ///      slashable for the deallocation delay as for any leaver.
    function _removeFromQuorum(address operator, uint8 q) private {
        uint32[] memory operatorSetIds = new uint32[](1);
        operatorSetIds[0] = q;
        allocationManager.deregisterFromOperatorSets(
            IAllocationManagerTypes.DeregisterParams(operator, address(this), operatorSetIds)
        );
    }

    function _leaveQuorum(bytes32 id, uint8 q) private {
        _recordCount(q, --operatorCount[q]);
        _recordStake(id, q, 0);
        _updateApk(q, _pubkeyG1[id].negate());
    }

    function _updateOperatorStake(address operator) private {
        bytes32 id = _operatorId[operator];
        if (id == bytes32(0)) return;
        uint256 bitmap = _currentBitmap(id);
        for (uint8 q; q < 192 && bitmap >> q != 0; ++q) {
            if (!bitmap.has(q)) continue;
            uint96 stake = _weight(operator, q);
            if (stake < quorumConfig[q].minimumStake) stake = 0;
            _recordStake(id, q, stake);
        }
    }

    function _recordQuorumUpdate(uint8 q) private {
        Freshness storage f = _freshness[q];
        if (f.lastUpdate != block.number || _quorumUpdates[q].length == 0) {
            (f.previousUpdate, f.lastUpdate, f.maxStakeAge) = (f.lastUpdate, uint32(block.number), maxStakeAgeBlocks);
            _quorumUpdates[q].push(uint32(block.number));
        }
        emit QuorumStakesUpdated(q, uint32(block.number));
    }

    /// @dev Records `stake` for `id` in `q` and moves the quorum total by the difference.
    function _recordStake(bytes32 id, uint8 q, uint96 stake) private {
        StakeUpdate[] storage h = _stakeHistory[q][id];
        uint96 old = h.length == 0 ? 0 : h[h.length - 1].stake;
        if (old == stake && h.length != 0) return;
        _pushStake(h, stake);
        _pushStake(_totalStakeHistory[q], getCurrentTotalStake(q) - old + stake);
        emit OperatorStakeUpdate(id, q, stake);
    }

    function _pushStake(StakeUpdate[] storage h, uint96 stake) private {
        uint256 len = h.length;
        if (len != 0 && h[len - 1].updateBlockNumber == block.number) {
            h[len - 1].stake = stake;
            return;
        }
        if (len != 0) h[len - 1].nextUpdateBlockNumber = uint32(block.number);
        h.push(StakeUpdate(uint32(block.number), 0, stake));
    }

    function _pushBitmap(bytes32 id, uint192 bitmap) private {
        QuorumBitmapUpdate[] storage h = _bitmapHistory[id];
        uint256 len = h.length;
        if (len != 0 && h[len - 1].updateBlockNumber == block.number) {
            h[len - 1].quorumBitmap = bitmap;
            return;
        }
        if (len != 0) h[len - 1].nextUpdateBlockNumber = uint32(block.number);
        h.push(QuorumBitmapUpdate(uint32(block.number), 0, bitmap));
    }

    function _recordCount(uint8 q, uint32 count) private {
        CountUpdate[] storage h = _countHistory[q];
        if (h[h.length - 1].updateBlockNumber == block.number) {
            h[h.length - 1].count = count;
            return;
        }
        h.push(CountUpdate(uint32(block.number), count));
    }

    function _updateApk(uint8 q, BN254.G1Point memory delta) private {
        BN254.G1Point memory apk = _currentApk[q].plus(delta);
        _currentApk[q] = apk;
        bytes24 apkHash = bytes24(BN254.hashG1Point(apk));
        ApkUpdate[] storage h = _apkHistory[q];
        uint256 len = h.length;
        if (h[len - 1].updateBlockNumber == block.number) {
            h[len - 1].apkHash = apkHash;
            return;
        }
        h[len - 1].nextUpdateBlockNumber = uint32(block.number);
        h.push(ApkUpdate(apkHash, uint32(block.number), 0));
    }

    function _currentBitmap(bytes32 id) private view returns (uint192) {
        QuorumBitmapUpdate[] storage h = _bitmapHistory[id];
        return h.length == 0 ? 0 : h[h.length - 1].quorumBitmap;
    }

    function _weight(address operator, uint8 q) private view returns (uint96) {
        OperatorSet memory set = OperatorSet(address(this), q);
        return _weightIn(operator, set, allocationManager.getStrategiesInOperatorSet(set));
    }

    /// @dev The operator's minimum slashable stake in `set` `stakeLookAheadBlocks` ahead: what a
    ///      deallocation taking effect before then will not take away; at most `MAX_OPERATOR_WEIGHT`.
    function _weightIn(address operator, OperatorSet memory set, IStrategy[] memory strategies)
        private
        view
        returns (uint96)
    {
        address[] memory ops = new address[](1);
        ops[0] = operator;
        uint256 futureBlock = block.number + stakeLookAheadBlocks;
        if (futureBlock > type(uint32).max) futureBlock = type(uint32).max;
        uint256[][] memory stakes =
            allocationManager.getMinimumSlashableStake(set, ops, strategies, uint32(futureBlock));
        uint256 total;
        for (uint256 i; i < strategies.length; ++i) {
            total += stakes[0][i];
        }
        return total > MAX_OPERATOR_WEIGHT ? MAX_OPERATOR_WEIGHT : uint96(total);
    }

    function _checkCovers(uint32 fromBlock, uint32 nextBlock, uint32 blockNumber) private pure {
        if (fromBlock > blockNumber) revert InvalidHistoryIndex();
        if (nextBlock != 0 && nextBlock <= blockNumber) revert InvalidHistoryIndex();
    }

    function _apkHashAt(uint8 q, uint32 blockNumber, uint256 index) private view returns (bytes24) {
        ApkUpdate[] storage h = _apkHistory[q];
        if (index >= h.length) revert InvalidHistoryIndex();
        ApkUpdate memory u = h[index];
        _checkCovers(u.updateBlockNumber, u.nextUpdateBlockNumber, blockNumber);
        return u.apkHash;
    }

    function _stakeAt(StakeUpdate[] storage h, uint32 blockNumber, uint256 index) private view returns (uint96) {
        if (index >= h.length) revert InvalidHistoryIndex();
        StakeUpdate memory u = h[index];
        _checkCovers(u.updateBlockNumber, u.nextUpdateBlockNumber, blockNumber);
        return u.stake;
    }

    function _findBitmap(QuorumBitmapUpdate[] storage h, uint32 blockNumber) private view returns (uint256) {
        for (uint256 i = h.length; i > 0; --i) {
            if (h[i - 1].updateBlockNumber <= blockNumber) return i - 1;
        }
        revert BlockBeforeHistory();
    }

    function _findStake(StakeUpdate[] storage h, uint32 blockNumber) private view returns (uint256) {
        for (uint256 i = h.length; i > 0; --i) {
            if (h[i - 1].updateBlockNumber <= blockNumber) return i - 1;
        }
        revert BlockBeforeHistory();
    }

    function _findApk(ApkUpdate[] storage h, uint32 blockNumber) private view returns (uint256) {
        for (uint256 i = h.length; i > 0; --i) {
            if (h[i - 1].updateBlockNumber <= blockNumber) return i - 1;
        }
        revert BlockBeforeHistory();
    }
}
