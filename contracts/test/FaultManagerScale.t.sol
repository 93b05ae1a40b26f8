// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {FaultFixture} from "./utils/FaultFixture.sol";
import {BN254} from "../src/libraries/BN254.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {IFaultManagerTypes} from "../src/interfaces/IFaultManager.sol";
import {IOperatorRegistryTypes} from "../src/interfaces/IOperatorRegistry.sol";
import {IBLSSignatureChecker} from "../src/interfaces/IBLSSignatureChecker.sol";

/// @dev FaultFixture plus operators 9..64 in quorums 0 and 1 (10 ether each, half per quorum):
///      64 operators in quorum 0 and 60 in quorum 1 (1..4 and 9..64).
abstract contract ScaleFixture is FaultFixture {
    uint256 internal constant OPERATORS = 64;
    /// @notice Ethereum mainnet's block gas limit, which one transaction must fit in.
    uint256 internal constant BLOCK_GAS_LIMIT = 30_000_000;

    function setUp() public virtual override {
        super.setUp();
        IOperatorRegistryTypes.QuorumConfig memory cfg = IOperatorRegistryTypes.QuorumConfig(128, MIN_STAKE);
        registry.setQuorumConfig(0, cfg);
        registry.setQuorumConfig(1, cfg);
        for (uint256 sk = 9; sk <= OPERATORS; ++sk) {
            _register(sk, 10 ether, hex"0001");
        }
        vm.roll(block.number + 1);
    }

    function _inBothQuorums(uint256 sk) internal pure override returns (bool) {
        return sk <= 4 || sk >= 9;
    }

    function _members(bytes memory quorums) internal pure override returns (uint256[] memory r) {
        for (uint256 i; i < quorums.length; ++i) {
            if (uint8(quorums[i]) == 0) return _range(1, OPERATORS);
        }
        r = new uint256[](OPERATORS - 4);
        for (uint256 i; i < r.length; ++i) {
            r[i] = i < 4 ? i + 1 : i + 5;
        }
    }

    function _id(uint256 sk) internal view override returns (bytes32) {
        return BN254.hashG1Point(_g1(sk));
    }

    /// @dev Certifies a batch over quorums 0 and 1 signed by everyone, challenges its leaf
    ///      ("req", "out") and returns the challenge id, the batch and its signers.
    function _challengedBatch()
        internal
        returns (uint256 id, AvsMessages.BatchHeader memory h, IFaultManagerTypes.BatchSigners memory s)
    {
        (bytes32 root, bytes32[] memory proof) = _twoLeafRoot("req", "out");
        h = _header(0, root, hex"0001");
        taskManager.certifyBatch(h, _sigs(h, _none()));
        vm.roll(block.number + 1);
        vm.prank(CHALLENGER);
        id = faults.challenge(h, keccak256(abi.encodePacked(h.referenceBlock)), "req", "out", proof);
        vm.roll(block.number + 1);
        s = _batchSigners(h, _none());
    }
}

/// @dev Issue 3 item 4: an upheld challenge slashes every signer of the batch in every batch quorum
///      in one transaction; it must fit in a block.
contract ResolveChallengeScaleTest is ScaleFixture {
    function test_gas_resolveChallenge_reject64Signers() public {
        (uint256 id,, IFaultManagerTypes.BatchSigners memory s) = _challengedBatch();
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"0001", _none());
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
        uint256 gasUsed = vm.snapshotGasLastCall("resolveChallenge_reject_64signers_2quorums");
        vm.assertLe(gasUsed, BLOCK_GAS_LIMIT, "fits in a 30M block");
        vm.assertEq(registry.getCurrentStake(_id(64), 0), 2.5 ether, "last signer halved in quorum 0");
        vm.assertEq(registry.getCurrentStake(_id(64), 1), 2.5 ether, "and in quorum 1");
    }
}
