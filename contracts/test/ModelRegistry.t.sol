// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {Test} from "./utils/Test.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";

contract RegisterModelTest is Test {
    ModelRegistry internal models;

    function setUp() public {
        models = new ModelRegistry(address(this));
    }

    function _profile(bytes32 w) internal pure returns (ModelRegistry.ModelProfile memory) {
        return ModelRegistry.ModelProfile(w, bytes32(uint256(2)), bytes32(uint256(3)), "bfloat16", 500_000, 1, 8192, 512);
    }

    function testFuzz_registerModel(bytes32 id, bytes32 weights) public {
        vm.assume(id != bytes32(0));
        models.registerModel(id, _profile(weights));
        vm.assertEq(models.getProfileHash(id), models.profileHash(_profile(weights)), "hash");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.ModelAlreadyRegistered.selector, id));
        models.registerModel(id, _profile(weights));
    }

    function test_registerModel_RevertWhen_NotOwner() public {
        vm.prank(address(0xBAD));
        vm.expectRevert();
        models.registerModel(bytes32(uint256(1)), _profile(0));
    }

    function test_deactivateModel() public {
        models.registerModel(bytes32(uint256(1)), _profile(0));
        models.deactivateModel(bytes32(uint256(1)));
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownModel.selector, bytes32(uint256(1))));
        models.getProfileHash(bytes32(uint256(1)));
    }
}
