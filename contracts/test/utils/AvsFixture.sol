// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Test} from "./Test.sol";
import {BN254} from "../../src/libraries/BN254.sol";
import {BLSSignatures} from "../../src/libraries/BLSSignatures.sol";
import {AvsMessages} from "../../src/libraries/AvsMessages.sol";
import {LocalRestakingCore} from "../../src/core/LocalRestakingCore.sol";
import {LocalStrategy} from "../../src/core/LocalStrategy.sol";
import {TestToken} from "../../src/tokens/TestToken.sol";
import {IStrategy} from "../../src/interfaces/eigenlayer/IStrategy.sol";
import {IAllocationManagerTypes, OperatorSet} from "../../src/interfaces/eigenlayer/IAllocationManager.sol";
import {OperatorRegistry} from "../../src/OperatorRegistry.sol";
import {IOperatorRegistry, IOperatorRegistryTypes} from "../../src/interfaces/IOperatorRegistry.sol";
import {InferenceTaskManager} from "../../src/InferenceTaskManager.sol";
import {IInferenceTaskManager} from "../../src/interfaces/IInferenceTaskManager.sol";
import {IBLSSignatureChecker} from "../../src/interfaces/IBLSSignatureChecker.sol";

/// @notice Deploys the local core and the AVS, and registers operators whose BLS secret keys are
///         1..16 (G1 keys and signatures computed here; G2 keys from test/fixtures/g2_multiples.json,
///         k·g2 for k = 1..136, written by avs.crypto).
abstract contract AvsFixture is Test {
    using BN254 for BN254.G1Point;

    uint96 internal constant MIN_STAKE = 1 ether;
    address internal constant RECIPIENT = address(0xBEEF);
    /// @dev The core's DEALLOCATION_DELAY: longer than the challenge (50) and resolution (100) windows,
    ///      and long enough that the stake age bound (S below, 1,750) lets the fixture's certificates
    ///      span a coverage term (1,000 blocks) without a stake refresh.
    uint32 internal constant DEALLOCATION_DELAY_BLOCKS = 2_000;
    /// @dev The registry's look-ahead L and maximum stake age S, as Deploy.s.sol sets them by default:
    ///      L = DEALLOCATION_DELAY, S = L - W with W = 100 (max reference age) + 50 (challenge window)
    ///      + 100 (resolution window).
    uint32 internal constant STAKE_LOOKAHEAD_BLOCKS = DEALLOCATION_DELAY_BLOCKS;
    uint32 internal constant MAX_STAKE_AGE_BLOCKS = DEALLOCATION_DELAY_BLOCKS - 250;

    LocalRestakingCore internal core;
    TestToken internal token;
    LocalStrategy internal strategy;
    OperatorRegistry internal registry;
    InferenceTaskManager internal taskManager;
    string internal g2Table;

    function setUp() public virtual {
        vm.roll(100);
        g2Table = vm.readFile(string.concat(vm.projectRoot(), "/test/fixtures/g2_multiples.json"));
        core = new LocalRestakingCore(DEALLOCATION_DELAY_BLOCKS);
        token = new TestToken("Stake", "STK");
        strategy = _newStrategy(token);
        core.addStrategy(strategy);
        registry = new OperatorRegistry(core, core, address(this));
        registry.setStakeFreshness(STAKE_LOOKAHEAD_BLOCKS, MAX_STAKE_AGE_BLOCKS);
        taskManager = new InferenceTaskManager(
            registry, address(this), IInferenceTaskManager.Config(6667, 100, 50), _recordRing()
        );
        taskManager.setAggregator(address(this), true);
        registry.setRedistributionRecipient(_recipient());
        registry.initializeAvs("https://avs.example/metadata.json");
        IStrategy[] memory strategies = new IStrategy[](1);
        strategies[0] = strategy;
        registry.createQuorum(0, IOperatorRegistryTypes.QuorumConfig(32, MIN_STAKE), strategies);
        registry.createQuorum(1, IOperatorRegistryTypes.QuorumConfig(32, MIN_STAKE), strategies);
    }

    /// @dev The strategy of both quorums, over the stake token.
    function _newStrategy(TestToken stakeToken) internal virtual returns (LocalStrategy) {
        return new LocalStrategy(stakeToken);
    }

    /// @dev The task manager's batch record ring: none (every record kept) unless a test says so.
    function _recordRing() internal view virtual returns (uint64) {
        return 0;
    }

    /// @dev Called after the task manager is deployed and before the quorums are created.
    function _recipient() internal virtual returns (address) {
        return RECIPIENT;
    }

    function _operator(uint256 sk) internal pure returns (address) {
        return address(uint160(0x10000 + sk));
    }

    function _g1(uint256 sk) internal view returns (BN254.G1Point memory) {
        return BN254.generatorG1().scalar_mul(sk);
    }

    function _g2(uint256 k) internal view returns (BN254.G2Point memory p) {
        if (k > BN254.FR_MODULUS / 2) return _negG2(_g2(BN254.FR_MODULUS - k)); // (r - k)·g2 = -(k·g2)
        if (k > 136) return _g2Large(k);
        string memory key = string.concat(".points[", vm.toString(k - 1), "]");
        uint256[] memory x = vm.parseJsonUintArray(g2Table, string.concat(key, ".X"));
        uint256[] memory y = vm.parseJsonUintArray(g2Table, string.concat(key, ".Y"));
        p.X = [x[0], x[1]];
        p.Y = [y[0], y[1]];
    }

    function _negG2(BN254.G2Point memory q) internal pure returns (BN254.G2Point memory) {
        q.Y = [BN254.FP_MODULUS - q.Y[0], BN254.FP_MODULUS - q.Y[1]];
        return q;
    }

    /// @dev k·g2 for the few large k of test/fixtures/g2_large.json (same generator script).
    function _g2Large(uint256 k) internal view returns (BN254.G2Point memory p) {
        string memory table = vm.readFile(string.concat(vm.projectRoot(), "/test/fixtures/g2_large.json"));
        string memory key = string.concat(".points.", vm.toString(k));
        uint256[] memory x = vm.parseJsonUintArray(table, string.concat(key, ".X"));
        uint256[] memory y = vm.parseJsonUintArray(table, string.concat(key, ".Y"));
        p.X = [x[0], x[1]];
        p.Y = [y[0], y[1]];
    }

    function _quorums1() internal pure returns (bytes memory) {
        return hex"00";
    }

    /// @dev Registers operator `sk` with `stake` tokens allocated fully to each quorum of `quorums`
    ///      (split evenly across them).
    function _register(uint256 sk, uint256 stake, bytes memory quorums) internal {
        address op = _operator(sk);
        _fund(op, stake, quorums);
        uint32[] memory ids = new uint32[](quorums.length);
        for (uint256 i; i < quorums.length; ++i) {
            ids[i] = uint8(quorums[i]);
        }
        bytes memory data = _registrationData(sk, op);
        vm.prank(op);
        core.registerForOperatorSets(op, IAllocationManagerTypes.RegisterParams(address(registry), ids, data));
    }

    /// @dev Operator with stake allocated to quorum 0, not yet registered with the AVS.
    function _fund(address op, uint256 stake) internal {
        _fund(op, stake, hex"00");
    }

    /// @dev Operator with `stake` allocated evenly to `quorums`, not yet registered with the AVS.
    function _fund(address op, uint256 stake, bytes memory quorums) internal {
        token.mint(op, stake);
        vm.startPrank(op);
        token.approve(address(core), stake);
        core.registerAsOperator(address(0), 0, "");
        core.depositIntoStrategy(strategy, token, stake);
        _allocate(op, quorums);
        vm.stopPrank();
    }

    function _allocate(address op, bytes memory quorums) internal {
        IAllocationManagerTypes.AllocateParams[] memory a = new IAllocationManagerTypes.AllocateParams[](quorums.length);
        IStrategy[] memory strategies = new IStrategy[](1);
        strategies[0] = strategy;
        uint64[] memory mags = new uint64[](1);
        mags[0] = uint64(1e18 / quorums.length);
        for (uint256 i; i < quorums.length; ++i) {
            a[i] = IAllocationManagerTypes.AllocateParams(
                OperatorSet(address(registry), uint8(quorums[i])), strategies, mags
            );
        }
        core.modifyAllocations(op, a);
    }

    function _registrationData(uint256 sk, address op) internal view returns (bytes memory) {
        return _registrationData(sk, op, new IOperatorRegistryTypes.OperatorKick[](0));
    }

    /// @dev Registration data that names members to replace in full quorums (churn).
    function _registrationData(uint256 sk, address op, IOperatorRegistryTypes.OperatorKick[] memory kicks)
        internal
        view
        returns (bytes memory)
    {
        BN254.G1Point memory h = BLSSignatures.pubkeyRegistrationMessageHash(op, address(registry), block.chainid);
        return abi.encode(
            "grpc://operator.example:50051",
            IOperatorRegistryTypes.PubkeyRegistrationParams(h.scalar_mul(sk), _g1(sk), _g2(sk)),
            kicks
        );
    }

    function _header(uint64 index, bytes32 root, bytes memory quorums)
        internal
        view
        returns (AvsMessages.BatchHeader memory)
    {
        return AvsMessages.BatchHeader(index, root, uint32(block.number - 1), quorums);
    }

    /// @dev Signature params for `header`, signed by `signers` (secret keys), non-signers `nonSigners`
    ///      (must be given sorted by operator id; use `_sortById`).
    function _params(
        bytes32 digest,
        AvsMessages.BatchHeader memory header,
        uint256[] memory signers,
        uint256[] memory nonSigners
    ) internal view returns (IBLSSignatureChecker.NonSignerStakesAndSignature memory p) {
        uint256 sum;
        for (uint256 i; i < signers.length; ++i) {
            sum = addmod(sum, signers[i], BN254.FR_MODULUS); // the aggregate secret, as a scalar
        }
        bytes32[] memory ids = new bytes32[](nonSigners.length);
        p.nonSignerPubkeys = new BN254.G1Point[](nonSigners.length);
        for (uint256 j; j < nonSigners.length; ++j) {
            p.nonSignerPubkeys[j] = _g1(nonSigners[j]);
            ids[j] = BN254.hashG1Point(p.nonSignerPubkeys[j]);
        }
        IOperatorRegistry.CheckSignaturesIndices memory idx =
            registry.getCheckSignaturesIndices(header.referenceBlock, header.quorumNumbers, ids);
        p.nonSignerQuorumBitmapIndices = idx.nonSignerQuorumBitmapIndices;
        p.quorumApkIndices = idx.quorumApkIndices;
        p.totalStakeIndices = idx.totalStakeIndices;
        p.nonSignerStakeIndices = idx.nonSignerStakeIndices;
        p.quorumApks = new BN254.G1Point[](header.quorumNumbers.length);
        for (uint256 i; i < header.quorumNumbers.length; ++i) {
            p.quorumApks[i] = registry.getApk(uint8(header.quorumNumbers[i]));
        }
        p.apkG2 = _g2(sum);
        p.sigma = BN254.hashToG1(digest).scalar_mul(sum);
    }

    function _sortById(uint256[] memory sks) internal view returns (uint256[] memory) {
        for (uint256 i = 1; i < sks.length; ++i) {
            uint256 key = sks[i];
            uint256 kh = uint256(BN254.hashG1Point(_g1(key)));
            uint256 j = i;
            while (j > 0 && uint256(BN254.hashG1Point(_g1(sks[j - 1]))) > kh) {
                sks[j] = sks[j - 1];
                --j;
            }
            sks[j] = key;
        }
        return sks;
    }

    function _range(uint256 from, uint256 to) internal pure returns (uint256[] memory r) {
        r = new uint256[](to - from + 1);
        for (uint256 i; i < r.length; ++i) {
            r[i] = from + i;
        }
    }

    function _one(uint256 x) internal pure returns (uint256[] memory r) {
        r = new uint256[](1);
        r[0] = x;
    }

    function _none() internal pure returns (uint256[] memory) {
        return new uint256[](0);
    }
}
