// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {IStrategy} from "../interfaces/eigenlayer/IStrategy.sol";

/// @title StrategyOrder
/// @notice The order of an operator set's strategies in a slash: EigenLayer's `SlashingParams`
///         require them strictly ascending by address, and `slashOperator` returns the shares slashed
///         in that order (so whoever reads the shares sorts the set's strategies the same way).
library StrategyOrder {
    /// @notice Sorts `strategies` ascending by address, in place (insertion sort: a set holds few).
    function sortAscending(IStrategy[] memory strategies) internal pure returns (IStrategy[] memory) {
        for (uint256 i = 1; i < strategies.length; ++i) {
            IStrategy key = strategies[i];
            uint256 j = i;
            while (j > 0 && address(strategies[j - 1]) > address(key)) {
                strategies[j] = strategies[j - 1];
                --j;
            }
            strategies[j] = key;
        }
        return strategies;
    }
}
