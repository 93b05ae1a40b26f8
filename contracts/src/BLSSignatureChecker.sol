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
abstract contract BLSSignatureChecker is IBLSSignatureChecker {
    using BN254 for BN254.G1Point;
    using QuorumBitmaps for uint256;

    /// @notice The registry whose histories are read.
    IOperatorRegistry public immutable registry;

    /// @param registry_ The operator registry.
    constructor(IOperatorRegistry registry_) {
        registry = registry_;
    }

    /// @notice Checks that `params.sigma` is the aggregate signature on `msgHash` of every operator in
    ///         `quorumNumbers` at `referenceBlockNumber` except the non-signers, and returns the stakes.
    /// @param quorumNumbers Strictly ascending quorum numbers, one per byte.
    /// @return stakeTotals Signed and total stake per quorum.
    /// @return signatoryRecordHash keccak256(referenceBlockNumber, nonSignerOperatorIds).
    function checkSignatures(
        bytes32 msgHash,
        bytes memory quorumNumbers,
        uint32 referenceBlockNumber,
        NonSignerStakesAndSignature memory params
    ) public view returns (QuorumStakeTotals memory stakeTotals, bytes32 signatoryRecordHash) {
        uint256 m = quorumNumbers.length;
        if (
            params.quorumApks.length != m || params.quorumApkIndices.length != m
                || params.totalStakeIndices.length != m || params.nonSignerStakeIndices.length != m
                || params.nonSignerQuorumBitmapIndices.length != params.nonSignerPubkeys.length
        ) revert InputArrayLengthMismatch();
        if (referenceBlockNumber >= block.number) revert FutureReferenceBlock();
        (BN254.G1Point memory apk, bytes32[] memory nonSignerIds, uint256[] memory nonSignerBitmaps) =
            _subtractNonSigners(QuorumBitmaps.orderedToBitmap(quorumNumbers), referenceBlockNumber, params);

        BN254.G1Point memory quorumApkSum;
        (quorumApkSum, stakeTotals) =
            _quorumTotals(quorumNumbers, referenceBlockNumber, params, nonSignerIds, nonSignerBitmaps);
        apk = apk.plus(quorumApkSum);

        (bool pairingOk, bool valid) =
            BLSSignatures.trySignatureAndApkVerification(msgHash, apk, params.apkG2, params.sigma);
        if (!pairingOk) revert InvalidBLSPairingKey();
        if (!valid) revert InvalidBLSSignature();
        signatoryRecordHash = keccak256(abi.encodePacked(referenceBlockNumber, nonSignerIds));
    }

    /// @dev Total stake of quorum `q` at `ref`, and that less the stake of its non-signers.
    function _quorumStakes(
        uint8 q,
        uint32 ref,
        uint32 totalStakeIndex,
        bytes32[] memory nonSignerIds,
        uint256[] memory nonSignerBitmaps,
        uint32[] memory stakeIndices
    ) private view returns (uint96 signed, uint96 total) {
        total = registry.getTotalStakeAtBlockNumberFromIndex(q, ref, totalStakeIndex);
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
    function _subtractNonSigners(uint256 signingBitmap, uint32 ref, NonSignerStakesAndSignature memory params)
        private
        view
        returns (BN254.G1Point memory apk, bytes32[] memory ids, uint256[] memory bitmaps)
    {
        uint256 n = params.nonSignerPubkeys.length;
        ids = new bytes32[](n);
        bitmaps = new uint256[](n);
        for (uint256 j; j < n; ++j) {
            ids[j] = BN254.hashG1Point(params.nonSignerPubkeys[j]);
            if (j > 0 && uint256(ids[j]) <= uint256(ids[j - 1])) revert NonSignerPubkeysNotSorted();
            bitmaps[j] = registry.getQuorumBitmapAtBlockNumberByIndex(ids[j], ref, params.nonSignerQuorumBitmapIndices[j]);
            uint256 times = (bitmaps[j] & signingBitmap).countOnes();
            if (times == 1) {
                apk = apk.plus(params.nonSignerPubkeys[j].negate());
            } else if (times > 1) {
                apk = apk.plus(params.nonSignerPubkeys[j].negate().scalar_mul(times));
            }
        }
    }

    /// @dev Sum of the quorum apks (each checked against history at `ref`) and the stake totals.
    function _quorumTotals(
        bytes memory quorumNumbers,
        uint32 ref,
        NonSignerStakesAndSignature memory params,
        bytes32[] memory nonSignerIds,
        uint256[] memory nonSignerBitmaps
    ) private view returns (BN254.G1Point memory apkSum, QuorumStakeTotals memory totals) {
        uint256 m = quorumNumbers.length;
        totals.signedStakeForQuorum = new uint96[](m);
        totals.totalStakeForQuorum = new uint96[](m);
        for (uint256 i; i < m; ++i) {
            uint8 q = uint8(quorumNumbers[i]);
            if (
                bytes24(BN254.hashG1Point(params.quorumApks[i]))
                    != registry.getApkHashAtBlockNumberAndIndex(q, ref, params.quorumApkIndices[i])
            ) revert InvalidQuorumApkHash();
            apkSum = apkSum.plus(params.quorumApks[i]);
            (totals.signedStakeForQuorum[i], totals.totalStakeForQuorum[i]) = _quorumStakes(
                q, ref, params.totalStakeIndices[i], nonSignerIds, nonSignerBitmaps, params.nonSignerStakeIndices[i]
            );
        }
    }
}
