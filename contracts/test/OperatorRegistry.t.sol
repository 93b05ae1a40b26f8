// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {AvsFixture} from "./utils/AvsFixture.sol";
import {Vm} from "./utils/Test.sol";
import {IStrategy} from "../src/interfaces/eigenlayer/IStrategy.sol";
import {BN254} from "../src/libraries/BN254.sol";
import {
    IOperatorRegistryTypes,
    IOperatorRegistryErrors,
    IOperatorRegistryEvents
} from "../src/interfaces/IOperatorRegistry.sol";
import {IStrategyManager} from "../src/interfaces/eigenlayer/IStrategyManager.sol";
import {
    IAllocationManagerTypes,
    IAllocationManagerErrors,
    OperatorSet
} from "../src/interfaces/eigenlayer/IAllocationManager.sol";

contract RegisterOperatorTest is AvsFixture {
    using BN254 for BN254.G1Point;

    function test_registerOperator_RecordsKeyStakeApkSocket() public {
        _register(3, 5 ether, hex"00");
        bytes32 id = BN254.hashG1Point(_g1(3));
        vm.assertEq(registry.getOperatorId(_operator(3)), id, "id");
        vm.assertEq(registry.getOperatorFromId(id), _operator(3), "reverse id");
        vm.assertEq(registry.getCurrentStake(id, 0), 5 ether, "stake");
        vm.assertEq(registry.getCurrentTotalStake(0), 5 ether, "total");
        vm.assertEq(registry.getApk(0).X, _g1(3).X, "apk");
        vm.assertEq(registry.getCurrentQuorumBitmap(id), 1, "bitmap");
        vm.assertEq(registry.operatorSocket(id), "grpc://operator.example:50051", "socket");
        vm.assertEq(registry.operatorCount(0), 1, "count");
    }

    function test_registerOperator_HistoryAtPastBlock() public {
        vm.roll(block.number + 1); // after the quorum's creation block
        _register(1, 5 ether, hex"00");
        uint32 first = uint32(block.number);
        vm.roll(block.number + 5);
        _register(2, 7 ether, hex"00");
        vm.roll(block.number + 1);
        vm.assertEq(registry.getTotalStakeAtBlockNumberFromIndex(0, first, 1), 5 ether, "total at first");
        vm.assertEq(registry.getTotalStakeAtBlockNumberFromIndex(0, first + 5, 2), 12 ether, "total later");
        vm.expectRevert(IOperatorRegistryErrors.InvalidHistoryIndex.selector);
        registry.getTotalStakeAtBlockNumberFromIndex(0, first + 5, 1);
        BN254.G1Point memory apk1 = _g1(1);
        vm.assertEq(registry.getApkHashAtBlockNumberAndIndex(0, first, 1), bytes24(BN254.hashG1Point(apk1)), "apk");
    }

    function test_registerOperator_RevertWhen_BadProofOfPossession() public {
        address op = _operator(5);
        _fund(op, 5 ether);
        bytes memory data = abi.encode(
            "s",
            IOperatorRegistryTypes.PubkeyRegistrationParams(_g1(6), _g1(5), _g2(5)), // signature of the wrong message
            new IOperatorRegistryTypes.OperatorKick[](0)
        );
        vm.prank(op);
        vm.expectRevert(IOperatorRegistryErrors.InvalidProofOfPossession.selector);
        core.registerForOperatorSets(op, IAllocationManagerTypes.RegisterParams(address(registry), _ids0(), data));
    }

    function test_registerOperator_RevertWhen_KeyOfAnotherOperator() public {
        _register(5, 5 ether, hex"00");
        address op = _operator(6);
        _fund(op, 5 ether);
        bytes memory data = _registrationData(5, op); // valid PoP for op, but key 5 is taken
        vm.prank(op);
        vm.expectRevert(IOperatorRegistryErrors.PubkeyAlreadyRegistered.selector);
        core.registerForOperatorSets(op, IAllocationManagerTypes.RegisterParams(address(registry), _ids0(), data));
    }

    function testFuzz_registerOperator_MinimumStake(uint96 stake) public {
        stake = uint96(bound(stake, 1, 10 ether));
        address op = _operator(7);
        _fund(op, stake);
        bytes memory data = _registrationData(7, op);
        if (stake < MIN_STAKE) {
            vm.expectRevert(
                abi.encodeWithSelector(IOperatorRegistryErrors.InsufficientStake.selector, uint8(0), stake, MIN_STAKE)
            );
        }
        vm.prank(op);
        core.registerForOperatorSets(op, IAllocationManagerTypes.RegisterParams(address(registry), _ids0(), data));
    }

    function test_registerOperator_RevertWhen_QuorumFull() public {
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(1, MIN_STAKE));
        _register(1, 5 ether, hex"00");
        address op = _operator(2);
        _fund(op, 5 ether);
        bytes memory data = _registrationData(2, op);
        vm.prank(op);
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.MaxOperatorsReached.selector, uint8(0)));
        core.registerForOperatorSets(op, IAllocationManagerTypes.RegisterParams(address(registry), _ids0(), data));
    }

    function test_registerOperator_RevertWhen_NotAllocationManager() public {
        vm.expectRevert(IOperatorRegistryErrors.OnlyAllocationManager.selector);
        registry.registerOperator(address(1), address(registry), _ids0(), "");
    }

    function _ids0() internal pure returns (uint32[] memory ids) {
        ids = new uint32[](1);
    }

    /// @dev No operator set named: nothing to join or leave, and no bitmap history entry pushed.
    function test_registerAndDeregister_RevertWhen_NoOperatorSets() public {
        _register(1, 5 ether, hex"00");
        uint32[] memory none = new uint32[](0);
        bytes memory data = _registrationData(1, _operator(1));
        vm.startPrank(address(core));
        vm.expectRevert(IOperatorRegistryErrors.NoOperatorSets.selector);
        registry.registerOperator(_operator(1), address(registry), none, data);
        vm.expectRevert(IOperatorRegistryErrors.NoOperatorSets.selector);
        registry.deregisterOperator(_operator(1), address(registry), none);
        vm.stopPrank();
        vm.assertEq(registry.getCurrentQuorumBitmap(BN254.hashG1Point(_g1(1))), 1, "still in quorum 0");
    }
}

