// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {AvsFixture} from "./utils/AvsFixture.sol";
import {Test} from "./utils/Test.sol";
import {OperatorRegistry} from "../src/OperatorRegistry.sol";
import {TestToken} from "../src/tokens/TestToken.sol";

/// @dev Slashes registered operators through the AVS with fuzzed wads.
contract SlashHandler is Test {
    OperatorRegistry internal immutable registry;
    address[] internal operators;
    uint256 public totalSlashed;

    constructor(OperatorRegistry registry_, address[] memory operators_) {
        registry = registry_;
        operators = operators_;
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
        handler = new SlashHandler(registry, ops);
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

    function invariant_sharesBackedByTokens() public view {
        uint256 shares;
        for (uint256 sk = 1; sk <= 4; ++sk) {
            shares += core.operatorShares(_operator(sk), strategy);
        }
        vm.assertEq(shares, token.balanceOf(address(core)), "shares == tokens held");
    }
}
