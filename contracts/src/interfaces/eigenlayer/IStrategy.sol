// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @title IStrategy (EigenLayer core, the subset the AVS reads)
/// @notice Same signature as EigenLayer's `IStrategy.underlyingToken`.
interface IStrategy {
    /// @notice The token this strategy holds.
    function underlyingToken() external view returns (IERC20);
}