contract DeregisterOperatorTest is AvsFixture {
    function test_deregisterOperator_RemovesStakeAndApk() public {
        _register(1, 5 ether, hex"00");
        _register(2, 6 ether, hex"00");
        uint32[] memory ids = new uint32[](1);
        vm.prank(_operator(1));
        core.deregisterFromOperatorSets(IAllocationManagerTypes.DeregisterParams(_operator(1), address(registry), ids));
        vm.assertEq(registry.getCurrentTotalStake(0), 6 ether, "total");
        vm.assertEq(registry.getApk(0).X, _g1(2).X, "apk");
        vm.assertEq(registry.operatorCount(0), 1, "count");
        vm.assertEq(registry.getCurrentQuorumBitmap(BN254.hashG1Point(_g1(1))), 0, "bitmap");
    }

    /// @dev Regression (issue 3): deregistering in the block right after registering. The last
    ///      operator leaves, so the quorum's apk becomes the point at infinity (0, 0); every history
    ///      closes its registration-block entry and pushes a new one; the quorum can be joined again.
    function test_deregisterOperator_InTheBlockAfterRegistering() public {
        vm.roll(block.number + 1); // after the quorums' creation block
        _register(1, 5 ether, hex"00");
        uint32 registered = uint32(block.number);
        vm.roll(registered + 1);
        _deregister(1);
        bytes32 id = BN254.hashG1Point(_g1(1));
        vm.assertEq(registry.getApk(0).X, 0, "apk x at infinity");
        vm.assertEq(registry.getApk(0).Y, 0, "apk y at infinity");
        vm.assertEq(registry.getApkHashAtBlockNumberAndIndex(0, registered, 1), bytes24(id), "apk at registration");
        BN254.G1Point memory infinity;
        vm.assertEq(
            registry.getApkHashAtBlockNumberAndIndex(0, registered + 1, 2), bytes24(BN254.hashG1Point(infinity)), "apk"
        );
        vm.assertEq(registry.getStakeAtBlockNumberAndIndex(0, registered, id, 0), 5 ether, "stake then");
        vm.assertEq(registry.getStakeAtBlockNumberAndIndex(0, registered + 1, id, 1), 0, "stake now");
        vm.assertEq(registry.getTotalStakeAtBlockNumberFromIndex(0, registered + 1, 2), 0, "total now");
        vm.assertEq(registry.getQuorumBitmapAtBlockNumberByIndex(id, registered + 1, 1), 0, "bitmap now");
        vm.expectRevert(IOperatorRegistryErrors.InvalidHistoryIndex.selector);
        registry.getStakeAtBlockNumberAndIndex(0, registered + 1, id, 0);
        _register(2, 6 ether, hex"00");
        vm.assertEq(registry.getApk(0).X, _g1(2).X, "rejoined from infinity");
    }

    /// @dev Root cause of the issue-3 revert: in the registration's block every history write is an
    ///      in-place overwrite, one block later it pushes new slots. eth_estimateGas at "latest" runs
    ///      with block.number = the registration's block and so under-estimated the transaction,
    ///      which then ran out of gas; Web3AvsClient.build_transaction estimates at "pending".
    function test_deregisterOperator_NextBlockCostsMoreThanSameBlock() public {
        vm.roll(block.number + 1);
        _register(1, 5 ether, hex"00");
        _register(2, 5 ether, hex"00");
        uint256 snapshot = vm.snapshotState();
        uint256 sameBlock = _deregister(1);
        vm.revertToState(snapshot);
        vm.roll(block.number + 1);
        uint256 nextBlock = _deregister(1);
        vm.assertGe(nextBlock, sameBlock + 60_000, "new history slots in the next block");
    }

    /// @dev A past block's members read later from the history (the challenger on a full node):
    ///      0 before registering and after leaving, the bitmap in between, 0 for an unknown id.
    function testFuzz_getQuorumBitmapsAtBlockNumber_FollowsTheHistory(uint8 gap1, uint8 gap2, uint32 at) public {
        vm.roll(block.number + 1);
        uint32 first = uint32(block.number);
        _register(1, 5 ether, hex"00");
        vm.roll(block.number + 1 + gap1);
        uint32 second = uint32(block.number);
        _register(2, 6 ether, hex"00");
        vm.roll(block.number + 1 + gap2);
        uint32 left = uint32(block.number);
        _deregister(1);
        vm.roll(block.number + 5);
        at = uint32(bound(at, 0, block.number));
        bytes32[] memory ids = new bytes32[](3);
        ids[0] = BN254.hashG1Point(_g1(1));
        ids[1] = BN254.hashG1Point(_g1(2));
        ids[2] = keccak256("never registered");
        uint192[] memory bitmaps = registry.getQuorumBitmapsAtBlockNumber(ids, at);
        vm.assertEq(bitmaps.length, 3, "one per id");
        vm.assertEq(bitmaps[0], at >= first && at < left ? 1 : 0, "left later");
        vm.assertEq(bitmaps[1], at >= second ? 1 : 0, "joined later");
        vm.assertEq(bitmaps[2], 0, "unknown");
        if (at >= first) {
            uint256 members = (at < left ? 1 : 0) + (at >= second ? 1 : 0);
            vm.assertEq(registry.getOperatorCountAtBlockNumber(0, at), members, "agrees with the count history");
        }
    }

    function _deregister(uint256 sk) internal returns (uint256 gasUsed) {
        uint32[] memory ids = new uint32[](1);
        vm.prank(_operator(sk));
        uint256 before = gasleft();
        core.deregisterFromOperatorSets(IAllocationManagerTypes.DeregisterParams(_operator(sk), address(registry), ids));
        gasUsed = before - gasleft();
    }
}

