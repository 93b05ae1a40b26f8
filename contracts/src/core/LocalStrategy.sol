// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IStrategy} from "../interfaces/eigenlayer/IStrategy.sol";

/// @title LocalStrategy — LOCAL DEVNET/TEST ONLY, not EigenLayer code
/// @notice A strategy handle of the local restaking core: names a token. Tokens are held by the
///         core; shares are 1:1 with tokens.
contract LocalStrategy is IStrategy {
    IERC20 private immutable _token;

    /// @param token The underlying token.
    constructor(IERC20 token) {
        _token = token;
    }

    /// @inheritdoc IStrategy
    function underlyingToken() external view virtual returns (IERC20) {
        return _token;
    }

    /// @inheritdoc IStrategy
    function sharesToUnderlyingView(uint256 amountShares) external view virtual returns (uint256) {
        return amountShares;
    }
}
