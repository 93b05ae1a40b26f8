// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {BN254} from "../libraries/BN254.sol";

/// @title IBLSSignatureChecker
/// @notice EigenLayer middleware's BLSSignatureChecker types and errors.
interface IBLSSignatureChecker {
    /// @notice Non-signers (sorted by operator id), aggregate keys and the history indices to read.
    /// @dev `nonSignerStakeIndices[i][k]` is the stake-history index of the k-th non-signer that is
    ///      in quorum `quorumNumbers[i]` at the reference block.
    struct NonSignerStakesAndSignature {
        uint32[] nonSignerQuorumBitmapIndices;
        BN254.G1Point[] nonSignerPubkeys;
        BN254.G1Point[] quorumApks;
        BN254.G2Point apkG2;
        BN254.G1Point sigma;
        uint32[] quorumApkIndices;
        uint32[] totalStakeIndices;
        uint32[][] nonSignerStakeIndices;
    }

    /// @notice Signed and total stake per quorum, in the order of the quorum numbers.
    struct QuorumStakeTotals {
        uint96[] signedStakeForQuorum;
        uint96[] totalStakeForQuorum;
    }

    /// @notice Array lengths of the input disagree.
    error InputArrayLengthMismatch();
    /// @notice The reference block is not in the past.
    error FutureReferenceBlock();
    /// @notice The quorum's stakes at the reference block may be stale: its last complete stake
    ///         refresh at or before it (`OperatorRegistry.updateOperatorsForQuorum`) was at
    ///         `lastUpdateBlock`, more than the registry's `maxStakeAgeBlocks` before it (EigenLayer
    ///         middleware's `StaleStakesForbidden`).
    error StaleStakes(uint8 quorumNumber, uint32 lastUpdateBlock);
    /// @notice Non-signer pubkey hashes are not strictly ascending (unsorted or duplicate).
    error NonSignerPubkeysNotSorted();
    /// @notice A quorum aggregate key does not match the history at the reference block.
    error InvalidQuorumApkHash();
    /// @notice The pairing precompile rejected the input.
    error InvalidBLSPairingKey();
    /// @notice The aggregate signature is wrong.
    error InvalidBLSSignature();
    /// @notice The G1 and G2 keys do not share a secret (or are the point at infinity).
    error InvalidKeyPair();

    /// @notice `apkG2` was proven to be the G2 counterpart of `apk`; signatures under this pair skip
    ///         the γ randomisation from now on.
    event KeyPairVerified(BN254.G1Point apk, BN254.G2Point apkG2);

    /// @notice Proves with one pairing that `apk` (G1) and `apkG2` have the same secret, and records
    ///         the pair. The aggregator calls it once per signing set it keeps using (typically each
    ///         quorum's full aggregate key after a membership change): ~142k once, then ~14k less
    ///         per certificate.
    function verifyKeyPair(BN254.G1Point calldata apk, BN254.G2Point calldata apkG2) external;

    /// @notice Whether (`apk`, `apkG2`) was recorded by `verifyKeyPair`.
    function isKeyPairVerified(BN254.G1Point calldata apk, BN254.G2Point calldata apkG2) external view returns (bool);
}
