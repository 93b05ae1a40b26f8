// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ChallengeFixture} from "./FaultManager.t.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {IFaultManagerTypes} from "../src/interfaces/IFaultManager.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";
import {IOperatorRegistryErrors, IOperatorRegistryEvents} from "../src/interfaces/IOperatorRegistry.sol";
import {IStrategy} from "../src/interfaces/eigenlayer/IStrategy.sol";
import {IAllocationManagerTypes, OperatorSet} from "../src/interfaces/eigenlayer/IAllocationManager.sol";

/// @dev A signer's weight must be stake that can still be slashed when its fraud is proven: the
///      registry reads stakes `stakeLookAheadBlocks` ahead (L) and certificates refuse a quorum whose
///      stakes were last refreshed in full more than `maxStakeAgeBlocks` (S) before the reference
///      block. Fixture: DEALLOCATION_DELAY 2000, L = 2000, S = 1750, W = 100 + 50 + 100 = 250.
contract StakeFreshnessTest is ChallengeFixture {
    uint256 internal constant W = 250; // max reference age + challenge window + resolution window

    /// @dev Operator `sk` moves its quorum-0 allocation down to `magnitude` (pending for DEALLOCATION_DELAY + 1).
    function _deallocate(uint256 sk, uint64 magnitude) internal {
        IAllocationManagerTypes.AllocateParams[] memory a = new IAllocationManagerTypes.AllocateParams[](1);
        IStrategy[] memory strategies = new IStrategy[](1);
        strategies[0] = strategy;
        uint64[] memory mags = new uint64[](1);
        mags[0] = magnitude;
        a[0] = IAllocationManagerTypes.AllocateParams(OperatorSet(address(registry), 0), strategies, mags);
        vm.prank(_operator(sk));
        core.modifyAllocations(_operator(sk), a);
    }

    /// @dev Quorum 0's members (operators 1..8, ascending by address); quorum 1's are 1..4.
    function _quorumOperators(uint8 q) internal pure returns (address[] memory ops) {
        ops = new address[](q == 0 ? 8 : 4);
        for (uint256 i; i < ops.length; ++i) {
            ops[i] = _operator(i + 1);
        }
    }

    function _refreshAll() internal {
        registry.updateOperatorsForQuorum(0, _quorumOperators(0));
        registry.updateOperatorsForQuorum(1, _quorumOperators(1));
    }

    /// @dev A quorum-0 batch header with reference block `ref`, signed by everyone but `nonSigners`.
    function _signedAt(uint32 ref, uint256[] memory nonSigners)
        internal
        view
        returns (AvsMessages.BatchHeader memory h, IBLSSignatureChecker.NonSignerStakesAndSignature memory p)
    {
        h = AvsMessages.BatchHeader(7, keccak256("root"), ref, hex"00");
        p = _sigs(h, nonSigners);
    }

    /// @dev `checkSignatures` of a quorum-0 certificate at `ref` by everyone; the digest is computed
    ///      before `vm.expectRevert` applies (`expectStale`: the check must refuse stale stakes last
    ///      refreshed at `lastUpdate`).
    function _check(uint32 ref, bool expectStale, uint32 lastUpdate) internal returns (uint96 signed) {
        (AvsMessages.BatchHeader memory h, IBLSSignatureChecker.NonSignerStakesAndSignature memory p) =
            _signedAt(ref, _none());
        bytes32 digest = taskManager.batchDigest(h);
        if (expectStale) {
            vm.expectRevert(abi.encodeWithSelector(IBLSSignatureChecker.StaleStakes.selector, uint8(0), lastUpdate));
        }
        (IBLSSignatureChecker.QuorumStakeTotals memory totals,) =
            taskManager.checkSignatures(digest, h.quorumNumbers, ref, p);
        return totals.signedStakeForQuorum.length == 0 ? 0 : totals.signedStakeForQuorum[0];
    }

    /*//////////////////////////////////////////////////////////////
                                look-ahead
    //////////////////////////////////////////////////////////////*/

    /// @dev Review (a): a stake update one block before a full deallocation takes effect used to
    ///      record the whole stake; with the look-ahead it records nothing.
    function test_lookAhead_PendingDeallocationIsNotCounted() public {
        _deallocate(7, 0);
        uint256 effect = block.number + DEALLOCATION_DELAY_BLOCKS + 1;
        vm.roll(effect - 2);
        address[] memory ops = new address[](1);
        ops[0] = _operator(7);
        registry.updateOperators(ops);
        vm.assertEq(registry.getCurrentStake(_id(7), 0), 0, "nothing that can leave before a fraud proof");
        vm.assertEq(_allocated(7, 0), 70 ether, "still allocated in the core");
    }

    /// @dev A quorum refresh one block after a deallocation starts already leaves it out (L = the delay).
    function test_lookAhead_QuorumRefreshLeavesOutAPartialDeallocation() public {
        _deallocate(6, 0.25e18);
        vm.roll(block.number + 1);
        uint96 totalBefore = registry.getCurrentTotalStake(0);
        _refreshAll();
        vm.assertEq(registry.getCurrentStake(_id(6), 0), 15 ether, "a quarter of 60");
        vm.assertEq(registry.getCurrentTotalStake(0), totalBefore - 45 ether, "total");
    }

    /// @dev For any deallocation (any amount, started before or after the refresh at u), the stake
    ///      recorded for a reference block r in [u, u + S] is still allocated, so slashable, at every
    ///      block up to r + W, the last at which the signer's fraud can be proven.
    function testFuzz_lookAhead_RecordedStakeStaysSlashableUntilFraudProof(
        uint256 deallocAt,
        uint256 refAfter,
        uint256 proofAfter,
        uint64 magnitude
    ) public {
        uint256 base = block.number;
        uint256 u = base + 2 * uint256(DEALLOCATION_DELAY_BLOCKS);
        uint256 t = base + bound(deallocAt, 0, 2 * uint256(DEALLOCATION_DELAY_BLOCKS) + MAX_STAKE_AGE_BLOCKS + W);
        uint256 r = u + bound(refAfter, 0, MAX_STAKE_AGE_BLOCKS);
        uint256 p = r + bound(proofAfter, 0, W);
        magnitude = uint64(bound(magnitude, 0, 1e18 - 1));
        if (t <= u) {
            vm.roll(t);
            _deallocate(5, magnitude);
        }
        vm.roll(u);
        registry.updateOperatorsForQuorum(0, _quorumOperators(0));
        uint96 recorded = registry.getCurrentStake(_id(5), 0); // the stake at r: nothing updates it after u
        if (t > u && t <= p) {
            vm.roll(t);
            _deallocate(5, magnitude);
        }
        vm.roll(p);
        vm.assertLe(recorded, _allocated(5, 0), "signing weight not slashable when the fraud is proven");
        vm.assertTrue(registry.isOperatorSlashable(_operator(5), 0), "slashable");
    }

    /*//////////////////////////////////////////////////////////////
                                freshness
    //////////////////////////////////////////////////////////////*/

    /// @dev Review (b): an operator deallocated long ago used to keep its weight for ever; now no
    ///      certificate goes through until the quorum is refreshed, and then it weighs nothing.
    function test_freshness_StaleQuorumRefusesCertificatesUntilRefreshed() public {
        uint32 created = 100; // AvsFixture creates the quorums at block 100
        _deallocate(7, 0);
        vm.roll(block.number + DEALLOCATION_DELAY_BLOCKS + 500);
        vm.assertEq(_allocated(7, 0), 0, "deallocated in the core");
        vm.assertEq(registry.getCurrentStake(_id(7), 0), 70 ether, "recorded weight is stale");
        (AvsMessages.BatchHeader memory h, IBLSSignatureChecker.NonSignerStakesAndSignature memory p) =
            _signedAt(uint32(block.number - 1), _one(8));
        vm.expectRevert(abi.encodeWithSelector(IBLSSignatureChecker.StaleStakes.selector, uint8(0), created));
        taskManager.certifyBatch(h, p);

        _refreshAll();
        vm.roll(block.number + 1);
        vm.assertEq(registry.getCurrentStake(_id(7), 0), 0, "refreshed");
        (h, p) = _signedAt(uint32(block.number - 1), _none());
        taskManager.certifyBatch(h, p);
        vm.assertEq(_check(uint32(block.number - 1), false, 0), 240 ether, "everyone signs: op7 adds nothing");
    }

    /// @dev The fraud proof's escalation certificate (quorums 0 and 1) is refused as well.
    function test_freshness_StaleEscalationCertificateRefused() public {
        registry.setStakeFreshness(STAKE_LOOKAHEAD_BLOCKS, 50);
        uint256 id = _challenge();
        vm.roll(100 + 50 + 2); // past both quorums' creation + S, inside the resolution window
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert = _escalation(AvsMessages.Verdict.Reject);
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(batch, _one(8));
        vm.expectRevert(abi.encodeWithSelector(IBLSSignatureChecker.StaleStakes.selector, uint8(0), uint32(100)));
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
    }

    /// @dev A reference block is checked against the last refresh at or before it, not a later one.
    function test_freshness_UsesTheLastRefreshAtOrBeforeTheReferenceBlock() public {
        uint256 u = 100 + uint256(MAX_STAKE_AGE_BLOCKS) + 10;
        vm.roll(u);
        registry.updateOperatorsForQuorum(0, _quorumOperators(0));
        vm.roll(u + 5);
        _check(uint32(u - 1), true, 100);
        vm.assertEq(_check(uint32(u), false, 0), 310 ether, "fresh from the refresh block on");
        (uint32 at, uint32 maxAge) = registry.getStakeFreshness(0, uint32(u + 3));
        vm.assertEq(at, u, "last refresh");
        vm.assertEq(maxAge, MAX_STAKE_AGE_BLOCKS, "max age");
    }

    /// @dev Refreshes older than the last two are found by searching back.
    function test_freshness_FindsOlderRefreshes() public {
        uint256 u = block.number;
        for (uint256 i; i < 3; ++i) {
            vm.roll(u + 10 * i);
            registry.updateOperatorsForQuorum(0, _quorumOperators(0));
        }
        (uint32 at,) = registry.getStakeFreshness(0, uint32(u + 5));
        vm.assertEq(at, u, "third-last");
        (at,) = registry.getStakeFreshness(0, uint32(u + 15));
        vm.assertEq(at, u + 10, "second-last");
        (at,) = registry.getStakeFreshness(0, uint32(u + 25));
        vm.assertEq(at, u + 20, "last");
        (at,) = registry.getStakeFreshness(0, 99);
        vm.assertEq(at, 0, "before the quorum");
    }

    /// @dev Fresh up to and including u + S, stale one block later.
    function test_freshness_BoundaryAtMaxStakeAge() public {
        uint256 u = block.number;
        registry.updateOperatorsForQuorum(0, _quorumOperators(0));
        vm.roll(u + MAX_STAKE_AGE_BLOCKS + 2);
        vm.assertEq(_check(uint32(u + MAX_STAKE_AGE_BLOCKS), false, 0), 310 ether, "last fresh block");
        _check(uint32(u + MAX_STAKE_AGE_BLOCKS + 1), true, uint32(u));
    }

    /// @dev Single-operator updates keep their stakes fresh but prove nothing about the others.
    function test_freshness_UpdateOperatorsIsNoQuorumRefresh() public {
        vm.roll(100 + MAX_STAKE_AGE_BLOCKS + 10);
        registry.updateOperators(_quorumOperators(0));
        vm.assertEq(registry.quorumUpdateBlockNumber(0), 100, "not a quorum refresh");
        vm.roll(block.number + 1);
        _check(uint32(block.number - 1), true, 100);
    }

    /// @dev maxStakeAgeBlocks = 0 turns the check off.
    function test_freshness_ZeroMaxAgeDisablesTheCheck() public {
        registry.setStakeFreshness(STAKE_LOOKAHEAD_BLOCKS, 0);
        vm.roll(100 + 10 * uint256(MAX_STAKE_AGE_BLOCKS));
        vm.assertEq(_check(uint32(block.number - 1), false, 0), 310 ether, "no bound");
    }

    /*//////////////////////////////////////////////////////////////
                          updateOperatorsForQuorum
    //////////////////////////////////////////////////////////////*/

    function test_updateOperatorsForQuorum_RecordsTheRefresh() public {
        vm.roll(block.number + 20);
        vm.expectEmit();
        emit IOperatorRegistryEvents.QuorumStakesUpdated(0, uint32(block.number));
        vm.prank(address(0xA11CE)); // anyone
        registry.updateOperatorsForQuorum(0, _quorumOperators(0));
        vm.assertEq(registry.quorumUpdateBlockNumber(0), block.number, "quorum 0");
        vm.assertEq(registry.quorumUpdateBlockNumber(1), 100, "quorum 1 untouched");
    }

    function test_updateOperatorsForQuorum_RevertWhen_Incomplete() public {
        address[] memory ops = _quorumOperators(0);
        assembly {
            mstore(ops, 7)
        }
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.QuorumOperatorCountMismatch.selector, 0, 7, 8));
        registry.updateOperatorsForQuorum(0, ops);
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.QuorumOperatorCountMismatch.selector, 1, 8, 4));
        registry.updateOperatorsForQuorum(1, _quorumOperators(0));
    }

    function test_updateOperatorsForQuorum_RevertWhen_Unsorted() public {
        address[] memory ops = _quorumOperators(0);
        (ops[2], ops[3]) = (ops[3], ops[2]);
        vm.expectRevert(IOperatorRegistryErrors.QuorumOperatorsNotSorted.selector);
        registry.updateOperatorsForQuorum(0, ops);
    }

    function test_updateOperatorsForQuorum_RevertWhen_Duplicate() public {
        address[] memory ops = _quorumOperators(1);
        ops[3] = ops[2]; // 1, 2, 3, 3: the right count, operator 4 missing
        vm.expectRevert(IOperatorRegistryErrors.QuorumOperatorsNotSorted.selector);
        registry.updateOperatorsForQuorum(1, ops);
    }

    function test_updateOperatorsForQuorum_RevertWhen_NotAMember() public {
        address[] memory ops = _quorumOperators(1);
        ops[3] = _operator(5); // registered, but in quorum 0 only
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.NotRegisteredForQuorum.selector, 1));
        registry.updateOperatorsForQuorum(1, ops);
        ops[3] = _operator(99); // never registered
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.NotRegisteredForQuorum.selector, 1));
        registry.updateOperatorsForQuorum(1, ops);
    }

    function test_updateOperatorsForQuorum_RevertWhen_NoSuchQuorum() public {
        vm.expectRevert(abi.encodeWithSelector(IOperatorRegistryErrors.QuorumDoesNotExist.selector, 5));
        registry.updateOperatorsForQuorum(5, new address[](0));
    }

    function test_setStakeFreshness_OnlyOwner() public {
        vm.expectEmit();
        emit IOperatorRegistryEvents.StakeFreshnessSet(500, 200);
        registry.setStakeFreshness(500, 200);
        vm.assertEq(registry.stakeLookAheadBlocks(), 500, "L");
        vm.assertEq(registry.maxStakeAgeBlocks(), 200, "S");
        vm.prank(address(0xBAD));
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(0xBAD)));
        registry.setStakeFreshness(0, 0);
    }
}
