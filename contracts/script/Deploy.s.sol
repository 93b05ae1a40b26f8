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

/// @notice Deploys the LOCAL restaking core, a test stake token and the AVS contracts (registry,
///         task manager, insurance pool as the redistribution recipient of quorum 0, fault manager as
///         the registry's slasher, model registry), creates quorum 0, and writes the deployment JSON
///         the Python side reads (`avs.chain.deployment`).
/// @dev Environment: DEPLOYER_KEY (default: anvil account 0), AGGREGATOR (default: the deployer),
///      DEPLOYMENT_OUT (default: deployments/local.json, relative to contracts/),
///      THRESHOLD_BPS (6667), MAX_REFERENCE_AGE (100), CHALLENGE_WINDOW (50), MIN_STAKE (1 ether),
///      EQUIVOCATION_WAD (0.1e18), REJECTED_OUTPUT_WAD (0.2e18), FRAUD_WAD (0.5e18),
///      ESCALATION_THRESHOLD_BPS (8000; escalation quorum: quorum 0), RESOLUTION_WINDOW (100),
///      CHALLENGE_BOND (1 ether), PREMIUM_BPS (100), COVERAGE_CAP_BPS (5000),
///      CHALLENGER_REWARD_BPS (1000), COVERAGE_TERM (1000 blocks).
///      Run: tools/forge script script/Deploy.s.sol --rpc-url $RPC --broadcast
contract Deploy is Test {
    uint256 internal constant ANVIL_KEY_0 = 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80;

    function run() external {
        uint256 key = vm.envOr("DEPLOYER_KEY", ANVIL_KEY_0);
        address deployer = vm.addr(key);
        address aggregator = address(uint160(vm.envOr("AGGREGATOR", uint256(uint160(deployer)))));
        uint256 startBlock = vm.getBlockNumber();

        vm.startBroadcast(key);
        LocalRestakingCore core = new LocalRestakingCore();
        TestToken token = new TestToken("AVS Test Stake", "tSTAKE");
        LocalStrategy strategy = new LocalStrategy(token);
        core.addStrategy(strategy);
        OperatorRegistry registry = new OperatorRegistry(core, deployer);
        InferenceTaskManager taskManager = new InferenceTaskManager(
            registry,
            deployer,
            IInferenceTaskManager.Config(
                uint16(vm.envOr("THRESHOLD_BPS", uint256(6667))),
                uint32(vm.envOr("MAX_REFERENCE_AGE", uint256(100))),
                uint32(vm.envOr("CHALLENGE_WINDOW", uint256(50)))
            )
        );
        taskManager.setAggregator(aggregator, true);
        InsurancePool pool = new InsurancePool(token, registry, taskManager, deployer, _poolConfig());
        registry.setRedistributionRecipient(address(pool));
        registry.initializeAvs("https://verifiable-inference.invalid/avs.json");
        IStrategy[] memory strategies = new IStrategy[](1);
        strategies[0] = strategy;
        registry.createQuorum(
            0, IOperatorRegistryTypes.QuorumConfig(64, uint96(vm.envOr("MIN_STAKE", uint256(1 ether)))), strategies
        );
        FaultManager faults = new FaultManager(registry, taskManager, pool, token, deployer, _faultConfig(), hex"00");
        pool.setFaultManager(faults);
        registry.setSlasher(address(faults), true);
        ModelRegistry models = new ModelRegistry(deployer);
        vm.stopBroadcast();

        string memory o = "deployment";
        vm.serializeUint(o, "chain_id", block.chainid);
        vm.serializeUint(o, "start_block", startBlock);
        vm.serializeAddress(o, "deployer", deployer);
        vm.serializeAddress(o, "aggregator", aggregator);
        vm.serializeAddress(o, "allocation_manager", address(core));
        vm.serializeAddress(o, "delegation_manager", address(core));
        vm.serializeAddress(o, "strategy", address(strategy));
        vm.serializeAddress(o, "stake_token", address(token));
        vm.serializeAddress(o, "operator_registry", address(registry));
        vm.serializeAddress(o, "model_registry", address(models));
        vm.serializeAddress(o, "insurance_pool", address(pool));
        vm.serializeAddress(o, "fault_manager", address(faults));
        string memory json = vm.serializeAddress(o, "task_manager", address(taskManager));
        string memory out = vm.envOr("DEPLOYMENT_OUT", string("deployments/local.json"));
        vm.writeJson(json, out);
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
            uint96(vm.envOr("CHALLENGE_BOND", uint256(1 ether)))
        );
    }
}
