// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {AvsFixture} from "./utils/AvsFixture.sol";
import {BN254} from "../src/libraries/BN254.sol";
import {IDelegationManager} from "../src/interfaces/eigenlayer/IDelegationManager.sol";
import {IAllocationManagerTypes} from "../src/interfaces/eigenlayer/IAllocationManager.sol";

/// @dev Deposits before and after becoming an operator (issue 3: earlier ones were not counted).
contract RegisterAsOperatorTest is AvsFixture {
    function testFuzz_registerAsOperator_SelfDelegatesEarlierDeposits(uint96 before, uint96 later) public {
        before = uint96(bound(before, 1, 1e27));
        later = uint96(bound(later, 1, 1e27));
        address op = _operator(1);
        _deposit(op, before);
        vm.prank(op);
        core.registerAsOperator(address(0), 0, "");
        vm.assertEq(core.delegatedTo(op), op, "self-delegated");
        vm.assertEq(core.operatorShares(op, strategy), before, "earlier deposit counted");
        _deposit(op, later);
        vm.assertEq(core.operatorShares(op, strategy), uint256(before) + later, "both deposits");
        vm.assertEq(core.stakerDepositShares(op, strategy), uint256(before) + later, "deposit shares");
    }

    /// @dev End to end: the registry records an operator's stake from deposits made before it became
    ///      an EigenLayer operator.
    function test_registerAsOperator_EarlierDepositIsRegisteredStake() public {
        address op = _operator(2);
        _deposit(op, 5 ether);
        vm.startPrank(op);
        core.registerAsOperator(address(0), 0, "");
        _allocate(op, hex"00");
        uint32[] memory ids = new uint32[](1);
        core.registerForOperatorSets(
            op, IAllocationManagerTypes.RegisterParams(address(registry), ids, _registrationData(2, op))
        );
        vm.stopPrank();
        vm.assertEq(registry.getCurrentStake(BN254.hashG1Point(_g1(2)), 0), 5 ether, "registered stake");
    }

    function test_registerAsOperator_RevertWhen_AlreadyDelegated() public {
        address op = _operator(3);
        vm.startPrank(op);
        core.registerAsOperator(address(0), 0, "");
        vm.expectRevert(abi.encodeWithSignature("AlreadyDelegated()"));
        core.registerAsOperator(address(0), 0, "");
        vm.stopPrank();
    }

    function _deposit(address staker, uint256 amount) internal {
        token.mint(staker, amount);
        vm.startPrank(staker);
        token.approve(address(core), amount);
        core.depositIntoStrategy(strategy, token, amount);
        vm.stopPrank();
    }
}

contract DelegateToTest is AvsFixture {
    function testFuzz_delegateTo_MovesEarlierDeposits(uint96 amount) public {
        amount = uint96(bound(amount, 1, 1e27));
        address op = _operator(1);
        address staker = address(0xA11CE);
        vm.prank(op);
        core.registerAsOperator(address(0), 0, "");
        token.mint(staker, amount);
        vm.startPrank(staker);
        token.approve(address(core), amount);
        core.depositIntoStrategy(strategy, token, amount);
        vm.assertEq(core.operatorShares(op, strategy), 0, "not delegated yet");
        core.delegateTo(op, IDelegationManager.SignatureWithExpiry("", 0), bytes32(0));
        vm.stopPrank();
        vm.assertEq(core.operatorShares(op, strategy), amount, "delegated with the delegation");
    }
}
