// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {PoolFixture} from "./InsurancePool.t.sol";
import {Test} from "./utils/Test.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {FaultManager} from "../src/FaultManager.sol";
import {InsurancePool} from "../src/InsurancePool.sol";
import {TestToken} from "../src/tokens/TestToken.sol";
import {IFaultManagerTypes} from "../src/interfaces/IFaultManager.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";
import {OperatorSet} from "../src/interfaces/eigenlayer/IAllocationManager.sol";

/// @dev Drives every money path (equivocation slashes, challenges resolved either way or expired,
///      coverage bought, claimed and expired) on the fixture's deployment, with ghost accounting.
contract FaultsHandler is PoolFixture {
    uint256 public bondsIn;
    uint256 public bondsOut;
    bool public doubleSlash;
    bool public capExceeded;
    uint256 public paidClaims;
    uint256 public paidRewards;
    mapping(bytes32 => bool) internal _slashed;
    uint256[] internal _open;
    /// @dev Upheld challenges whose signers are not all slashed yet.
    uint256[] internal _slashing;
    /// @dev Requests insured and then proven wrong by `insuredFraud`.
    bytes32[] internal _insured;
    uint256 internal _nextNonce = 100;
    uint64 internal _nextBatch = 1_000;

    constructor() {
        setUp();
        _setMaxSlashes(3); // the batch's 7 signers take three calls
    }

    function equivocate(uint256 sk, uint8 req, bool acceptReject) external {
        sk = bound(sk, 1, 8);
        bytes32 r = bytes32(uint256(req % 4));
        IFaultManagerTypes.SignedAttestation memory a = _signed(sk, _att(r, "o1", AvsMessages.Verdict.Accept));
        IFaultManagerTypes.SignedAttestation memory b = acceptReject
            ? _signed(sk, _att(r, "o1", AvsMessages.Verdict.Reject))
            : _signed(sk, _att(r, "o2", AvsMessages.Verdict.Accept));
        try faults.proveEquivocation(_id(sk), a, b) returns (bytes32 faultId) {
            if (_slashed[faultId]) doubleSlash = true;
            _slashed[faultId] = true;
        } catch {}
    }

    function challenge() external {
        vm.prank(CHALLENGER);
        try faults.challenge(batch, record, "req", "out", leafProof) returns (uint256 id) {
            bondsIn += BOND;
            _open.push(id);
        } catch {}
    }

    function resolve(bool reject) external {
        if (_open.length == 0) return;
        uint256 id = _open[_open.length - 1];
        vm.roll(block.number + 1);
        AvsMessages.Verdict v = reject ? AvsMessages.Verdict.Reject : AvsMessages.Verdict.Accept;
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", v), hex"0001", _none());
        IFaultManagerTypes.BatchSigners memory s = reject ? _batchSigners(batch, _one(8)) : _noSigners();
        try faults.resolveChallenge(id, v, uint32(block.number - 1), cert, s) {
            bondsOut += BOND;
            _open.pop();
            if (faults.getPendingSlashing(id).signersHash != 0) _slashing.push(id);
        } catch {}
    }

    function continueSlashing() external {
        if (_slashing.length == 0) return;
        uint256 id = _slashing[_slashing.length - 1];
        faults.continueSlashing(id, _batchSigners(batch, _one(8)));
        if (faults.getPendingSlashing(id).signersHash == 0) _slashing.pop();
    }

    function expire(uint8 blocks) external {
        vm.roll(block.number + blocks);
        if (_open.length == 0) return;
        try faults.expireChallenge(_open[_open.length - 1]) {
            bondsOut += BOND;
            _open.pop();
        } catch {}
    }

    function buy(uint96 amount, uint8 nonce) external {
        (AvsMessages.InferenceRequest memory r,) = _request(nonce % 4);
        // what one fraud at the 66.67% threshold slashes (FRAUD_WAD), less the 10% challenger reward
        uint256 cap = uint256(registry.getCurrentTotalStake(0)) * 6_667 * FRAUD_WAD / 1e22 * 9_000 / 10_000;
        vm.prank(REQUESTER);
        try pool.buyCoverage(r, 0, uint96(bound(amount, 1, 200 ether))) {
            if (pool.outstandingCoverage(0) > cap) capExceeded = true;
        } catch {}
    }

    function claimOrExpire(uint8 nonce) external {
        (, bytes32 h) = _request(nonce % 4);
        try pool.claim(h) returns (uint256 amount) {
            paidClaims += amount;
        } catch {}
        try pool.expireCoverage(h) {} catch {}
    }

    function claimReward() external {
        vm.prank(CHALLENGER);
        try pool.claimReward() returns (uint256 amount) {
            paidRewards += amount;
        } catch {}
    }

    /// @dev One insured fraud end to end: coverage bought on a new request, the request certified with
    ///      a wrong output in a new batch a block later, challenged, upheld and every signer slashed,
    ///      so that the payout is recorded (reserved, or owed with a slash resolution delay). A
    ///      resolution that fails (stakes gone stale, say) lets the challenge expire: its bond back.
    function insuredFraud(uint96 amount) external {
        uint256 available = pool.availableCoverage(0);
        if (available == 0) return;
        (AvsMessages.InferenceRequest memory r, bytes32 h) = _request(_nextNonce++);
        vm.prank(REQUESTER);
        try pool.buyCoverage(r, 0, uint96(bound(amount, 1, available))) {}
        catch {
            return;
        }
        _insured.push(h);
        vm.roll(block.number + 1);
        try this.certifyInsured(_nextBatch++, h) returns (
            AvsMessages.BatchHeader memory header, bytes32 rec, bytes32[] memory proof
        ) {
            vm.roll(block.number + 1);
            vm.prank(CHALLENGER);
            try faults.challenge(header, rec, h, "bad", proof) returns (uint256 id) {
                bondsIn += BOND;
                _upholdOrExpire(id, header, h);
            } catch {}
        } catch {}
    }

    function _upholdOrExpire(uint256 id, AvsMessages.BatchHeader memory header, bytes32 h) internal {
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest(h, "bad", AvsMessages.Verdict.Reject), hex"0001", _none());
        IFaultManagerTypes.BatchSigners memory s = _batchSigners(header, _none());
        try faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s) {
            bondsOut += BOND;
            while (faults.getPendingSlashing(id).signersHash != 0) {
                try faults.continueSlashing(id, s) {}
                catch {
                    return;
                }
            }
        } catch {
            (,,,, uint32 window,,) = faults.config();
            vm.roll(block.number + window + 1);
            faults.expireChallenge(id);
            bondsOut += BOND;
        }
    }

    /// @dev `_certifyLeaf` as an external call of the handler (the task manager's aggregator), so
    ///      that a refused certification can be caught.
    function certifyInsured(uint64 index, bytes32 h)
        external
        returns (AvsMessages.BatchHeader memory header, bytes32 rec, bytes32[] memory proof)
    {
        return _certifyLeaf(index, h, "bad", _none());
    }

    function claimInsured(uint8 i) external {
        if (_insured.length == 0) return;
        try pool.claim(_insured[i % _insured.length]) returns (uint256 amount) {
            paidClaims += amount;
        } catch {}
    }

    /// @dev Each insured request's claims paid plus what stays owed is at most its payout, and its
    ///      payout at most its coverage.
    function payoutsWithinEntitlement() external view returns (bool) {
        for (uint256 i; i < _insured.length; ++i) {
            bytes32 h = _insured[i];
            uint256 payout = pool.getCoverage(h).payout;
            if (pool.payoutPaid(h) + pool.payoutOwed(h) > payout || payout > pool.getCoverage(h).amount) return false;
        }
        return true;
    }

    function insuredCount() external view returns (uint256) {
        return _insured.length;
    }

    function insuredHash(uint256 i) external view returns (bytes32) {
        return _insured[i];
    }

    /// @dev Clears every slash of both quorums that can be cleared (anyone may).
    function clearSlashes() external {
        for (uint32 q; q < 2; ++q) {
            OperatorSet memory set = OperatorSet(address(registry), q);
            uint256 count = core.getSlashCount(set);
            for (uint256 id = 1; id <= count; ++id) {
                try core.clearBurnOrRedistributableShares(set, id) {} catch {}
            }
        }
    }

    /// @dev Payouts owed (the requests the handler insures, and the challenged one) plus rewards owed.
    function sumOwed() external view returns (uint256 sum) {
        sum = pool.rewardOwed(CHALLENGER) + pool.payoutOwed("req");
        for (uint256 nonce; nonce < 4; ++nonce) {
            (, bytes32 h) = _request(nonce);
            sum += pool.payoutOwed(h);
        }
        for (uint256 i; i < _insured.length; ++i) {
            sum += pool.payoutOwed(_insured[i]);
        }
    }

    function faultsAddress() external view returns (address) {
        return address(faults);
    }

    function poolAddress() external view returns (address) {
        return address(pool);
    }

    function openBonds() external view returns (uint256) {
        return _open.length * BOND;
    }

    /// @dev Challenges of leaf "req" not ended yet: open, or upheld with signers left to slash.
    function unfinishedChallenges() external view returns (uint256) {
        return _open.length + _slashing.length;
    }
}

