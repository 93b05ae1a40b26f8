// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {AvsFixture} from "./utils/AvsFixture.sol";
import {BN254} from "../src/libraries/BN254.sol";
import {
    IOperatorRegistryTypes,
    IOperatorRegistryErrors,
    IOperatorRegistryEvents
} from "../src/interfaces/IOperatorRegistry.sol";
import {IAllocationManagerTypes} from "../src/interfaces/eigenlayer/IAllocationManager.sol";

/// @notice Churn: a newcomer takes the place of a small member of a full quorum, within the
///         quorum's on-chain limits (`ChurnConfig`), in its own registration.
contract ChurnTest is AvsFixture {
    using BN254 for BN254.G1Point;

    /// @dev Quorum 0 full with two members: operator 1 (2 ether) and operator 2 (10 ether).
    function _fullQuorum(uint16 operatorBips, uint16 totalBips) internal {
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(2, MIN_STAKE));
        registry.setChurnConfig(0, IOperatorRegistryTypes.ChurnConfig(operatorBips, totalBips));
        _register(1, 2 ether, hex"00");
        _register(2, 10 ether, hex"00");
    }

    /// @dev An EigenLayer operator with `stake` allocated to quorum 0, not registered with the AVS.
    function _prepare(uint256 sk, uint256 stake) internal returns (address op) {
        op = _operator(sk);
        _fund(op, stake);
    }

    function _kick(uint8 quorum, address member)
        internal
        pure
        returns (IOperatorRegistryTypes.OperatorKick[] memory k)
    {
        k = new IOperatorRegistryTypes.OperatorKick[](1);
        k[0] = IOperatorRegistryTypes.OperatorKick(quorum, member);
    }

    function _registerWith(uint256 sk, address op, uint32[] memory ids, IOperatorRegistryTypes.OperatorKick[] memory k)
        internal
    {
        _submit(op, ids, _registrationData(sk, op, k));
    }

    /// @dev The registration call alone (data made first: building it calls precompiles, which
    ///      would take an expectRevert meant for the registration).
    function _submit(address op, uint32[] memory ids, bytes memory data) internal {
        vm.prank(op);
        core.registerForOperatorSets(op, IAllocationManagerTypes.RegisterParams(address(registry), ids, data));
    }

    function _ids(uint32 a) internal pure returns (uint32[] memory ids) {
        ids = new uint32[](1);
        ids[0] = a;
    }

    function test_churn_ReplacesASmallMemberOfAFullQuorum() public {
        _fullQuorum(11_000, 5000);
        address newcomer = _prepare(3, 3 ether); // 3 > 1.1 * 2, and 2 < 0.5 * 12
        bytes32 kickedId = BN254.hashG1Point(_g1(1));
        vm.expectEmit();
        emit IOperatorRegistryEvents.OperatorChurned(_operator(1), newcomer, 0, 2 ether, 3 ether);
        vm.expectEmit();
        emit IOperatorRegistryEvents.OperatorDeregistered(_operator(1), kickedId, hex"00");
        _registerWith(3, newcomer, _ids(0), _kick(0, _operator(1)));
        vm.assertEq(registry.operatorCount(0), 2, "still full, not over");
        vm.assertEq(registry.getCurrentQuorumBitmap(kickedId), 0, "kicked out");
        vm.assertEq(registry.getCurrentQuorumBitmap(BN254.hashG1Point(_g1(3))), 1, "newcomer in");
        vm.assertEq(registry.getCurrentTotalStake(0), 13 ether, "total");
        vm.assertEq(registry.getApk(0).X, _g1(2).plus(_g1(3)).X, "apk");
        vm.assertTrue(registry.isOperatorSlashable(_operator(1), 0), "kicked stays slashable for the delay");
    }

    function testFuzz_churn_NeedsMoreStakeThanTheMemberTimesItsBips(uint96 stake) public {
        stake = uint96(bound(stake, MIN_STAKE, 10 ether));
        _fullQuorum(11_000, 5000);
        address newcomer = _prepare(3, stake);
        uint256 required = 2.2 ether;
        bytes memory data = _registrationData(3, newcomer, _kick(0, _operator(1)));
        if (stake <= required) {
            vm.expectRevert(
                abi.encodeWithSelector(IOperatorRegistryErrors.ChurnStakeTooLow.selector, uint8(0), stake, required)
            );
        }
        _submit(newcomer, _ids(0), data);
        vm.assertEq(registry.operatorCount(0), 2, "count");
        vm.assertEq(registry.getCurrentQuorumBitmap(BN254.hashG1Point(_g1(1))), stake <= required ? 1 : 0, "member 1");
    }

    /// @dev A member holding at least `kickBipsOfTotalStake` of the quorum cannot be replaced.
    function test_churn_RevertWhen_TheMemberHoldsTooMuchOfTheQuorum() public {
        _fullQuorum(11_000, 1000); // 10% of 12 ether: only members under 1.2 ether
        address newcomer = _prepare(3, 50 ether);
        bytes memory data = _registrationData(3, newcomer, _kick(0, _operator(1)));
        vm.expectRevert(
            abi.encodeWithSelector(IOperatorRegistryErrors.KickedStakeTooHigh.selector, uint8(0), 2 ether, 1.2 ether)
        );
        _submit(newcomer, _ids(0), data);
    }

    function test_churn_RevertWhen_TheQuorumHasNoChurn() public {
        _fullQuorum(0, 0);
        address newcomer = _prepare(3, 50 ether);
        bytes memory data = _registrationData(3, newcomer, _kick(0, _operator(1)));
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.ChurnDisabled.selector, uint8(0)));
        _submit(newcomer, _ids(0), data);
    }

    /// @dev A kick is only used when the quorum is full: with a free place nobody leaves.
    function test_churn_NobodyLeavesWhileAPlaceIsFree() public {
        _fullQuorum(11_000, 5000);
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(3, MIN_STAKE));
        address newcomer = _prepare(3, 3 ether);
        _registerWith(3, newcomer, _ids(0), _kick(0, _operator(1)));
        vm.assertEq(registry.operatorCount(0), 3, "count");
        vm.assertEq(registry.getCurrentQuorumBitmap(BN254.hashG1Point(_g1(1))), 1, "member 1 stays");
    }

    /// @dev Governance lowered the maximum below the member count: one kick frees no place, so the
    ///      newcomer is refused and nobody leaves.
    function test_churn_RevertWhen_TheQuorumStaysFullAfterTheKick() public {
        _fullQuorum(11_000, 5000);
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(1, MIN_STAKE));
        address newcomer = _prepare(3, 3 ether);
        bytes memory data = _registrationData(3, newcomer, _kick(0, _operator(1)));
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.MaxOperatorsReached.selector, uint8(0)));
        _submit(newcomer, _ids(0), data);
        vm.assertEq(registry.operatorCount(0), 2, "both members stay");
    }

    function test_churn_RevertWhen_TheKickedIsNotAMember() public {
        _fullQuorum(11_000, 5000);
        address newcomer = _prepare(3, 3 ether);
        bytes memory data = _registrationData(3, newcomer, _kick(0, _operator(7)));
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.NotRegisteredForQuorum.selector, uint8(0)));
        _submit(newcomer, _ids(0), data);
    }

    /// @dev Kicks name quorums being joined, ascending, one each: anything else is refused.
    function test_churn_RevertWhen_AKickNamesAQuorumNotJoined() public {
        _fullQuorum(11_000, 5000);
        address newcomer = _prepare(3, 3 ether);
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(3, MIN_STAKE)); // a free place
        bytes memory data = _registrationData(3, newcomer, _kick(1, _operator(1)));
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.InvalidKick.selector, uint8(1)));
        _submit(newcomer, _ids(0), data);
        registry.setQuorumConfig(0, IOperatorRegistryTypes.QuorumConfig(2, MIN_STAKE)); // full: the first kick is used
        IOperatorRegistryTypes.OperatorKick[] memory twice = new IOperatorRegistryTypes.OperatorKick[](2);
        twice[0] = IOperatorRegistryTypes.OperatorKick(0, _operator(1));
        twice[1] = IOperatorRegistryTypes.OperatorKick(0, _operator(2));
        data = _registrationData(3, newcomer, twice);
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.InvalidKick.selector, uint8(0)));
        _submit(newcomer, _ids(0), data);
    }

    function testFuzz_setChurnConfig_Bounds(uint16 operatorBips, uint16 totalBips) public {
        bool off = operatorBips == 0 && totalBips == 0;
        bool valid = off || (operatorBips >= 10_000 && totalBips > 0 && totalBips <= 10_000);
        if (!valid) vm.expectRevert(IOperatorRegistryErrors.InvalidChurnConfig.selector);
        else vm.expectEmit();
        emit IOperatorRegistryEvents.ChurnConfigSet(0, operatorBips, totalBips);
        registry.setChurnConfig(0, IOperatorRegistryTypes.ChurnConfig(operatorBips, totalBips));
        (uint16 storedOperator, uint16 storedTotal) = registry.churnConfig(0);
        vm.assertEq(storedOperator, valid ? operatorBips : 0, "operator bips");
        vm.assertEq(storedTotal, valid ? totalBips : 0, "total bips");
    }

    function test_setChurnConfig_RevertWhen_NotOwnerOrNoQuorum() public {
        vm.prank(address(0xBEEF));
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(0xBEEF)));
        registry.setChurnConfig(0, IOperatorRegistryTypes.ChurnConfig(11_000, 1000));
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.QuorumDoesNotExist.selector, uint8(9)));
        registry.setChurnConfig(9, IOperatorRegistryTypes.ChurnConfig(11_000, 1000));
    }
}
