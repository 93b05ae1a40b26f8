// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {AvsMessages} from "./libraries/AvsMessages.sol";
import {QuorumBitmaps} from "./libraries/QuorumBitmaps.sol";
import {IOperatorRegistry} from "./interfaces/IOperatorRegistry.sol";
import {IFaultManager} from "./interfaces/IFaultManager.sol";
import {IInsurancePool} from "./interfaces/IInsurancePool.sol";
import {InferenceTaskManager} from "./InferenceTaskManager.sol";

/// @title InsurancePool
/// @notice Attributable security. The redistribution recipient of the AVS's operator sets: slashed
///         stake, premiums and forfeited challenge bonds accumulate here, in `asset` (the stake token).
///         A requester insures one request against one quorum; the coverage outstanding against a
///         quorum is capped (`coverageCap`) at what one fraud certified at the task manager's
///         threshold slashes from that quorum, less the challenger's reward on it (and at most
///         `coverageCapBps` of its current total slashable stake), so what is sold is backed by
///         stake that fraud would slash. After an upheld fraud challenge on the request (in a batch
///         signed by that quorum, certified within the coverage's term) the coverage becomes
///         claimable. A payout or reward the pool cannot fund when the fraud is recorded is owed
///         and paid later (`claim`, `claimReward`): on EigenLayer with a slash resolution delay
///         (v1.13, ELIP-016) the slashed tokens reach the pool only when the slash is cleared, days
///         after the resolution.
/// @dev Money rules:
///      - solvency: the balance never falls below `totalClaimable` (what fraud entitles a payout or
///        reward to is reserved or sent only up to the free balance, balance - totalClaimable -
///        totalOwed, when fraud is recorded, the requester first, then the challenger; the rest is
///        owed, `totalOwed`, and paid only from the balance above `totalClaimable`);
///      - owed before free: `freeBalance` leaves out what is owed, so governance cannot withdraw it
///        and a fraud recorded later reserves nothing of it (it is owed in turn); owed payouts are
///        paid, first come first served, as money arrives, and owed rewards only from what is left
///        once every owed payout is funded (insured requesters first, as at recording);
///      - no profit from one's own fraud: the payouts of one fraudulent batch plus the challengers'
///        rewards are at most what its fraud slashed, valued in `asset` (`batchPayoutBudget`; the
///        fault manager values slashed shares at their strategy's rate, and shares of a strategy of
///        another token at nothing), so colluding requester,
///        signers and challenger cannot take other money of the pool, even when the quorum's stake
///        fell between the purchase and the batch (the cap then over-sold: payouts are cut to the
///        budget, in the order the batch's frauds are recorded); entitlements count whether funded
///        now or owed;
///      - coverage ends exactly once: Claimable -> Claimed (once its payout is fully paid, over one
///        claim or several), or Expired (premium kept) when its term and the challenge window after
///        it are over or its request is a leaf of a final batch, never while a challenge on it is open;
///      - the cap is checked at purchase against the stake and parameters of then; a later fall of
///        stake (or change of threshold, fraudWad or reward) does not cancel coverage already sold.
contract InsurancePool is IInsurancePool, Ownable {
    /// @notice The longest coverage term governance may set.
    uint32 public constant MAX_COVERAGE_TERM_BLOCKS = 100_000_000;
    using SafeERC20 for IERC20;
    using QuorumBitmaps for uint256;

    /// @notice The token of premiums, payouts and slashed stake.
    IERC20 public immutable asset;
    /// @notice The operator registry (quorum stakes).
    IOperatorRegistry public immutable registry;
    /// @notice The task manager (request hashes, batch finality, leaves).
    InferenceTaskManager public immutable taskManager;
    /// @notice The fault manager (set once).
    IFaultManager public faultManager;
    /// @notice Governance parameters.
    Config public config;
    /// @notice Coverage outstanding (active) against each quorum.
    mapping(uint8 => uint256) public outstandingCoverage;
    /// @notice Sum of claimable, unpaid coverage (reserved in the balance).
    uint256 public totalClaimable;
    /// @notice Requests with an upheld fraud challenge.
    mapping(bytes32 => bool) public fraudProven;

    mapping(bytes32 => Coverage) private _coverage;
    /// @notice The block each request's coverage was bought in: only coverage bought before the block
    ///         that certified its batch pays (nobody insures an output already certified).
    mapping(bytes32 => uint32) public coverageBoughtAt;
    /// @notice What each batch's recorded fraud slashed, less the challengers' rewards and the
    ///         payouts already granted on it: the most its other insured requests can still be paid.
    mapping(uint64 => uint256) public batchPayoutBudget;
    /// @notice What a batch's recorded frauds set aside for challenger rewards and did not pay yet.
    mapping(uint64 => uint256) public batchRewardReserve;
    /// @notice Sum of payouts and rewards owed and not funded yet (`payoutOwed`, `rewardOwed`): left
    ///         out of the free balance, paid by `claim` and `claimReward` as money arrives.
    uint256 public totalOwed;
    /// @notice The part of each coverage's payout that is owed (not funded yet).
    mapping(bytes32 => uint256) public payoutOwed;
    /// @notice What each coverage's claims paid so far (of `payout`).
    mapping(bytes32 => uint256) public payoutPaid;
    /// @notice Rewards owed to each challenger (not funded yet).
    mapping(address => uint256) public rewardOwed;
    /// @notice Sum of `rewardOwed` (the rest of `totalOwed` is owed payouts, paid first).
    uint256 public totalRewardsOwed;

    /// @param asset_ The stake token.
    /// @param registry_ The operator registry.
    /// @param taskManager_ The task manager.
    /// @param owner_ Governance.
    /// @param config_ Premium, cap, challenger reward, coverage term.
    constructor(
        IERC20 asset_,
        IOperatorRegistry registry_,
        InferenceTaskManager taskManager_,
        address owner_,
        Config memory config_
    ) Ownable(owner_) {
        asset = asset_;
        registry = registry_;
        taskManager = taskManager_;
        _setConfig(config_);
    }

    /// @notice Sets the fault manager, once.
    function setFaultManager(IFaultManager faultManager_) external onlyOwner {
        if (address(faultManager) != address(0)) revert FaultManagerAlreadySet();
        faultManager = faultManager_;
        emit FaultManagerSet(address(faultManager_));
    }

    /// @notice Sets premium, cap, challenger reward and coverage term (for coverage bought from now on).
    function setConfig(Config calldata config_) external onlyOwner {
        _setConfig(config_);
    }

    /// @notice Withdraws `amount` of the free balance (balance - totalClaimable - totalOwed) to `to`.
    function withdrawSurplus(address to, uint256 amount) external onlyOwner {
        uint256 free = freeBalance();
        if (amount > free) revert InsufficientSurplus(amount, free);
        emit SurplusWithdrawn(to, amount);
        asset.safeTransfer(to, amount);
    }

    /// @notice Sends `amount` of `token`, any token but the asset, to `to`. A quorum's strategies may
    ///         hold other tokens than the asset (an LST beside its base token, say): their slashed
    ///         stake is redistributed here too, and premiums and payouts are in the asset only, so
    ///         governance takes them out (to convert them to the asset and send it back, say).
    function recoverToken(IERC20 token, address to, uint256 amount) external onlyOwner {
        if (address(token) == address(asset)) revert CannotRecoverAsset();
        emit TokenRecovered(address(token), to, amount);
        token.safeTransfer(to, amount);
    }

    /// @inheritdoc IInsurancePool
    function buyCoverage(AvsMessages.InferenceRequest calldata request, uint8 quorumNumber, uint96 amount)
        external
        returns (bytes32 requestHash, uint256 premium)
    {
        if (msg.sender != request.requester) revert NotRequester();
        if (amount == 0) revert ZeroCoverage();
        requestHash = AvsMessages.digest(taskManager.domainSeparator(), AvsMessages.hash(request));
        if (_coverage[requestHash].status != CoverageStatus.None) revert CoverageExists(requestHash);
        if (fraudProven[requestHash]) revert FraudAlreadyProven(requestHash);
        if (faultManager.openChallenges(requestHash) != 0) revert RequestUnderChallenge(requestHash);
        uint256 available = availableCoverage(quorumNumber);
        if (amount > available) revert CoverageAboveCap(quorumNumber, amount, available);
        Config memory cfg = config;
        premium = (uint256(amount) * cfg.premiumBps + 9_999) / 10_000;
        uint32 expiresAt = SafeCast.toUint32(block.number + cfg.coverageTermBlocks);
        _coverage[requestHash] = Coverage(msg.sender, quorumNumber, CoverageStatus.Active, expiresAt, amount, 0);
        coverageBoughtAt[requestHash] = uint32(block.number);
        outstandingCoverage[quorumNumber] += amount;
        emit CoverageBought(requestHash, msg.sender, quorumNumber, amount, premium, expiresAt);
        if (premium != 0) asset.safeTransferFrom(msg.sender, address(this), premium);
    }

    /// @inheritdoc IInsurancePool
    /// @dev The coverage insures a certification of its request in a block up to `expiresAtBlock`
    ///      (`recordFraud`); such a batch can be challenged up to the task manager's
    ///      `challengeDeadline(certifiedBlock)` (`FaultManager.challenge`), and
    ///      `challengeDeadline(expiresAtBlock)` is the latest of those of every batch certified up
    ///      to `expiresAtBlock`, so only after it is every batch that the
    ///      coverage could pay for final, and a challenge opened in its window holds the expiry off
    ///      (`openChallenges`) until it ends. `maxReferenceAge` plays no part: the window runs from
    ///      the certified block, whatever the reference block.
    function expireCoverage(bytes32 requestHash) external {
        Coverage storage c = _requireExpirable(requestHash);
        if (block.number <= taskManager.challengeDeadline(c.expiresAtBlock)) revert CoverageNotExpired(requestHash);
        _expire(requestHash, c);
    }

    /// @inheritdoc IInsurancePool
    /// @dev Only the beneficiary: a request may be a leaf of several batches, with other outputs, and
    ///      only its requester knows which one it was given. Anyone else could end the coverage on a
    ///      final batch with the right output while the batch with the wrong output the requester got
    ///      was still open to challenge, and that fraud then paid nothing; others wait for `expireCoverage`.
    function expireCoverageOnFinalBatch(
        AvsMessages.BatchHeader calldata header,
        bytes32 signatoryRecordHash,
        bytes32 requestHash,
        bytes32 outputHash,
        bytes32[] calldata proof
    ) external {
        Coverage storage c = _requireExpirable(requestHash);
        if (msg.sender != c.beneficiary) revert NotRequester();
        if (!taskManager.isBatchFinal(header.batchIndex)) revert BatchNotFinal(header.batchIndex);
        if (!taskManager.verifyLeaf(header, signatoryRecordHash, requestHash, outputHash, proof)) {
            revert LeafNotCertified();
        }
        _expire(requestHash, c);
    }

    /// @inheritdoc IInsurancePool
    function recordFraud(
        bytes32 requestHash,
        uint64 batchIndex,
        bytes calldata quorumNumbers,
        uint32 certifiedBlock,
        address challenger,
        uint256 slashedAmount,
        uint256 newBatchAmount
    ) external returns (uint256 payout, uint256 reward) {
        if (msg.sender != address(faultManager)) revert OnlyFaultManager();
        fraudProven[requestHash] = true;
        uint256 rewardShare = (newBatchAmount * config.challengerRewardBps + 9_999) / 10_000; // rounded up
        uint256 budget = batchPayoutBudget[batchIndex] + newBatchAmount - rewardShare;
        payout = _makeClaimable(requestHash, quorumNumbers, certifiedBlock, budget);
        batchPayoutBudget[batchIndex] = budget - payout;
        reward = _takeReward(batchIndex, slashedAmount, rewardShare);
        uint256 free = freeBalance(); // the payout is reserved already
        uint256 sent = reward < free ? reward : free;
        uint256 owed = reward - sent;
        if (owed != 0) {
            rewardOwed[challenger] += owed;
            totalOwed += owed;
            totalRewardsOwed += owed;
            emit RewardOwed(challenger, requestHash, owed);
        }
        emit FraudRecorded(requestHash, challenger, payout, reward);
        if (sent != 0) asset.safeTransfer(challenger, sent);
    }

    /// @dev Active coverage of `requestHash` against one of `quorumNumbers` becomes claimable, for
    ///      its amount up to `budget` (what the free balance covers is reserved, the rest owed),
    ///      unless it was bought once the output was certified or its term ended before; returns the
    ///      payout. A fraud in a batch the coverage
    ///      does not pay for leaves it as it is: another batch of the request, within the term, may
    ///      be under challenge still, and the payout must not depend on which is resolved first.
    function _makeClaimable(bytes32 requestHash, bytes calldata quorumNumbers, uint32 certifiedBlock, uint256 budget)
        private
        returns (uint256 payout)
    {
        Coverage storage c = _coverage[requestHash];
        bool covered = c.status == CoverageStatus.Active
            && uint256(QuorumBitmaps.orderedToBitmap(quorumNumbers)).has(c.quorumNumber);
        if (!covered) return 0;
        if (coverageBoughtAt[requestHash] >= certifiedBlock || certifiedBlock > c.expiresAtBlock) {
            // bought once this output was certified (insurance after the fact), or certified after
            // the term: not paid, and the coverage ends by its term (`expireCoverage`) as if this
            // batch had not been
            return 0;
        }
        payout = c.amount < budget ? c.amount : budget;
        uint256 free = freeBalance();
        uint256 owed = payout > free ? payout - free : 0;
        c.status = CoverageStatus.Claimable;
        c.payout = uint96(payout);
        outstandingCoverage[c.quorumNumber] -= c.amount;
        totalClaimable += payout - owed;
        if (owed != 0) {
            payoutOwed[requestHash] = owed;
            totalOwed += owed;
            emit PayoutOwed(requestHash, owed);
        }
    }

    /// @dev The challenger's reward on its challenge's `slashedAmount`, from what the batch's reports
    ///      set aside for rewards (`batchRewardReserve`, to which `rewardShare` is added first): a
    ///      slash's reward is set aside when the slash is reported, maybe by a sibling challenge
    ///      before this one closes, and a reward raised by governance in between must not be paid
    ///      from other money. Sent now or owed (`recordFraud`).
    function _takeReward(uint64 batchIndex, uint256 slashedAmount, uint256 rewardShare)
        private
        returns (uint256 reward)
    {
        uint256 reserve = batchRewardReserve[batchIndex] + rewardShare;
        reward = slashedAmount * config.challengerRewardBps / 10_000;
        if (reward > reserve) reward = reserve;
        batchRewardReserve[batchIndex] = reserve - reward;
    }

    /// @inheritdoc IInsurancePool
    function claim(bytes32 requestHash) external returns (uint256 amount) {
        Coverage storage c = _coverage[requestHash];
        if (c.status == CoverageStatus.Claimed) revert AlreadyClaimed(requestHash);
        if (c.status != CoverageStatus.Claimable) revert NothingToClaim(requestHash);
        uint256 owed = payoutOwed[requestHash];
        uint256 paid = payoutPaid[requestHash];
        uint256 reserved = c.payout - paid - owed; // 0 after the first claim
        uint256 late = 0;
        if (owed != 0) {
            uint256 unreserved = _unreservedBalance();
            late = owed < unreserved ? owed : unreserved;
            if (reserved + late == 0) revert ClaimNotFunded(requestHash, owed);
            owed -= late;
            payoutOwed[requestHash] = owed;
            totalOwed -= late;
        }
        amount = reserved + late;
        totalClaimable -= reserved;
        if (owed == 0) c.status = CoverageStatus.Claimed;
        if (amount != 0) payoutPaid[requestHash] = paid + amount;
        emit Claimed(requestHash, c.beneficiary, amount);
        if (owed != 0) emit PayoutOwed(requestHash, owed);
        if (amount != 0) asset.safeTransfer(c.beneficiary, amount);
    }

    /// @inheritdoc IInsurancePool
    function claimReward() external returns (uint256 amount) {
        uint256 owed = rewardOwed[msg.sender];
        if (owed == 0) revert NoRewardOwed(msg.sender);
        amount = rewardClaimable(msg.sender);
        if (amount == 0) revert RewardNotFunded(msg.sender, owed);
        rewardOwed[msg.sender] = owed - amount;
        totalOwed -= amount;
        totalRewardsOwed -= amount;
        emit RewardClaimed(msg.sender, amount, owed - amount);
        asset.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc IInsurancePool
    function rewardClaimable(address challenger) public view returns (uint256) {
        uint256 owedPayouts = totalOwed - totalRewardsOwed;
        uint256 unreserved = _unreservedBalance();
        uint256 available = unreserved > owedPayouts ? unreserved - owedPayouts : 0;
        uint256 owed = rewardOwed[challenger];
        return owed < available ? owed : available;
    }

    /// @inheritdoc IInsurancePool
    function getCoverage(bytes32 requestHash) external view returns (Coverage memory) {
        return _coverage[requestHash];
    }

    /// @inheritdoc IInsurancePool
    function availableCoverage(uint8 quorumNumber) public view returns (uint256) {
        uint256 cap = coverageCap(quorumNumber);
        uint256 used = outstandingCoverage[quorumNumber];
        return cap > used ? cap - used : 0;
    }

    /// @inheritdoc IInsurancePool
    /// @dev stake = the quorum's current total stake. A batch is certified when each of its quorums'
    ///      signers hold at least `thresholdBps` of its total stake, and an upheld challenge slashes
    ///      each signer `fraudWad` of its allocation, so one fraud slashes at least
    ///      stake * thresholdBps / 10_000 * fraudWad / 1e18 from the quorum (up to a wei per signer
    ///      of rounding), of which the pool pays the challenger `challengerRewardBps`. Every payout
    ///      of the batch's requests covered against the quorum comes out of the coverage outstanding
    ///      against it, so capping that at the rest keeps payouts + reward within the slash.
    ///      Stake is counted in strategy shares, read as units of `asset`: exact for a strategy of the
    ///      asset at one share a token; with another rate or another token in the quorum the cap is
    ///      an estimate, and a payout beyond what the slash is worth in `asset` is cut to it (budget).
    function coverageCap(uint8 quorumNumber) public view returns (uint256) {
        IFaultManager faults = faultManager;
        if (address(faults) == address(0)) return 0; // nothing slashes yet
        uint256 stake = registry.getCurrentTotalStake(quorumNumber);
        Config memory cfg = config;
        (uint16 thresholdBps,,) = taskManager.config();
        (,, uint64 fraudWad,,,,) = faults.config();
        uint256 slashed = stake * thresholdBps * fraudWad / (10_000 * 1e18);
        uint256 cap = slashed * (10_000 - cfg.challengerRewardBps) / 10_000;
        uint256 governanceCap = stake * cfg.coverageCapBps / 10_000;
        return cap < governanceCap ? cap : governanceCap;
    }

    /// @notice The balance neither reserved for claims nor owed: balance - totalClaimable - totalOwed,
    ///         0 while what is owed exceeds what is not reserved.
    function freeBalance() public view returns (uint256) {
        uint256 unreserved = _unreservedBalance();
        return unreserved > totalOwed ? unreserved - totalOwed : 0;
    }

    /// @dev The balance not reserved for claims (balance - totalClaimable), what owed payouts and
    ///      rewards are paid from; 0 if the balance fell below what is reserved (an asset whose
    ///      balances rebase down): a checked subtraction there would revert every `recordFraud`, so
    ///      that no challenge could be upheld until someone topped the pool up.
    function _unreservedBalance() private view returns (uint256) {
        uint256 balance = asset.balanceOf(address(this));
        return balance > totalClaimable ? balance - totalClaimable : 0;
    }

    function _requireExpirable(bytes32 requestHash) private view returns (Coverage storage c) {
        c = _coverage[requestHash];
        if (c.status != CoverageStatus.Active) revert CoverageNotActive(requestHash);
        if (faultManager.openChallenges(requestHash) != 0) revert RequestUnderChallenge(requestHash);
    }

    function _expire(bytes32 requestHash, Coverage storage c) private {
        c.status = CoverageStatus.Expired;
        outstandingCoverage[c.quorumNumber] -= c.amount;
        emit CoverageExpired(requestHash);
    }

    function _setConfig(Config memory c) private {
        if (c.premiumBps > 10_000 || c.coverageCapBps > 10_000 || c.challengerRewardBps > 10_000) {
            revert InvalidConfig();
        }
        // block.number + term must fit the uint32 `expiresAtBlock`: a wrapped term would expire at
        // once, and a fraud certified "after" it would pay nothing (~38 years of 12 s blocks).
        if (c.coverageTermBlocks == 0 || c.coverageTermBlocks > MAX_COVERAGE_TERM_BLOCKS) revert InvalidConfig();
        config = c;
        emit ConfigSet(c);
    }
}
