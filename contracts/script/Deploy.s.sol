// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Test} from "../test/utils/Test.sol";
import {LocalRestakingCore} from "../src/core/LocalRestakingCore.sol";
import {LocalStrategy} from "../src/core/LocalStrategy.sol";
import {TestToken} from "../src/tokens/TestToken.sol";
import {IStrategy} from "../src/interfaces/eigenlayer/IStrategy.sol";
import {OperatorRegistry} from "../src/OperatorRegistry.sol";
import {IOperatorRegistryTypes} from "../src/interfaces/IOperatorRegistry.sol";
import {InferenceTaskManager} from "../src/InferenceTaskManager.sol";
import {IInferenceTaskManager} from "../src/interfaces/IInferenceTaskManager.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {InsurancePool} from "../src/InsurancePool.sol";
import {IInsurancePoolTypes} from "../src/interfaces/IInsurancePool.sol";
import {FaultManager} from "../src/FaultManager.sol";
import {IFaultManagerTypes} from "../src/interfaces/IFaultManager.sol";

import {IAllocationManager} from "../src/interfaces/eigenlayer/IAllocationManager.sol";
import {IStrategyManager} from "../src/interfaces/eigenlayer/IStrategyManager.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @dev The cheatcodes this script needs beyond `test/utils/Test.sol`'s `Vm` (same addresses and signatures).
interface VmEnv {
    function envUint(string calldata name) external view returns (uint256 value);
    function envAddress(string calldata name) external view returns (address value);
    function envAddress(string calldata name, string calldata delim) external view returns (address[] memory value);
    function envOr(string calldata name, address defaultValue) external view returns (address value);
    function toString(uint256 value) external pure returns (string memory);
}

