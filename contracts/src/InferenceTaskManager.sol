// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {AvsMessages} from "./libraries/AvsMessages.sol";
import {BLSSignatureChecker} from "./BLSSignatureChecker.sol";
import {IOperatorRegistry} from "./interfaces/IOperatorRegistry.sol";
import {IInferenceTaskManager} from "./interfaces/IInferenceTaskManager.sol";

/// @title InferenceTaskManager
/// @notice Certifies batches of attested inferences with one aggregate BLS check each, and keeps
///         what a later challenge needs. Its address is the EIP-712 verifying contract of every
///         message the operators sign (`AvsMessages`).
contract InferenceTaskManager is IInferenceTaskManager, BLSSignatureChecker, Ownable {
    /// @notice Governance parameters.
    Config public config;

    /// @dev An aggregator's permission with a copy of what certifyBatch needs of `config`, packed
    ///      in one slot (a nested struct would start a second one): certifyBatch reads one cold slot
    ///      instead of two (2,100 gas less); `setConfig` refreshes every copy.
    struct AggregatorEntry {
        bool allowed;
        uint16 thresholdBps;
        uint32 maxReferenceAge;
    }

    mapping(address => AggregatorEntry) private _aggregators;
    /// @dev Every address ever passed to `setAggregator` (governance keeps this short).
    address[] private _aggregatorList;

    mapping(uint64 => BatchRecord) private _batches;
    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedSeparator;

    /// @param registry_ The operator registry.
    /// @param owner_ Governance.
    /// @param config_ Threshold, reference age and challenge window.
    constructor(IOperatorRegistry registry_, address owner_, Config memory config_)
        BLSSignatureChecker(registry_)
        Ownable(owner_)
    {
        _setConfig(config_);
        _cachedChainId = block.chainid;
        _cachedSeparator = AvsMessages.domainSeparator(block.chainid, address(this));
    }

    /// @notice Authorises or revokes an aggregator.
    function setAggregator(address aggregator, bool allowed) external onlyOwner {
        if (_aggregators[aggregator].thresholdBps == 0) _aggregatorList.push(aggregator); // first time
        Config memory c = config;
        _aggregators[aggregator] = AggregatorEntry(allowed, c.thresholdBps, c.maxReferenceAge);
        emit AggregatorSet(aggregator, allowed);
    }

    /// @notice Whether `aggregator` may certify batches.
    function isAggregator(address aggregator) external view returns (bool) {
        return _aggregators[aggregator].allowed;
    }

    /// @notice Sets threshold (basis points of each quorum's stake), reference age and challenge window.
    function setConfig(Config calldata config_) external onlyOwner {
        _setConfig(config_);
    }

    /// @inheritdoc IInferenceTaskManager
    function certifyBatch(AvsMessages.BatchHeader calldata header, NonSignerStakesAndSignature calldata signatures)
        external
    {
        AggregatorEntry memory aggregator = _aggregators[msg.sender];
        if (!aggregator.allowed) revert OnlyAggregator();
        BatchRecord storage record = _batches[header.batchIndex];
        if (record.certifiedBlock != 0) revert BatchAlreadyCertified(header.batchIndex);
        if (uint256(header.referenceBlock) + aggregator.maxReferenceAge < block.number) {
            revert StaleReferenceBlock(header.referenceBlock);
        }
        bytes32 structHash = AvsMessages.hash(header);
        (QuorumStakeTotals memory totals, bytes32 signatoryRecordHash) = _checkSignatures(
            AvsMessages.digest(domainSeparator(), structHash), header.quorumNumbers, header.referenceBlock, signatures
        );
        _requireThreshold(header.quorumNumbers, totals, aggregator.thresholdBps);
        record.commitment = _commitment(structHash, signatoryRecordHash);
        record.certifiedBlock = uint32(block.number);
        emit BatchCertified(
            header.batchIndex, header.leavesRoot, header.referenceBlock, header.quorumNumbers, signatoryRecordHash
        );
    }

    /// @inheritdoc IInferenceTaskManager
    function verifyLeaf(
        AvsMessages.BatchHeader calldata header,
        bytes32 signatoryRecordHash,
        bytes32 requestHash,
        bytes32 outputHash,
        bytes32[] calldata proof
    ) external view returns (bool) {
        if (!isCertified(header, signatoryRecordHash)) return false;
        return AvsMessages.verifyLeaf(proof, header.leavesRoot, requestHash, outputHash);
    }

    /// @notice Whether `header` with `signatoryRecordHash` is exactly what was certified.
    function isCertified(AvsMessages.BatchHeader calldata header, bytes32 signatoryRecordHash)
        public
        view
        returns (bool)
    {
        BatchRecord memory r = _batches[header.batchIndex];
        return r.certifiedBlock != 0 && r.commitment == _commitment(AvsMessages.hash(header), signatoryRecordHash);
    }

    /// @inheritdoc IInferenceTaskManager
    function isBatchFinal(uint64 batchIndex) external view returns (bool) {
        uint32 at = _batches[batchIndex].certifiedBlock;
        return at != 0 && block.number > uint256(at) + config.challengeWindowBlocks;
    }

    /// @inheritdoc IInferenceTaskManager
    function getBatch(uint64 batchIndex) external view returns (BatchRecord memory) {
        return _batches[batchIndex];
    }

    /// @inheritdoc IInferenceTaskManager
    function domainSeparator() public view returns (bytes32) {
        if (block.chainid == _cachedChainId) return _cachedSeparator;
        return AvsMessages.domainSeparator(block.chainid, address(this));
    }

    /// @notice The digest operators sign for `header`.
    function batchDigest(AvsMessages.BatchHeader calldata header) external view returns (bytes32) {
        return AvsMessages.digest(domainSeparator(), AvsMessages.hash(header));
    }

    function _requireThreshold(bytes calldata quorumNumbers, QuorumStakeTotals memory totals, uint16 thresholdBps)
        private
        pure
    {
        for (uint256 i; i < quorumNumbers.length; ++i) {
            uint96 signed = totals.signedStakeForQuorum[i];
            uint96 total = totals.totalStakeForQuorum[i];
            if (total == 0 || uint256(signed) * 10_000 < uint256(total) * thresholdBps) {
                revert ThresholdNotMet(uint8(quorumNumbers[i]), signed, total);
            }
        }
    }

    function _commitment(bytes32 structHash, bytes32 signatoryRecordHash) private pure returns (bytes28) {
        return bytes28(keccak256(abi.encode(structHash, signatoryRecordHash)));
    }

    function _setConfig(Config memory c) private {
        if (c.thresholdBps == 0 || c.thresholdBps > 10_000) revert InvalidThreshold();
        config = c;
        for (uint256 i; i < _aggregatorList.length; ++i) {
            AggregatorEntry storage e = _aggregators[_aggregatorList[i]];
            (e.thresholdBps, e.maxReferenceAge) = (c.thresholdBps, c.maxReferenceAge);
        }
        emit ConfigSet(c.thresholdBps, c.maxReferenceAge, c.challengeWindowBlocks);
    }
}