/// @dev The handler on a core with a slash resolution delay (EigenLayer since v1.13): slashed tokens
///      reach the pool only when `clearSlashes` runs after the delay, so rewards are owed meanwhile.
contract FaultsDelayedHandler is FaultsHandler {
    constructor() {
        core.setSlashResolutionDelay(30);
    }
}

/// @notice Money paths: bonds are conserved (held == open bonds == in - out), the pool stays
///         solvent (balance >= claims reserved) and owes exactly what its owed payouts and rewards
///         add up to, outside its free balance, a fault is never slashed twice, and outstanding
///         coverage never exceeds the cap at purchase, and a request stays under challenge until an
///         upheld challenge on it has slashed every signer (over several calls at `maxSlashesPerCall` 3).
/// forge-config: default.invariant.runs = 16
/// forge-config: default.invariant.depth = 24
/// forge-config: default.invariant.fail-on-revert = true
/// forge-config: deep.invariant.runs = 128
/// forge-config: deep.invariant.depth = 64
/// forge-config: deep.invariant.fail-on-revert = true
contract FaultsInvariantTest is Test {
    FaultsHandler internal handler;

    function setUp() public {
        handler = _newHandler();
    }

    function _newHandler() internal virtual returns (FaultsHandler) {
        return new FaultsHandler();
    }

    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    function targetContracts() public view returns (address[] memory t) {
        t = new address[](1);
        t[0] = address(handler);
    }

    function targetSenders() public pure returns (address[] memory t) {
        t = new address[](1);
        t[0] = address(0x5E4D);
    }

    /// @dev Only the handler's actions (not the fixture's setUp and helpers).
    function targetSelectors() public view returns (FuzzSelector[] memory t) {
        bytes4[] memory s = new bytes4[](11);
        s[0] = FaultsHandler.equivocate.selector;
        s[1] = FaultsHandler.challenge.selector;
        s[2] = FaultsHandler.resolve.selector;
        s[3] = FaultsHandler.expire.selector;
        s[4] = FaultsHandler.buy.selector;
        s[5] = FaultsHandler.claimOrExpire.selector;
        s[6] = FaultsHandler.continueSlashing.selector;
        s[7] = FaultsHandler.claimReward.selector;
        s[8] = FaultsHandler.clearSlashes.selector;
        s[9] = FaultsHandler.insuredFraud.selector;
        s[10] = FaultsHandler.claimInsured.selector;
        t = new FuzzSelector[](1);
        t[0] = FuzzSelector(address(handler), s);
    }

    function invariant_bondsConserved() public view {
        FaultManager faults = _faults();
        uint256 held = TestToken(address(faults.bondToken())).balanceOf(address(faults));
        vm.assertEq(held, faults.totalBonds(), "held == recorded");
        vm.assertEq(held, handler.openBonds(), "held == open bonds");
        vm.assertEq(handler.bondsIn() - handler.bondsOut(), held, "in - out == held");
    }

    function invariant_poolSolvent() public view {
        InsurancePool pool = _pool();
        vm.assertGe(pool.asset().balanceOf(address(pool)), pool.totalClaimable(), "balance >= claimable");
    }

    /// @dev What is owed is the sum of the owed payouts and rewards, and never free.
    function invariant_poolOwesWhatItRecords() public view {
        InsurancePool pool = _pool();
        vm.assertEq(pool.totalOwed(), handler.sumOwed(), "totalOwed == sum owed");
        address challenger = address(0xC4A11); // FaultFixture's CHALLENGER, the only one
        vm.assertEq(pool.totalRewardsOwed(), pool.rewardOwed(challenger), "rewards owed == the challenger's");
        vm.assertLe(pool.rewardClaimable(challenger), pool.rewardOwed(challenger), "never more than owed");
        uint256 balance = pool.asset().balanceOf(address(pool));
        uint256 held = pool.totalClaimable() + pool.totalOwed();
        vm.assertEq(pool.freeBalance(), balance > held ? balance - held : 0, "free = balance - claimable - owed");
    }

    /// @dev A request stays under challenge until its upheld challenge has slashed every signer.
    function invariant_requestUnderChallengeUntilSlashingEnds() public view {
        vm.assertEq(_faults().openChallenges("req"), handler.unfinishedChallenges(), "open + slashing");
    }

    function invariant_payoutsWithinEntitlement() public view {
        vm.assertTrue(handler.payoutsWithinEntitlement(), "paid + owed <= payout <= coverage");
    }

    function invariant_neverSlashedTwice() public view {
        vm.assertFalse(handler.doubleSlash(), "a fault id slashed twice");
    }

    function invariant_coverageWithinCap() public view {
        vm.assertFalse(handler.capExceeded(), "coverage sold above cap");
    }

    function _faults() internal view returns (FaultManager) {
        return FaultManager(handler.faultsAddress());
    }

    function _pool() internal view returns (InsurancePool) {
        return InsurancePool(handler.poolAddress());
    }
}

