// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {LocalStrategy} from "../../src/core/LocalStrategy.sol";

/// @notice A strategy whose share is worth `numerator / denominator` tokens (an LST's rate), or that
///         reports another underlying token once told to (a quorum holding a strategy of another
///         token than the pool's asset). The local core still moves shares 1:1 with tokens: only what
///         the fault manager reads of a strategy changes.
contract RateStrategy is LocalStrategy {
    uint256 public numerator = 1;
    uint256 public denominator = 1;
    IERC20 private immutable _real;
    IERC20 private _reported;
    bool public broken; // its views revert, as a paused LST's may

    constructor(IERC20 token) LocalStrategy(token) {
        _real = token;
    }

    function setRate(uint256 numerator_, uint256 denominator_) external {
        (numerator, denominator) = (numerator_, denominator_);
    }

    function reportToken(IERC20 token) external {
        _reported = token;
    }

    function setBroken(bool broken_) external {
        broken = broken_;
    }

    function underlyingToken() external view override returns (IERC20) {
        require(!broken, "paused");
        return address(_reported) != address(0) ? _reported : _real;
    }

    function sharesToUnderlyingView(uint256 amountShares) external view override returns (uint256) {
        require(!broken, "paused");
        return amountShares * numerator / denominator;
    }
}
