// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

/// @title QuorumBitmaps
/// @notice Quorum numbers (bytes, one quorum per byte) <-> 192-bit bitmaps, as EigenLayer's BitmapUtils.
library QuorumBitmaps {
    /// @notice Quorum numbers are empty, not strictly ascending, or above 191.
    error InvalidQuorumNumbers();

    /// @notice The bitmap of `quorumNumbers`, which must be non-empty, strictly ascending and < 192.
    function orderedToBitmap(bytes memory quorumNumbers) internal pure returns (uint192 bitmap) {
        uint256 n = quorumNumbers.length;
        if (n == 0 || n > 192) revert InvalidQuorumNumbers();
        uint256 prev;
        for (uint256 i; i < n; ++i) {
            uint256 q = uint8(quorumNumbers[i]);
            if (q >= 192 || (i > 0 && q <= prev)) revert InvalidQuorumNumbers();
            bitmap |= uint192(1 << q);
            prev = q;
        }
    }

    /// @notice The number of set bits of `x`.
    function countOnes(uint256 x) internal pure returns (uint256 count) {
        while (x != 0) {
            x &= x - 1;
            ++count;
        }
    }

    /// @notice Whether bit `q` of `bitmap` is set.
    function has(uint256 bitmap, uint8 q) internal pure returns (bool) {
        return (bitmap >> q) & 1 == 1;
    }

    /// @notice The quorum numbers of `bitmap`, ascending.
    function toBytes(uint256 bitmap) internal pure returns (bytes memory out) {
        out = new bytes(countOnes(bitmap));
        uint256 j;
        for (uint256 q; q < 192 && j < out.length; ++q) {
            if ((bitmap >> q) & 1 == 1) out[j++] = bytes1(uint8(q));
        }
    }
}
