// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {AvsFixture} from "./utils/AvsFixture.sol";
import {Test} from "./utils/Test.sol";
import {OperatorRegistry} from "../src/OperatorRegistry.sol";
import {TestToken} from "../src/tokens/TestToken.sol";
import {LocalRestakingCore} from "../src/core/LocalRestakingCore.sol";
import {IAllocationManagerTypes, OperatorSet} from "../src/interfaces/eigenlayer/IAllocationManager.sol";
import {IStrategy} from "../src/interfaces/eigenlayer/IStrategy.sol";

/// @dev Slashes registered operators through the AVS with fuzzed wads, while they deallocate
///      (pending for the deallocation delay) and blocks pass.
contract SlashHandler is Test {
    OperatorRegistry internal immutable registry;
    LocalRestakingCore internal immutable core;
    IStrategy internal immutable strategy;
    address[] internal operators;
    uint256 public totalSlashed;

    constructor(
        OperatorRegistry registry_,
        LocalRestakingCore core_,
        IStrategy strategy_,
        address[] memory operators_
    ) {
        registry = registry_;
        core = core_;
        strategy = strategy_;
        operators = operators_;
    }

    function deallocate(uint256 who, uint64 magnitude) external {
        address op = operators[who % operators.length];
        OperatorSet memory set = OperatorSet(address(registry), 0);
        IAllocationManagerTypes.Allocation memory a = core.getAllocation(op, set, strategy);
        if (a.pendingDiff != 0 || a.currentMagnitude == 0) return; // one pending change at a time
        IAllocationManagerTypes.AllocateParams[] memory params = new IAllocationManagerTypes.AllocateParams[](1);
        IStrategy[] memory strategies = new IStrategy[](1);
        strategies[0] = strategy;
        uint64[] memory magnitudes = new uint64[](1);
        magnitudes[0] = uint64(bound(magnitude, 0, a.currentMagnitude - 1));
        params[0] = IAllocationManagerTypes.AllocateParams(set, strategies, magnitudes);
        vm.prank(op);
        core.modifyAllocations(op, params);
    }

    function roll(uint256 blocks) external {
        vm.roll(block.number + bound(blocks, 0, 2 * uint256(core.DEALLOCATION_DELAY())));
    }

    function slash(uint256 who, uint256 wad) external {
        wad = bound(wad, 1, 1e18);
        uint256[] memory shares = registry.slashOperator(operators[who % operators.length], 0, wad, "invariant");
        totalSlashed += shares[0];
    }
}

/// @notice Money path of slashing: every slashed token reaches the redistribution recipient, none
///         is created or lost, and an operator is never slashed below zero.
contract SlashingInvariantTest is AvsFixture {
    SlashHandler internal handler;
    uint256 internal constant DEPOSITED = 4 * 10 ether;

    function setUp() public override {
        super.setUp();
        address[] memory ops = new address[](4);
        for (uint256 sk = 1; sk <= 4; ++sk) {
            _register(sk, 10 ether, hex"00");
            ops[sk - 1] = _operator(sk);
        }
        handler = new SlashHandler(registry, core, strategy, ops);
        registry.setSlasher(address(handler), true);
    }

    function targetContracts() public view returns (address[] memory t) {
        t = new address[](1);
        t[0] = address(handler);
    }

    function invariant_slashedFundsConserved() public view {
        vm.assertEq(token.balanceOf(RECIPIENT), handler.totalSlashed(), "recipient got every slashed token");
        vm.assertEq(token.balanceOf(address(core)) + token.balanceOf(RECIPIENT), DEPOSITED, "no tokens created/lost");
    }

    /// @dev What is allocated (a pending deallocation included) is encumbered, and no more than the
    ///      operator's max magnitude; a pending deallocation never exceeds its allocation.
    function invariant_magnitudesConsistent() public view {
        for (uint256 sk = 1; sk <= 4; ++sk) {
            address op = _operator(sk);
            IAllocationManagerTypes.Allocation memory a =
                core.getAllocation(op, OperatorSet(address(registry), 0), strategy);
            vm.assertLe(uint256(-int256(a.pendingDiff)), a.currentMagnitude, "pending within the allocation");
            vm.assertLe(a.currentMagnitude, core.encumberedMagnitude(op, strategy), "allocated is encumbered");
            vm.assertLe(core.encumberedMagnitude(op, strategy), core.getMaxMagnitude(op, strategy), "within max");
        }
    }

    function invariant_sharesBackedByTokens() public view {
        uint256 shares;
        for (uint256 sk = 1; sk <= 4; ++sk) {
            shares += core.operatorShares(_operator(sk), strategy);
        }
        vm.assertEq(shares, token.balanceOf(address(core)), "shares == tokens held");
    }
}
