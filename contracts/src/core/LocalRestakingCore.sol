// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {IStrategy} from "../interfaces/eigenlayer/IStrategy.sol";
import {IAVSRegistrar} from "../interfaces/eigenlayer/IAVSRegistrar.sol";
import {IDelegationManager} from "../interfaces/eigenlayer/IDelegationManager.sol";
import {IAllocationManager, OperatorSet} from "../interfaces/eigenlayer/IAllocationManager.sol";
import {IStrategyManager} from "../interfaces/eigenlayer/IStrategyManager.sol";

/// @title LocalRestakingCore — LOCAL DEVNET/TEST ONLY, not EigenLayer code
/// @notice A small stand-in for EigenLayer's core (AllocationManager + DelegationManager +
///         StrategyManager deposits) that implements the same interfaces, so that the AVS contracts
///         run unchanged against it on anvil and in forge tests. On a real network the AVS points at
///         EigenLayer's deployed core instead.
/// @dev Simplifications against EigenLayer, all deliberate for a devnet:
///      - shares are 1:1 with tokens; the core holds every deposited token;
///      - allocations take effect at once (EigenLayer's per-operator allocation delay is not
///        modelled); deallocations follow EigenLayer: while the operator is slashable by the set,
///        a smaller magnitude becomes pending for `DEALLOCATION_DELAY` + 1 blocks, stays slashable
///        until then (a slash also shrinks the pending part in proportion) and its magnitude stays
///        encumbered until the deallocation completes; one pending change per allocation
///        (`ModificationAlreadyPending`); an operator no set can slash deallocates at once;
///      - as in EigenLayer, an operator that deregisters from a set stays slashable by it for
///        `DEALLOCATION_DELAY` blocks (`isOperatorSlashable`), so leaving right after a fault does
///        not escape its slashing, and cannot register for that set again until then;
///      - as in EigenLayer, a slash only marks the slashed shares (per operator set, slash id and
///        strategy); the permissionless `clearBurnOrRedistributableShares` then sends their tokens to
///        the set's redistribution recipient (or the burn address), as on EigenLayer since v1.13
///        (slash resolution delay, ELIP-016) only `slashResolutionDelayBlocks` after the slash
///        (0 by default: at once, as before v1.13); operator shares fall by the
///        slashed amount; a staker's deposit shares are kept only to delegate them (there are no
///        withdrawals, and a delegated staker's shares are not reduced by its operator's slashes);
///      - the AVS (or operator) itself must call: there is no PermissionController/appointees.
contract LocalRestakingCore is IAllocationManager, IDelegationManager, IStrategyManager {
    using SafeERC20 for IERC20;

    /// @notice 100% in magnitudes and wads.
    uint64 public constant WAD = 1e18;
    /// @notice EigenLayer's burn address for non-redistributing sets.
    address public constant DEFAULT_BURN_ADDRESS = 0x00000000000000000000000000000000000E16E4;

    /// @notice A token was deposited into a strategy (StrategyManager's event).
    event Deposit(address staker, IStrategy strategy, uint256 shares);
    /// @notice A local strategy was whitelisted for deposits.
    event StrategyAdded(IStrategy strategy);
    /// @notice Slashed tokens left the core for `recipient`.
    event SlashedFundsSent(IStrategy strategy, address recipient, uint256 amount);
    /// @notice The slash resolution delay for slashes from now on.
    event SlashResolutionDelaySet(uint32 blocks);

    /// @notice The strategy is not whitelisted, or `token` is not its underlying token.
    error InvalidStrategy();
    /// @notice A zero amount.
    error ZeroAmount();
    /// @notice The address is already an operator or is delegated.
    error AlreadyDelegated();
    /// @notice Slash `slashId`'s shares can be cleared only from block `clearableAtBlock` on (the
    ///         slash resolution delay).
    error SlashNotResolved(uint256 slashId, uint256 clearableAtBlock);

    struct SetInfo {
        bool exists;
        bool redistributing;
        address recipient;
        uint256 slashCount;
        IStrategy[] strategies;
    }

    address public immutable owner;
    /// @notice Blocks for which a deregistered operator stays slashable by the set it left
    ///         (EigenLayer's `DEALLOCATION_DELAY`: 100,800 blocks, 14 days, on mainnet).
    uint32 public immutable DEALLOCATION_DELAY;
    mapping(IStrategy => bool) public isStrategy;
    mapping(address => address) private _delegatedTo;
    mapping(address => bool) private _isOperator;
    mapping(address => mapping(IStrategy => uint256)) private _operatorShares;
    mapping(address => mapping(IStrategy => uint64)) private _maxMagnitude; // 0 = never slashed (WAD)
    mapping(address => mapping(IStrategy => uint64)) public encumberedMagnitude;
    /// @dev Current magnitudes, before any pending deallocation whose effect block has come
    ///      (`_updatedAllocation` applies those).
    mapping(address => mapping(bytes32 => mapping(IStrategy => uint64))) private _allocation;

    /// @dev A pending deallocation: the magnitude leaving and the block it leaves at (0: none).
    struct PendingDeallocation {
        uint64 magnitude;
        uint32 effectBlock;
    }

    /// @dev A deallocation in an operator's queue for one strategy (the set's key, its effect block).
    struct QueuedDeallocation {
        bytes32 key;
        uint32 effectBlock;
    }

    mapping(address => mapping(bytes32 => mapping(IStrategy => PendingDeallocation))) private _pending;
    /// @dev Per operator and strategy, the deallocations in the order made, so in effect-block order
    ///      (the delay is fixed); those before `_queueHead` are done.
    mapping(address => mapping(IStrategy => QueuedDeallocation[])) private _queue;
    mapping(address => mapping(IStrategy => uint256)) private _queueHead;
    mapping(bytes32 => SetInfo) private _sets;
    mapping(address => mapping(bytes32 => bool)) private _member;
    /// @dev Last block in which an operator that left a set is still slashable by it.
    mapping(address => mapping(bytes32 => uint32)) private _slashableUntil;
    mapping(address => IAVSRegistrar) private _registrar;
    mapping(address => bool) public isAVS;
    mapping(address => mapping(IStrategy => uint256)) private _stakerShares;
    mapping(address => IStrategy[]) private _stakerStrategies;
    /// @dev Slashed shares not sent out yet, per operator set key and slash id: the strategies in
    ///      slash order, and the shares of each.
    mapping(bytes32 => mapping(uint256 => IStrategy[])) private _slashStrategies;
    mapping(bytes32 => mapping(uint256 => mapping(IStrategy => uint256))) private _slashShares;
    /// @notice Blocks after a slash before its shares can be cleared (EigenLayer v1.13's slash
    ///         resolution delay, `SLASH_RESOLUTION_DELAY_BLOCKS`: 50,400 blocks, ~7 days, on
    ///         mainnet); 0 (the default): at once. Each slash keeps the delay of its block.
    uint32 public slashResolutionDelayBlocks;
    /// @dev The first block a slash's shares can be cleared in, per operator set key and slash id
    ///      (0: at once; set only for slashes made with a delay).
    mapping(bytes32 => mapping(uint256 => uint256)) private _clearableAt;

    /// @param deallocationDelay `DEALLOCATION_DELAY`; an AVS's fault windows must fit inside it.
    constructor(uint32 deallocationDelay) {
        owner = msg.sender;
        DEALLOCATION_DELAY = deallocationDelay;
    }

    /// @notice Sets the slash resolution delay for slashes from now on (the core's deployer only).
    function setSlashResolutionDelay(uint32 blocks) external {
        if (msg.sender != owner) revert InvalidCaller();
        slashResolutionDelayBlocks = blocks;
        emit SlashResolutionDelaySet(blocks);
    }

    /// @notice The first block in which slash `slashId` of `operatorSet` can be cleared.
    function slashClearableAt(OperatorSet calldata operatorSet, uint256 slashId) external view returns (uint256) {
        return _clearableAt[_key(operatorSet)][slashId];
    }

    /*//////////////////////////////////////////////////////////////
                       StrategyManager-like deposits
    //////////////////////////////////////////////////////////////*/

    /// @notice Whitelists `strategy` for deposits (the core's deployer only).
    function addStrategy(IStrategy strategy) external {
        if (msg.sender != owner) revert InvalidCaller();
        isStrategy[strategy] = true;
        emit StrategyAdded(strategy);
    }

    /// @notice StrategyManager's `depositIntoStrategy`: moves `amount` of `token` in and credits the
    ///         caller's operator (if delegated) with as many shares.
    function depositIntoStrategy(IStrategy strategy, IERC20 token, uint256 amount)
        external
        returns (uint256 depositShares)
    {
        if (!isStrategy[strategy] || strategy.underlyingToken() != token) revert InvalidStrategy();
        if (amount == 0) revert ZeroAmount();
        token.safeTransferFrom(msg.sender, address(this), amount);
        if (_stakerShares[msg.sender][strategy] == 0) _stakerStrategies[msg.sender].push(strategy);
        _stakerShares[msg.sender][strategy] += amount;
        emit Deposit(msg.sender, strategy, amount);
        address op = _delegatedTo[msg.sender];
        if (op != address(0)) _increaseOperatorShares(op, msg.sender, strategy, amount);
        return amount;
    }

    /// @notice StrategyManager's `stakerDepositShares`: everything `staker` deposited into `strategy`.
    function stakerDepositShares(address staker, IStrategy strategy) external view returns (uint256) {
        return _stakerShares[staker][strategy];
    }

    /*//////////////////////////////////////////////////////////////
                            DelegationManager
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IDelegationManager
    /// @dev As EigenLayer, the new operator is delegated to itself, so what it deposited before
    ///      registering counts as its operator shares (issue 3: it used to be ignored).
    function registerAsOperator(address initDelegationApprover, uint32, string calldata) external {
        if (_delegatedTo[msg.sender] != address(0)) revert AlreadyDelegated();
        _isOperator[msg.sender] = true;
        emit OperatorRegistered(msg.sender, initDelegationApprover);
        _delegate(msg.sender, msg.sender);
    }

    /// @inheritdoc IDelegationManager
    /// @dev As EigenLayer, the staker's earlier deposits move to the operator with the delegation.
    function delegateTo(address operator, SignatureWithExpiry memory, bytes32) external {
        if (!_isOperator[operator]) revert InvalidOperator();
        if (_delegatedTo[msg.sender] != address(0)) revert AlreadyDelegated();
        _delegate(msg.sender, operator);
    }

    /// @inheritdoc IDelegationManager
    function isOperator(address operator) external view returns (bool) {
        return _isOperator[operator];
    }

    /// @inheritdoc IDelegationManager
    function isDelegated(address staker) external view returns (bool) {
        return _delegatedTo[staker] != address(0);
    }

    /// @inheritdoc IDelegationManager
    function delegatedTo(address staker) external view returns (address) {
        return _delegatedTo[staker];
    }

    /// @inheritdoc IDelegationManager
    function operatorShares(address operator, IStrategy strategy) external view returns (uint256) {
        return _operatorShares[operator][strategy];
    }

    /// @inheritdoc IDelegationManager
    function getOperatorShares(address operator, IStrategy[] memory strategies)
        public
        view
        returns (uint256[] memory shares)
    {
        shares = new uint256[](strategies.length);
        for (uint256 i; i < strategies.length; ++i) {
            shares[i] = _operatorShares[operator][strategies[i]];
        }
    }

    /// @inheritdoc IDelegationManager
    function getOperatorsShares(address[] memory operators, IStrategy[] memory strategies)
        external
        view
        returns (uint256[][] memory shares)
    {
        shares = new uint256[][](operators.length);
        for (uint256 i; i < operators.length; ++i) {
            shares[i] = getOperatorShares(operators[i], strategies);
        }
    }

    /*//////////////////////////////////////////////////////////////
                            AllocationManager
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IAllocationManager
    function updateAVSMetadataURI(address avs, string calldata metadataURI) external {
        if (msg.sender != avs) revert InvalidCaller();
        isAVS[avs] = true;
        emit AVSMetadataURIUpdated(avs, metadataURI);
    }

    /// @inheritdoc IAllocationManager
    function setAVSRegistrar(address avs, IAVSRegistrar registrar) external {
        if (msg.sender != avs) revert InvalidCaller();
        if (!registrar.supportsAVS(avs)) revert InvalidAVSRegistrar();
        _registrar[avs] = registrar;
        emit AVSRegistrarSet(avs, registrar);
    }

    /// @inheritdoc IAllocationManager
    function createOperatorSets(address avs, CreateSetParams[] calldata params) external {
        if (msg.sender != avs || !isAVS[avs]) revert InvalidCaller();
        for (uint256 i; i < params.length; ++i) {
            _createSet(avs, params[i], false, DEFAULT_BURN_ADDRESS);
        }
    }

    /// @inheritdoc IAllocationManager
    function createRedistributingOperatorSets(
        address avs,
        CreateSetParams[] calldata params,
        address[] calldata redistributionRecipients
    ) external {
        if (msg.sender != avs || !isAVS[avs]) revert InvalidCaller();
        if (params.length != redistributionRecipients.length) revert InputArrayLengthMismatch();
        for (uint256 i; i < params.length; ++i) {
            address r = redistributionRecipients[i];
            if (r == address(0) || r == DEFAULT_BURN_ADDRESS) revert InvalidRedistributionRecipient();
            _createSet(avs, params[i], true, r);
        }
    }

    /// @inheritdoc IAllocationManager
    function addStrategiesToOperatorSet(address avs, uint32 operatorSetId, IStrategy[] calldata strategies) external {
        if (msg.sender != avs) revert InvalidCaller();
        OperatorSet memory set = OperatorSet(avs, operatorSetId);
        SetInfo storage info = _sets[_key(set)];
        if (!info.exists) revert InvalidOperatorSet();
        for (uint256 i; i < strategies.length; ++i) {
            _addStrategy(info, set, strategies[i]);
        }
    }

    /// @inheritdoc IAllocationManager
    function modifyAllocations(address operator, AllocateParams[] calldata params) external {
        if (msg.sender != operator) revert InvalidCaller();
        if (!_isOperator[operator]) revert InvalidOperator();
        for (uint256 i; i < params.length; ++i) {
            AllocateParams calldata p = params[i];
            if (p.strategies.length != p.newMagnitudes.length) revert InputArrayLengthMismatch();
            bytes32 key = _key(p.operatorSet);
            if (!_sets[key].exists) revert InvalidOperatorSet();
            for (uint256 j; j < p.strategies.length; ++j) {
                IStrategy s = p.strategies[j];
                _clearDeallocationQueue(operator, s); // as EigenLayer: frees what has finished leaving
                if (_pending[operator][key][s].effectBlock != 0) revert ModificationAlreadyPending();
                uint64 old = _allocation[operator][key][s];
                uint64 wanted = p.newMagnitudes[j];
                if (wanted < old && _isSlashable(operator, key)) {
                    _startDeallocation(operator, p.operatorSet, s, old - wanted);
                    continue;
                }
                uint64 encumbered = encumberedMagnitude[operator][s] - old + wanted;
                if (encumbered > getMaxMagnitude(operator, s)) revert InsufficientMagnitude();
                encumberedMagnitude[operator][s] = encumbered;
                _allocation[operator][key][s] = wanted;
                emit AllocationUpdated(operator, p.operatorSet, s, wanted, uint32(block.number));
            }
        }
    }

    /// @inheritdoc IAllocationManager
    function registerForOperatorSets(address operator, RegisterParams calldata params) external {
        if (msg.sender != operator) revert InvalidCaller();
        if (!_isOperator[operator]) revert InvalidOperator();
        IAVSRegistrar registrar = _registrar[params.avs];
        if (address(registrar) == address(0)) revert InvalidAVSRegistrar();
        for (uint256 i; i < params.operatorSetIds.length; ++i) {
            OperatorSet memory set = OperatorSet(params.avs, params.operatorSetIds[i]);
            bytes32 key = _key(set);
            if (!_sets[key].exists) revert InvalidOperatorSet();
            // As EigenLayer: not while still slashable after leaving (DEALLOCATION_DELAY) either.
            if (_isSlashable(operator, key)) revert AlreadyMemberOfSet();
            _member[operator][key] = true;
            emit OperatorAddedToOperatorSet(operator, set);
        }
        registrar.registerOperator(operator, params.avs, params.operatorSetIds, params.data);
    }

    /// @inheritdoc IAllocationManager
    /// @dev The operator or the AVS may call (as in EigenLayer).
    function deregisterFromOperatorSets(DeregisterParams calldata params) external {
        if (msg.sender != params.operator && msg.sender != params.avs) revert InvalidCaller();
        for (uint256 i; i < params.operatorSetIds.length; ++i) {
            OperatorSet memory set = OperatorSet(params.avs, params.operatorSetIds[i]);
            bytes32 key = _key(set);
            if (!_member[params.operator][key]) revert NotMemberOfSet();
            _member[params.operator][key] = false;
            _slashableUntil[params.operator][key] = uint32(block.number) + DEALLOCATION_DELAY;
            emit OperatorRemovedFromOperatorSet(params.operator, set);
        }
        _registrar[params.avs].deregisterOperator(params.operator, params.avs, params.operatorSetIds);
    }

    /// @inheritdoc IAllocationManager
    function slashOperator(address avs, SlashingParams calldata params)
        external
        returns (uint256 slashId, uint256[] memory shares)
    {
        if (msg.sender != avs) revert InvalidCaller();
        if (params.strategies.length != params.wadsToSlash.length) revert InputArrayLengthMismatch();
        OperatorSet memory set = OperatorSet(avs, params.operatorSetId);
        bytes32 key = _key(set);
        SetInfo storage info = _sets[key];
        if (!info.exists) revert InvalidOperatorSet();
        if (!_isSlashable(params.operator, key)) revert OperatorNotSlashable();
        slashId = ++info.slashCount;
        uint32 delay = slashResolutionDelayBlocks;
        if (delay != 0) _clearableAt[key][slashId] = block.number + delay;
        shares = new uint256[](params.strategies.length);
        for (uint256 i; i < params.strategies.length; ++i) {
            IStrategy s = params.strategies[i];
            if (i > 0 && address(s) <= address(params.strategies[i - 1])) revert StrategiesMustBeInAscendingOrder();
            if (params.wadsToSlash[i] == 0 || params.wadsToSlash[i] > WAD) revert InvalidWadToSlash();
            if (!_inSet(info, s)) revert StrategyNotInOperatorSet();
            shares[i] = _slash(params.operator, key, s, params.wadsToSlash[i]);
            if (shares[i] != 0) {
                _slashStrategies[key][slashId].push(s);
                _slashShares[key][slashId][s] = shares[i];
                emit BurnOrRedistributableSharesIncreased(set, slashId, s, shares[i]);
            }
        }
        emit OperatorSlashed(params.operator, set, params.strategies, params.wadsToSlash, params.description);
    }

    /// @inheritdoc IStrategyManager
    /// @dev Reverts `SlashNotResolved` before the slash resolution delay is over.
    function clearBurnOrRedistributableShares(OperatorSet calldata operatorSet, uint256 slashId)
        external
        returns (uint256[] memory amounts)
    {
        bytes32 key = _key(operatorSet);
        _requireResolved(key, slashId);
        IStrategy[] memory strategies = _slashStrategies[key][slashId];
        amounts = new uint256[](strategies.length);
        for (uint256 i; i < strategies.length; ++i) {
            amounts[i] = _clear(operatorSet, key, slashId, strategies[i]);
        }
        delete _slashStrategies[key][slashId];
    }

    /// @inheritdoc IStrategyManager
    function clearBurnOrRedistributableSharesByStrategy(
        OperatorSet calldata operatorSet,
        uint256 slashId,
        IStrategy strategy
    ) external returns (uint256) {
        bytes32 key = _key(operatorSet);
        _requireResolved(key, slashId);
        return _clear(operatorSet, key, slashId, strategy);
    }

    /// @inheritdoc IStrategyManager
    function getBurnOrRedistributableShares(OperatorSet calldata operatorSet, uint256 slashId)
        external
        view
        returns (IStrategy[] memory strategies, uint256[] memory shares)
    {
        bytes32 key = _key(operatorSet);
        IStrategy[] storage all = _slashStrategies[key][slashId];
        uint256 n;
        for (uint256 i; i < all.length; ++i) {
            if (_slashShares[key][slashId][all[i]] != 0) ++n;
        }
        (strategies, shares) = (new IStrategy[](n), new uint256[](n));
        n = 0;
        for (uint256 i; i < all.length; ++i) {
            uint256 pending = _slashShares[key][slashId][all[i]];
            if (pending != 0) (strategies[n], shares[n++]) = (all[i], pending);
        }
    }

    /// @inheritdoc IAllocationManager
    function getAVSRegistrar(address avs) external view returns (IAVSRegistrar) {
        return _registrar[avs];
    }

    /// @inheritdoc IAllocationManager
    function isOperatorSet(OperatorSet memory operatorSet) external view returns (bool) {
        return _sets[_key(operatorSet)].exists;
    }

    /// @inheritdoc IAllocationManager
    function isMemberOfOperatorSet(address operator, OperatorSet memory operatorSet) external view returns (bool) {
        return _member[operator][_key(operatorSet)];
    }

    /// @inheritdoc IAllocationManager
    /// @dev As EigenLayer: registered, or deregistered at most `DEALLOCATION_DELAY` blocks ago.
    function isOperatorSlashable(address operator, OperatorSet memory operatorSet) external view returns (bool) {
        return _isSlashable(operator, _key(operatorSet));
    }

    /// @inheritdoc IAllocationManager
    function getStrategiesInOperatorSet(OperatorSet memory operatorSet) external view returns (IStrategy[] memory) {
        return _sets[_key(operatorSet)].strategies;
    }

    /// @inheritdoc IAllocationManager
    function getRedistributionRecipient(OperatorSet memory operatorSet) public view returns (address) {
        SetInfo storage info = _sets[_key(operatorSet)];
        return info.redistributing ? info.recipient : DEFAULT_BURN_ADDRESS;
    }

    /// @inheritdoc IAllocationManager
    function isRedistributingOperatorSet(OperatorSet memory operatorSet) external view returns (bool) {
        return _sets[_key(operatorSet)].redistributing;
    }

    /// @inheritdoc IAllocationManager
    function getSlashCount(OperatorSet memory operatorSet) external view returns (uint256) {
        return _sets[_key(operatorSet)].slashCount;
    }

    /// @inheritdoc IAllocationManager
    function getAllocation(address operator, OperatorSet memory operatorSet, IStrategy strategy)
        external
        view
        returns (Allocation memory)
    {
        (uint64 current, PendingDeallocation memory pending) = _updatedAllocation(operator, _key(operatorSet), strategy);
        return Allocation(current, -int128(uint128(pending.magnitude)), pending.effectBlock);
    }

    /// @inheritdoc IAllocationManager
    function getMaxMagnitude(address operator, IStrategy strategy) public view returns (uint64) {
        uint64 m = _maxMagnitude[operator][strategy];
        return m == 0 ? WAD : m;
    }

    /// @inheritdoc IAllocationManager
    function getAllocatedStake(
        OperatorSet memory operatorSet,
        address[] memory operators,
        IStrategy[] memory strategies
    ) public view returns (uint256[][] memory slashableStake) {
        bytes32 key = _key(operatorSet);
        slashableStake = new uint256[][](operators.length);
        for (uint256 i; i < operators.length; ++i) {
            slashableStake[i] = new uint256[](strategies.length);
            for (uint256 j; j < strategies.length; ++j) {
                slashableStake[i][j] = _allocatedStake(operators[i], key, strategies[j]);
            }
        }
    }

    /// @inheritdoc IAllocationManager
    /// @dev As EigenLayer: the allocated stake of operators the set can slash (zero for the others),
    ///      less any deallocation that takes effect by `futureBlock`.
    function getMinimumSlashableStake(
        OperatorSet memory operatorSet,
        address[] memory operators,
        IStrategy[] memory strategies,
        uint32 futureBlock
    ) external view returns (uint256[][] memory slashableStake) {
        bytes32 key = _key(operatorSet);
        slashableStake = new uint256[][](operators.length);
        for (uint256 i; i < operators.length; ++i) {
            slashableStake[i] = new uint256[](strategies.length);
            if (!_isSlashable(operators[i], key)) continue;
            for (uint256 j; j < strategies.length; ++j) {
                (uint64 magnitude, PendingDeallocation memory pending) =
                    _updatedAllocation(operators[i], key, strategies[j]);
                if (pending.effectBlock != 0 && pending.effectBlock <= futureBlock) magnitude -= pending.magnitude;
                slashableStake[i][j] = _stakeOf(operators[i], strategies[j], magnitude);
            }
        }
    }

    /*//////////////////////////////////////////////////////////////
                                internals
    //////////////////////////////////////////////////////////////*/

    function _isSlashable(address operator, bytes32 key) private view returns (bool) {
        return _member[operator][key] || block.number <= _slashableUntil[operator][key];
    }

    /// @dev Delegates `staker` to `operator` and credits the operator with the staker's deposits.
    function _delegate(address staker, address operator) private {
        _delegatedTo[staker] = operator;
        emit StakerDelegated(staker, operator);
        IStrategy[] storage strategies = _stakerStrategies[staker];
        for (uint256 i; i < strategies.length; ++i) {
            _increaseOperatorShares(operator, staker, strategies[i], _stakerShares[staker][strategies[i]]);
        }
    }

    function _increaseOperatorShares(address operator, address staker, IStrategy strategy, uint256 shares) private {
        _operatorShares[operator][strategy] += shares;
        emit OperatorSharesIncreased(operator, staker, strategy, shares);
    }

    function _key(OperatorSet memory set) private pure returns (bytes32) {
        return keccak256(abi.encode(set.avs, set.id));
    }

    function _createSet(address avs, CreateSetParams calldata p, bool redistributing, address recipient) private {
        OperatorSet memory set = OperatorSet(avs, p.operatorSetId);
        SetInfo storage info = _sets[_key(set)];
        if (info.exists) revert OperatorSetAlreadyExists();
        info.exists = true;
        info.redistributing = redistributing;
        info.recipient = recipient;
        emit OperatorSetCreated(set);
        if (redistributing) emit RedistributionAddressSet(set, recipient);
        for (uint256 i; i < p.strategies.length; ++i) {
            _addStrategy(info, set, p.strategies[i]);
        }
    }

    function _addStrategy(SetInfo storage info, OperatorSet memory set, IStrategy s) private {
        if (_inSet(info, s)) revert StrategyAlreadyInOperatorSet();
        info.strategies.push(s);
        emit StrategyAddedToOperatorSet(set, s);
    }

    function _inSet(SetInfo storage info, IStrategy s) private view returns (bool) {
        for (uint256 i; i < info.strategies.length; ++i) {
            if (info.strategies[i] == s) return true;
        }
        return false;
    }

    function _allocatedStake(address operator, bytes32 key, IStrategy s) private view returns (uint256) {
        (uint64 magnitude,) = _updatedAllocation(operator, key, s);
        return _stakeOf(operator, s, magnitude);
    }

    function _stakeOf(address operator, IStrategy s, uint64 magnitude) private view returns (uint256) {
        return _operatorShares[operator][s] * magnitude / getMaxMagnitude(operator, s);
    }

    /// @dev The current magnitude and pending deallocation, with a deallocation whose effect block
    ///      has come applied (as EigenLayer's `_getUpdatedAllocation`; storage catches up when the
    ///      queue is cleared).
    function _updatedAllocation(address operator, bytes32 key, IStrategy s)
        private
        view
        returns (uint64 current, PendingDeallocation memory pending)
    {
        current = _allocation[operator][key][s];
        pending = _pending[operator][key][s];
        if (pending.effectBlock != 0 && pending.effectBlock <= block.number) {
            current -= pending.magnitude;
            pending = PendingDeallocation(0, 0);
        }
    }

    /// @dev `magnitude` leaves the allocation in `DEALLOCATION_DELAY` + 1 blocks; slashable and
    ///      encumbered until then.
    function _startDeallocation(address operator, OperatorSet calldata set, IStrategy s, uint64 magnitude) private {
        bytes32 key = _key(set);
        uint32 effectBlock = uint32(block.number) + DEALLOCATION_DELAY + 1;
        _pending[operator][key][s] = PendingDeallocation(magnitude, effectBlock);
        _queue[operator][s].push(QueuedDeallocation(key, effectBlock));
        emit AllocationUpdated(operator, set, s, _allocation[operator][key][s] - magnitude, effectBlock);
    }

    /// @dev Completes, in order, every deallocation of `s` by `operator` whose effect block has come.
    ///      An entry whose deallocation a slash already completed finds nothing to do.
    function _clearDeallocationQueue(address operator, IStrategy s) private {
        QueuedDeallocation[] storage queue = _queue[operator][s];
        uint256 head = _queueHead[operator][s];
        for (; head < queue.length && queue[head].effectBlock <= block.number; ++head) {
            _completeDeallocation(operator, queue[head].key, s);
        }
        _queueHead[operator][s] = head;
    }

    /// @dev Applies the (operator, set, strategy) deallocation to storage if its effect block has come.
    function _completeDeallocation(address operator, bytes32 key, IStrategy s) private {
        PendingDeallocation memory pending = _pending[operator][key][s];
        if (pending.effectBlock == 0 || pending.effectBlock > block.number) return;
        _allocation[operator][key][s] -= pending.magnitude;
        encumberedMagnitude[operator][s] -= pending.magnitude;
        delete _pending[operator][key][s];
    }

    /// @dev Slashes wad of the allocation: magnitude and max magnitude fall by the same amount, so
    ///      the operator's stake in its other sets is unchanged (as in EigenLayer).
    function _slash(address operator, bytes32 key, IStrategy s, uint256 wad) private returns (uint256 slashedShares) {
        _completeDeallocation(operator, key, s);
        uint64 allocated = _allocation[operator][key][s];
        uint64 maxMag = getMaxMagnitude(operator, s);
        uint64 slashedMag = _mulWadUp(allocated, wad);
        if (slashedMag == 0) return 0;
        // As EigenLayer: a pending deallocation shrinks in proportion, so what is left after it stays
        // the slashed share of what would have been left.
        PendingDeallocation storage pending = _pending[operator][key][s];
        if (pending.effectBlock != 0) pending.magnitude -= _mulWadUp(pending.magnitude, wad);
        slashedShares = _operatorShares[operator][s] * slashedMag / maxMag;
        _allocation[operator][key][s] = allocated - slashedMag;
        encumberedMagnitude[operator][s] -= slashedMag;
        uint64 newMax = maxMag - slashedMag;
        // A fully slashed operator keeps max magnitude 1 (0 is our "never slashed" marker).
        _maxMagnitude[operator][s] = newMax == 0 ? 1 : newMax;
        _operatorShares[operator][s] -= slashedShares;
        emit MaxMagnitudeUpdated(operator, s, newMax);
        emit OperatorSharesSlashed(operator, s, slashedShares);
    }

    /// @dev Sends slash `slashId`'s pending tokens of strategy `s` to the set's recipient (shares are
    ///      1:1 with tokens here); 0 when none are pending.
    function _clear(OperatorSet calldata set, bytes32 key, uint256 slashId, IStrategy s)
        private
        returns (uint256 amount)
    {
        amount = _slashShares[key][slashId][s];
        if (amount == 0) return 0;
        delete _slashShares[key][slashId][s];
        address recipient = getRedistributionRecipient(set);
        emit BurnOrRedistributableSharesDecreased(set, slashId, s, amount);
        emit SlashedFundsSent(s, recipient, amount);
        s.underlyingToken().safeTransfer(recipient, amount);
    }

    function _requireResolved(bytes32 key, uint256 slashId) private view {
        uint256 at = _clearableAt[key][slashId];
        if (block.number < at) revert SlashNotResolved(slashId, at);
    }

    function _mulWadUp(uint64 magnitude, uint256 wad) private pure returns (uint64) {
        return uint64((uint256(magnitude) * wad + WAD - 1) / WAD);
    }
}
