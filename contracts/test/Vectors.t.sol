// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Test} from "./utils/Test.sol";
import {BN254} from "../src/libraries/BN254.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {BLSSignatures} from "../src/libraries/BLSSignatures.sol";

/// @notice Checks the contracts against the shared test vectors in ../tests/vectors (format:
///         tests/vectors/README.md), which the Python side writes and checks too. Every case of
///         every table is checked; an empty or missing table fails.
contract VectorsTest is Test {
    using BN254 for BN254.G1Point;
    using SafeCast for uint256;

    /*//////////////////////////////////////////////////////////////
                                bn254.json
    //////////////////////////////////////////////////////////////*/

    function test_hashToG1() public view {
        string memory json = _read("bn254.json");
        uint256 n = _count(json, ".hash_to_g1");
        for (uint256 i; i < n; ++i) {
            string memory c = _at(".hash_to_g1", i);
            BN254.G1Point memory p = BN254.hashToG1(vm.parseJsonBytes32(json, _k(c, ".message_hash")));
            _assertG1(p, _g1(json, _k(c, ".point")), _msg("hash_to_g1", i));
            vm.assertTrue(BN254.isOnCurve(p), _msg("hash_to_g1 on curve", i));
        }
    }

    function test_keys() public view {
        string memory json = _read("bn254.json");
        uint256 n = _count(json, ".keys");
        for (uint256 i; i < n; ++i) {
            string memory c = _at(".keys", i);
            BN254.G1Point memory pkG1 = _g1(json, _k(c, ".pubkey_g1"));
            uint256 sk = vm.parseJsonUint(json, _k(c, ".secret_key"));
            _assertG1(BN254.generatorG1().scalar_mul(sk), pkG1, _msg("keys: pubkey_g1 = sk*g1", i));
            vm.assertEq(
                BN254.hashG1Point(pkG1), vm.parseJsonBytes32(json, _k(c, ".operator_id")), _msg("keys: operator_id", i)
            );
            // pubkey_g2 has the same secret: e(pkG1, -g2) * e(g1, pkG2) == 1.
            vm.assertTrue(
                BN254.pairing(pkG1, BN254.negGeneratorG2(), BN254.generatorG1(), _g2(json, _k(c, ".pubkey_g2"))),
                _msg("keys: pubkey_g2 matches pubkey_g1", i)
            );
        }
    }

    function test_signatures() public view {
        string memory json = _read("bn254.json");
        uint256 n = _count(json, ".signatures");
        for (uint256 i; i < n; ++i) {
            string memory c = _at(".signatures", i);
            BN254.G1Point memory h = BN254.hashToG1(vm.parseJsonBytes32(json, _k(c, ".message_hash")));
            _assertG1(
                h.scalar_mul(vm.parseJsonUint(json, _k(c, ".secret_key"))),
                _g1(json, _k(c, ".signature")),
                _msg("signatures: sk*H(m)", i)
            );
        }
    }

    function test_aggregateChecks() public view {
        string memory json = _read("bn254.json");
        uint256 n = _count(json, ".aggregate_checks");
        for (uint256 i; i < n; ++i) {
            string memory c = _at(".aggregate_checks", i);
            bytes32 msgHash = vm.parseJsonBytes32(json, _k(c, ".message_hash"));
            BN254.G1Point memory apk = _g1(json, _k(c, ".apk_g1"));
            BN254.G2Point memory apkG2 = _g2(json, _k(c, ".apk_g2"));
            BN254.G1Point memory sigma = _g1(json, _k(c, ".sigma"));
            vm.assertEq(
                BLSSignatures.aggregateGamma(msgHash, apk, apkG2, sigma),
                vm.parseJsonUint(json, _k(c, ".gamma")),
                _msg("aggregate_checks: gamma", i)
            );
            (bool ok, bool valid) = BLSSignatures.trySignatureAndApkVerification(msgHash, apk, apkG2, sigma);
            vm.assertEq(ok && valid, vm.parseJsonBool(json, _k(c, ".valid")), _msg("aggregate_checks: valid", i));
        }
    }

    function test_proofsOfPossession() public view {
        string memory json = _read("bn254.json");
        uint256 n = _count(json, ".proofs_of_possession");
        for (uint256 i; i < n; ++i) {
            string memory c = _at(".proofs_of_possession", i);
            address operator = vm.parseJsonAddress(json, _k(c, ".operator"));
            address coordinator = vm.parseJsonAddress(json, _k(c, ".registry_coordinator"));
            uint256 chainId = vm.parseJsonUint(json, _k(c, ".chain_id"));
            vm.assertEq(
                BLSSignatures.pubkeyRegistrationDigest(operator, coordinator, chainId),
                vm.parseJsonBytes32(json, _k(c, ".message_hash")),
                _msg("proofs_of_possession: message_hash", i)
            );
            BN254.G1Point memory point = BLSSignatures.pubkeyRegistrationMessageHash(operator, coordinator, chainId);
            _assertG1(point, _g1(json, _k(c, ".message_point")), _msg("proofs_of_possession: message_point", i));
            bool valid = BLSSignatures.verifyProofOfPossession(
                _g1(json, _k(c, ".pubkey_g1")), _g2(json, _k(c, ".pubkey_g2")), _g1(json, _k(c, ".signature")), point
            );
            vm.assertEq(valid, vm.parseJsonBool(json, _k(c, ".valid")), _msg("proofs_of_possession: valid", i));
        }
    }

    /*//////////////////////////////////////////////////////////////
                              messages.json
    //////////////////////////////////////////////////////////////*/

    function test_typehashes() public view {
        string memory json = _read("messages.json");
        string[] memory names = vm.parseJsonKeys(json, ".typehashes");
        uint256 messageStructs;
        for (uint256 i; i < names.length; ++i) {
            string memory c = string.concat(".typehashes.", names[i]);
            string memory typeString = vm.parseJsonString(json, _k(c, ".type"));
            bytes32 typeHash = vm.parseJsonBytes32(json, _k(c, ".hash"));
            vm.assertEq(keccak256(bytes(typeString)), typeHash, string.concat("typehashes: hash of ", names[i]));
            (string memory ours, bytes32 ourHash) = _ourType(names[i]);
            vm.assertEq(typeString, ours, string.concat("typehashes: type string of ", names[i]));
            vm.assertEq(typeHash, ourHash, string.concat("typehashes: Solidity typehash of ", names[i]));
            if (ourHash != AvsMessages.EIP712_DOMAIN_TYPEHASH) ++messageStructs;
        }
        vm.assertEq(messageStructs, 4, "typehashes: expected InferenceRequest, Attestation, BatchHeader, InferenceOutput");
    }

    function test_domainSeparator() public view {
        string memory json = _read("messages.json");
        vm.assertEq(vm.parseJsonString(json, ".domain.name"), AvsMessages.DOMAIN_NAME, "domain.name");
        vm.assertEq(vm.parseJsonString(json, ".domain.version"), AvsMessages.DOMAIN_VERSION, "domain.version");
        bytes32 separator = vm.parseJsonBytes32(json, ".domain.separator");
        vm.assertEq(_separator(json), separator, "domain.separator");
        vm.assertEq(
            AvsMessages.domainSeparator(
                vm.parseJsonUint(json, ".domain.chain_id"), vm.parseJsonAddress(json, ".domain.verifying_contract")
            ),
            separator,
            "domain.separator from DOMAIN_NAME/DOMAIN_VERSION"
        );
    }

    function test_inferenceRequests() public view {
        string memory json = _read("messages.json");
        bytes32 separator = _separator(json);
        uint256 n = _count(json, ".inference_requests");
        for (uint256 i; i < n; ++i) {
            string memory c = _at(".inference_requests", i);
            AvsMessages.InferenceRequest memory r;
            r.modelId = vm.parseJsonBytes32(json, _k(c, ".model_id"));
            r.promptHash = vm.parseJsonBytes32(json, _k(c, ".prompt_hash"));
            r.temperatureMilli = vm.parseJsonUint(json, _k(c, ".temperature_milli")).toUint32();
            r.topK = vm.parseJsonUint(json, _k(c, ".top_k")).toUint32();
            r.topPMicro = vm.parseJsonUint(json, _k(c, ".top_p_micro")).toUint32();
            r.seed = vm.parseJsonUint(json, _k(c, ".seed")).toUint64();
            r.maxTokens = vm.parseJsonUint(json, _k(c, ".max_tokens")).toUint32();
            r.stopSequencesHash = vm.parseJsonBytes32(json, _k(c, ".stop_sequences_hash"));
            r.requester = vm.parseJsonAddress(json, _k(c, ".requester"));
            r.nonce = vm.parseJsonUint(json, _k(c, ".nonce"));
            _assertHashes(json, c, separator, AvsMessages.hash(r), _msg("inference_requests", i));
        }
    }

    function test_attestations() public view {
        string memory json = _read("messages.json");
        bytes32 separator = _separator(json);
        uint256 n = _count(json, ".attestations");
        for (uint256 i; i < n; ++i) {
            string memory c = _at(".attestations", i);
            AvsMessages.Attestation memory a = AvsMessages.Attestation({
                requestHash: vm.parseJsonBytes32(json, _k(c, ".request_hash")),
                outputHash: vm.parseJsonBytes32(json, _k(c, ".output_hash")),
                verdict: AvsMessages.Verdict(vm.parseJsonUint(json, _k(c, ".verdict")).toUint8())
            });
            _assertHashes(json, c, separator, AvsMessages.hash(a), _msg("attestations", i));
        }
    }

    function test_batchHeaders() public view {
        string memory json = _read("messages.json");
        bytes32 separator = _separator(json);
        uint256 n = _count(json, ".batch_headers");
        for (uint256 i; i < n; ++i) {
            string memory c = _at(".batch_headers", i);
            AvsMessages.BatchHeader memory b = AvsMessages.BatchHeader({
                batchIndex: vm.parseJsonUint(json, _k(c, ".batch_index")).toUint64(),
                leavesRoot: vm.parseJsonBytes32(json, _k(c, ".leaves_root")),
                referenceBlock: vm.parseJsonUint(json, _k(c, ".reference_block")).toUint32(),
                quorumNumbers: vm.parseJsonBytes(json, _k(c, ".quorum_numbers"))
            });
            _assertHashes(json, c, separator, AvsMessages.hash(b), _msg("batch_headers", i));
        }
    }

    function test_inferenceOutputs() public view {
        string memory json = _read("messages.json");
        bytes32 separator = _separator(json);
        uint256 n = _count(json, ".inference_outputs");
        for (uint256 i; i < n; ++i) {
            string memory c = _at(".inference_outputs", i);
            uint256[] memory tokens = vm.parseJsonUintArray(json, _k(c, ".token_ids"));
            AvsMessages.InferenceOutput memory o;
            o.requestHash = vm.parseJsonBytes32(json, _k(c, ".request_hash"));
            o.modelProfileHash = vm.parseJsonBytes32(json, _k(c, ".model_profile_hash"));
            o.tokenIds = new uint32[](tokens.length);
            for (uint256 j; j < tokens.length; ++j) {
                o.tokenIds[j] = tokens[j].toUint32();
            }
            bytes32 outputHash = AvsMessages.hash(o);
            vm.assertEq(outputHash, vm.parseJsonBytes32(json, _k(c, ".output_hash")), _msg("inference_outputs", i));
            _assertHashes(json, c, separator, outputHash, _msg("inference_outputs", i));
        }
    }

    /*//////////////////////////////////////////////////////////////
                               merkle.json
    //////////////////////////////////////////////////////////////*/

    function test_merkleTrees() public view {
        string memory json = _read("merkle.json");
        uint256 n = _count(json, ".trees");
        for (uint256 t; t < n; ++t) {
            string memory c = _at(".trees", t);
            bytes32 root = vm.parseJsonBytes32(json, _k(c, ".root"));
            uint256 m = _count(json, _k(c, ".leaves"));
            bytes32[] memory leaves = new bytes32[](m);
            for (uint256 i; i < m; ++i) {
                string memory l = _at(_k(c, ".leaves"), i);
                bytes32 requestHash = vm.parseJsonBytes32(json, _k(l, ".request_hash"));
                bytes32 outputHash = vm.parseJsonBytes32(json, _k(l, ".output_hash"));
                leaves[i] = AvsMessages.leafHash(requestHash, outputHash);
                vm.assertEq(leaves[i], vm.parseJsonBytes32(json, _k(l, ".leaf_hash")), _msg("merkle: leaf_hash", i));

                bytes32[] memory proof = vm.parseJsonBytes32Array(json, _at(_k(c, ".proofs"), i));
                vm.assertTrue(AvsMessages.verifyLeaf(proof, root, requestHash, outputHash), _msg("merkle: proof", i));
                vm.assertFalse(
                    AvsMessages.verifyLeaf(proof, root, requestHash, keccak256(abi.encode(outputHash))),
                    _msg("merkle: proof accepts another output", i)
                );
            }
            vm.assertEq(_standardTreeRoot(leaves), root, _msg("merkle: root", t));
        }
    }

    /*//////////////////////////////////////////////////////////////
                                 helpers
    //////////////////////////////////////////////////////////////*/

    /// @dev Root of OpenZeppelin's StandardMerkleTree over the given leaf hashes: leaves sorted,
    ///      stored from the end of a 2n-1 array, each node the sorted-pair hash of its children.
    function _standardTreeRoot(bytes32[] memory leaves) internal pure returns (bytes32) {
        uint256 n = leaves.length;
        require(n > 0, "empty tree");
        bytes32[] memory sorted = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            bytes32 x = leaves[i];
            uint256 j = i;
            for (; j > 0 && sorted[j - 1] > x; --j) {
                sorted[j] = sorted[j - 1];
            }
            sorted[j] = x;
        }
        bytes32[] memory tree = new bytes32[](2 * n - 1);
        for (uint256 i; i < n; ++i) {
            tree[tree.length - 1 - i] = sorted[i];
        }
        for (uint256 i = n - 1; i > 0; --i) {
            tree[i - 1] = _hashPair(tree[2 * i - 1], tree[2 * i]);
        }
        return tree[0];
    }

    function _hashPair(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encodePacked(a, b)) : keccak256(abi.encodePacked(b, a));
    }

    function _ourType(string memory name) internal pure returns (string memory, bytes32) {
        bytes32 h = keccak256(bytes(name));
        if (h == keccak256("EIP712Domain")) {
            return (AvsMessages.EIP712_DOMAIN_TYPE, AvsMessages.EIP712_DOMAIN_TYPEHASH);
        }
        if (h == keccak256("InferenceRequest")) {
            return (AvsMessages.INFERENCE_REQUEST_TYPE, AvsMessages.INFERENCE_REQUEST_TYPEHASH);
        }
        if (h == keccak256("Attestation")) return (AvsMessages.ATTESTATION_TYPE, AvsMessages.ATTESTATION_TYPEHASH);
        if (h == keccak256("BatchHeader")) return (AvsMessages.BATCH_HEADER_TYPE, AvsMessages.BATCH_HEADER_TYPEHASH);
        if (h == keccak256("InferenceOutput")) {
            return (AvsMessages.INFERENCE_OUTPUT_TYPE, AvsMessages.INFERENCE_OUTPUT_TYPEHASH);
        }
        revert(string.concat("typehashes: no Solidity definition of ", name));
    }

    function _separator(string memory json) internal pure returns (bytes32) {
        return AvsMessages.domainSeparator(
            vm.parseJsonString(json, ".domain.name"),
            vm.parseJsonString(json, ".domain.version"),
            vm.parseJsonUint(json, ".domain.chain_id"),
            vm.parseJsonAddress(json, ".domain.verifying_contract")
        );
    }

    function _assertHashes(
        string memory json,
        string memory c,
        bytes32 separator,
        bytes32 structHash,
        string memory what
    ) internal pure {
        vm.assertEq(structHash, vm.parseJsonBytes32(json, _k(c, ".struct_hash")), string.concat(what, ": struct_hash"));
        vm.assertEq(
            AvsMessages.digest(separator, structHash),
            vm.parseJsonBytes32(json, _k(c, ".digest")),
            string.concat(what, ": digest")
        );
    }

    function _read(string memory file) internal view returns (string memory) {
        return vm.readFile(string.concat(vm.projectRoot(), "/../tests/vectors/", file));
    }

    /// @dev Number of elements of the array at `key`; fails if there are none.
    function _count(string memory json, string memory key) internal view returns (uint256 n) {
        while (vm.keyExistsJson(json, _at(key, n))) ++n;
        vm.assertTrue(n > 0, string.concat("no cases at ", key));
    }

    function _at(string memory key, uint256 i) internal pure returns (string memory) {
        return string.concat(key, "[", vm.toString(i), "]");
    }

    function _k(string memory a, string memory b) internal pure returns (string memory) {
        return string.concat(a, b);
    }

    function _msg(string memory what, uint256 i) internal pure returns (string memory) {
        return string.concat(what, " (case ", vm.toString(i), ")");
    }

    function _g1(string memory json, string memory key) internal pure returns (BN254.G1Point memory) {
        return BN254.G1Point(vm.parseJsonUint(json, _k(key, ".X")), vm.parseJsonUint(json, _k(key, ".Y")));
    }

    /// @dev G2 points are in Solidity order in the vectors: index 0 imaginary, 1 real.
    function _g2(string memory json, string memory key) internal pure returns (BN254.G2Point memory p) {
        uint256[] memory x = vm.parseJsonUintArray(json, _k(key, ".X"));
        uint256[] memory y = vm.parseJsonUintArray(json, _k(key, ".Y"));
        require(x.length == 2 && y.length == 2, string.concat("G2 point needs 2 coordinates: ", key));
        p.X = [x[0], x[1]];
        p.Y = [y[0], y[1]];
    }

    function _assertG1(BN254.G1Point memory a, BN254.G1Point memory b, string memory what) internal pure {
        vm.assertEq(a.X, b.X, string.concat(what, ": X"));
        vm.assertEq(a.Y, b.Y, string.concat(what, ": Y"));
    }
}