/// @notice Deploys the AVS contracts (registry, task manager, insurance pool as the redistribution
///         recipient of quorum 0, fault manager as the registry's slasher, model registry), creates
///         quorum 0, and writes the deployment JSON the Python side reads (`avs.chain.deployment`).
///         Two entry points, one JSON format:
///         - `run()` (the default): a LOCAL devnet. Deploys the local restaking core, a test stake
///           token and its strategy first, and the AVS on top of them.
///         - `runWithEigenLayer()`: a real network. Deploys only the AVS contracts, pointed at
///           EigenLayer's deployed contracts and strategies given in the environment; the AVS
///           contracts are the same code in both cases.
/// @dev Environment, both: DEPLOYER_KEY (default: anvil account 0 for `run()`; required for
///      `runWithEigenLayer()`), AGGREGATOR (default: the deployer),
///      DEPLOYMENT_OUT (default: deployments/local.json, relative to contracts/),
///      THRESHOLD_BPS (6667), MAX_REFERENCE_AGE (100), CHALLENGE_WINDOW (50), MIN_STAKE (1 ether),
///      BATCH_RECORD_RING (8192 batch record slots, reused once final; 0 keeps every record),
///      EQUIVOCATION_WAD (0.1e18), REJECTED_OUTPUT_WAD (0.2e18), FRAUD_WAD (0.5e18),
///      ESCALATION_THRESHOLD_BPS (8000; escalation quorum: quorum 0), RESOLUTION_WINDOW (100),
///      CHALLENGE_BOND (1 ether), MAX_SLASHES_PER_CALL (64), PREMIUM_BPS (100), COVERAGE_CAP_BPS (5000;
///      an upper bound only: the pool caps coverage at what one fraud at THRESHOLD_BPS slashes,
///      FRAUD_WAD of it, less CHALLENGER_REWARD_BPS, 30% of the quorum's stake with these defaults),
///      CHALLENGER_REWARD_BPS (1000), COVERAGE_TERM (1000 blocks; coverage expires by its term only
///      CHALLENGE_WINDOW blocks after it), AVS_METADATA_URI.
///      `run()` only: DEALLOCATION_DELAY (100800 blocks, mainnet's; the local core's window in which
///      a deregistered operator stays slashable), SLASH_RESOLUTION_DELAY (0 blocks: slashed funds
///      reach the pool in the slashing transaction; set it to rehearse EigenLayer v1.13's delay,
///      during which payouts and challenger rewards are owed and the challenger clears the slash). Both refuse to deploy when MAX_REFERENCE_AGE +
///      CHALLENGE_WINDOW + RESOLUTION_WINDOW exceeds the core's DEALLOCATION_DELAY.
///      Stake freshness (OperatorRegistry.setStakeFreshness): STAKE_LOOKAHEAD (L, default: the core's
///      DEALLOCATION_DELAY) and MAX_STAKE_AGE (S, default: DEALLOCATION_DELAY - W, where W =
///      MAX_REFERENCE_AGE + CHALLENGE_WINDOW + RESOLUTION_WINDOW); both refuse to deploy unless
///      S != 0 and W + S <= L <= DEALLOCATION_DELAY (a signer's weight stays slashable until its
///      fraud can no longer be proven; see OperatorRegistry). Something must call
///      updateOperatorsForQuorum at least every S blocks (the aggregator does, every S/2).
///      `runWithEigenLayer()` only: ALLOCATION_MANAGER, DELEGATION_MANAGER and STRATEGY_MANAGER
///      (EigenLayer's deployed proxies), STRATEGIES (comma-separated strategy addresses of quorum 0),
///      STAKE_TOKEN (default: the first strategy's underlying token; the pool's asset and the bond token).
///      Run: tools/forge script script/Deploy.s.sol --rpc-url $RPC --broadcast
///           tools/forge script script/Deploy.s.sol --sig "runWithEigenLayer()" --rpc-url $RPC --broadcast
contract Deploy is Test {
    uint256 internal constant ANVIL_KEY_0 = 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80;
    VmEnv internal constant ENV = VmEnv(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// @dev What the deployment JSON records about the restaking core the AVS points at.
    struct Core {
        IAllocationManager allocationManager;
        IStrategyManager strategyManager;
        address delegationManager;
        IStrategy[] strategies;
        IERC20 stakeToken;
    }

    /// @notice The local devnet: the local restaking core, a test token, and the AVS on top.
    function run() external {
        uint256 key = vm.envOr("DEPLOYER_KEY", ANVIL_KEY_0);
        uint256 startBlock = vm.getBlockNumber();
        vm.startBroadcast(key);
        LocalRestakingCore local = new LocalRestakingCore(uint32(vm.envOr("DEALLOCATION_DELAY", uint256(100_800))));
        TestToken token = new TestToken("AVS Test Stake", "tSTAKE");
        LocalStrategy strategy = new LocalStrategy(token);
        local.addStrategy(strategy);
        // EigenLayer since v1.13 clears a slash only a delay after it (0: at once, as before it)
        uint256 slashDelay = vm.envOr("SLASH_RESOLUTION_DELAY", uint256(0));
        if (slashDelay != 0) local.setSlashResolutionDelay(uint32(slashDelay));
        vm.stopBroadcast();
        IStrategy[] memory strategies = new IStrategy[](1);
        strategies[0] = strategy;
        _deployAvs(key, startBlock, Core(local, local, address(local), strategies, token));
    }

    /// @notice A real network: only the AVS contracts, on EigenLayer's deployed core.
    function runWithEigenLayer() external {
        uint256 key = ENV.envUint("DEPLOYER_KEY");
        uint256 startBlock = vm.getBlockNumber();
        address[] memory listed = ENV.envAddress("STRATEGIES", ",");
        IStrategy[] memory strategies = new IStrategy[](listed.length);
        for (uint256 i; i < listed.length; ++i) {
            strategies[i] = IStrategy(listed[i]);
        }
        require(strategies.length != 0, "STRATEGIES is empty");
        address am = ENV.envAddress("ALLOCATION_MANAGER");
        address dm = ENV.envAddress("DELEGATION_MANAGER");
        address sm = ENV.envAddress("STRATEGY_MANAGER");
        require(
            am.code.length != 0 && dm.code.length != 0 && sm.code.length != 0,
            "no contract at ALLOCATION_MANAGER/DELEGATION_MANAGER/STRATEGY_MANAGER"
        );
        address token = ENV.envOr("STAKE_TOKEN", address(strategies[0].underlyingToken()));
        _deployAvs(key, startBlock, Core(IAllocationManager(am), IStrategyManager(sm), dm, strategies, IERC20(token)));
    }

    function _deployAvs(uint256 key, uint256 startBlock, Core memory core) internal {
        address deployer = vm.addr(key);
        address aggregator = address(uint160(vm.envOr("AGGREGATOR", uint256(uint160(deployer)))));

        IInferenceTaskManager.Config memory batches = IInferenceTaskManager.Config(
            uint16(vm.envOr("THRESHOLD_BPS", uint256(6667))),
            uint32(vm.envOr("MAX_REFERENCE_AGE", uint256(100))),
            uint32(vm.envOr("CHALLENGE_WINDOW", uint256(50)))
        );
        IFaultManagerTypes.Config memory faultConfig = _faultConfig();
        _requireFaultWindowsWithinDeallocationDelay(core.allocationManager, batches, faultConfig);
        _stakeFreshness(core.allocationManager, batches, faultConfig); // checked before anything is sent

        vm.startBroadcast(key);
        OperatorRegistry registry = new OperatorRegistry(core.allocationManager, core.strategyManager, deployer);
        _setStakeFreshness(registry, core.allocationManager, batches, faultConfig);
        InferenceTaskManager taskManager =
            new InferenceTaskManager(registry, deployer, batches, uint64(vm.envOr("BATCH_RECORD_RING", uint256(8192))));
        taskManager.setAggregator(aggregator, true);
        InsurancePool pool = new InsurancePool(core.stakeToken, registry, taskManager, deployer, _poolConfig());
        registry.setRedistributionRecipient(address(pool));
        registry.initializeAvs(vm.envOr("AVS_METADATA_URI", string("https://verifiable-inference.invalid/avs.json")));
        registry.createQuorum(
            0, IOperatorRegistryTypes.QuorumConfig(64, uint96(vm.envOr("MIN_STAKE", uint256(1 ether)))), core.strategies
        );
        registry.setChurnConfig(
            0,
            IOperatorRegistryTypes.ChurnConfig(
                uint16(vm.envOr("KICK_BIPS_OF_OPERATOR_STAKE", uint256(11_000))),
                uint16(vm.envOr("KICK_BIPS_OF_TOTAL_STAKE", uint256(1000)))
            )
        );
        FaultManager faults =
            new FaultManager(registry, taskManager, pool, core.stakeToken, deployer, faultConfig, hex"00");
        pool.setFaultManager(faults);
        registry.setSlasher(address(faults), true);
        ModelRegistry models = new ModelRegistry(deployer);
        vm.stopBroadcast();

        string memory o = "deployment";
        vm.serializeUint(o, "chain_id", block.chainid);
        vm.serializeUint(o, "start_block", startBlock);
        vm.serializeAddress(o, "deployer", deployer);
        vm.serializeAddress(o, "aggregator", aggregator);
        vm.serializeAddress(o, "allocation_manager", address(core.allocationManager));
        vm.serializeAddress(o, "delegation_manager", core.delegationManager);
        vm.serializeAddress(o, "strategy_manager", address(core.strategyManager));
        vm.serializeAddress(o, "strategy", address(core.strategies[0]));
        vm.serializeAddress(o, "stake_token", address(core.stakeToken));
        vm.serializeAddress(o, "operator_registry", address(registry));
        vm.serializeAddress(o, "model_registry", address(models));
        vm.serializeAddress(o, "insurance_pool", address(pool));
        vm.serializeAddress(o, "fault_manager", address(faults));
        string memory json = vm.serializeAddress(o, "task_manager", address(taskManager));
        string memory out = vm.envOr("DEPLOYMENT_OUT", string("deployments/local.json"));
        vm.writeJson(json, out);
    }

    /// @dev A batch signer may leave its quorums right after the batch's reference block; its fraud
    ///      can be proven up to maxReferenceAge + challenge window + resolution window blocks later,
    ///      and it must still be slashable then (EigenLayer keeps it so for DEALLOCATION_DELAY).
    function _requireFaultWindowsWithinDeallocationDelay(
        IAllocationManager allocationManager,
        IInferenceTaskManager.Config memory batches,
        IFaultManagerTypes.Config memory faults
    ) internal view {
        uint256 window = uint256(batches.maxReferenceAge) + batches.challengeWindowBlocks
            + faults.resolutionWindowBlocks;
        uint32 delay = allocationManager.DEALLOCATION_DELAY();
        require(
            window <= delay,
            string.concat(
                "MAX_REFERENCE_AGE + CHALLENGE_WINDOW + RESOLUTION_WINDOW = ",
                ENV.toString(window),
                " blocks, more than the core's DEALLOCATION_DELAY of ",
                ENV.toString(delay),
                ": a signer could leave its quorum and escape slashing for fraud proven late"
            )
        );
    }

    /// @dev The registry's look-ahead L and maximum stake age S: a stake counted at reference block r
    ///      was read at u >= r - S with the minimum slashable stake at u + L, and its fraud can be
    ///      proven until r + W. Deallocations pending at u stay slashable until then if L >= S + W;
    ///      deallocations started after u, if S + W <= DEALLOCATION_DELAY. L beyond the delay adds
    ///      nothing, so: S != 0 and W + S <= L <= DEALLOCATION_DELAY.
    function _stakeFreshness(
        IAllocationManager allocationManager,
        IInferenceTaskManager.Config memory batches,
        IFaultManagerTypes.Config memory faults
    ) internal view returns (uint32 lookAhead, uint32 maxStakeAge) {
        uint256 window = uint256(batches.maxReferenceAge) + batches.challengeWindowBlocks
            + faults.resolutionWindowBlocks;
        uint32 delay = allocationManager.DEALLOCATION_DELAY();
        lookAhead = uint32(vm.envOr("STAKE_LOOKAHEAD", uint256(delay)));
        maxStakeAge = uint32(vm.envOr("MAX_STAKE_AGE", delay > window ? uint256(delay) - window : 0));
        require(
            maxStakeAge != 0 && window + maxStakeAge <= lookAhead && lookAhead <= delay,
            string.concat(
                "MAX_REFERENCE_AGE + CHALLENGE_WINDOW + RESOLUTION_WINDOW + MAX_STAKE_AGE = ",
                ENV.toString(window + maxStakeAge),
                " blocks (MAX_STAKE_AGE ",
                ENV.toString(maxStakeAge),
                ", must be non-zero) must be at most STAKE_LOOKAHEAD = ",
                ENV.toString(lookAhead),
                ", itself at most the core's DEALLOCATION_DELAY of ",
                ENV.toString(delay),
                ": a signer's weight must stay slashable until its fraud can no longer be proven"
            )
        );
    }

    function _setStakeFreshness(
        OperatorRegistry registry,
        IAllocationManager allocationManager,
        IInferenceTaskManager.Config memory batches,
        IFaultManagerTypes.Config memory faults
    ) internal {
        (uint32 lookAhead, uint32 maxStakeAge) = _stakeFreshness(allocationManager, batches, faults);
        registry.setStakeFreshness(lookAhead, maxStakeAge);
    }

    function _poolConfig() internal view returns (IInsurancePoolTypes.Config memory) {
        return IInsurancePoolTypes.Config(
            uint16(vm.envOr("PREMIUM_BPS", uint256(100))),
            uint16(vm.envOr("COVERAGE_CAP_BPS", uint256(5000))),
            uint16(vm.envOr("CHALLENGER_REWARD_BPS", uint256(1000))),
            uint32(vm.envOr("COVERAGE_TERM", uint256(1000)))
        );
    }

    function _faultConfig() internal view returns (IFaultManagerTypes.Config memory) {
        return IFaultManagerTypes.Config(
            uint64(vm.envOr("EQUIVOCATION_WAD", uint256(0.1e18))),
            uint64(vm.envOr("REJECTED_OUTPUT_WAD", uint256(0.2e18))),
            uint64(vm.envOr("FRAUD_WAD", uint256(0.5e18))),
            uint16(vm.envOr("ESCALATION_THRESHOLD_BPS", uint256(8000))),
            uint32(vm.envOr("RESOLUTION_WINDOW", uint256(100))),
            uint96(vm.envOr("CHALLENGE_BOND", uint256(1 ether))),
            uint16(vm.envOr("MAX_SLASHES_PER_CALL", uint256(64)))
        );
    }
}
