// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

/// @title AvsMessages
/// @notice The EIP-712 messages that operators sign, and the Merkle leaves of a batch.
/// @dev One definition shared with the Python side (`avs/messages.py`); `tests/vectors/messages.json`
///      and `merkle.json` pin the encodings and `test/Vectors.t.sol` checks them. Any change here is a
///      change of the signed wire format.
library AvsMessages {
    /// @notice What an attestation says about an output.
    enum Verdict {
        None,
        Accept,
        Reject
    }

    /// @notice A request for a completion.
    struct InferenceRequest {
        bytes32 modelId;
        bytes32 promptHash;
        uint32 temperatureMilli;
        uint32 topK;
        uint32 topPMicro;
        uint64 seed;
        uint32 maxTokens;
        bytes32 stopSequencesHash;
        address requester;
        uint256 nonce;
    }

    /// @notice One operator's statement about the output of a request.
    struct Attestation {
        bytes32 requestHash;
        bytes32 outputHash;
        Verdict verdict;
    }

    /// @notice The header of a batch of attested (request, output) leaves; what the quorum signs.
    struct BatchHeader {
        uint64 batchIndex;
        bytes32 leavesRoot;
        uint32 referenceBlock;
        bytes quorumNumbers;
    }

    /// @notice The output of a request under a model profile; its struct hash is the output hash.
    struct InferenceOutput {
        bytes32 requestHash;
        bytes32 modelProfileHash;
        uint32[] tokenIds;
    }

    /// @notice EIP-712 domain name of the AVS's messages (Python: `avs.messages.DOMAIN_NAME`).
    string internal constant DOMAIN_NAME = "VerifiableInferenceAVS";
    /// @notice EIP-712 domain version of the AVS's messages (Python: `avs.messages.DOMAIN_VERSION`).
    string internal constant DOMAIN_VERSION = "1";

    string internal constant EIP712_DOMAIN_TYPE =
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";
    string internal constant INFERENCE_REQUEST_TYPE =
        "InferenceRequest(bytes32 modelId,bytes32 promptHash,uint32 temperatureMilli,uint32 topK,uint32 topPMicro,uint64 seed,uint32 maxTokens,bytes32 stopSequencesHash,address requester,uint256 nonce)";
    string internal constant ATTESTATION_TYPE = "Attestation(bytes32 requestHash,bytes32 outputHash,uint8 verdict)";
    string internal constant BATCH_HEADER_TYPE =
        "BatchHeader(uint64 batchIndex,bytes32 leavesRoot,uint32 referenceBlock,bytes quorumNumbers)";
    string internal constant INFERENCE_OUTPUT_TYPE =
        "InferenceOutput(bytes32 requestHash,bytes32 modelProfileHash,uint32[] tokenIds)";

    bytes32 internal constant EIP712_DOMAIN_TYPEHASH = keccak256(bytes(EIP712_DOMAIN_TYPE));
    bytes32 internal constant INFERENCE_REQUEST_TYPEHASH = keccak256(bytes(INFERENCE_REQUEST_TYPE));
    bytes32 internal constant ATTESTATION_TYPEHASH = keccak256(bytes(ATTESTATION_TYPE));
    bytes32 internal constant BATCH_HEADER_TYPEHASH = keccak256(bytes(BATCH_HEADER_TYPE));
    bytes32 internal constant INFERENCE_OUTPUT_TYPEHASH = keccak256(bytes(INFERENCE_OUTPUT_TYPE));

    /// @notice The EIP-712 domain separator for (name, version, chainId, verifyingContract); the same
    ///         value OpenZeppelin's `EIP712` computes for a contract at `verifyingContract`.
    function domainSeparator(string memory name, string memory version, uint256 chainId, address verifyingContract)
        internal
        pure
        returns (bytes32)
    {
        return keccak256(
            abi.encode(
                EIP712_DOMAIN_TYPEHASH, keccak256(bytes(name)), keccak256(bytes(version)), chainId, verifyingContract
            )
        );
    }

    /// @notice The AVS's domain separator: (DOMAIN_NAME, DOMAIN_VERSION, chainId, taskManager).
    function domainSeparator(uint256 chainId, address taskManager) internal pure returns (bytes32) {
        return domainSeparator(DOMAIN_NAME, DOMAIN_VERSION, chainId, taskManager);
    }

    /// @notice keccak256(0x1901 ‖ separator ‖ structHash): the digest that is signed.
    function digest(bytes32 separator, bytes32 structHash) internal pure returns (bytes32) {
        return MessageHashUtils.toTypedDataHash(separator, structHash);
    }

    /// @notice EIP-712 struct hash of an `InferenceRequest`. Not the request's id: the id
    ///         (`requestHash`, as in `InsurancePool.buyCoverage` and Python's `compute_request_hash`)
    ///         is the EIP-712 digest of this struct hash under the AVS's domain,
    ///         `digest(domainSeparator(chainId, taskManager), hash(request))`.
    function hash(InferenceRequest memory r) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                INFERENCE_REQUEST_TYPEHASH,
                r.modelId,
                r.promptHash,
                r.temperatureMilli,
                r.topK,
                r.topPMicro,
                r.seed,
                r.maxTokens,
                r.stopSequencesHash,
                r.requester,
                r.nonce
            )
        );
    }

    /// @notice EIP-712 struct hash of an `Attestation`.
    function hash(Attestation memory a) internal pure returns (bytes32) {
        return keccak256(abi.encode(ATTESTATION_TYPEHASH, a.requestHash, a.outputHash, uint8(a.verdict)));
    }

    /// @notice EIP-712 struct hash of a `BatchHeader` (`bytes` fields are hashed, as EIP-712 says).
    function hash(BatchHeader memory b) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(BATCH_HEADER_TYPEHASH, b.batchIndex, b.leavesRoot, b.referenceBlock, keccak256(b.quorumNumbers))
        );
    }

    /// @notice EIP-712 struct hash of an `InferenceOutput`: the **output hash** of a request. The
    ///         `uint32[]` is hashed as EIP-712 arrays are: keccak256 of its elements as 32-byte words
    ///         (which `abi.encodePacked` of a memory array gives).
    function hash(InferenceOutput memory o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                INFERENCE_OUTPUT_TYPEHASH, o.requestHash, o.modelProfileHash, keccak256(abi.encodePacked(o.tokenIds))
            )
        );
    }

    /// @notice What binds a certified batch: its header's struct hash and its signatory record hash
    ///         (keccak256(referenceBlock, nonSignerIds)), which fixes its signers.
    function batchCommitment(bytes32 structHash, bytes32 signatoryRecordHash) internal pure returns (bytes32) {
        return keccak256(abi.encode(structHash, signatoryRecordHash));
    }

    /// @notice Leaf of a batch's Merkle tree, as OpenZeppelin's `StandardMerkleTree` over
    ///         `(bytes32 requestHash, bytes32 outputHash)`: keccak256(keccak256(abi.encode(...))).
    function leafHash(bytes32 requestHash, bytes32 outputHash) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(requestHash, outputHash))));
    }

    /// @notice Whether (requestHash, outputHash) is a leaf of the tree with root `root`.
    function verifyLeaf(bytes32[] memory proof, bytes32 root, bytes32 requestHash, bytes32 outputHash)
        internal
        pure
        returns (bool)
    {
        return MerkleProof.verify(proof, root, leafHash(requestHash, outputHash));
    }
}
