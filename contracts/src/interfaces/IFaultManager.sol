// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {BN254} from "../libraries/BN254.sol";
import {AvsMessages} from "../libraries/AvsMessages.sol";
import {IBLSSignatureChecker} from "./IBLSSignatureChecker.sol";

/// @title IFaultManagerTypes
interface IFaultManagerTypes {
    /// @notice Governance parameters. Wads are fractions of 1e18 of an operator's allocation to a
    ///         quorum (EigenLayer's `wadsToSlash`).
    /// @param equivocationWad Slashed from an equivocating operator in every quorum that can slash it.
    /// @param rejectedOutputWad Slashed from a primary in the REJECT certificate's quorums.
    /// @param fraudWad Slashed from every signer of a batch whose leaf the escalation quorum rejected.
    /// @param escalationThresholdBps Stake share each escalation quorum must sign (>= the batch threshold).
    /// @param resolutionWindowBlocks Blocks after a challenge opens in which it can be resolved.
    /// @param challengeBond Bond (in `bondToken`) a challenger locks.
    /// @param maxSlashesPerCall Most (signer, quorum) slashes one transaction of an upheld challenge
    ///        makes (each ~219k gas before refunds, measured at scale in
    ///        `snapshots/ResolveChallengeScaleTest.json`; 64 are ~14M); more signers are slashed by
    ///        `continueSlashing`.
    ///        Keeps every step of a fraud resolution inside the block gas limit, whatever the size of
    ///        the batch's quorums.
    struct Config {
        uint64 equivocationWad;
        uint64 rejectedOutputWad;
        uint64 fraudWad;
        uint16 escalationThresholdBps;
        uint32 resolutionWindowBlocks;
        uint96 challengeBond;
        uint16 maxSlashesPerCall;
    }

    /// @notice An attestation with its signer's BLS signature over the attestation's AVS digest.
    struct SignedAttestation {
        AvsMessages.Attestation attestation;
        BN254.G1Point signature;
    }

    /// @notice Where a challenge stands. Open ends in exactly one of Upheld (escalation quorum
    ///         certified REJECT), Dismissed (it certified ACCEPT) or Expired (nobody resolved it
    ///         within the resolution window).
    enum ChallengeStatus {
        None,
        Open,
        Upheld,
        Dismissed,
        Expired
    }

    /// @notice A bonded challenge of one certified leaf. `certifiedBlock` and `batchCommitment`
    ///         (`AvsMessages.batchCommitment` of the certified header and signatory record) are
    ///         copied from the task manager when the challenge opens, so that its resolution does
    ///         not depend on the batch's record, whose ring slot may be reused once it is final.
    struct Challenge {
        address challenger;
        uint96 bond;
        bytes32 requestHash;
        bytes32 outputHash;
        uint64 batchIndex;
        uint32 openedBlock;
        ChallengeStatus status;
        uint32 certifiedBlock;
        uint32 resolutionWindowBlocks; // the config's when the challenge was opened: governance cannot shorten it
        bytes32 batchCommitment;
    }

    /// @notice The slashing of an upheld challenge that did not fit in one transaction.
    /// @param signersHash keccak256(abi.encode(header hash, signerIds, signerBitmapIndices)) of the
    ///        `BatchSigners` checked at resolution; zero when no slashing is pending.
    /// @param nextSigner Index in `signerIds` of the first signer not slashed yet.
    /// @param signerCount Length of `signerIds`.
    /// @param fraudWad `config.fraudWad` when the challenge was upheld: every signer of the batch is
    ///        slashed the same, whatever governance sets in between.
    /// @param progressBlock The block of the last call that slashed (resolution or continuation).
    /// @param stallBlocks The upheld challenge's own resolution window (`config.resolutionWindowBlocks`
    ///        when it was opened): governance may abandon the slashing only once nobody moved it on
    ///        for more than that many blocks after `progressBlock` (a window lowered after the
    ///        challenge opened does not shorten it).
    /// @param slashedAmount What the slashes so far are worth in the insurance pool's asset (the
    ///        challenger's reward is paid on the total).
    struct PendingSlashing {
        bytes32 signersHash;
        uint32 nextSigner;
        uint32 signerCount;
        uint64 fraudWad;
        uint32 progressBlock;
        uint32 stallBlocks;
        uint256 slashedAmount;
    }

