// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Test} from "./utils/Test.sol";
import {BN254} from "../src/libraries/BN254.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {BLSSignatures} from "../src/libraries/BLSSignatures.sol";

/// @notice Property (fuzz) tests of the libraries; the exact encodings are pinned by Vectors.t.sol.
contract BN254Test is Test {
    using BN254 for BN254.G1Point;

    function testFuzz_hashToG1_isOnCurve(bytes32 h) public view {
        BN254.G1Point memory p = BN254.hashToG1(h);
        vm.assertTrue(BN254.isOnCurve(p), "hashToG1 off curve");
        vm.assertTrue(p.X != 0 || p.Y != 0, "hashToG1 gave infinity");
        // x is h mod p itself or a few steps above it (try-and-increment).
        vm.assertTrue((p.X + BN254.FP_MODULUS - uint256(h) % BN254.FP_MODULUS) % BN254.FP_MODULUS < 256, "x far from h");
        // The precompile accepts the point: p + (-p) = infinity.
        BN254.G1Point memory z = p.plus(p.negate());
        vm.assertEq(z.X, 0, "p - p");
        vm.assertEq(z.Y, 0, "p - p");
    }

    function test_hashToG1_one_isGenerator() public view {
        BN254.G1Point memory p = BN254.hashToG1(bytes32(uint256(1)));
        vm.assertEq(p.X, 1, "X");
        vm.assertEq(p.Y, 2, "Y");
    }

    function testFuzz_scalarMul_matchesAddition(uint256 s) public view {
        s = bound(s, 0, BN254.FR_MODULUS - 2);
        BN254.G1Point memory g = BN254.generatorG1();
        BN254.G1Point memory a = g.scalar_mul(s + 1);
        BN254.G1Point memory b = g.scalar_mul(s).plus(g);
        vm.assertEq(a.X, b.X, "X");
        vm.assertEq(a.Y, b.Y, "Y");
    }

    function test_generators_pairToOne() public view {
        vm.assertTrue(
            BN254.pairing(BN254.generatorG1(), BN254.negGeneratorG2(), BN254.generatorG1(), BN254.generatorG2()),
            "e(g1, -g2) e(g1, g2) != 1"
        );
    }

    /// @dev safePairingNegG2(a, b, c) is safePairing(a, −g2, b, c): with a = s·g1, b = g1 and
    ///      c = ±g2 both agree, and hold exactly when the secrets match.
    function testFuzz_safePairingNegG2_matchesSafePairing(uint256 s, bool negate) public view {
        s = bound(s, 1, BN254.FR_MODULUS - 1);
        BN254.G1Point memory a = BN254.generatorG1().scalar_mul(s);
        BN254.G2Point memory c = negate ? BN254.negGeneratorG2() : BN254.generatorG2();
        (bool ok1, bool r1) = BN254.safePairingNegG2(a, BN254.generatorG1(), c, 120_000);
        (bool ok2, bool r2) = BN254.safePairing(a, BN254.negGeneratorG2(), BN254.generatorG1(), c, 120_000);
        vm.assertTrue(ok1 && ok2, "precompile accepted");
        vm.assertEq(r1, r2, "same result");
        vm.assertEq(r1, s == (negate ? BN254.FR_MODULUS - 1 : 1), "holds iff the secrets match");
    }

    function test_pairing_rejectsPointOffCurve() public {
        Caller c = new Caller();
        vm.expectRevert(BN254.ECPairingFailed.selector);
        c.pairing(BN254.G1Point(1, 3), BN254.generatorG2());
    }

    /// @dev Secret key 1: the G1/G2 keys are the generators and the signature is H(m). Messages
    ///      are keccak digests, as every signed message is: try-and-increment maps nearby small
    ///      inputs (e.g. 0xf9 and 0xfc) to the same point, as EigenLayer's hashToG1 does.
    function testFuzz_aggregateCheck_secretKeyOne(bytes32 seed, bytes32 otherSeed) public view {
        vm.assume(seed != otherSeed);
        bytes32 msgHash = keccak256(abi.encode(seed));
        bytes32 other = keccak256(abi.encode(otherSeed));
        BN254.G1Point memory sigma = BN254.hashToG1(msgHash);
        (bool ok, bool valid) =
            BLSSignatures.trySignatureAndApkVerification(msgHash, BN254.generatorG1(), BN254.generatorG2(), sigma);
        vm.assertTrue(ok && valid, "valid signature rejected");
        (ok, valid) =
            BLSSignatures.trySignatureAndApkVerification(other, BN254.generatorG1(), BN254.generatorG2(), sigma);
        vm.assertTrue(ok, "precompile failed");
        vm.assertFalse(valid, "signature accepted for another message");
    }

    function test_proofOfPossession_secretKeyOne() public view {
        BN254.G1Point memory h = BLSSignatures.pubkeyRegistrationMessageHash(address(0xA11CE), address(this), 31337);
        vm.assertTrue(
            BLSSignatures.verifyProofOfPossession(BN254.generatorG1(), BN254.generatorG2(), h, h), "valid PoP rejected"
        );
        vm.assertFalse(
            BLSSignatures.verifyProofOfPossession(BN254.generatorG1(), BN254.generatorG2(), h.scalar_mul(2), h),
            "wrong signature accepted"
        );
        vm.assertFalse(
            BLSSignatures.verifyProofOfPossession(BN254.G1Point(0, 0), BN254.generatorG2(), h, h), "zero key accepted"
        );
    }
}

contract Caller {
    function pairing(BN254.G1Point memory a, BN254.G2Point memory b) external view returns (bool) {
        return BN254.pairing(a, b, a, b);
    }
}

contract MerkleTest is Test {
    function testFuzz_singleLeafTree_rootIsLeaf(bytes32 requestHash, bytes32 outputHash) public pure {
        bytes32 leaf = AvsMessages.leafHash(requestHash, outputHash);
        vm.assertEq(leaf, keccak256(bytes.concat(keccak256(abi.encode(requestHash, outputHash)))), "leaf encoding");
        bytes32[] memory proof = new bytes32[](0);
        vm.assertTrue(AvsMessages.verifyLeaf(proof, leaf, requestHash, outputHash), "single-leaf proof");
        vm.assertEq(MerkleProof.processProof(proof, leaf), leaf, "root of a single-leaf tree");
    }

    function testFuzz_twoLeafTree(bytes32 r0, bytes32 o0, bytes32 r1, bytes32 o1) public pure {
        bytes32 a = AvsMessages.leafHash(r0, o0);
        bytes32 b = AvsMessages.leafHash(r1, o1);
        bytes32 root = a < b ? keccak256(abi.encodePacked(a, b)) : keccak256(abi.encodePacked(b, a));
        bytes32[] memory proof = new bytes32[](1);
        proof[0] = b;
        vm.assertTrue(AvsMessages.verifyLeaf(proof, root, r0, o0), "leaf 0");
        proof[0] = a;
        vm.assertTrue(AvsMessages.verifyLeaf(proof, root, r1, o1), "leaf 1");
        // A leaf is not a valid internal node and vice versa (double hashing).
        vm.assertFalse(AvsMessages.verifyLeaf(new bytes32[](0), root, r0, o0) && a != root, "leaf as root");
    }
}

