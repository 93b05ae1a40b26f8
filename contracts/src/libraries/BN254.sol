// SPDX-License-Identifier: MIT
// Compatible with, and following the conventions of, EigenLayer middleware's BN254 library
// (Layr-Labs/eigenlayer-middleware, src/libraries/BN254.sol, MIT licence, Copyright Layr Labs, Inc.;
// parts of which are adapted from HarryR/solcrypto's altbn128.sol, MIT licence, Copyright 2017
// Christian Reitwiessner). Written anew for this project; same function names, point layouts and
// hash-to-curve, so that keys, signatures and operator ids interoperate with EigenLayer's.
pragma solidity ^0.8.27;

/// @title BN254
/// @notice Arithmetic on the BN254 (alt_bn128) curve through the EVM precompiles (EIP-196/197/198)
///         and the BLS hash-to-curve used by EigenLayer middleware.
/// @dev G2 coordinates are in the precompile's (and EigenLayer's) order: for x = a + b·i,
///      `X[0] = b` (imaginary part) and `X[1] = a` (real part); the same for Y.
library BN254 {
    /// @notice Modulus of the base field F_p.
    uint256 internal constant FP_MODULUS =
        21888242871839275222246405745257275088696311157297823662689037894645226208583;
    /// @notice Modulus of the scalar field F_r (the order of G1 and G2).
    uint256 internal constant FR_MODULUS =
        21888242871839275222246405745257275088548364400416034343698204186575808495617;

    /// @dev (p + 1) / 4: since p ≡ 3 (mod 4), beta^((p+1)/4) is a square root of beta when one exists.
    uint256 internal constant SQRT_EXPONENT = 0xc19139cb84c680a6e14116da060561765e05aa45a1c72a34f082305b61f3f52;

    /// @dev Gas handed to the pairing precompile by `safePairing` callers (2 pairs: 45000 + 2·34000).
    uint256 internal constant PAIRING_EQUALITY_CHECK_GAS = 120000;

    // Generator of G2, x = G2x0 + G2x1·i, y = G2y0 + G2y1·i.
    uint256 internal constant G2x1 = 11559732032986387107991004021392285783925812861821192530917403151452391805634;
    uint256 internal constant G2x0 = 10857046999023057135944570762232829481370756359578518086990519993285655852781;
    uint256 internal constant G2y1 = 4082367875863433681332203403145435568316851327593401208105741076214120093531;
    uint256 internal constant G2y0 = 8495653923123431417604973247489272438418190587263600148770280649306958101930;
    // Its negation: same x, y = (p - G2y0) + (p - G2y1)·i.
    uint256 internal constant nG2y1 = 17805874995975841540914202342111839520379459829704422454583296818431106115052;
    uint256 internal constant nG2y0 = 13392588948715843804641432497768002650278120570034223513918757245338268106653;

    /// @notice A point of G1 in affine coordinates; (0, 0) is the point at infinity.
    struct G1Point {
        uint256 X;
        uint256 Y;
    }

    /// @notice A point of G2; index 0 holds the imaginary part, index 1 the real part.
    struct G2Point {
        uint256[2] X;
        uint256[2] Y;
    }

    /// @notice The ecAdd precompile (0x06) rejected its input.
    error ECAddFailed();
    /// @notice The ecMul precompile (0x07) rejected its input.
    error ECMulFailed();
    /// @notice The ecPairing precompile (0x08) rejected its input.
    error ECPairingFailed();
    /// @notice The modexp precompile (0x05) failed.
    error ExpModFailed();

    /// @notice The generator (1, 2) of G1.
    function generatorG1() internal pure returns (G1Point memory) {
        return G1Point(1, 2);
    }

    /// @notice The generator of G2, in precompile order.
    function generatorG2() internal pure returns (G2Point memory) {
        return G2Point([G2x1, G2x0], [G2y1, G2y0]);
    }

    /// @notice The negated generator of G2, in precompile order.
    function negGeneratorG2() internal pure returns (G2Point memory) {
        return G2Point([G2x1, G2x0], [nG2y1, nG2y0]);
    }

    /// @notice Returns -p, so that plus(p, negate(p)) is the point at infinity.
    function negate(G1Point memory p) internal pure returns (G1Point memory) {
        if (p.X == 0 && p.Y == 0) return G1Point(0, 0);
        return G1Point(p.X, FP_MODULUS - (p.Y % FP_MODULUS));
    }

    /// @notice Returns p1 + p2 (ecAdd precompile). Reverts if either is not on the curve.
    function plus(G1Point memory p1, G1Point memory p2) internal view returns (G1Point memory r) {
        bool ok;
        assembly ("memory-safe") {
            let input := mload(0x40)
            mstore(input, mload(p1))
            mstore(add(input, 0x20), mload(add(p1, 0x20)))
            mstore(add(input, 0x40), mload(p2))
            mstore(add(input, 0x60), mload(add(p2, 0x20)))
            ok := staticcall(gas(), 0x06, input, 0x80, r, 0x40)
        }
        if (!ok) revert ECAddFailed();
    }

    /// @notice Returns s·p (ecMul precompile). Reverts if p is not on the curve.
    function scalar_mul(G1Point memory p, uint256 s) internal view returns (G1Point memory r) {
        bool ok;
        assembly ("memory-safe") {
            let input := mload(0x40)
            mstore(input, mload(p))
            mstore(add(input, 0x20), mload(add(p, 0x20)))
            mstore(add(input, 0x40), s)
            ok := staticcall(gas(), 0x07, input, 0x60, r, 0x40)
        }
        if (!ok) revert ECMulFailed();
    }

    /// @notice Returns whether e(a1, a2) · e(b1, b2) == 1. Reverts if the precompile rejects the
    ///         input (a point off its curve or, for G2, outside the subgroup).
    function pairing(G1Point memory a1, G2Point memory a2, G1Point memory b1, G2Point memory b2)
        internal
        view
        returns (bool)
    {
        (bool ok, bool result) = safePairing(a1, a2, b1, b2, gasleft());
        if (!ok) revert ECPairingFailed();
        return result;
    }

    /// @notice Like `pairing`, but with a gas cap and no revert.
    /// @return success Whether the precompile accepted the input.
    /// @return result Whether e(a1, a2) · e(b1, b2) == 1 (false when `success` is false).
    function safePairing(G1Point memory a1, G2Point memory a2, G1Point memory b1, G2Point memory b2, uint256 pairingGas)
        internal
        view
        returns (bool success, bool result)
    {
        uint256[12] memory input =
            [a1.X, a1.Y, a2.X[0], a2.X[1], a2.Y[0], a2.Y[1], b1.X, b1.Y, b2.X[0], b2.X[1], b2.Y[0], b2.Y[1]];
        uint256[1] memory out;
        assembly ("memory-safe") {
            success := staticcall(pairingGas, 0x08, input, 0x180, out, 0x20)
        }
        result = success && out[0] != 0;
    }

    /// @notice `safePairing` with a2 = −g2, the form of every BLS check here: e(a1, −g2)·e(b1, b2) = 1.
    ///         Writes the precompile input directly (no −g2 struct, no copy through a memory array).
    function safePairingNegG2(G1Point memory a1, G1Point memory b1, G2Point memory b2, uint256 pairingGas)
        internal
        view
        returns (bool success, bool result)
    {
        assembly ("memory-safe") {
            let input := mload(0x40)
            mstore(input, mload(a1))
            mstore(add(input, 0x20), mload(add(a1, 0x20)))
            mstore(add(input, 0x40), G2x1)
            mstore(add(input, 0x60), G2x0)
            mstore(add(input, 0x80), nG2y1)
            mstore(add(input, 0xa0), nG2y0)
            mstore(add(input, 0xc0), mload(b1))
            mstore(add(input, 0xe0), mload(add(b1, 0x20)))
            // A memory G2Point holds pointers to its X and Y arrays.
            let x := mload(b2)
            let y := mload(add(b2, 0x20))
            mstore(add(input, 0x100), mload(x))
            mstore(add(input, 0x120), mload(add(x, 0x20)))
            mstore(add(input, 0x140), mload(y))
            mstore(add(input, 0x160), mload(add(y, 0x20)))
            success := staticcall(pairingGas, 0x08, input, 0x180, input, 0x20)
            result := and(success, iszero(iszero(mload(input))))
        }
    }

    /// @notice keccak256(X ‖ Y): the operator id / pubkey hash of a G1 public key.
    function hashG1Point(G1Point memory pk) internal pure returns (bytes32 h) {
        assembly ("memory-safe") {
            h := keccak256(pk, 0x40)
        }
    }

    /// @notice keccak256(X[0] ‖ X[1] ‖ Y[0] ‖ Y[1]) of a G2 point.
    function hashG2Point(G2Point memory pk) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(pk.X[0], pk.X[1], pk.Y[0], pk.Y[1]));
    }

    /// @notice Maps a 32-byte message hash to G1 by try-and-increment, exactly as EigenLayer:
    ///         x = h mod p; while x^3 + 3 is not a square, x = x + 1; y = (x^3 + 3)^((p+1)/4).
    /// @dev G1 has cofactor 1, so every curve point is in the group. Expected ~2 iterations.
    ///      The loop is in assembly with one modexp input buffer (header and modulus written once):
    ///      each try costs the modexp (1,338 gas) and little else; same result as `findYFromX`.
    function hashToG1(bytes32 h) internal view returns (G1Point memory p) {
        bool ok = true;
        assembly ("memory-safe") {
            let input := mload(0x40)
            mstore(input, 0x20)
            mstore(add(input, 0x20), 0x20)
            mstore(add(input, 0x40), 0x20)
            mstore(add(input, 0x80), SQRT_EXPONENT)
            mstore(add(input, 0xa0), FP_MODULUS)
            let x := mod(h, FP_MODULUS)
            for {} ok {} {
                let beta := addmod(mulmod(mulmod(x, x, FP_MODULUS), x, FP_MODULUS), 3, FP_MODULUS)
                mstore(add(input, 0x60), beta)
                ok := staticcall(gas(), 0x05, input, 0xc0, add(input, 0xc0), 0x20)
                let y := mload(add(input, 0xc0))
                if eq(mulmod(y, y, FP_MODULUS), beta) {
                    mstore(p, x)
                    mstore(add(p, 0x20), y)
                    break
                }
                x := addmod(x, 1, FP_MODULUS)
            }
        }
        if (!ok) revert ExpModFailed();
    }

    /// @notice Returns (beta, y) with beta = x^3 + 3 and y = beta^((p+1)/4), all mod p.
    ///         y is a square root of beta iff beta is a quadratic residue.
    function findYFromX(uint256 x) internal view returns (uint256 beta, uint256 y) {
        beta = addmod(mulmod(mulmod(x, x, FP_MODULUS), x, FP_MODULUS), 3, FP_MODULUS);
        y = expMod(beta, SQRT_EXPONENT, FP_MODULUS);
    }

    /// @notice base^exponent mod modulus through the modexp precompile (0x05).
    function expMod(uint256 base, uint256 exponent, uint256 modulus) internal view returns (uint256 r) {
        bool ok;
        assembly ("memory-safe") {
            let input := mload(0x40)
            mstore(input, 0x20)
            mstore(add(input, 0x20), 0x20)
            mstore(add(input, 0x40), 0x20)
            mstore(add(input, 0x60), base)
            mstore(add(input, 0x80), exponent)
            mstore(add(input, 0xa0), modulus)
            ok := staticcall(gas(), 0x05, input, 0xc0, input, 0x20)
            r := mload(input)
        }
        if (!ok) revert ExpModFailed();
    }

    /// @notice Whether p is the point at infinity or satisfies y^2 = x^3 + 3 with coordinates < p.
    function isOnCurve(G1Point memory p) internal pure returns (bool) {
        if (p.X >= FP_MODULUS || p.Y >= FP_MODULUS) return false;
        if (p.X == 0 && p.Y == 0) return true;
        return
            mulmod(p.Y, p.Y, FP_MODULUS) == addmod(mulmod(mulmod(p.X, p.X, FP_MODULUS), p.X, FP_MODULUS), 3, FP_MODULUS);
    }
}
