// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {AvsFixture} from "./utils/AvsFixture.sol";
import {IAllocationManagerTypes} from "../src/interfaces/eigenlayer/IAllocationManager.sol";
import {IOperatorRegistryTypes, IOperatorRegistryErrors} from "../src/interfaces/IOperatorRegistry.sol";

/// @dev A quorum's total stake is a uint96: each operator's weight is capped so that the total of
///      `MAX_QUORUM_OPERATORS` members fits, and a stake that grows cannot overflow it (which reverted
///      every refresh, registration and slash of the quorum; found in review).
contract StakeWeightCapTest is AvsFixture {
    uint32 internal constant MAX_QUORUM_OPERATORS = 1024; // OperatorRegistry's
    uint96 internal constant MAX_OPERATOR_WEIGHT = type(uint96).max / MAX_QUORUM_OPERATORS;
    uint256 internal constant OPERATOR_COUNT_SLOT = 6; // `forge inspect OperatorRegistry storage-layout`

    function _deposit(uint256 sk, uint256 amount) internal {
        address op = _operator(sk);
        token.mint(op, amount);
        vm.startPrank(op);
        token.approve(address(core), amount);
        core.depositIntoStrategy(strategy, token, amount);
        vm.stopPrank();
    }

    function test_aHugeStakeCountsAtTheCap() public {
        _register(1, uint256(type(uint96).max) * 4, hex"00");
        uint96 cap = MAX_OPERATOR_WEIGHT;
        vm.assertEq(uint256(registry.getCurrentTotalStake(0)), uint256(cap), "capped");
        _register(2, 5 ether, hex"00"); // others still join
        vm.assertEq(uint256(registry.getCurrentTotalStake(0)), uint256(cap) + 5 ether, "both counted");
    }

    function test_growingHugeStakesRefreshAndSlash() public {
        uint96 cap = MAX_OPERATOR_WEIGHT;
        _register(1, cap, hex"00");
        _register(2, cap - 10 ether, hex"00");
        _deposit(2, 20 ether);
        _deposit(1, uint256(cap));
        vm.roll(block.number + 1);
        address[] memory ops = new address[](2);
        (ops[0], ops[1]) = (_operator(1), _operator(2));
        registry.updateOperatorsForQuorum(0, ops);
        vm.assertEq(uint256(registry.getCurrentTotalStake(0)), 2 * uint256(cap), "both at the cap");
        registry.setSlasher(address(this), true);
        registry.slashOperator(_operator(1), 0, 0.5e18, "fraud");
    }

    function testFuzz_theQuorumTotalNeverOverflows(uint256 a, uint256 b, uint256 c) public {
        a = bound(a, 1 ether, uint256(type(uint96).max) * 2);
        b = bound(b, 1 ether, uint256(type(uint96).max) * 2);
        c = bound(c, 1, uint256(type(uint96).max));
        _register(1, a, hex"00");
        _register(2, b, hex"00");
        _deposit(1, c);
        vm.roll(block.number + 1);
        address[] memory ops = new address[](2);
        (ops[0], ops[1]) = (_operator(1), _operator(2));
        registry.updateOperatorsForQuorum(0, ops);
        vm.assertLe(uint256(registry.getCurrentTotalStake(0)), 2 * uint256(MAX_OPERATOR_WEIGHT), "fits");
    }

    function test_aQuorumTakesNoMoreThanTheMostOperators() public {
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(MAX_QUORUM_OPERATORS + 100, 1 ether));
        bytes32 countSlot = keccak256(abi.encode(uint256(0), uint256(OPERATOR_COUNT_SLOT)));
        vm.store(address(registry), countSlot, bytes32(uint256(MAX_QUORUM_OPERATORS)));
        vm.assertEq(uint256(registry.operatorCount(0)), MAX_QUORUM_OPERATORS, "the storage layout's slot");
        address op = _operator(1);
        _fund(op, 5 ether);
        bytes memory data = _registrationData(1, op);
        uint32[] memory ids = new uint32[](1);
        vm.prank(op);
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.MaxOperatorsReached.selector, uint8(0)));
        core.registerForOperatorSets(op, IAllocationManagerTypes.RegisterParams(address(registry), ids, data));
    }
}
