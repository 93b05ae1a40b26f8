// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title ModelRegistry
/// @notice Governance-managed model profiles: model id -> profile hash, where the profile holds the
///         weights commitment, tokenizer and chat template hashes, dtype, verification tolerance,
///         decoding rule version and length limits (the Python side uses the profile hash itself as
///         the model id; any id may be registered). Operators refuse to serve weights whose commitment differs.
contract ModelRegistry is Ownable {
    /// @notice A model profile; `profileHash` is its EIP-712 hashStruct, the same value as
    ///         `avs.inference.profile.ModelProfile.compute_hash` (dtype is a string, hashed).
    struct ModelProfile {
        bytes32 weightsRoot;
        bytes32 tokenizerHash;
        bytes32 chatTemplateHash;
        string dtype;
        uint32 toleranceMicro;
        uint32 decodingRuleVersion;
        uint32 maxContext;
        uint32 maxNewTokens;
    }

    /// @notice EIP-712 typehash of `ModelProfile`.
    bytes32 public constant MODEL_PROFILE_TYPEHASH = keccak256(
        "ModelProfile(bytes32 weightsRoot,bytes32 tokenizerHash,bytes32 chatTemplateHash,string dtype,uint32 toleranceMicro,uint32 decodingRuleVersion,uint32 maxContext,uint32 maxNewTokens)"
    );

    /// @notice The model is not registered or not active.
    error UnknownModel(bytes32 modelId);
    /// @notice The model id is already registered.
    error ModelAlreadyRegistered(bytes32 modelId);
    /// @notice The model id is zero.
    error InvalidModelId();

    /// @notice Emitted when a model's profile is set (registration or update).
    event ModelProfileSet(bytes32 indexed modelId, bytes32 indexed profileHash, ModelProfile profile);
    /// @notice Emitted when a model is retired.
    event ModelDeactivated(bytes32 indexed modelId);

    /// @notice Profile hash of each active model (zero if none).
    mapping(bytes32 => bytes32) public profileHashOf;

    /// @param owner_ Governance.
    constructor(address owner_) Ownable(owner_) {}

    /// @notice The canonical hash of a profile.
    function profileHash(ModelProfile memory profile) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                MODEL_PROFILE_TYPEHASH,
                profile.weightsRoot,
                profile.tokenizerHash,
                profile.chatTemplateHash,
                keccak256(bytes(profile.dtype)),
                profile.toleranceMicro,
                profile.decodingRuleVersion,
                profile.maxContext,
                profile.maxNewTokens
            )
        );
    }

    /// @notice Registers a new model.
    function registerModel(bytes32 modelId, ModelProfile calldata profile) external onlyOwner {
        if (modelId == bytes32(0)) revert InvalidModelId();
        if (profileHashOf[modelId] != bytes32(0)) revert ModelAlreadyRegistered(modelId);
        _set(modelId, profile);
    }

    /// @notice Replaces an active model's profile.
    function updateModel(bytes32 modelId, ModelProfile calldata profile) external onlyOwner {
        if (profileHashOf[modelId] == bytes32(0)) revert UnknownModel(modelId);
        _set(modelId, profile);
    }

    /// @notice Retires a model.
    function deactivateModel(bytes32 modelId) external onlyOwner {
        if (profileHashOf[modelId] == bytes32(0)) revert UnknownModel(modelId);
        delete profileHashOf[modelId];
        emit ModelDeactivated(modelId);
    }

    /// @notice The active profile hash of `modelId`; reverts if unknown.
    function getProfileHash(bytes32 modelId) external view returns (bytes32 h) {
        h = profileHashOf[modelId];
        if (h == bytes32(0)) revert UnknownModel(modelId);
    }

    function _set(bytes32 modelId, ModelProfile calldata profile) private {
        bytes32 h = profileHash(profile);
        profileHashOf[modelId] = h;
        emit ModelProfileSet(modelId, h, profile);
    }
}
