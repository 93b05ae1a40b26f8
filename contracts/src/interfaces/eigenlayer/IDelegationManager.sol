// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {IStrategy} from "./IStrategy.sol";

/// @title IDelegationManager (EigenLayer core, the subset the AVS and devnet use)
/// @notice Function signatures are EigenLayer's `IDelegationManager`.
interface IDelegationManager {
    /// @notice EigenLayer's `ISignatureUtilsMixinTypes.SignatureWithExpiry`.
    struct SignatureWithExpiry {
        bytes signature;
        uint256 expiry;
    }

    /// @notice Emitted when an address becomes an operator.
    event OperatorRegistered(address indexed operator, address delegationApprover);
    /// @notice Emitted when a staker delegates to an operator.
    event StakerDelegated(address indexed staker, address indexed operator);
    /// @notice Emitted when an operator's delegated shares grow.
    event OperatorSharesIncreased(address indexed operator, address staker, IStrategy strategy, uint256 shares);
    /// @notice Emitted when an operator's delegated shares are slashed.
    event OperatorSharesSlashed(address indexed operator, IStrategy strategy, uint256 totalSlashedShares);

    /// @notice Registers the caller as an operator (delegated to itself).
    function registerAsOperator(address initDelegationApprover, uint32 allocationDelay, string calldata metadataURI)
        external;

    /// @notice Delegates the caller's shares to `operator`.
    function delegateTo(address operator, SignatureWithExpiry memory approverSignatureAndExpiry, bytes32 approverSalt)
        external;

    /// @notice Whether `operator` is a registered operator.
    function isOperator(address operator) external view returns (bool);

    /// @notice Whether `staker` is delegated to some operator.
    function isDelegated(address staker) external view returns (bool);

    /// @notice The operator `staker` is delegated to (zero if none).
    function delegatedTo(address staker) external view returns (address);

    /// @notice Shares of `strategy` delegated to `operator`.
    function operatorShares(address operator, IStrategy strategy) external view returns (uint256);

    /// @notice Shares of each of `strategies` delegated to `operator`.
    function getOperatorShares(address operator, IStrategy[] memory strategies)
        external
        view
        returns (uint256[] memory);

    /// @notice Shares of each of `strategies` delegated to each of `operators`.
    function getOperatorsShares(address[] memory operators, IStrategy[] memory strategies)
        external
        view
        returns (uint256[][] memory);
}