contract EjectUnderstakedTest is AvsFixture {
    /// @dev A full quorum whose member fell below a raised minimum: anyone ejects it, its place goes
    ///      to a staked operator, and it stays slashable for the deallocation delay like any leaver.
    function test_ejectUnderstaked_FreesThePlaceOfAMemberBelowTheMinimum() public {
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(2, MIN_STAKE));
        _register(1, 2 ether, hex"00");
        _register(2, 5 ether, hex"00");
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(2, 3 ether)); // governance raises the bar
        bytes32 id = BN254.hashG1Point(_g1(1));
        vm.expectEmit();
        emit IOperatorRegistryEvents.OperatorEjected(_operator(1), id, 0, 2 ether);
        vm.expectEmit();
        emit IOperatorRegistryEvents.OperatorDeregistered(_operator(1), id, hex"00");
        vm.prank(address(0xBEEF)); // anyone
        registry.ejectUnderstaked(_operator(1), 0);
        vm.assertEq(registry.operatorCount(0), 1, "count");
        vm.assertEq(registry.getCurrentQuorumBitmap(id), 0, "bitmap");
        vm.assertEq(registry.getCurrentTotalStake(0), 5 ether, "total");
        vm.assertEq(registry.getApk(0).X, _g1(2).X, "apk");
        vm.assertTrue(registry.isOperatorSlashable(_operator(1), 0), "slashable for the deallocation delay");
        _register(3, 4 ether, hex"00"); // the freed place
        vm.assertEq(registry.operatorCount(0), 2, "refilled");
    }

    function testFuzz_ejectUnderstaked_OnlyBelowTheMinimum(uint96 stake) public {
        stake = uint96(bound(stake, MIN_STAKE, 10 ether));
        _register(1, stake, hex"00");
        uint96 minimum = 3 ether;
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(10, minimum));
        if (stake >= minimum) {
            vm.expectRevert(
                abi.encodeWithSelector(IOperatorRegistryErrors.StakeNotBelowMinimum.selector, uint8(0), stake, minimum)
            );
        }
        registry.ejectUnderstaked(_operator(1), 0);
        vm.assertEq(registry.operatorCount(0), stake >= minimum ? 1 : 0, "count");
    }

    /// @dev Ejected from one quorum, the operator keeps its other quorum (and its key).
    function test_ejectUnderstaked_LeavesTheOtherQuorums() public {
        _register(1, 4 ether, hex"0001"); // 2 tokens allocated to each quorum
        bytes32 id = BN254.hashG1Point(_g1(1));
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(10, 3 ether));
        registry.ejectUnderstaked(_operator(1), 0);
        vm.assertEq(registry.getCurrentQuorumBitmap(id), 2, "still in quorum 1");
        vm.assertEq(registry.operatorCount(0), 0, "left quorum 0");
        vm.assertEq(registry.operatorCount(1), 1, "kept quorum 1");
        vm.assertEq(registry.getOperatorId(_operator(1)), id, "key kept");
        vm.expectRevert(
            abi.encodeWithSelector(IOperatorRegistryErrors.StakeNotBelowMinimum.selector, uint8(1), 2 ether, MIN_STAKE)
        );
        registry.ejectUnderstaked(_operator(1), 1);
    }

    /// @dev A quorum without a minimum has nobody below it, even a member with no stake left.
    function test_ejectUnderstaked_RevertWhen_TheQuorumHasNoMinimum() public {
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(10, 0));
        _register(1, 2 ether, hex"00");
        registry.setSlasher(address(this), true);
        registry.slashOperator(_operator(1), 0, 1e18, "all of it"); // nothing left
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.StakeNotBelowMinimum.selector, uint8(0), 0, 0));
        registry.ejectUnderstaked(_operator(1), 0);
    }

    function test_ejectUnderstaked_RevertWhen_NotAMember() public {
        _register(1, 5 ether, hex"00");
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.NotRegisteredForQuorum.selector, uint8(0)));
        registry.ejectUnderstaked(_operator(2), 0); // never registered
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.QuorumDoesNotExist.selector, uint8(9)));
        registry.ejectUnderstaked(_operator(1), 9);
    }
}

