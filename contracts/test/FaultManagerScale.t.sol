// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {FaultFixture} from "./utils/FaultFixture.sol";
import {BN254} from "../src/libraries/BN254.sol";
import {AvsMessages} from "../src/libraries/AvsMessages.sol";
import {QuorumBitmaps} from "../src/libraries/QuorumBitmaps.sol";
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

/// @dev Issue 3 item 4: an upheld challenge slashes every signer of the batch in every batch quorum;
///      each transaction must fit in a block. 124 slashes at the deployed `maxSlashesPerCall` of 64:
///      resolveChallenge slashes the signers (ascending ids) that fit in 64, continueSlashing the rest.
contract ResolveChallengeScaleTest is ScaleFixture {
    using QuorumBitmaps for uint256;

    function _quorumCount(bytes32 id) internal view returns (uint256) {
        return uint256(registry.getCurrentQuorumBitmap(id)).countOnes();
    }

    function test_gas_resolveChallenge_reject64Signers() public {
        (uint256 id,, IFaultManagerTypes.BatchSigners memory s) = _challengedBatch();
        uint256[2][OPERATORS + 1] memory before;
        for (uint256 sk = 1; sk <= OPERATORS; ++sk) {
            before[sk] = [uint256(registry.getCurrentStake(_id(sk), 0)), registry.getCurrentStake(_id(sk), 1)];
        }
        IBLSSignatureChecker.NonSignerStakesAndSignature memory cert =
            _cert(_verdictDigest("req", "out", AvsMessages.Verdict.Reject), hex"0001", _none());
        faults.resolveChallenge(id, AvsMessages.Verdict.Reject, uint32(block.number - 1), cert, s);
        uint256 resolveGas = vm.snapshotGasLastCall("resolveChallenge_reject_64signers_2quorums_first64slashes");
        vm.assertLe(resolveGas, BLOCK_GAS_LIMIT, "resolve fits in a 30M block");
        uint256 slashes;
        uint256 next;
        while (slashes + _quorumCount(s.signerIds[next]) <= 64) {
            slashes += _quorumCount(s.signerIds[next++]);
        }
        vm.assertEq(faults.getPendingSlashing(id).nextSigner, next, "stopped before the 65th slash");
        faults.continueSlashing(id, s);
        uint256 continueGas = vm.snapshotGasLastCall("continueSlashing_64signers_2quorums_rest");
        vm.assertLe(continueGas, BLOCK_GAS_LIMIT, "continue fits in a 30M block");
        vm.assertEq(faults.getPendingSlashing(id).signersHash, bytes32(0), "done");
        vm.assertEq(faults.openChallenges("req"), 0, "closed");
        for (uint256 sk = 1; sk <= OPERATORS; ++sk) {
            vm.assertEq(registry.getCurrentStake(_id(sk), 0), before[sk][0] / 2, "every signer halved in quorum 0");
            vm.assertEq(registry.getCurrentStake(_id(sk), 1), before[sk][1] / 2, "and in quorum 1 (if in it)");
        }
    }
}
