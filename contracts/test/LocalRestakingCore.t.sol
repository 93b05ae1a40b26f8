// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {AvsFixture} from "./utils/AvsFixture.sol";
import {BN254} from "../src/libraries/BN254.sol";
import {IDelegationManager} from "../src/interfaces/eigenlayer/IDelegationManager.sol";
import {
    IAllocationManagerErrors,
    IAllocationManagerEvents,
    IAllocationManagerTypes,
    OperatorSet
} from "../src/interfaces/eigenlayer/IAllocationManager.sol";
import {IStrategy} from "../src/interfaces/eigenlayer/IStrategy.sol";

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

/// @dev EigenLayer's deallocation delay: what an operator takes out of a set it can be slashed by
///      stays slashable for DEALLOCATION_DELAY + 1 blocks.
contract ModifyAllocationsTest is AvsFixture {
    uint64 internal constant WAD = 1e18;

    function test_modifyAllocations_DeallocationWaitsForTheDelay() public {
        _register(1, 10 ether, hex"00");
        address op = _operator(1);
        uint32 effect = uint32(block.number) + DEALLOCATION_DELAY_BLOCKS + 1;
        vm.expectEmit();
        emit IAllocationManagerEvents.AllocationUpdated(op, _set(0), strategy, 0.4e18, effect);
        _setMagnitude(op, 0, 0.4e18);
        IAllocationManagerTypes.Allocation memory a = core.getAllocation(op, _set(0), strategy);
        vm.assertEq(a.currentMagnitude, WAD, "still allocated");
        vm.assertEq(a.pendingDiff, -0.6e18, "pending");
        vm.assertEq(a.effectBlock, effect, "effect block");
        vm.assertEq(_slashable(op, 0, effect - 1), 10 ether, "slashable in full until the effect block");
        vm.assertEq(_slashable(op, 0, effect), 4 ether, "what is left from the effect block");
        vm.assertEq(core.encumberedMagnitude(op, strategy), WAD, "encumbered until done");
        // Nothing free to allocate elsewhere while the deallocation waits.
        vm.expectRevert(IAllocationManagerErrors.InsufficientMagnitude.selector);
        _setMagnitude(op, 1, 0.1e18);

        vm.roll(effect - 1);
        vm.assertEq(_allocated(op, 0), 10 ether, "one block before");
        vm.roll(effect);
        vm.assertEq(_allocated(op, 0), 4 ether, "deallocated");
        a = core.getAllocation(op, _set(0), strategy);
        vm.assertEq(a.pendingDiff, 0, "nothing pending");
        _setMagnitude(op, 1, 0.6e18); // the freed magnitude can go elsewhere
        vm.assertEq(core.encumberedMagnitude(op, strategy), WAD, "0.4 + 0.6");
    }

    function test_modifyAllocations_RevertWhen_ModificationAlreadyPending() public {
        _register(1, 10 ether, hex"00");
        _setMagnitude(_operator(1), 0, 0.5e18);
        vm.expectRevert(IAllocationManagerErrors.ModificationAlreadyPending.selector);
        _setMagnitude(_operator(1), 0, 0.2e18);
        vm.expectRevert(IAllocationManagerErrors.ModificationAlreadyPending.selector);
        _setMagnitude(_operator(1), 0, WAD); // not even back up
    }

    /// @dev Not a member of the set, or left it more than DEALLOCATION_DELAY blocks ago: at once.
    function test_modifyAllocations_DeallocatesAtOnceWhenNotSlashable() public {
        _register(1, 10 ether, hex"00");
        address op = _operator(1);
        uint32[] memory sets = new uint32[](1);
        vm.prank(op);
        core.deregisterFromOperatorSets(IAllocationManagerTypes.DeregisterParams(op, address(registry), sets));
        _setMagnitude(op, 0, 0.5e18); // still slashable after leaving: waits
        vm.assertEq(_allocated(op, 0), 10 ether, "waits while slashable");
        vm.roll(block.number + DEALLOCATION_DELAY_BLOCKS + 1);
        vm.assertEq(core.isOperatorSlashable(op, _set(0)), false, "no longer slashable");
        _setMagnitude(op, 0, 0.2e18); // the first one is done; this one is at once
        vm.assertEq(_allocated(op, 0), 2 ether, "at once");
        vm.assertEq(core.encumberedMagnitude(op, strategy), 0.2e18, "freed at once");
    }

    /// @dev A slash during a pending deallocation takes wad of the whole current allocation and
    ///      shrinks the pending part in proportion, so wad of what was to be left is gone too.
    function testFuzz_slashOperator_ShrinksAPendingDeallocation(uint256 wad, uint64 keep) public {
        wad = bound(wad, 1, WAD);
        keep = uint64(bound(keep, 0, WAD - 1));
        _register(1, 10 ether, hex"00");
        address op = _operator(1);
        registry.setSlasher(address(this), true);
        _setMagnitude(op, 0, keep);
        uint256[] memory shares = registry.slashOperator(op, 0, wad, "during a deallocation");
        vm.assertEq(shares[0], 10 ether * ((WAD * wad + WAD - 1) / WAD) / WAD, "wad of the whole allocation");
        vm.roll(block.number + DEALLOCATION_DELAY_BLOCKS + 1);
        uint64 left = core.getAllocation(op, _set(0), strategy).currentMagnitude;
        vm.assertApproxEqAbs(left, uint256(keep) * (WAD - wad) / WAD, 1, "wad of what was to be left");
        _setMagnitude(op, 1, 0); // clears the queue
        vm.assertEq(core.encumberedMagnitude(op, strategy), left, "encumbered = what is allocated");
        vm.assertLe(left, core.getMaxMagnitude(op, strategy), "within the max magnitude");
    }

    function _set(uint8 quorum) internal view returns (OperatorSet memory) {
        return OperatorSet(address(registry), quorum);
    }

    function _setMagnitude(address op, uint8 quorum, uint64 magnitude) internal {
        IAllocationManagerTypes.AllocateParams[] memory a = new IAllocationManagerTypes.AllocateParams[](1);
        IStrategy[] memory strategies = new IStrategy[](1);
        strategies[0] = strategy;
        uint64[] memory mags = new uint64[](1);
        mags[0] = magnitude;
        a[0] = IAllocationManagerTypes.AllocateParams(_set(quorum), strategies, mags);
        vm.prank(op);
        core.modifyAllocations(op, a);
    }

    function _one(address op) internal pure returns (address[] memory ops) {
        ops = new address[](1);
        ops[0] = op;
    }

    function _strategies() internal view returns (IStrategy[] memory s) {
        s = new IStrategy[](1);
        s[0] = strategy;
    }

    function _allocated(address op, uint8 quorum) internal view returns (uint256) {
        return core.getAllocatedStake(_set(quorum), _one(op), _strategies())[0][0];
    }

    function _slashable(address op, uint8 quorum, uint32 futureBlock) internal view returns (uint256) {
        return core.getMinimumSlashableStake(_set(quorum), _one(op), _strategies(), futureBlock)[0][0];
    }
}
