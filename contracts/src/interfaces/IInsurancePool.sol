// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {AvsMessages} from "../libraries/AvsMessages.sol";

/// @title IInsurancePoolTypes
interface IInsurancePoolTypes {
    /// @notice Governance parameters.
    /// @param premiumBps Premium as a share of the coverage bought (rounded up).
    /// @param coverageCapBps Share of a quorum's current total (slashable) stake that coverage
    ///        outstanding against it may reach at most; the pool caps it lower still, at what one
    ///        fraud at the task manager's threshold slashes less the challenger's reward
    ///        (`coverageCap`), whichever is less.
    /// @param challengerRewardBps Share of the shares slashed on an upheld challenge paid to the challenger.
    /// @param coverageTermBlocks Blocks after purchase in which a certification of the request is
    ///        covered (up to `expiresAtBlock`); the coverage can expire once the challenge window
    ///        after that is over too.
    struct Config {
        uint16 premiumBps;
        uint16 coverageCapBps;
        uint16 challengerRewardBps;
        uint32 coverageTermBlocks;
    }

    /// @notice Where a coverage stands: Active until it becomes Claimable (fraud proven on its
    ///         request in a batch of its quorum) then Claimed, or Expired.
    enum CoverageStatus {
        None,
        Active,
        Claimable,
        Claimed,
        Expired
    }

    /// @notice Coverage of one request. `expiresAtBlock`: the last block whose certification of the
    ///         request the coverage pays for (its term); `expireCoverage` ends it only after
    ///         the task manager's `challengeDeadline(expiresAtBlock)`. `payout`: what an upheld fraud
    ///         entitles it to (0 until then), funded now or owed (`payoutOwed`, `payoutPaid`).
    struct Coverage {
        address beneficiary;
        uint8 quorumNumber;
        CoverageStatus status;
        uint32 expiresAtBlock;
        uint96 amount;
        uint96 payout;
    }
}

/// @title IInsurancePoolErrors
interface IInsurancePoolErrors {
    /// @notice Only the fault manager may call.
    error OnlyFaultManager();
    /// @notice The fault manager is already set.
    error FaultManagerAlreadySet();
    /// @notice Only the request's requester may insure it.
    error NotRequester();
    /// @notice Zero coverage.
    error ZeroCoverage();
    /// @notice The request is already covered.
    error CoverageExists(bytes32 requestHash);
    /// @notice The request has no active coverage.
    error CoverageNotActive(bytes32 requestHash);
    /// @notice The request is under an open challenge (no purchase, no expiry meanwhile).
    error RequestUnderChallenge(bytes32 requestHash);
    /// @notice Fraud was already proven for the request.
    error FraudAlreadyProven(bytes32 requestHash);
    /// @notice Outstanding coverage against the quorum would exceed its cap.
    error CoverageAboveCap(uint8 quorumNumber, uint256 requested, uint256 available);
    /// @notice The coverage term, or the challenge window after it, is not over.
    error CoverageNotExpired(bytes32 requestHash);
    /// @notice The batch is not final.
    error BatchNotFinal(uint64 batchIndex);
    /// @notice The (request, output) leaf is not in the given certified batch.
    error LeafNotCertified();
    /// @notice The coverage was already claimed.
    error AlreadyClaimed(bytes32 requestHash);
    /// @notice Nothing is claimable for the request.
    error NothingToClaim(bytes32 requestHash);
    /// @notice The coverage's payout is owed (`owed` of it) and the pool holds nothing unreserved to
    ///         pay it with yet (e.g. the batch's slashed tokens are not cleared to the pool yet).
    error ClaimNotFunded(bytes32 requestHash, uint256 owed);
    /// @notice No reward is owed to the caller.
    error NoRewardOwed(address challenger);
    /// @notice The caller is owed `owed` of rewards and the pool holds nothing unreserved to pay it with yet.
    error RewardNotFunded(address challenger, uint256 owed);
    /// @notice The withdrawal exceeds the pool's free balance.
    error InsufficientSurplus(uint256 requested, uint256 available);
    /// @notice A configuration value out of range.
    error InvalidConfig();
    /// @notice `recoverToken` of the pool's asset (that goes through `withdrawSurplus`).
    error CannotRecoverAsset();
}

