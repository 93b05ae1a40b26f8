// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {IStrategy} from "./IStrategy.sol";
import {IAVSRegistrar} from "./IAVSRegistrar.sol";

/// @notice EigenLayer's `OperatorSet` (libraries/OperatorSetLib.sol): an AVS and a set id.
struct OperatorSet {
    address avs;
    uint32 id;
}

/// @title IAllocationManagerTypes (EigenLayer core)
/// @notice The structs of EigenLayer's AllocationManager, field for field.
interface IAllocationManagerTypes {
    /// @notice An operator's allocation of magnitude to an operator set for one strategy.
    struct Allocation {
        uint64 currentMagnitude;
        int128 pendingDiff;
        uint32 effectBlock;
    }

    /// @notice New magnitudes for `strategies` in `operatorSet`.
    struct AllocateParams {
        OperatorSet operatorSet;
        IStrategy[] strategies;
        uint64[] newMagnitudes;
    }

    /// @notice What an AVS slashes: `wadsToSlash[i]` (1e18 = all) of the operator's allocation to the
    ///         set for `strategies[i]`; strategies must be in ascending address order.
    struct SlashingParams {
        address operator;
        uint32 operatorSetId;
        IStrategy[] strategies;
        uint256[] wadsToSlash;
        string description;
    }

    /// @notice An operator leaving operator sets of an AVS.
    struct DeregisterParams {
        address operator;
        address avs;
        uint32[] operatorSetIds;
    }

    /// @notice An operator joining operator sets of an AVS, with AVS-specific `data`.
    struct RegisterParams {
        address avs;
        uint32[] operatorSetIds;
        bytes data;
    }

    /// @notice A new operator set and its strategies.
    struct CreateSetParams {
        uint32 operatorSetId;
        IStrategy[] strategies;
    }
}

/// @title IAllocationManagerErrors (EigenLayer core)
interface IAllocationManagerErrors {
    /// @notice The caller may not act for this AVS or operator.
    error InvalidCaller();
    /// @notice The address is not a registered operator.
    error InvalidOperator();
    /// @notice The operator set does not exist.
    error InvalidOperatorSet();
    /// @notice The operator set already exists.
    error OperatorSetAlreadyExists();
    /// @notice The operator is already a member of the set.
    error AlreadyMemberOfSet();
    /// @notice The operator is not a member of the set.
    error NotMemberOfSet();
    /// @notice The operator is not slashable by the set.
    error OperatorNotSlashable();
    /// @notice A wad to slash is zero or above 1e18.
    error InvalidWadToSlash();
    /// @notice The new allocations exceed the operator's magnitude.
    error InsufficientMagnitude();
    /// @notice Strategies must be given in strictly ascending address order.
    error StrategiesMustBeInAscendingOrder();
    /// @notice The strategy is not part of the operator set.
    error StrategyNotInOperatorSet();
    /// @notice The strategy is already part of the operator set.
    error StrategyAlreadyInOperatorSet();
    /// @notice Parallel arrays differ in length.
    error InputArrayLengthMismatch();
    /// @notice A redistribution recipient is zero or the burn address.
    error InvalidRedistributionRecipient();
    /// @notice The AVS has no registrar, or it does not support the AVS.
    error InvalidAVSRegistrar();
    /// @notice The allocation already has a pending change (a deallocation waiting for its delay).
    error ModificationAlreadyPending();
}

/// @title IAllocationManagerEvents (EigenLayer core)
interface IAllocationManagerEvents is IAllocationManagerTypes {
    /// @notice Emitted when an AVS updates its metadata URI (also how an AVS announces itself).
    event AVSMetadataURIUpdated(address indexed avs, string metadataURI);
    /// @notice Emitted when an AVS sets its registrar.
    event AVSRegistrarSet(address avs, IAVSRegistrar registrar);
    /// @notice Emitted when an operator set is created.
    event OperatorSetCreated(OperatorSet operatorSet);
    /// @notice Emitted when a redistributing operator set gets its recipient.
    event RedistributionAddressSet(OperatorSet operatorSet, address redistributionRecipient);
    /// @notice Emitted when a strategy is added to an operator set.
    event StrategyAddedToOperatorSet(OperatorSet operatorSet, IStrategy strategy);
    /// @notice Emitted when an operator joins an operator set.
    event OperatorAddedToOperatorSet(address indexed operator, OperatorSet operatorSet);
    /// @notice Emitted when an operator leaves an operator set.
    event OperatorRemovedFromOperatorSet(address indexed operator, OperatorSet operatorSet);
    /// @notice Emitted when an allocation changes.
    event AllocationUpdated(
        address operator, OperatorSet operatorSet, IStrategy strategy, uint64 magnitude, uint32 effectBlock
    );
    /// @notice Emitted when an operator's max magnitude changes (on slashing).
    event MaxMagnitudeUpdated(address operator, IStrategy strategy, uint64 maxMagnitude);
    /// @notice Emitted when an operator is slashed.
    event OperatorSlashed(
        address operator, OperatorSet operatorSet, IStrategy[] strategies, uint256[] wadSlashed, string description
    );
}