contract UpdateOperatorsTest is AvsFixture {
    function testFuzz_updateOperators_TracksDeposits(uint96 extra) public {
        extra = uint96(bound(extra, 1, 100 ether));
        _register(1, 5 ether, hex"00");
        address op = _operator(1);
        token.mint(op, extra);
        vm.startPrank(op);
        token.approve(address(core), extra);
        core.depositIntoStrategy(strategy, token, extra);
        vm.stopPrank();
        address[] memory ops = new address[](1);
        ops[0] = op;
        registry.updateOperators(ops);
        vm.assertEq(registry.getCurrentTotalStake(0), 5 ether + uint256(extra), "total");
    }
}

contract SlashOperatorTest is AvsFixture {
    function testFuzz_slashOperator_RedistributesToRecipient(uint256 wad) public {
        wad = bound(wad, 1, 1e18);
        _register(1, 10 ether, hex"00");
        registry.setSlasher(address(this), true);
        uint256[] memory shares = registry.slashOperator(_operator(1), 0, wad, "test");
        vm.assertEq(token.balanceOf(RECIPIENT), shares[0], "redistributed");
        vm.assertEq(token.balanceOf(address(core)) + shares[0], 10 ether, "conserved");
        bytes32 id = BN254.hashG1Point(_g1(1));
        uint256 left = 10 ether - shares[0];
        vm.assertEq(registry.getCurrentStake(id, 0), left < MIN_STAKE ? 0 : left, "stake updated");
    }

    /// @dev As on EigenLayer, a slash only marks the shares; the registry sends them to the recipient
    ///      in the same transaction, and when that fails the slash stands and anyone sends them later.
    function test_slashOperator_FundsStayPendingWhenTheyCannotBeSentAtOnce() public {
        _register(1, 10 ether, hex"00");
        registry.setSlasher(address(this), true);
        OperatorSet memory set = OperatorSet(address(registry), 0);
        bytes memory clear = abi.encodeCall(IStrategyManager.clearBurnOrRedistributableShares, (set, 1));
        bytes memory clearOne =
            abi.encodeCall(IStrategyManager.clearBurnOrRedistributableSharesByStrategy, (set, 1, strategy));
        vm.mockCallRevert(address(core), clear, "transfer failed");
        vm.mockCallRevert(address(core), clearOne, "transfer failed");
        vm.expectEmit(address(registry));
        emit IOperatorRegistryEvents.SlashedFundsNotCleared(0, 1);
        uint256[] memory shares = registry.slashOperator(_operator(1), 0, 0.5e18, "test");
        vm.clearMockedCalls();
        vm.assertEq(shares[0], 5 ether, "slashed");
        vm.assertEq(token.balanceOf(RECIPIENT), 0, "not sent yet");
        (IStrategy[] memory strategies, uint256[] memory pending) = core.getBurnOrRedistributableShares(set, 1);
        vm.assertEq(address(strategies[0]), address(strategy), "pending strategy");
        vm.assertEq(pending[0], 5 ether, "pending shares");
        vm.prank(address(0xA11CE)); // permissionless
        core.clearBurnOrRedistributableShares(set, 1);
        vm.assertEq(token.balanceOf(RECIPIENT), 5 ether, "sent");
        vm.assertEq(core.clearBurnOrRedistributableShares(set, 1).length, 0, "nothing left to send");
        vm.assertEq(core.clearBurnOrRedistributableSharesByStrategy(set, 1, strategy), 0, "nothing left");
        vm.assertEq(token.balanceOf(RECIPIENT), 5 ether, "sent once");
    }

    /// @dev Clearing the whole slash fails (another strategy's token, say): each strategy is then
    ///      cleared on its own, and those that can be sent are.
    function test_slashOperator_ClearsStrategyByStrategyWhenTheWholeClearFails() public {
        _register(1, 10 ether, hex"00");
        registry.setSlasher(address(this), true);
        OperatorSet memory set = OperatorSet(address(registry), 0);
        vm.mockCallRevert(
            address(core), abi.encodeCall(IStrategyManager.clearBurnOrRedistributableShares, (set, 1)), "one token"
        );
        vm.recordLogs();
        uint256[] memory shares = registry.slashOperator(_operator(1), 0, 0.5e18, "test");
        vm.assertEq(token.balanceOf(RECIPIENT), shares[0], "sent strategy by strategy");
        Vm.Log[] memory logs = vm.getRecordedLogs();
        for (uint256 i; i < logs.length; ++i) {
            vm.assertTrue(logs[i].topics[0] != IOperatorRegistryEvents.SlashedFundsNotCleared.selector, "all sent");
        }
    }

    /// @dev A StrategyManager that returns nothing (the SlashEscrow-era interface) cannot undo a slash.
    function test_slashOperator_StandsWhateverTheClearReturns() public {
        _register(1, 10 ether, hex"00");
        registry.setSlasher(address(this), true);
        OperatorSet memory set = OperatorSet(address(registry), 0);
        vm.mockCall(address(core), abi.encodeCall(IStrategyManager.clearBurnOrRedistributableShares, (set, 1)), "");
        uint256[] memory shares = registry.slashOperator(_operator(1), 0, 0.5e18, "test");
        vm.assertEq(shares[0], 5 ether, "slashed");
    }

    function testFuzz_clearBurnOrRedistributableSharesByStrategy_SendsOnce(uint256 wad) public {
        wad = bound(wad, 1e9, 1e18);
        _register(1, 10 ether, hex"00");
        registry.setSlasher(address(this), true);
        OperatorSet memory set = OperatorSet(address(registry), 0);
        vm.mockCallRevert(
            address(core), abi.encodeCall(IStrategyManager.clearBurnOrRedistributableShares, (set, 1)), "no"
        );
        vm.mockCallRevert(
            address(core),
            abi.encodeCall(IStrategyManager.clearBurnOrRedistributableSharesByStrategy, (set, 1, strategy)),
            "no"
        );
        uint256[] memory shares = registry.slashOperator(_operator(1), 0, wad, "test");
        vm.clearMockedCalls();
        vm.assertEq(core.clearBurnOrRedistributableSharesByStrategy(set, 1, strategy), shares[0], "sent");
        vm.assertEq(core.clearBurnOrRedistributableSharesByStrategy(set, 1, strategy), 0, "once");
        vm.assertEq(token.balanceOf(RECIPIENT), shares[0], "to the recipient");
        vm.assertEq(token.balanceOf(address(core)) + shares[0], 10 ether, "conserved");
    }

    /// @dev EigenLayer's rule, kept by the local core: an operator that leaves a quorum's operator set
    ///      stays slashable by it for DEALLOCATION_DELAY blocks (inclusive), then no longer.
    function testFuzz_slashOperator_DeregisteredWithinTheDeallocationDelay(uint32 wait) public {
        wait = uint32(bound(wait, 0, 2 * uint256(DEALLOCATION_DELAY_BLOCKS)));
        _register(1, 10 ether, hex"00");
        registry.setSlasher(address(this), true);
        uint32[] memory sets = new uint32[](1);
        vm.prank(_operator(1));
        core.deregisterFromOperatorSets(IAllocationManagerTypes.DeregisterParams(_operator(1), address(registry), sets));
        vm.assertEq(registry.getCurrentQuorumBitmap(BN254.hashG1Point(_g1(1))), 0, "left the quorum");
        vm.roll(block.number + wait);
        bool slashable = wait <= DEALLOCATION_DELAY_BLOCKS;
        vm.assertEq(registry.isOperatorSlashable(_operator(1), 0), slashable, "slashable");
        uint96 total = registry.getCurrentTotalStake(0);
        if (!slashable) vm.expectRevert(IAllocationManagerErrors.OperatorNotSlashable.selector);
        uint256[] memory shares = registry.slashOperator(_operator(1), 0, 0.5e18, "test");
        if (!slashable) return;
        vm.assertEq(shares[0], 5 ether, "half of its allocation, after leaving");
        vm.assertEq(token.balanceOf(RECIPIENT), 5 ether, "to the recipient");
        vm.assertEq(registry.getCurrentTotalStake(0), total, "the quorum's books untouched");
    }

    /// @dev As EigenLayer: no registering again for a set while still slashable after leaving it.
    function test_registerForOperatorSets_RevertWhen_LeftWithinTheDeallocationDelay() public {
        _register(1, 10 ether, hex"00");
        uint32[] memory sets = new uint32[](1);
        vm.startPrank(_operator(1));
        core.deregisterFromOperatorSets(IAllocationManagerTypes.DeregisterParams(_operator(1), address(registry), sets));
        vm.roll(block.number + DEALLOCATION_DELAY_BLOCKS);
        bytes memory data = _registrationData(1, _operator(1));
        vm.expectRevert(IAllocationManagerErrors.AlreadyMemberOfSet.selector);
        core.registerForOperatorSets(
            _operator(1), IAllocationManagerTypes.RegisterParams(address(registry), sets, data)
        );
        vm.roll(block.number + 1);
        core.registerForOperatorSets(
            _operator(1), IAllocationManagerTypes.RegisterParams(address(registry), sets, data)
        );
        vm.stopPrank();
        vm.assertEq(registry.getCurrentQuorumBitmap(BN254.hashG1Point(_g1(1))), 1, "back in quorum 0");
    }

    function test_slashOperator_RevertWhen_NotSlasher() public {
        _register(1, 10 ether, hex"00");
        vm.prank(address(0xBAD));
        vm.expectRevert(IOperatorRegistryErrors.OnlySlasher.selector);
        registry.slashOperator(_operator(1), 0, 1e18, "test");
    }
}

