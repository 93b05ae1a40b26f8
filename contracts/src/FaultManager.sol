// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {BN254} from "./libraries/BN254.sol";
import {BLSSignatures} from "./libraries/BLSSignatures.sol";
import {AvsMessages} from "./libraries/AvsMessages.sol";
import {QuorumBitmaps} from "./libraries/QuorumBitmaps.sol";
import {StrategyOrder} from "./libraries/StrategyOrder.sol";
import {IOperatorRegistry} from "./interfaces/IOperatorRegistry.sol";
import {IStrategy} from "./interfaces/eigenlayer/IStrategy.sol";
import {IAllocationManager, OperatorSet} from "./interfaces/eigenlayer/IAllocationManager.sol";
import {IBLSSignatureChecker} from "./interfaces/IBLSSignatureChecker.sol";
import {IFaultManager} from "./interfaces/IFaultManager.sol";
import {IInsurancePool} from "./interfaces/IInsurancePool.sol";
import {InferenceTaskManager} from "./InferenceTaskManager.sol";

/// @title FaultManager
/// @notice On-chain proofs of the three faults of the AVS (equivocation, rejected output, escalated
///         fraud), each slashing through `OperatorRegistry.slashOperator` ->
///         `AllocationManager.slashOperator` on the quorums' redistributing operator sets, whose
///         recipient is the insurance pool.
/// @dev Every fault has an id; a fault id is slashed at most once (a rejected output once per quorum):
///      - equivocation: ("EQUIVOCATION", operatorId, requestHash), slashed in every quorum that can slash it;
///      - rejected output: ("REJECTED_OUTPUT", operatorId, requestHash), in the certificate's quorums not
///        slashed for it yet (marked as keccak256(abi.encode(faultId, quorumNumber)));
///      - escalated fraud: ("BATCH_FRAUD", operatorId, batchIndex), in the batch's quorums: fraud in
///        several leaves of one batch slashes each signer once (later upheld challenges of that batch
///        still pay their requesters and challengers).
///      The registry must list this contract as a slasher.
contract FaultManager is IFaultManager, Ownable {
    using SafeERC20 for IERC20;
    using QuorumBitmaps for uint256;
    using BN254 for BN254.G1Point;

    uint256 internal constant WAD = 1e18;
    bytes32 internal constant EQUIVOCATION = "EQUIVOCATION";
    bytes32 internal constant REJECTED_OUTPUT = "REJECTED_OUTPUT";
    bytes32 internal constant BATCH_FRAUD = "BATCH_FRAUD";
    /// @notice A rejection certificate needs more than half of each quorum's stake, whatever the task
    ///         manager's (possibly lower) certification threshold: otherwise a small minority could
    ///         slash an honest primary by rejecting its correct output.
    uint16 public constant MIN_REJECTION_THRESHOLD_BPS = 5_001;
    /// @notice Gas each strategy view of a slash's valuation may use (`_assetValue`).
    uint256 public constant VALUATION_GAS = 100_000;

    /// @notice The operator registry (keys, histories, slashing).
    IOperatorRegistry public immutable registry;
    /// @notice The task manager (domain, batch records, signature checking, batch config).
    InferenceTaskManager public immutable taskManager;
    /// @notice The insurance pool (recipient of forfeited bonds, payer of claims and rewards).
    IInsurancePool public immutable pool;
    /// @notice The token challengers bond.
    IERC20 public immutable bondToken;

    /// @notice Governance parameters.
    Config public config;
    /// @notice Quorums whose certificate resolves a challenge, each at `escalationThresholdBps`.
    bytes public escalationQuorumNumbers;
    /// @notice Number of challenges opened (ids start at 1).
    uint256 public challengeCount;
    /// @notice Sum of the bonds of open challenges (what this contract holds).
    uint256 public totalBonds;
    /// @inheritdoc IFaultManager
    mapping(bytes32 => uint256) public openChallenges;
    /// @inheritdoc IFaultManager
    mapping(bytes32 => bool) public isFaultSlashed;
    /// @notice The latest challenge of each leaf keccak256(batchIndex, requestHash, outputHash).
    mapping(bytes32 => uint256) public latestChallengeOfLeaf;

    /// @notice What fraud in each batch slashed, by all its upheld challenges, valued in the pool's
    ///         asset (`_slash`).
    mapping(uint64 => uint256) public batchSlashedAmount;

    mapping(uint256 => Challenge) private _challenges;
    mapping(uint256 => PendingSlashing) private _pendingSlashing;
    /// @dev The part of `batchSlashedAmount` the insurance pool has been told of.
    mapping(uint64 => uint256) private _batchAmountRecorded;
    /// @dev The pool's asset and the registry's AllocationManager, read once (`_assetValue`).
    IERC20 private immutable _poolAsset;
    IAllocationManager private immutable _allocationManager;

    /// @param registry_ The operator registry (which must list this contract as a slasher).
    /// @param taskManager_ The task manager.
    /// @param pool_ The insurance pool.
    /// @param bondToken_ The bond token.
    /// @param owner_ Governance.
    /// @param config_ Slashing fractions, escalation threshold, resolution window, bond.
    /// @param escalationQuorumNumbers_ Strictly ascending quorums of the escalation quorum.
    constructor(
        IOperatorRegistry registry_,
        InferenceTaskManager taskManager_,
        IInsurancePool pool_,
        IERC20 bondToken_,
        address owner_,
        Config memory config_,
        bytes memory escalationQuorumNumbers_
    ) Ownable(owner_) {
        registry = registry_;
        taskManager = taskManager_;
        pool = pool_;
        bondToken = bondToken_;
        _poolAsset = pool_.asset();
        _allocationManager = registry_.allocationManager();
        _setConfig(config_, escalationQuorumNumbers_);
    }

    /// @notice Sets the governance parameters and the escalation quorums (applies to challenges
    ///         resolved from now on; each challenge keeps the bond it locked).
    function setConfig(Config calldata config_, bytes calldata escalationQuorumNumbers_) external onlyOwner {
        _setConfig(config_, escalationQuorumNumbers_);
    }

    /*//////////////////////////////////////////////////////////////
                              equivocation
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IFaultManager
    function proveEquivocation(bytes32 operatorId, SignedAttestation calldata a, SignedAttestation calldata b)
        external
        returns (bytes32 faultId)
    {
        if (!isConflicting(a.attestation, b.attestation)) revert NotConflicting();
        faultId = keccak256(abi.encode(EQUIVOCATION, operatorId, a.attestation.requestHash));
        if (isFaultSlashed[faultId]) revert FaultAlreadySlashed(faultId);
        _verifyOperatorSignature(operatorId, a);
        _verifyOperatorSignature(operatorId, b);
        isFaultSlashed[faultId] = true;
        emit EquivocationProven(faultId, operatorId, a.attestation.requestHash);
        if (_slash(faultId, operatorId, type(uint192).max, config.equivocationWad) == type(uint256).max) {
            revert NotSlashable(operatorId);
        }
    }

    /// @inheritdoc IFaultManager
    function isConflicting(AvsMessages.Attestation calldata a, AvsMessages.Attestation calldata b)
        public
        pure
        returns (bool)
    {
        if (a.verdict == AvsMessages.Verdict.None || b.verdict == AvsMessages.Verdict.None) {
            revert InvalidVerdict();
        }
        if (a.requestHash != b.requestHash) return false;
        if (a.outputHash == b.outputHash) return a.verdict != b.verdict;
        return a.verdict == AvsMessages.Verdict.Accept && b.verdict == AvsMessages.Verdict.Accept;
    }

    /*//////////////////////////////////////////////////////////////
                             rejected output
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IFaultManager
    function proveRejectedOutput(
        bytes32 operatorId,
        SignedAttestation calldata accept,
        bytes calldata quorumNumbers,
        uint32 referenceBlock,
        IBLSSignatureChecker.NonSignerStakesAndSignature calldata certificate
    ) external returns (bytes32 faultId) {
        AvsMessages.Attestation calldata att = accept.attestation;
        if (att.verdict != AvsMessages.Verdict.Accept) revert InvalidVerdict();
        faultId = keccak256(abi.encode(REJECTED_OUTPUT, operatorId, att.requestHash));
        // Each quorum's majority judges the operator's stake in that quorum only, so a proof slashes
        // the certificate's quorums not yet slashed for this fault: one by a small quorum cannot use
        // the fault up and spare the stake in the others.
        uint256 mask = QuorumBitmaps.orderedToBitmap(quorumNumbers);
        for (uint8 q; mask >> q != 0; ++q) {
            if (mask.has(q) && isFaultSlashed[_quorumFaultId(faultId, q)]) mask &= ~(uint256(1) << q);
        }
        if (mask == 0) revert FaultAlreadySlashed(faultId);
        _verifyOperatorSignature(operatorId, accept);
        (uint16 thresholdBps,,) = taskManager.config();
        if (thresholdBps < MIN_REJECTION_THRESHOLD_BPS) thresholdBps = MIN_REJECTION_THRESHOLD_BPS;
        bytes32 rejectDigest = _digest(att.requestHash, att.outputHash, AvsMessages.Verdict.Reject);
        _checkCertificate(rejectDigest, quorumNumbers, referenceBlock, certificate, thresholdBps);
        isFaultSlashed[faultId] = true;
        for (uint8 q; mask >> q != 0; ++q) {
            if (mask.has(q)) isFaultSlashed[_quorumFaultId(faultId, q)] = true;
        }
        emit RejectedOutputProven(faultId, operatorId, att.requestHash, att.outputHash);
        if (_slash(faultId, operatorId, mask, config.rejectedOutputWad) == type(uint256).max) {
            revert NotSlashable(operatorId);
        }
    }

    /*//////////////////////////////////////////////////////////////
                             escalated fraud
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IFaultManager
    function challenge(
        AvsMessages.BatchHeader calldata header,
        bytes32 signatoryRecordHash,
        bytes32 requestHash,
        bytes32 outputHash,
        bytes32[] calldata proof
    ) external returns (uint256 challengeId) {
        if (!taskManager.verifyLeaf(header, signatoryRecordHash, requestHash, outputHash, proof)) {
            revert LeafNotCertified();
        }
        uint32 certifiedBlock = taskManager.getBatch(header.batchIndex).certifiedBlock;
        if (block.number > taskManager.challengeDeadline(certifiedBlock)) {
            revert ChallengeWindowClosed(header.batchIndex);
        }
        bytes32 leafKey = keccak256(abi.encode(header.batchIndex, requestHash, outputHash));
        uint256 previous = latestChallengeOfLeaf[leafKey];
        if (previous != 0 && _challenges[previous].status != ChallengeStatus.Expired) {
            revert LeafAlreadyChallenged(previous);
        }
        uint96 bond = config.challengeBond;
        challengeId = ++challengeCount;
        _challenges[challengeId] = Challenge(
            msg.sender,
            bond,
            requestHash,
            outputHash,
            header.batchIndex,
            uint32(block.number),
            ChallengeStatus.Open,
            certifiedBlock,
            config.resolutionWindowBlocks,
            AvsMessages.batchCommitment(AvsMessages.hash(header), signatoryRecordHash)
        );
        latestChallengeOfLeaf[leafKey] = challengeId;
        ++openChallenges[requestHash];
        totalBonds += bond;
        emit ChallengeOpened(challengeId, header.batchIndex, requestHash, outputHash, msg.sender, bond);
        if (bond != 0) bondToken.safeTransferFrom(msg.sender, address(this), bond);
    }

    /// @inheritdoc IFaultManager
    function resolveChallenge(
        uint256 challengeId,
        AvsMessages.Verdict verdict,
        uint32 referenceBlock,
        IBLSSignatureChecker.NonSignerStakesAndSignature calldata certificate,
        BatchSigners calldata signers
    ) external {
        Challenge storage c = _challenges[challengeId];
        if (c.status != ChallengeStatus.Open) revert ChallengeNotOpen(challengeId);
        Config memory cfg = config;
        if (block.number > uint256(c.openedBlock) + c.resolutionWindowBlocks) revert ChallengeExpired(challengeId);
        if (referenceBlock < c.openedBlock) revert ReferenceBlockBeforeChallenge(referenceBlock);
        if (verdict == AvsMessages.Verdict.None) revert InvalidVerdict();
        _checkCertificate(
            _digest(c.requestHash, c.outputHash, verdict),
            escalationQuorumNumbers,
            referenceBlock,
            certificate,
            _escalationThresholdBps(cfg)
        );
        totalBonds -= c.bond;
        if (verdict == AvsMessages.Verdict.Accept) {
            --openChallenges[c.requestHash];
            c.status = ChallengeStatus.Dismissed;
            emit ChallengeClosed(challengeId, ChallengeStatus.Dismissed, 0, 0);
            if (c.bond != 0) bondToken.safeTransfer(address(pool), c.bond);
            return;
        }
        c.status = ChallengeStatus.Upheld;
        uint256[] memory refBitmaps = _checkSigners(c, signers);
        if (c.bond != 0) bondToken.safeTransfer(c.challenger, c.bond);
        PendingSlashing memory start =
            PendingSlashing(0, 0, uint32(signers.signerIds.length), cfg.fraudWad, 0, c.resolutionWindowBlocks, 0);
        _slashSigners(challengeId, c, signers, start, refBitmaps);
    }

    /// @inheritdoc IFaultManager
    function continueSlashing(uint256 challengeId, BatchSigners calldata signers) external {
        PendingSlashing memory p = _requirePending(challengeId, signers);
        _slashSigners(challengeId, _challenges[challengeId], signers, p, new uint256[](0));
    }

    /// @inheritdoc IFaultManager
    function abandonSlashing(uint256 challengeId, BatchSigners calldata signers) external onlyOwner {
        PendingSlashing memory p = _requirePending(challengeId, signers);
        uint256 abandonableAfter = uint256(p.progressBlock) + p.stallBlocks;
        if (block.number <= abandonableAfter) revert SlashingNotStalled(challengeId, abandonableAfter);
        emit SlashingAbandoned(challengeId, p.nextSigner, p.signerCount);
        delete _pendingSlashing[challengeId];
        _closeUpheld(challengeId, _challenges[challengeId], signers.header, p.slashedAmount);
    }

    /// @inheritdoc IFaultManager
    function expireChallenge(uint256 challengeId) external {
        Challenge storage c = _challenges[challengeId];
        if (c.status != ChallengeStatus.Open) revert ChallengeNotOpen(challengeId);
        if (block.number <= uint256(c.openedBlock) + c.resolutionWindowBlocks) {
            revert ChallengeNotExpired(challengeId);
        }
        --openChallenges[c.requestHash];
        totalBonds -= c.bond;
        c.status = ChallengeStatus.Expired;
        emit ChallengeClosed(challengeId, ChallengeStatus.Expired, 0, 0);
        if (c.bond != 0) bondToken.safeTransfer(c.challenger, c.bond);
    }

    /*//////////////////////////////////////////////////////////////
                                  views
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IFaultManager
    function attestationDigest(AvsMessages.Attestation calldata attestation) public view returns (bytes32) {
        return _digest(attestation.requestHash, attestation.outputHash, attestation.verdict);
    }

    /// @inheritdoc IFaultManager
    function getChallenge(uint256 challengeId) external view returns (Challenge memory) {
        return _challenges[challengeId];
    }

    /// @inheritdoc IFaultManager
    function getPendingSlashing(uint256 challengeId) external view returns (PendingSlashing memory) {
        return _pendingSlashing[challengeId];
    }

    /*//////////////////////////////////////////////////////////////
                                internals
    //////////////////////////////////////////////////////////////*/

    /// @dev The key that marks fault `faultId` as slashed in quorum `quorumNumber`.
    function _quorumFaultId(bytes32 faultId, uint8 quorumNumber) private pure returns (bytes32) {
        return keccak256(abi.encode(faultId, quorumNumber));
    }

    function _digest(bytes32 requestHash, bytes32 outputHash, AvsMessages.Verdict verdict)
        private
        view
        returns (bytes32)
    {
        return AvsMessages.digest(
            taskManager.domainSeparator(), AvsMessages.hash(AvsMessages.Attestation(requestHash, outputHash, verdict))
        );
    }

    /// @dev Checks `s.signature` on the attestation's digest against the operator's registered G1
    ///      and G2 keys (one randomised pairing check; keys never change, so any block will do).
    function _verifyOperatorSignature(bytes32 operatorId, SignedAttestation calldata s) private view {
        if (s.attestation.verdict == AvsMessages.Verdict.None) revert InvalidVerdict();
        (BN254.G1Point memory pkG1, BN254.G2Point memory pkG2) = registry.getOperatorPubkeys(operatorId);
        if (pkG1.X == 0 && pkG1.Y == 0) revert UnknownOperator(operatorId);
        BN254.G1Point memory sig = s.signature;
        if (!BN254.isOnCurve(sig)) revert InvalidAttestationSignature();
        (bool ok, bool valid) =
            BLSSignatures.trySignatureAndApkVerification(attestationDigest(s.attestation), pkG1, pkG2, sig);
        if (!ok || !valid) revert InvalidAttestationSignature();
    }

    /// @dev Checks a quorum certificate on `digest` at a fresh `referenceBlock` and that each quorum
    ///      signed at least `thresholdBps` of its stake.
    function _checkCertificate(
        bytes32 digest,
        bytes memory quorumNumbers,
        uint32 referenceBlock,
        IBLSSignatureChecker.NonSignerStakesAndSignature calldata certificate,
        uint16 thresholdBps
    ) private view {
        (, uint32 maxAge,) = taskManager.config();
        if (uint256(referenceBlock) + maxAge < block.number) revert StaleReferenceBlock(referenceBlock);
        (IBLSSignatureChecker.QuorumStakeTotals memory totals,) =
            taskManager.checkSignatures(digest, quorumNumbers, referenceBlock, certificate);
        for (uint256 i; i < quorumNumbers.length; ++i) {
            uint96 signed = totals.signedStakeForQuorum[i];
            uint96 total = totals.totalStakeForQuorum[i];
            if (total == 0 || uint256(signed) * 10_000 < uint256(total) * thresholdBps) {
                revert ThresholdNotMet(uint8(quorumNumbers[i]), signed, total);
            }
        }
    }

    /// @dev Slashes `operatorId` by `wad` in each quorum of `mask` whose operator set can still slash
    ///      it (`isOperatorSlashable`: an operator that deregistered after its fault stays slashable
    ///      for EigenLayer's `DEALLOCATION_DELAY`); returns what the slash is worth in the pool's asset
    ///      (`_assetValue`), or type(uint256).max if no such quorum can.
    function _slash(bytes32 faultId, bytes32 operatorId, uint256 mask, uint64 wad) private returns (uint256 total) {
        uint256 bitmap = mask & registry.quorumBitmap();
        address operator = registry.getOperatorFromId(operatorId);
        bool slashable;
        for (uint8 q; bitmap >> q != 0; ++q) {
            if (!bitmap.has(q) || !registry.isOperatorSlashable(operator, q)) continue;
            slashable = true;
            uint256[] memory shares = registry.slashOperator(operator, q, wad, "avs fault");
            uint256 sum;
            for (uint256 i; i < shares.length; ++i) {
                sum += shares[i];
            }
            total += _assetValue(q, shares);
            emit OperatorSlashed(faultId, operatorId, q, wad, sum);
        }
        if (!slashable) return type(uint256).max;
    }

    /// @dev What `shares` slashed from quorum `q`'s strategies (in `StrategyOrder`) are worth in the
    ///      pool's asset: a strategy's shares at its rate (`sharesToUnderlyingView`; an LST strategy's
    ///      share is not one token), nothing for a strategy of another token (the pool receives that
    ///      token, which pays no claim until governance converts it: `recoverToken`). Payout budgets
    ///      and challenger rewards are counted in this value, so they never exceed what the slash
    ///      brings the pool in its asset. A strategy whose views revert (a paused or upgraded LST) or
    ///      run past `VALUATION_GAS` counts nothing: the slash itself must never fail on them. (Return
    ///      data that does not decode still reverts, as Solidity's try does not catch it: the set's
    ///      strategies are EigenLayer's, whose views return what their interface says.)
    function _assetValue(uint8 q, uint256[] memory shares) private view returns (uint256 value) {
        IStrategy[] memory strategies = StrategyOrder.sortAscending(
            _allocationManager.getStrategiesInOperatorSet(OperatorSet(address(registry), q))
        );
        for (uint256 i; i < shares.length && i < strategies.length; ++i) {
            if (shares[i] != 0) value += _valueOf(strategies[i], shares[i]);
        }
    }

    function _valueOf(IStrategy strategy, uint256 shares) private view returns (uint256) {
        try strategy.underlyingToken{gas: VALUATION_GAS}() returns (IERC20 token) {
            if (token != _poolAsset) return 0;
        } catch {
            return 0;
        }
        try strategy.sharesToUnderlyingView{gas: VALUATION_GAS}(shares) returns (uint256 amount) {
            return amount;
        } catch {
            return 0;
        }
    }

    /// @dev Slashes the signers of upheld challenge `c` from `p.nextSigner` on, `p.fraudWad` each,
    ///      once per batch, until `maxSlashesPerCall` (signer, quorum) slashes are used (always at
    ///      least one signer, so that every call makes progress). A zero `p.signersHash` is the first
    ///      call, from `resolveChallenge`, with every signer's bitmap at the reference block restricted
    ///      to the batch's quorums in `refBitmaps`; a continuation reads them again from history. With
    ///      the last signer the challenge closes; before it, where it stopped is stored.
    function _slashSigners(
        uint256 challengeId,
        Challenge storage c,
        BatchSigners calldata s,
        PendingSlashing memory p,
        uint256[] memory refBitmaps
    ) private {
        bool resumed = p.signersHash != 0;
        uint256 mask = resumed ? QuorumBitmaps.orderedToBitmap(s.header.quorumNumbers) : 0;
        uint256 amountBefore = p.slashedAmount;
        uint256 budget = config.maxSlashesPerCall;
        uint256 next = p.nextSigner;
        for (uint256 used; next < p.signerCount; ++next) {
            bytes32 faultId = keccak256(abi.encode(BATCH_FRAUD, s.signerIds[next], c.batchIndex));
            if (isFaultSlashed[faultId]) continue; // slashed for another leaf of this batch
            uint256 bitmap =
                resumed ? _refBitmap(s.header, s.signerIds[next], s.signerBitmapIndices[next], mask) : refBitmaps[next];
            uint256 slashes = bitmap.countOnes();
            if (used != 0 && used + slashes > budget) break;
            used += slashes;
            isFaultSlashed[faultId] = true;
            uint256 slashed = _slash(faultId, s.signerIds[next], bitmap, p.fraudWad);
            if (slashed != type(uint256).max) p.slashedAmount += slashed;
        }
        batchSlashedAmount[c.batchIndex] += p.slashedAmount - amountBefore;
        if (next < p.signerCount) {
            if (!resumed) p.signersHash = _signersHash(s);
            p.nextSigner = uint32(next);
            p.progressBlock = uint32(block.number);
            _pendingSlashing[challengeId] = p;
            emit SlashingPending(challengeId, next, p.signerCount);
            return;
        }
        if (resumed) delete _pendingSlashing[challengeId];
        _closeUpheld(challengeId, c, s.header, p.slashedAmount);
    }

    /// @dev Ends upheld challenge `c` of a batch of `quorums`: its request is no longer under
    ///      challenge, the pool records the fraud (coverage claimable, the challenger's reward on
    ///      `slashedAmount`). The pool's payout budget for the batch gets everything slashed in the
    ///      batch since it was last told, also by other challenges of the batch still slashing: a
    ///      challenge that closes first, its signers mostly slashed by a sibling, pays in full.
    function _closeUpheld(
        uint256 challengeId,
        Challenge storage c,
        AvsMessages.BatchHeader calldata h,
        uint256 slashedAmount
    ) private {
        --openChallenges[c.requestHash];
        uint256 batchAmount = batchSlashedAmount[h.batchIndex];
        uint256 newBatchAmount = batchAmount - _batchAmountRecorded[h.batchIndex];
        _batchAmountRecorded[h.batchIndex] = batchAmount;
        (, uint256 reward) = pool.recordFraud(
            c.requestHash, h.batchIndex, h.quorumNumbers, c.certifiedBlock, c.challenger, slashedAmount, newBatchAmount
        );
        emit ChallengeClosed(challengeId, ChallengeStatus.Upheld, slashedAmount, reward);
    }

    /// @dev The pending slashing of `challengeId`, which must exist and be bound to `signers`.
    function _requirePending(uint256 challengeId, BatchSigners calldata signers)
        private
        view
        returns (PendingSlashing memory p)
    {
        p = _pendingSlashing[challengeId];
        if (p.signersHash == 0) revert NoSlashingPending(challengeId);
        if (_signersHash(signers) != p.signersHash) revert SignersMismatch();
    }

    /// @dev What a pending slashing is bound to: the certified header and the checked signer list.
    function _signersHash(BatchSigners calldata s) private pure returns (bytes32) {
        return keccak256(abi.encode(AvsMessages.hash(s.header), s.signerIds, s.signerBitmapIndices));
    }

    /// @dev The batch's signers are its quorums' operators at the reference block less the
    ///      certified non-signers. Completeness: per quorum, the listed operators in it (signers and
    ///      non-signers, disjoint, each once) must be as many as the quorum had at the reference
    ///      block, and their keys must add up to its aggregate key. The count matters: keys alone can
    ///      cancel (one party registering sk and r - sk, both with valid proofs of possession), and
    ///      leaving out such a set would keep the sum and spare its members. Returns each signer's
    ///      bitmap at the reference block restricted to the batch's quorums.
    function _checkSigners(Challenge storage c, BatchSigners calldata s) private view returns (uint256[] memory) {
        AvsMessages.BatchHeader calldata h = s.header;
        if (h.batchIndex != c.batchIndex) revert BatchMismatch();
        if (
            s.nonSignerIds.length != s.nonSignerBitmapIndices.length
                || s.signerIds.length != s.signerBitmapIndices.length
                || s.quorumApkIndices.length != h.quorumNumbers.length
        ) revert LengthMismatch();
        bytes32 record = keccak256(abi.encodePacked(h.referenceBlock, s.nonSignerIds));
        if (AvsMessages.batchCommitment(AvsMessages.hash(h), record) != c.batchCommitment) revert BatchMismatch();
        uint256 mask = QuorumBitmaps.orderedToBitmap(h.quorumNumbers);
        BN254.G1Point[] memory sums = new BN254.G1Point[](h.quorumNumbers.length);
        uint256[] memory counts = new uint256[](h.quorumNumbers.length);
        for (uint256 j; j < s.nonSignerIds.length; ++j) {
            _addKey(sums, counts, h, s.nonSignerIds[j], s.nonSignerBitmapIndices[j], mask);
        }
        uint256[] memory refBitmaps = new uint256[](s.signerIds.length);
        uint256 k; // the certified non-signers are strictly ascending too: walk them beside the signers
        for (uint256 j; j < s.signerIds.length; ++j) {
            if (j > 0 && uint256(s.signerIds[j]) <= uint256(s.signerIds[j - 1])) revert SignersNotSorted();
            while (k < s.nonSignerIds.length && uint256(s.nonSignerIds[k]) < uint256(s.signerIds[j])) ++k;
            if (k < s.nonSignerIds.length && s.nonSignerIds[k] == s.signerIds[j]) {
                revert SignerIsNonSigner(s.signerIds[j]);
            }
            refBitmaps[j] = _addKey(sums, counts, h, s.signerIds[j], s.signerBitmapIndices[j], mask);
            if (refBitmaps[j] == 0) revert NotInBatchQuorums(s.signerIds[j]);
        }
        for (uint256 i; i < sums.length; ++i) {
            uint8 q = uint8(h.quorumNumbers[i]);
            bytes24 apkHash = registry.getApkHashAtBlockNumberAndIndex(q, h.referenceBlock, s.quorumApkIndices[i]);
            if (bytes24(BN254.hashG1Point(sums[i])) != apkHash) revert SignerSetIncomplete(q);
            if (counts[i] != registry.getOperatorCountAtBlockNumber(q, h.referenceBlock)) {
                revert SignerSetIncomplete(q);
            }
        }
        return refBitmaps;
    }

    /// @dev Adds operator `id`'s G1 key to the sum of each batch quorum it was in at the reference
    ///      block; returns that bitmap restricted to the batch's quorums.
    function _addKey(
        BN254.G1Point[] memory sums,
        uint256[] memory counts,
        AvsMessages.BatchHeader calldata h,
        bytes32 id,
        uint32 bitmapIndex,
        uint256 mask
    ) private view returns (uint256 bitmap) {
        bitmap = _refBitmap(h, id, bitmapIndex, mask);
        if (bitmap == 0) return 0;
        (BN254.G1Point memory pk,) = registry.getOperatorPubkeys(id);
        for (uint256 i; i < sums.length; ++i) {
            if (bitmap.has(uint8(h.quorumNumbers[i]))) {
                sums[i] = sums[i].plus(pk);
                ++counts[i];
            }
        }
    }

    /// @dev Operator `id`'s quorum bitmap at the batch's reference block (history entry
    ///      `bitmapIndex`), restricted to the batch's quorums (`mask`).
    function _refBitmap(AvsMessages.BatchHeader calldata h, bytes32 id, uint32 bitmapIndex, uint256 mask)
        private
        view
        returns (uint256)
    {
        return uint256(registry.getQuorumBitmapAtBlockNumberByIndex(id, h.referenceBlock, bitmapIndex)) & mask;
    }

    /// @inheritdoc IFaultManager
    function escalationThresholdBps() external view returns (uint16) {
        return _escalationThresholdBps(config);
    }

    /// @dev Checked when a challenge is resolved, not only at `setConfig`: the task manager's batch
    ///      threshold may be raised after it (a batch certified at a higher bar must not be judged at
    ///      a lower one), and below a majority valid ACCEPT and REJECT certificates of one leaf can both
    ///      exist, the first one mined deciding whether every signer is slashed.
    function _escalationThresholdBps(Config memory cfg) private view returns (uint16 thresholdBps) {
        (uint16 batchBps,,) = taskManager.config();
        thresholdBps = cfg.escalationThresholdBps;
        if (thresholdBps < batchBps) thresholdBps = batchBps;
        if (thresholdBps < MIN_REJECTION_THRESHOLD_BPS) thresholdBps = MIN_REJECTION_THRESHOLD_BPS;
    }

    function _setConfig(Config memory c, bytes memory escalationQuorums) private {
        QuorumBitmaps.orderedToBitmap(escalationQuorums);
        (uint16 thresholdBps,,) = taskManager.config();
        if (
            c.equivocationWad == 0 || c.equivocationWad > WAD || c.rejectedOutputWad == 0 || c.rejectedOutputWad > WAD
                || c.fraudWad == 0 || c.fraudWad > WAD || c.escalationThresholdBps < thresholdBps
                || c.escalationThresholdBps > 10_000 || c.resolutionWindowBlocks == 0 || c.maxSlashesPerCall == 0
        ) revert InvalidConfig();
        config = c;
        escalationQuorumNumbers = escalationQuorums;
        emit ConfigSet(c, escalationQuorums);
    }
}
