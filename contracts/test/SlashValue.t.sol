// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {ChallengeFixture} from "./FaultManager.t.sol";
import {RateStrategy} from "./utils/RateStrategy.sol";
import {LocalStrategy} from "../src/core/LocalStrategy.sol";
import {TestToken} from "../src/tokens/TestToken.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {IInsurancePoolTypes} from "../src/interfaces/IInsurancePool.sol";
import {IFaultManagerTypes} from "../src/interfaces/IFaultManager.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";

/// @notice Payout budgets and challenger rewards count slashed stake at what it is worth in the pool's
///         asset, not in strategy shares (a review finding, 2026-11-29): shares of an LST strategy are
///         not one token each, and shares of a strategy of another token bring the pool none of its
///         asset, so counting shares let a batch's payouts and rewards exceed what its slash brought.
contract SlashValueTest is ChallengeFixture {
    function _newStrategy(TestToken stakeToken) internal override returns (LocalStrategy) {
        return new RateStrategy(stakeToken);
    }

    function _rateStrategy() internal view returns (RateStrategy) {
        return RateStrategy(address(strategy));
    }

    /// @dev Insures request 1 for `amount`, then batch 1 certifies a wrong output for it (operator 8
    ///      does not sign), which is challenged and resolved REJECT: signers 1..7 in quorum 0 lose half
    ///      their stake, 115 ether of shares.
    function _insureAndReject(uint96 amount) internal returns (uint256 id) {
        (AvsMessages.InferenceRequest memory r, bytes32 requestHash) = _request(1);
        vm.prank(REQUESTER);
        pool.buyCoverage(r, 0, amount);
        vm.roll(block.number + 1);
        (batch, record, leafProof) = _certifyLeaf(1, requestHash, "bad", _one(8));
        vm.roll(block.number + 1);
        vm.prank(CHALLENGER);
        id = faults.challenge(batch, record, requestHash, "bad", leafProof);
        vm.roll(block.number + 1);
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest(requestHash, "bad", AvsMessages.Verdict.Reject), hex"0001", _none());
        faults.resolveChallenge(
            id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, _batchSigners(batch, _one(8))
        );
    }

    function test_resolveChallenge_ValuesSharesAtTheStrategysRate() public {
        _rateStrategy().setRate(1, 2); // a share is worth half a token
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        _insureAndReject(1 ether);
        vm.assertEq(faults.batchSlashedAmount(1), 57.5 ether, "115 ether of shares at half a token each");
        vm.assertEq(token.balanceOf(CHALLENGER), challengerBefore + 5.75 ether, "bond back + 10% of the value");
    }

    function test_resolveChallenge_SharesOfAnotherTokenFundNoPayout() public {
        token.mint(address(pool), 1000 ether); // other money in the pool: premiums, other batches
        uint96 amount = uint96(pool.availableCoverage(0));
        _rateStrategy().reportToken(new TestToken("Other", "OTH")); // the quorum's stake is another token
        uint256 challengerBefore = token.balanceOf(CHALLENGER);
        bytes32 requestHash = faults.getChallenge(_insureAndReject(amount)).requestHash;
        vm.assertEq(faults.batchSlashedAmount(1), 0, "no asset slashed");
        IInsurancePoolTypes.Coverage memory c = pool.getCoverage(requestHash);
        vm.assertTrue(c.status == IInsurancePoolTypes.CoverageStatus.Claimable, "the fraud is recorded");
        vm.assertEq(c.payout, 0, "nothing of the pool's other money");
        vm.assertEq(token.balanceOf(CHALLENGER), challengerBefore, "bond back, no reward");
    }

    /// A strategy whose views revert (a paused LST) blocked every slash once the fault manager read
    /// them (a review of the valuation): it counts nothing, and the slash goes through.
    function test_resolveChallenge_AStrategyWhoseViewsRevertCountsNothingAndTheSlashGoesOn() public {
        uint96 stakeBefore = registry.getCurrentStake(_id(7), 0);
        _rateStrategy().setBroken(true);
        uint256 id = _insureAndReject(1 ether);
        vm.assertTrue(faults.getChallenge(id).status == IFaultManagerTypes.ChallengeStatus.Upheld, "upheld");
        vm.assertEq(registry.getCurrentStake(_id(7), 0), stakeBefore / 2, "slashed all the same");
        vm.assertEq(faults.batchSlashedAmount(1), 0, "valued at nothing");
    }

    function test_resolveChallenge_OneTokenAShareIsPaidAsBefore() public {
        uint256 id = _insureAndReject(1 ether);
        vm.assertEq(faults.batchSlashedAmount(1), 115 ether, "shares at one token each");
        IInsurancePoolTypes.Coverage memory c = pool.getCoverage(faults.getChallenge(id).requestHash);
        vm.assertEq(c.payout, 1 ether, "paid in full");
    }
}
