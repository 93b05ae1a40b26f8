// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {BN254} from "./libraries/BN254.sol";
import {BLSSignatures} from "./libraries/BLSSignatures.sol";
import {QuorumBitmaps} from "./libraries/QuorumBitmaps.sol";
import {IOperatorRegistry} from "./interfaces/IOperatorRegistry.sol";
import {IBLSSignatureChecker} from "./interfaces/IBLSSignatureChecker.sol";

/// @title BLSSignatureChecker
/// @notice Checks a quorum's aggregate BLS signature at a reference block with the semantics of
///         EigenLayer middleware's `BLSSignatureChecker.checkSignatures`: quorum apks are read from
///         history, each non-signer's key is subtracted once for every signing quorum it belongs to,
///         and each non-signer's stake is subtracted from every such quorum's total.
/// @dev Fast path: a (G1 apk, G2 apk) pair that was once checked to share its secret
///      (`verifyKeyPair`, one pairing) needs no γ randomisation afterwards, so the signature check is
///      the plain e(σ, −g2)·e(H(m), apkG2) = 1 (two ecMul cheaper). Any other pair takes EigenLayer's
///      randomised check. Both accept exactly the same (σ, apkG2) for a given on-chain apk.
///      Stake freshness: every quorum's recorded stakes must have been refreshed in full
///      (`OperatorRegistry.updateOperatorsForQuorum`) at most `maxStakeAgeBlocks` before the
///      reference block (`StaleStakes` otherwise); with the registry's slashable-stake look-ahead
///      this keeps a signer's weight slashable until its fraud can no longer be proven.
abstract contract BLSSignatureChecker is IBLSSignatureChecker {
    using BN254 for BN254.G1Point;
    using QuorumBitmaps for uint256;

    /// @notice The registry whose histories are read.
    IOperatorRegistry public immutable registry;

    /// @dev keccak256(apk.X, apk.Y, apkG2.X[0], apkG2.X[1], apkG2.Y[0], apkG2.Y[1]) => checked.
    mapping(bytes32 => bool) private _verifiedKeyPairs;

    /// @param registry_ The operator registry.
    constructor(IOperatorRegistry registry_) {
        registry = registry_;
    }

    /// @inheritdoc IBLSSignatureChecker
    /// @dev Permissionless: the pairing proves the pair, whoever sends it. The point at infinity is
    ///      refused (it pairs with anything trivially and is never a signing set's key).
    function verifyKeyPair(BN254.G1Point calldata apk, BN254.G2Point calldata apkG2) external {
        if (apk.X == 0 && apk.Y == 0) revert InvalidKeyPair();
        (bool ok, bool valid) =
            BN254.safePairingNegG2(apk, BN254.generatorG1(), apkG2, BN254.PAIRING_EQUALITY_CHECK_GAS);
        if (!ok || !valid) revert InvalidKeyPair();
        _verifiedKeyPairs[_keyPairHash(apk, apkG2)] = true;
        emit KeyPairVerified(apk, apkG2);
    }

    /// @inheritdoc IBLSSignatureChecker
    function isKeyPairVerified(BN254.G1Point calldata apk, BN254.G2Point calldata apkG2) external view returns (bool) {
        return _verifiedKeyPairs[_keyPairHash(apk, apkG2)];
    }

    /// @notice Checks that `params.sigma` is the aggregate signature on `msgHash` of every operator in
    ///         `quorumNumbers` at `referenceBlockNumber` except the non-signers, and returns the stakes.
    /// @param quorumNumbers Strictly ascending quorum numbers, one per byte.
    /// @return stakeTotals Signed and total stake per quorum.
    /// @return signatoryRecordHash keccak256(referenceBlockNumber, nonSignerOperatorIds).
    function checkSignatures(
        bytes32 msgHash,
        bytes calldata quorumNumbers,
        uint32 referenceBlockNumber,
        NonSignerStakesAndSignature calldata params
    ) external view returns (QuorumStakeTotals memory stakeTotals, bytes32 signatoryRecordHash) {
        return _checkSignatures(msgHash, quorumNumbers, referenceBlockNumber, params);
    }

    /// @dev `checkSignatures` on calldata (no copy of the parameters into memory).
    function _checkSignatures(
        bytes32 msgHash,
        bytes calldata quorumNumbers,
        uint32 referenceBlockNumber,
        NonSignerStakesAndSignature calldata params
    ) internal view returns (QuorumStakeTotals memory stakeTotals, bytes32 signatoryRecordHash) {
        uint256 m = quorumNumbers.length;
        if (
            params.quorumApks.length != m || params.quorumApkIndices.length != m || params.totalStakeIndices.length != m
                || params.nonSignerStakeIndices.length != m
                || params.nonSignerQuorumBitmapIndices.length != params.nonSignerPubkeys.length
        ) revert InputArrayLengthMismatch();
        if (referenceBlockNumber >= block.number) revert FutureReferenceBlock();
        (BN254.G1Point memory apk, bytes32[] memory nonSignerIds, uint256[] memory nonSignerBitmaps) =
            _subtractNonSigners(QuorumBitmaps.orderedToBitmap(quorumNumbers), referenceBlockNumber, params);

        BN254.G1Point memory quorumApkSum;
        (quorumApkSum, stakeTotals) =
            _quorumTotals(quorumNumbers, referenceBlockNumber, params, nonSignerIds, nonSignerBitmaps);
        apk = nonSignerIds.length == 0 ? quorumApkSum : apk.plus(quorumApkSum);

        _verifySignature(msgHash, apk, params.apkG2, params.sigma);
        signatoryRecordHash = keccak256(abi.encodePacked(referenceBlockNumber, nonSignerIds));
    }

    /// @dev Plain BLS check under a verified key pair, EigenLayer's randomised check otherwise.
    function _verifySignature(
        bytes32 msgHash,
        BN254.G1Point memory apk,
        BN254.G2Point memory apkG2,
        BN254.G1Point memory sigma
    ) private view {
        bool pairingOk;
        bool valid;
        if (_verifiedKeyPairs[_keyPairHash(apk, apkG2)]) {
            (pairingOk, valid) =
                BN254.safePairingNegG2(sigma, BN254.hashToG1(msgHash), apkG2, BN254.PAIRING_EQUALITY_CHECK_GAS);
        } else {
            (pairingOk, valid) = BLSSignatures.trySignatureAndApkVerification(msgHash, apk, apkG2, sigma);
        }
        if (!pairingOk) revert InvalidBLSPairingKey();
        if (!valid) revert InvalidBLSSignature();
    }

    function _keyPairHash(BN254.G1Point memory apk, BN254.G2Point memory apkG2) private pure returns (bytes32) {
        return keccak256(abi.encode(apk.X, apk.Y, apkG2.X[0], apkG2.X[1], apkG2.Y[0], apkG2.Y[1]));
    }

    /// @dev The i-th quorum's apk (checked against history at `ref`) and total stake, in one call;
    ///      refuses a quorum whose stakes at `ref` may be stale (`StaleStakes`: no complete stake
    ///      refresh within the registry's `maxStakeAgeBlocks` before `ref`), as EigenLayer
    ///      middleware's `staleStakesForbidden` does.
    function _quorumApkAndTotal(uint8 q, uint32 ref, NonSignerStakesAndSignature calldata params, uint256 i)
        private
        view
        returns (BN254.G1Point memory quorumApk, uint96 total)
    {
        (uint32 updateBlock, uint32 maxStakeAge) = registry.getStakeFreshness(q, ref);
        if (maxStakeAge != 0 && uint256(ref) > uint256(updateBlock) + maxStakeAge) revert StaleStakes(q, updateBlock);
        quorumApk = params.quorumApks[i];
        bytes24 apkHash;
        (apkHash, total) =
            registry.getQuorumApkHashAndTotalStake(q, ref, params.quorumApkIndices[i], params.totalStakeIndices[i]);
        if (bytes24(BN254.hashG1Point(quorumApk)) != apkHash) revert InvalidQuorumApkHash();
    }

    /// @dev `total` (quorum `q`'s stake at `ref`) less the stake of its non-signers.
    function _signedStake(
        uint8 q,
        uint32 ref,
        uint96 total,
        bytes32[] memory nonSignerIds,
        uint256[] memory nonSignerBitmaps,
        uint32[] calldata stakeIndices
    ) private view returns (uint96 signed) {
        signed = total;
        uint256 k;
        for (uint256 j; j < nonSignerIds.length; ++j) {
            if (!nonSignerBitmaps[j].has(q)) continue;
            if (k >= stakeIndices.length) revert InputArrayLengthMismatch();
            signed -= registry.getStakeAtBlockNumberAndIndex(q, ref, nonSignerIds[j], stakeIndices[k]);
            ++k;
        }
        if (k != stakeIndices.length) revert InputArrayLengthMismatch();
    }

    /// @dev Minus the sum of non-signer keys, each once per signing quorum it is in; their ids
    ///      (checked strictly ascending) and quorum bitmaps at `ref`.
    function _subtractNonSigners(uint256 signingBitmap, uint32 ref, NonSignerStakesAndSignature calldata params)
        private
        view
        returns (BN254.G1Point memory apk, bytes32[] memory ids, uint256[] memory bitmaps)
    {
        uint256 n = params.nonSignerPubkeys.length;
        ids = new bytes32[](n);
        bitmaps = new uint256[](n);
        for (uint256 j; j < n; ++j) {
            BN254.G1Point memory pk = params.nonSignerPubkeys[j];
            ids[j] = BN254.hashG1Point(pk);
            if (j > 0 && uint256(ids[j]) <= uint256(ids[j - 1])) revert NonSignerPubkeysNotSorted();
            bitmaps[j] =
                registry.getQuorumBitmapAtBlockNumberByIndex(ids[j], ref, params.nonSignerQuorumBitmapIndices[j]);
            uint256 times = (bitmaps[j] & signingBitmap).countOnes();
            if (times == 1) {
                apk = apk.plus(pk.negate());
            } else if (times > 1) {
                apk = apk.plus(pk.negate().scalar_mul(times));
            }
        }
    }

    /// @dev Sum of the quorum apks (each checked against history at `ref`) and the stake totals.
    function _quorumTotals(
        bytes calldata quorumNumbers,
        uint32 ref,
        NonSignerStakesAndSignature calldata params,
        bytes32[] memory nonSignerIds,
        uint256[] memory nonSignerBitmaps
    ) private view returns (BN254.G1Point memory apkSum, QuorumStakeTotals memory totals) {
        uint256 m = quorumNumbers.length;
        totals.signedStakeForQuorum = new uint96[](m);
        totals.totalStakeForQuorum = new uint96[](m);
        for (uint256 i; i < m; ++i) {
            uint8 q = uint8(quorumNumbers[i]);
            (BN254.G1Point memory quorumApk, uint96 total) = _quorumApkAndTotal(q, ref, params, i);
            apkSum = i == 0 ? quorumApk : apkSum.plus(quorumApk);
            totals.totalStakeForQuorum[i] = total;
            totals.signedStakeForQuorum[i] =
                _signedStake(q, ref, total, nonSignerIds, nonSignerBitmaps, params.nonSignerStakeIndices[i]);
        }
    }
}