    /// @notice Who signed a certified batch, for slashing them after an upheld challenge.
    /// @dev `nonSignerIds` must be exactly the certified list (checked through the batch's
    ///      signatory record hash); `signerIds` (strictly ascending) must be every other operator of
    ///      the batch's quorums at its reference block: per quorum, the G1 keys of the signers and
    ///      non-signers in it (bitmaps read from history at the given indices) must add up to the
    ///      quorum's aggregate key at the reference block (`quorumApkIndices`, one per quorum).
    struct BatchSigners {
        AvsMessages.BatchHeader header;
        bytes32[] nonSignerIds;
        uint32[] nonSignerBitmapIndices;
        bytes32[] signerIds;
        uint32[] signerBitmapIndices;
        uint32[] quorumApkIndices;
    }
}

/// @title IFaultManagerErrors
interface IFaultManagerErrors {
    /// @notice An attestation carries no verdict (Verdict.None), or the wrong one for this proof.
    error InvalidVerdict();
    /// @notice The two attestations do not conflict (see `isConflicting`).
    error NotConflicting();
    /// @notice The operator id has no registered key.
    error UnknownOperator(bytes32 operatorId);
    /// @notice An operator's BLS signature on an attestation is wrong.
    error InvalidAttestationSignature();
    /// @notice The pending slashing moved on within the last resolution window: it can be abandoned
    ///         only after block `abandonableAfter`.
    error SlashingNotStalled(uint256 challengeId, uint256 abandonableAfter);
    /// @notice This fault was already proven and slashed.
    error FaultAlreadySlashed(bytes32 faultId);
    /// @notice None of the quorums the operator would be slashed in can slash it (never in them,
    ///         or it left them more than the core's `DEALLOCATION_DELAY` blocks ago).
    error NotSlashable(bytes32 operatorId);
    /// @notice A certificate's reference block is older than the task manager's `maxReferenceAge`.
    error StaleReferenceBlock(uint32 referenceBlock);
    /// @notice A certificate's quorum did not reach the threshold.
    error ThresholdNotMet(uint8 quorumNumber, uint96 signedStake, uint96 totalStake);
    /// @notice The (request, output) leaf is not in the given certified batch.
    error LeafNotCertified();
    /// @notice The batch's challenge window is over.
    error ChallengeWindowClosed(uint64 batchIndex);
    /// @notice The leaf already has a challenge that is open or was resolved.
    error LeafAlreadyChallenged(uint256 challengeId);
    /// @notice The challenge is not open.
    error ChallengeNotOpen(uint256 challengeId);
    /// @notice The challenge's resolution window is over (it can only expire now).
    error ChallengeExpired(uint256 challengeId);
    /// @notice The challenge's resolution window is not over yet.
    error ChallengeNotExpired(uint256 challengeId);
    /// @notice An escalation certificate's reference block is before the challenge was opened.
    error ReferenceBlockBeforeChallenge(uint32 referenceBlock);
    /// @notice The batch header or non-signers given do not match the certified batch.
    error BatchMismatch();
    /// @notice Array lengths disagree.
    error LengthMismatch();
    /// @notice Signer ids are not strictly ascending.
    error SignersNotSorted();
    /// @notice The given signers and non-signers are not exactly the quorum's operators.
    error SignerSetIncomplete(uint8 quorumNumber);
    /// @notice A listed signer is also one of the batch's certified non-signers.
    error SignerIsNonSigner(bytes32 operatorId);
    /// @notice A listed signer was in none of the batch's quorums at its reference block.
    error NotInBatchQuorums(bytes32 operatorId);
    /// @notice A configuration value out of range.
    error InvalidConfig();
    /// @notice The challenge has no slashing left to do.
    error NoSlashingPending(uint256 challengeId);
    /// @notice The signers given are not those checked when the challenge was upheld.
    error SignersMismatch();
}