contract CreateQuorumTest is AvsFixture {
    function _noStrategies() internal pure returns (IStrategy[] memory) {
        return new IStrategy[](0);
    }

    function test_createQuorum_IsRedistributingToRecipient() public view {
        vm.assertTrue(core.isRedistributingOperatorSet(OperatorSet(address(registry), 0)), "redistributing");
        vm.assertEq(core.getRedistributionRecipient(OperatorSet(address(registry), 0)), RECIPIENT, "recipient");
    }

    function test_createQuorum_RevertWhen_Exists() public {
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.QuorumAlreadyExists.selector, uint8(0)));
        registry.createQuorum(0, IOperatorRegistryTypes.QuorumConfig(1, 1), _noStrategies());
    }
}

contract GetQuorumApkHashAndTotalStakeTest is AvsFixture {
    /// @dev Same answers (and the same InvalidHistoryIndex) as the two separate views.
    function testFuzz_getQuorumApkHashAndTotalStake_MatchesSeparateViews(uint8 gap, uint8 at) public {
        gap = uint8(bound(gap, 1, 20));
        vm.roll(block.number + 1);
        _register(1, 5 ether, hex"00");
        uint32 first = uint32(block.number);
        vm.roll(first + gap);
        _register(2, 7 ether, hex"00");
        vm.roll(block.number + 1);
        uint32 blockNumber = first + uint32(bound(at, 0, gap));
        uint256 index = blockNumber < first + gap ? 1 : 2;
        (bytes24 apkHash, uint96 total) = registry.getQuorumApkHashAndTotalStake(0, blockNumber, index, index);
        vm.assertEq(apkHash, registry.getApkHashAtBlockNumberAndIndex(0, blockNumber, index), "apk hash");
        vm.assertEq(total, registry.getTotalStakeAtBlockNumberFromIndex(0, blockNumber, index), "total");
        vm.expectRevert(IOperatorRegistryErrors.InvalidHistoryIndex.selector);
        registry.getQuorumApkHashAndTotalStake(0, blockNumber, index, 3 - index);
    }
}
