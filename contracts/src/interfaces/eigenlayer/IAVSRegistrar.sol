// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

/// @title IAVSRegistrar (EigenLayer core)
/// @notice The callback the AllocationManager makes into an AVS when an operator registers for or
///         deregisters from its operator sets. Same signatures as EigenLayer's `IAVSRegistrar`.
interface IAVSRegistrar {
    /// @notice Called by the AllocationManager when `operator` registers for `operatorSetIds` of `avs`.
    /// @param data Opaque AVS-specific registration data (here: socket and BLS key registration).
    function registerOperator(address operator, address avs, uint32[] calldata operatorSetIds, bytes calldata data)
        external;

    /// @notice Called by the AllocationManager when `operator` leaves `operatorSetIds` of `avs`.
    function deregisterOperator(address operator, address avs, uint32[] calldata operatorSetIds) external;

    /// @notice Whether this registrar serves `avs`.
    function supportsAVS(address avs) external view returns (bool);
}