/// @title IAllocationManager (EigenLayer core, the functions the AVS and devnet call)
/// @notice Signatures are EigenLayer's AllocationManager (slashing + redistribution release). The AVS
///         contracts only call this interface; on a real network it is EigenLayer's deployment.
interface IAllocationManager is IAllocationManagerErrors, IAllocationManagerEvents {
    /// @notice Slashes `params.operator` in operator set (`avs`, `params.operatorSetId`). Called by the AVS.
    /// @return slashId The per-set slash counter after this slash.
    /// @return shares The shares slashed, per strategy.
    function slashOperator(address avs, SlashingParams calldata params)
        external
        returns (uint256 slashId, uint256[] memory shares);

    /// @notice Sets `operator`'s magnitudes for operator sets.
    function modifyAllocations(address operator, AllocateParams[] calldata params) external;

    /// @notice Registers `operator` for operator sets of `params.avs`; calls the AVS's registrar.
    function registerForOperatorSets(address operator, RegisterParams calldata params) external;

    /// @notice Deregisters `params.operator` from operator sets; calls the AVS's registrar.
    function deregisterFromOperatorSets(DeregisterParams calldata params) external;

    /// @notice Sets the registrar the AllocationManager calls for `avs`.
    function setAVSRegistrar(address avs, IAVSRegistrar registrar) external;

    /// @notice Updates (and first announces) the metadata URI of `avs`.
    function updateAVSMetadataURI(address avs, string calldata metadataURI) external;

    /// @notice Creates operator sets whose slashed funds are burned.
    function createOperatorSets(address avs, CreateSetParams[] calldata params) external;

    /// @notice Creates operator sets whose slashed funds go to `redistributionRecipients[i]`.
    function createRedistributingOperatorSets(
        address avs,
        CreateSetParams[] calldata params,
        address[] calldata redistributionRecipients
    ) external;

    /// @notice Adds strategies to an operator set.
    function addStrategiesToOperatorSet(address avs, uint32 operatorSetId, IStrategy[] calldata strategies) external;

    /// @notice The AVS's registrar.
    function getAVSRegistrar(address avs) external view returns (IAVSRegistrar);

    /// @notice Whether the operator set exists.
    function isOperatorSet(OperatorSet memory operatorSet) external view returns (bool);

    /// @notice Whether `operator` is registered in `operatorSet`.
    function isMemberOfOperatorSet(address operator, OperatorSet memory operatorSet) external view returns (bool);

    /// @notice Whether `operator` can be slashed by `operatorSet` now.
    function isOperatorSlashable(address operator, OperatorSet memory operatorSet) external view returns (bool);

    /// @notice Blocks for which an operator stays slashable by a set after deregistering from it, and
    ///         a deallocation takes to take effect (a public immutable of EigenLayer's AllocationManager).
    function DEALLOCATION_DELAY() external view returns (uint32);

    /// @notice The strategies of `operatorSet`.
    function getStrategiesInOperatorSet(OperatorSet memory operatorSet) external view returns (IStrategy[] memory);

    /// @notice Where slashed funds of `operatorSet` go (EigenLayer's burn address if it does not redistribute).
    function getRedistributionRecipient(OperatorSet memory operatorSet) external view returns (address);

    /// @notice Whether `operatorSet` redistributes slashed funds.
    function isRedistributingOperatorSet(OperatorSet memory operatorSet) external view returns (bool);

    /// @notice How many times operators of `operatorSet` were slashed.
    function getSlashCount(OperatorSet memory operatorSet) external view returns (uint256);

    /// @notice `operator`'s allocation to `operatorSet` for `strategy`.
    function getAllocation(address operator, OperatorSet memory operatorSet, IStrategy strategy)
        external
        view
        returns (Allocation memory);

    /// @notice `operator`'s max magnitude for `strategy` (1e18 until slashed).
    function getMaxMagnitude(address operator, IStrategy strategy) external view returns (uint64);

    /// @notice The stake of each operator and strategy allocated to `operatorSet` now.
    function getAllocatedStake(OperatorSet memory operatorSet, address[] memory operators, IStrategy[] memory strategies)
        external
        view
        returns (uint256[][] memory slashableStake);

    /// @notice The least stake each operator and strategy will have slashable by `operatorSet` up to `futureBlock`.
    function getMinimumSlashableStake(
        OperatorSet memory operatorSet,
        address[] memory operators,
        IStrategy[] memory strategies,
        uint32 futureBlock
    ) external view returns (uint256[][] memory slashableStake);
}