/// @title IFaultManagerEvents
interface IFaultManagerEvents {
    /// @notice Emitted when an operator is slashed for fault `faultId` in one quorum.
    event OperatorSlashed(
        bytes32 indexed faultId, bytes32 indexed operatorId, uint8 quorumNumber, uint256 wad, uint256 slashedShares
    );
    /// @notice Emitted when an equivocation is proven.
    event EquivocationProven(bytes32 indexed faultId, bytes32 indexed operatorId, bytes32 indexed requestHash);
    /// @notice Emitted when a rejected output is proven against its primary.
    event RejectedOutputProven(
        bytes32 indexed faultId, bytes32 indexed operatorId, bytes32 indexed requestHash, bytes32 outputHash
    );
    /// @notice Emitted when a leaf is challenged.
    event ChallengeOpened(
        uint256 indexed challengeId,
        uint64 indexed batchIndex,
        bytes32 indexed requestHash,
        bytes32 outputHash,
        address challenger,
        uint96 bond
    );
    /// @notice Emitted when a challenge ends (Upheld, Dismissed or Expired).
    event ChallengeClosed(
        uint256 indexed challengeId,
        IFaultManagerTypes.ChallengeStatus status,
        uint256 slashedAmount,
        uint256 challengerReward
    );
    /// @notice Emitted when an upheld challenge's slashing stops at `maxSlashesPerCall`:
    ///         `continueSlashing` goes on from signer `nextSigner` of `signerCount`.
    event SlashingPending(uint256 indexed challengeId, uint256 nextSigner, uint256 signerCount);
    /// @notice Emitted when governance ends a pending slashing that cannot go on (`abandonSlashing`):
    ///         signers from `nextSigner` on are not slashed for this challenge.
    event SlashingAbandoned(uint256 indexed challengeId, uint256 nextSigner, uint256 signerCount);
    /// @notice Emitted when governance parameters change.
    event ConfigSet(IFaultManagerTypes.Config config, bytes escalationQuorumNumbers);
}

/// @title IFaultManager
/// @notice Proofs of operator faults, each slashing through the registry's `slashOperator` on the
///         redistributing operator sets whose recipient is the insurance pool.
interface IFaultManager is IFaultManagerTypes, IFaultManagerErrors, IFaultManagerEvents {
    /// @notice Slashes `operatorId` for signing two conflicting attestations (`isConflicting`).
    /// @return faultId keccak256(abi.encode("EQUIVOCATION", operatorId, requestHash)).
    function proveEquivocation(bytes32 operatorId, SignedAttestation calldata a, SignedAttestation calldata b)
        external
        returns (bytes32 faultId);

    /// @notice Slashes primary `operatorId`, which signed `accept` (verdict ACCEPT), given a certificate of
    ///         REJECT for the same (request, output) by `quorumNumbers` at `referenceBlock` that meets
    ///         the task manager's threshold and more than half of each quorum's stake
    ///         (`MIN_REJECTION_THRESHOLD_BPS`). Slashes in those of `quorumNumbers` not slashed for this
    ///         fault yet (each quorum's majority judges the stake in that quorum); reverts with
    ///         `FaultAlreadySlashed` when there is none.
    /// @return faultId keccak256(abi.encode("REJECTED_OUTPUT", operatorId, requestHash)).
    function proveRejectedOutput(
        bytes32 operatorId,
        SignedAttestation calldata accept,
        bytes calldata quorumNumbers,
        uint32 referenceBlock,
        IBLSSignatureChecker.NonSignerStakesAndSignature calldata certificate
    ) external returns (bytes32 faultId);

    /// @notice Challenges leaf (requestHash, outputHash) of certified batch `header` within its
    ///         challenge window, locking `config.challengeBond` of `bondToken` from the caller.
    function challenge(
        AvsMessages.BatchHeader calldata header,
        bytes32 signatoryRecordHash,
        bytes32 requestHash,
        bytes32 outputHash,
        bytes32[] calldata proof
    ) external returns (uint256 challengeId);

