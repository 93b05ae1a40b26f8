"""Named types for the values that cross module boundaries."""

from __future__ import annotations

from typing import NewType

Bytes32 = NewType("Bytes32", bytes)
OperatorId = NewType("OperatorId", bytes)  # keccak256 of the operator's G1 public key
RequestHash = NewType("RequestHash", bytes)  # EIP-712 digest of an InferenceRequest
OutputHash = NewType("OutputHash", bytes)
Address = NewType("Address", str)  # EIP-55 checksummed