/// @title IInsurancePoolEvents
interface IInsurancePoolEvents {
    /// @notice Emitted when coverage is bought.
    event CoverageBought(
        bytes32 indexed requestHash,
        address indexed beneficiary,
        uint8 quorumNumber,
        uint96 amount,
        uint256 premium,
        uint32 expiresAtBlock
    );
    /// @notice Emitted when coverage expires (premium kept).
    event CoverageExpired(bytes32 indexed requestHash);
    /// @notice Emitted when fraud on a request is recorded: the coverage's payout and the challenger's
    ///         reward it is entitled to, funded now or owed (`PayoutOwed`, `RewardOwed`).
    event FraudRecorded(bytes32 indexed requestHash, address indexed challenger, uint256 payout, uint256 reward);
    /// @notice Emitted when `owed` of the coverage's payout stays owed (not funded yet), when fraud is
    ///         recorded and after a claim that paid part of it: the amount still owed in all.
    event PayoutOwed(bytes32 indexed requestHash, uint256 owed);
    /// @notice Emitted when `amount` of a challenger's reward on fraud on `requestHash` is owed, not
    ///         paid (added to `rewardOwed(challenger)`).
    event RewardOwed(address indexed challenger, bytes32 indexed requestHash, uint256 amount);
    /// @notice Emitted when a claim pays `amount` (all of the payout, or part while `PayoutOwed` follows).
    event Claimed(bytes32 indexed requestHash, address indexed beneficiary, uint256 amount);
    /// @notice Emitted when a challenger collects `amount` of its owed rewards; `stillOwed` remains.
    event RewardClaimed(address indexed challenger, uint256 amount, uint256 stillOwed);
    /// @notice Emitted when governance withdraws surplus.
    event SurplusWithdrawn(address indexed to, uint256 amount);
    /// @notice Emitted when governance sends a token other than the asset out of the pool.
    event TokenRecovered(address indexed token, address indexed to, uint256 amount);
    /// @notice Emitted when the fault manager is set.
    event FaultManagerSet(address faultManager);
    /// @notice Emitted when governance parameters change.
    event ConfigSet(IInsurancePoolTypes.Config config);
}

/// @title IInsurancePool
/// @notice Attributable security: the recipient of slashed stake of the AVS's redistributing
///         operator sets, which sells per-request coverage capped by the slashable stake of a quorum
///         and pays it out after an upheld fraud challenge.
interface IInsurancePool is IInsurancePoolTypes, IInsurancePoolErrors, IInsurancePoolEvents {
    /// @notice The token of premiums, payouts and slashed stake.
    function asset() external view returns (IERC20);

    /// @notice Buys `amount` of coverage of `request` (caller must be its requester) against
    ///         `quorumNumber`, paying the premium in `asset`.
    function buyCoverage(AvsMessages.InferenceRequest calldata request, uint8 quorumNumber, uint96 amount)
        external
        returns (bytes32 requestHash, uint256 premium);

    /// @notice Expires active coverage (premium kept) once its term and the challenge window after it
    ///         are over: block.number > the task manager's `challengeDeadline(expiresAtBlock)`,
    ///         when every batch certified within the term is final; never while a challenge on the
    ///         request is open. Permissionless.
    function expireCoverage(bytes32 requestHash) external;

    /// @notice Expires active coverage of a request that is a leaf of a final batch (no open challenge);
    ///         only its beneficiary (the requester), who knows which batch its output came from.
    function expireCoverageOnFinalBatch(
        AvsMessages.BatchHeader calldata header,
        bytes32 signatoryRecordHash,
        bytes32 requestHash,
        bytes32 outputHash,
        bytes32[] calldata proof
    ) external;

