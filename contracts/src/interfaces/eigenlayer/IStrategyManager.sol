// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {IStrategy} from "./IStrategy.sol";
import {OperatorSet} from "./IAllocationManager.sol";

/// @title IStrategyManager (the subset the AVS calls)
/// @notice EigenLayer's StrategyManager, with EigenLayer's own signatures (ELIP-006, redistributable
///         slashing). A slash only marks the slashed shares as burnable or redistributable; a
///         second, permissionless call moves their tokens out to the operator set's redistribution
///         recipient (or burns them), so that a failing token transfer can never fail the slash.
interface IStrategyManager {
    /// @notice Shares marked for burning or redistribution by slash `slashId` of `operatorSet`.
    event BurnOrRedistributableSharesIncreased(
        OperatorSet operatorSet, uint256 slashId, IStrategy strategy, uint256 shares
    );
    /// @notice Marked shares converted and sent to the redistribution recipient (or burned).
    event BurnOrRedistributableSharesDecreased(
        OperatorSet operatorSet, uint256 slashId, IStrategy strategy, uint256 shares
    );

    /// @notice Sends the tokens of every strategy of slash `slashId` to the redistribution
    ///         recipient. Permissionless.
    /// @return The amounts of tokens sent, per strategy still pending.
    function clearBurnOrRedistributableShares(OperatorSet calldata operatorSet, uint256 slashId)
        external
        returns (uint256[] memory);

    /// @notice As `clearBurnOrRedistributableShares`, for one strategy.
    /// @return The amount of tokens sent.
    function clearBurnOrRedistributableSharesByStrategy(
        OperatorSet calldata operatorSet,
        uint256 slashId,
        IStrategy strategy
    ) external returns (uint256);

    /// @notice The strategies and shares of slash `slashId` not sent out yet.
    function getBurnOrRedistributableShares(OperatorSet calldata operatorSet, uint256 slashId)
        external
        view
        returns (IStrategy[] memory, uint256[] memory);
}
