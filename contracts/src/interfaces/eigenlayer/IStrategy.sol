// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title IStrategy (EigenLayer core, the subset the AVS reads)
/// @notice Same signatures as EigenLayer's `IStrategy`.
interface IStrategy {
    /// @notice The token this strategy holds.
    function underlyingToken() external view returns (IERC20);

    /// @notice The amount of underlying token `amountShares` shares are worth now.
    function sharesToUnderlyingView(uint256 amountShares) external view returns (uint256);
}