    /// @notice Records fraud proven on `requestHash` in batch `batchIndex` of `quorumNumbers`
    ///         certified in block `certifiedBlock`, whose resolution slashed `slashedAmount` (fault
    ///         manager only; amounts are slashed stake valued in `asset`); `newBatchAmount` was slashed
    ///         in the batch since the last call for it (by this challenge and others of the batch) and
    ///         goes to its budget less the challengers' share:
    ///         coverage against one of those quorums, bought before that block and with
    ///         `certifiedBlock` <= its `expiresAtBlock`, becomes claimable (up to the free balance and
    ///         to what the batch's frauds slashed and have not paid out yet, `batchPayoutBudget`);
    ///         coverage bought once the wrong output was certified for all to see, or whose term ended
    ///         before the certification, is not paid for this batch and stays as it is (another batch
    ///         of the request may be under challenge still); it ends by its term. Then the challenger
    ///         is paid `challengerRewardBps` of `slashedAmount` (up to what the batch set aside for
    ///         rewards, `batchRewardReserve`).
    ///         The payout and the reward are entitlements, not cut by the pool's money: of each, what
    ///         the free balance covers now is reserved (payout) or sent (reward), the requester first;
    ///         the rest is owed (`payoutOwed`, `rewardOwed`, in `totalOwed`) and paid by `claim` and
    ///         `claimReward` once the pool holds it (on EigenLayer with a slash resolution delay the
    ///         slashed tokens arrive only when the slash is cleared, after the delay).
    /// @return payout The coverage's payout (0 when it does not pay for this batch).
    /// @return reward The challenger's reward, sent now or owed.
    function recordFraud(
        bytes32 requestHash,
        uint64 batchIndex,
        bytes calldata quorumNumbers,
        uint32 certifiedBlock,
        address challenger,
        uint256 slashedAmount,
        uint256 newBatchAmount
    ) external returns (uint256 payout, uint256 reward);

    /// @notice Pays claimable coverage of `requestHash` to its beneficiary: its reserved part and as much
    ///         of its owed part as the pool's unreserved balance (balance - totalClaimable) covers now.
    ///         The coverage stays Claimable while part of it is owed (claim again later), Claimed once
    ///         fully paid; reverts `ClaimNotFunded` when it would pay nothing. Permissionless.
    /// @return amount What this call paid.
    function claim(bytes32 requestHash) external returns (uint256 amount);

    /// @notice Pays the caller as much of the rewards owed to it (`rewardOwed`) as
    ///         `rewardClaimable` says; reverts `NoRewardOwed` or `RewardNotFunded` when it would pay
    ///         nothing.
    /// @return amount What this call paid.
    function claimReward() external returns (uint256 amount);

    /// @notice What `claimReward` would pay `challenger` now: its owed rewards, up to the pool's
    ///         unreserved balance (balance - totalClaimable) less every owed payout (insured
    ///         requesters are paid first: found in review, a challenger's daemon claiming at each
    ///         poll took money that arrived before the requester claimed).
    function rewardClaimable(address challenger) external view returns (uint256);

    /// @notice Coverage of `requestHash`.
    function getCoverage(bytes32 requestHash) external view returns (Coverage memory);

    /// @notice How much more coverage may be sold against `quorumNumber` now: `coverageCap` less the
    ///         coverage outstanding against it.
    function availableCoverage(uint8 quorumNumber) external view returns (uint256);

    /// @notice The most coverage that may be outstanding against `quorumNumber` now: what one fraud
    ///         certified at the task manager's `thresholdBps` slashes from the quorum (`fraudWad` of
    ///         that share of its current total stake) less the challenger's `challengerRewardBps` of
    ///         it, and at most `coverageCapBps` of the stake; 0 until the fault manager is set.
    function coverageCap(uint8 quorumNumber) external view returns (uint256);
}
