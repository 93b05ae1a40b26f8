// SPDX-License-Identifier: MIT
// The checks below follow EigenLayer middleware (Layr-Labs/eigenlayer-middleware, MIT/BUSL-1.1):
// BLSSignatureChecker.trySignatureAndApkVerification, BLSApkRegistry.registerBLSPublicKey and
// RegistryCoordinator.pubkeyRegistrationMessageHash. Written anew; same encodings.
pragma solidity ^0.8.27;

import {BN254} from "./BN254.sol";
import {AvsMessages} from "./AvsMessages.sol";

/// @title BLSSignatures
/// @notice BN254 BLS checks as EigenLayer middleware does them: the aggregate-signature check of a
///         quorum and the proof of possession an operator gives when registering its key.
/// @dev Signatures live in G1, public keys in G1 and G2. The randomised check
///      e(σ + γ·apk, −g2) · e(H(m) + γ·g1, apkG2) = 1 verifies both that σ signs m under apkG2 and
///      that apk (G1) and apkG2 share the same secret, with one two-pair pairing.
library BLSSignatures {
    using BN254 for BN254.G1Point;

    /// @notice EIP-712 typehash of the message an operator signs to prove it owns its BLS key.
    bytes32 internal constant PUBKEY_REGISTRATION_TYPEHASH = keccak256("BN254PubkeyRegistration(address operator)");
    /// @notice EIP-712 domain name of EigenLayer's RegistryCoordinator, under which that message is signed.
    string internal constant REGISTRY_COORDINATOR_NAME = "AVSRegistryCoordinator";
    /// @notice EIP-712 domain version of EigenLayer's RegistryCoordinator.
    string internal constant REGISTRY_COORDINATOR_VERSION = "v0.0.1";

    /// @notice γ of the aggregate check: keccak256(msgHash, apk, apkG2, sigma) mod r, exactly as
    ///         EigenLayer's BLSSignatureChecker.
    function aggregateGamma(
        bytes32 msgHash,
        BN254.G1Point memory apk,
        BN254.G2Point memory apkG2,
        BN254.G1Point memory sigma
    ) internal pure returns (uint256) {
        bytes32 h = keccak256(
            abi.encodePacked(msgHash, apk.X, apk.Y, apkG2.X[0], apkG2.X[1], apkG2.Y[0], apkG2.Y[1], sigma.X, sigma.Y)
        );
        return uint256(h) % BN254.FR_MODULUS;
    }

    /// @notice Checks the aggregate signature `sigma` on `msgHash` by the signers whose G1 keys add up
    ///         to `apk` and G2 keys to `apkG2`.
    /// @return pairingSuccessful Whether the pairing precompile accepted the input.
    /// @return signatureIsValid Whether e(σ + γ·apk, −g2) · e(H(m) + γ·g1, apkG2) = 1.
    /// @dev Reverts (BN254.ECAddFailed / ECMulFailed) if `apk` or `sigma` is not on the curve.
    function trySignatureAndApkVerification(
        bytes32 msgHash,
        BN254.G1Point memory apk,
        BN254.G2Point memory apkG2,
        BN254.G1Point memory sigma
    ) internal view returns (bool pairingSuccessful, bool signatureIsValid) {
        uint256 gamma = aggregateGamma(msgHash, apk, apkG2, sigma);
        (pairingSuccessful, signatureIsValid) = BN254.safePairingNegG2(
            sigma.plus(apk.scalar_mul(gamma)),
            BN254.hashToG1(msgHash).plus(BN254.generatorG1().scalar_mul(gamma)),
            apkG2,
            BN254.PAIRING_EQUALITY_CHECK_GAS
        );
    }

    /// @notice The EIP-712 digest an operator signs to register its key:
    ///         `BN254PubkeyRegistration(address operator)` under the domain
    ///         ("AVSRegistryCoordinator", "v0.0.1", chainId, registryCoordinator).
    function pubkeyRegistrationDigest(address operator, address registryCoordinator, uint256 chainId)
        internal
        pure
        returns (bytes32)
    {
        bytes32 separator = AvsMessages.domainSeparator(
            REGISTRY_COORDINATOR_NAME, REGISTRY_COORDINATOR_VERSION, chainId, registryCoordinator
        );
        return AvsMessages.digest(separator, keccak256(abi.encode(PUBKEY_REGISTRATION_TYPEHASH, operator)));
    }

    /// @notice hashToG1 of `pubkeyRegistrationDigest`; what EigenLayer's
    ///         RegistryCoordinator.pubkeyRegistrationMessageHash returns.
    function pubkeyRegistrationMessageHash(address operator, address registryCoordinator, uint256 chainId)
        internal
        view
        returns (BN254.G1Point memory)
    {
        return BN254.hashToG1(pubkeyRegistrationDigest(operator, registryCoordinator, chainId));
    }

    /// @notice γ of the proof-of-possession check, exactly as EigenLayer's
    ///         BLSApkRegistry.registerBLSPublicKey: keccak256(σ, pkG1, pkG2, H(m)) mod r.
    function possessionGamma(
        BN254.G1Point memory signature,
        BN254.G1Point memory pubkeyG1,
        BN254.G2Point memory pubkeyG2,
        BN254.G1Point memory messagePoint
    ) internal pure returns (uint256) {
        bytes memory packed = abi.encodePacked(
            signature.X, signature.Y, pubkeyG1.X, pubkeyG1.Y, pubkeyG2.X, pubkeyG2.Y, messagePoint.X, messagePoint.Y
        );
        return uint256(keccak256(packed)) % BN254.FR_MODULUS;
    }

    /// @notice Whether `signature` = sk·`messagePoint` where pkG1 = sk·g1 and pkG2 = sk·g2, i.e.
    ///         e(σ + γ·pkG1, −g2) · e(H(m) + γ·g1, pkG2) = 1. The zero key is never valid (as
    ///         BLSApkRegistry's ZERO_PK_HASH check), nor is a G2 key the pairing precompile rejects.
    /// @dev Reverts (BN254.ECAddFailed / ECMulFailed) if a G1 point is not on the curve.
    function verifyProofOfPossession(
        BN254.G1Point memory pubkeyG1,
        BN254.G2Point memory pubkeyG2,
        BN254.G1Point memory signature,
        BN254.G1Point memory messagePoint
    ) internal view returns (bool) {
        if (pubkeyG1.X == 0 && pubkeyG1.Y == 0) return false;
        uint256 gamma = possessionGamma(signature, pubkeyG1, pubkeyG2, messagePoint);
        (bool ok, bool valid) = BN254.safePairingNegG2(
            signature.plus(pubkeyG1.scalar_mul(gamma)),
            messagePoint.plus(BN254.generatorG1().scalar_mul(gamma)),
            pubkeyG2,
            BN254.PAIRING_EQUALITY_CHECK_GAS
        );
        return ok && valid;
    }
}