    /// @notice Resolves an open challenge with a certificate of the escalation quorum on
    ///         Attestation(requestHash, outputHash, verdict). REJECT upholds it: every signer of the
    ///         batch (`signers`) is slashed `fraudWad` once per batch, the bond is returned, the pool
    ///         pays the insured requester and rewards the challenger. ACCEPT dismisses it: the bond
    ///         goes to the pool. `signers` is ignored for ACCEPT.
    ///         REJECT slashes at most `config.maxSlashesPerCall` (signer, quorum) pairs; if signers are
    ///         left, it emits `SlashingPending` and the challenge is Upheld but its request stays under
    ///         challenge, and the pool is not told, until `continueSlashing` has slashed the rest;
    ///         `ChallengeClosed` comes with the last slash.
    function resolveChallenge(
        uint256 challengeId,
        AvsMessages.Verdict verdict,
        uint32 referenceBlock,
        IBLSSignatureChecker.NonSignerStakesAndSignature calldata certificate,
        BatchSigners calldata signers
    ) external;

    /// @notice Slashes the next signers of upheld challenge `challengeId` (at most
    ///         `config.maxSlashesPerCall` slashes); with the last one, records the fraud in the pool
    ///         (payout, challenger's reward on all shares slashed) and emits `ChallengeClosed`.
    ///         Anyone may call it, with the same `signers` that resolved the challenge.
    function continueSlashing(uint256 challengeId, BatchSigners calldata signers) external;

    /// @notice Governance's way out of a pending slashing that keeps reverting (e.g. this contract
    ///         was removed as the registry's slasher): closes the challenge with the shares slashed
    ///         so far, which records the fraud in the pool like the last `continueSlashing` would
    ///         (`signers` as for `continueSlashing`: the batch's quorums come from its header).
    ///         Without it the request would stay under challenge for good (its coverage neither
    ///         claimable nor expirable). Only once no call has slashed for more than the
    ///         resolution window of the upheld challenge (`PendingSlashing.stallBlocks`;
    ///         `SlashingNotStalled` before): governance cannot spare the remaining signers of a
    ///         slashing that anyone can still move on.
    function abandonSlashing(uint256 challengeId, BatchSigners calldata signers) external;

    /// @notice The pending slashing of challenge `challengeId` (zero `signersHash`: none).
    function getPendingSlashing(uint256 challengeId) external view returns (PendingSlashing memory);

    /// @notice Ends a challenge nobody resolved within the resolution window: the bond goes back
    ///         to the challenger and nobody is slashed.
    function expireChallenge(uint256 challengeId) external;

    /// @notice Whether one operator signing both `a` and `b` is an equivocation: for one request,
    ///         two different verdicts on the same output, or ACCEPT of two different outputs.
    function isConflicting(AvsMessages.Attestation calldata a, AvsMessages.Attestation calldata b)
        external
        pure
        returns (bool);

    /// @notice The digest an operator BLS-signs for `attestation`.
    function attestationDigest(AvsMessages.Attestation calldata attestation) external view returns (bytes32);

    /// @notice Number of open challenges on leaves of `requestHash`.
    function openChallenges(bytes32 requestHash) external view returns (uint256);

    /// @notice The stake share, in bps of each escalation quorum, that a certificate resolving a
    ///         challenge needs now: `config.escalationThresholdBps`, raised to the task manager's
    ///         batch threshold and to `MIN_REJECTION_THRESHOLD_BPS` (a majority) when below either.
    function escalationThresholdBps() external view returns (uint16);

    /// @notice Governance parameters (the public getter of `Config config`, one value per field).
    function config()
        external
        view
        returns (
            uint64 equivocationWad,
            uint64 rejectedOutputWad,
            uint64 fraudWad,
            uint16 escalationThresholdBps,
            uint32 resolutionWindowBlocks,
            uint96 challengeBond,
            uint16 maxSlashesPerCall
        );

    /// @notice Challenge `challengeId`.
    function getChallenge(uint256 challengeId) external view returns (Challenge memory);

    /// @notice Whether fault `faultId` was slashed.
    function isFaultSlashed(bytes32 faultId) external view returns (bool);
}
