// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title TestToken — LOCAL DEVNET/TEST ONLY
/// @notice An ERC20 anyone can mint, for devnet stake, premiums and bonds.
contract TestToken is ERC20 {
    /// @param name_ Token name.
    /// @param symbol_ Token symbol.
    constructor(string memory name_, string memory symbol_) ERC20(name_, symbol_) {}

    /// @notice Mints `amount` to `to` (no access control: test token).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