/// @notice The same money rules with a slash resolution delay: rewards owed until the slash is cleared.
/// forge-config: default.invariant.runs = 16
/// forge-config: default.invariant.depth = 24
/// forge-config: default.invariant.fail-on-revert = true
/// forge-config: deep.invariant.runs = 128
/// forge-config: deep.invariant.depth = 64
/// forge-config: deep.invariant.fail-on-revert = true
contract FaultsDelayedInvariantTest is FaultsInvariantTest {
    function _newHandler() internal override returns (FaultsHandler) {
        return new FaultsDelayedHandler();
    }
}

contract FaultsHandlerSmokeTest is Test {
    function test_handler_actionsSucceed() public {
        FaultsHandler h = new FaultsHandler();
        h.equivocate(1, 0, false);
        h.challenge();
        h.buy(1 ether, 1);
        h.resolve(true);
        vm.assertEq(h.unfinishedChallenges(), 1, "slashing pending");
        h.continueSlashing();
        h.continueSlashing();
        vm.assertEq(h.unfinishedChallenges(), 0, "slashing done");
        h.claimOrExpire(1);
        vm.assertEq(h.bondsIn(), h.bondsOut(), "bond in and out");
    }

    function test_handler_insuredFraudPaysItsPayout() public {
        FaultsHandler h = new FaultsHandler();
        InsurancePool pool = InsurancePool(h.poolAddress());
        h.insuredFraud(10 ether);
        vm.assertEq(h.insuredCount(), 1, "insured");
        bytes32 req = h.insuredHash(0);
        uint256 amount = pool.getCoverage(req).amount; // about 10 ether (the handler bounds it)
        vm.assertEq(pool.getCoverage(req).payout, amount, "payout recorded");
        h.claimInsured(0);
        vm.assertEq(h.paidClaims(), amount, "paid");
        vm.assertEq(h.bondsIn(), h.bondsOut(), "bond back");
    }

    function test_delayedHandler_InsuredPayoutOwedUntilTheSlashIsCleared() public {
        FaultsHandler h = new FaultsDelayedHandler();
        InsurancePool pool = InsurancePool(h.poolAddress());
        h.insuredFraud(10 ether);
        bytes32 req = h.insuredHash(0);
        vm.assertGt(pool.payoutOwed(req), 0, "owed: the slash is not cleared");
        vm.assertEq(h.sumOwed(), pool.totalOwed(), "counted");
        h.expire(31);
        h.clearSlashes();
        h.claimInsured(0);
        vm.assertEq(pool.payoutOwed(req), 0, "paid once cleared");
        vm.assertEq(pool.payoutPaid(req), pool.getCoverage(req).amount, "in full");
    }

    function test_delayedHandler_RewardOwedUntilTheSlashIsCleared() public {
        FaultsHandler h = new FaultsDelayedHandler();
        InsurancePool pool = InsurancePool(h.poolAddress());
        h.challenge();
        h.resolve(true);
        h.continueSlashing();
        h.continueSlashing();
        uint256 owed = h.sumOwed();
        vm.assertGt(owed, 0, "the reward is owed");
        vm.assertEq(pool.totalOwed(), owed, "recorded");
        h.claimReward();
        vm.assertEq(h.paidRewards(), 0, "nothing to pay it with");
        h.expire(31);
        h.clearSlashes();
        h.claimReward();
        vm.assertEq(h.paidRewards(), owed, "paid once cleared");
        vm.assertEq(pool.totalOwed(), 0, "nothing owed");
    }
}
