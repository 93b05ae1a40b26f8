"""EIP-712 typed-data hashing, pure functions over eth-abi.

Only what our fixed structs need: a domain separator and ``keccak256(0x1901 ‖ sep ‖ struct)``.
Struct hashing of each message lives with its type (``avs.messages``, ``avs.crypto.bls``).
"""

from __future__ import annotations

from eth_abi import encode
from eth_utils import keccak, to_canonical_address

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
DOMAIN_TYPEHASH = keccak(text=DOMAIN_TYPE)


def compute_typehash(type_string: str) -> bytes:
    return keccak(text=type_string)


def compute_domain_separator(name: str, version: str, chain_id: int, verifying_contract: str) -> bytes:
    """``keccak256(abi.encode(DOMAIN_TYPEHASH, keccak(name), keccak(version), chainId, contract))``."""
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                DOMAIN_TYPEHASH,
                keccak(text=name),
                keccak(text=version),
                chain_id,
                to_canonical_address(verifying_contract),
            ],
        )
    )


def compute_typed_digest(domain_separator: bytes, struct_hash: bytes) -> bytes:
    """The EIP-712 digest that gets signed: ``keccak256(0x1901 ‖ domainSeparator ‖ structHash)``."""
    return keccak(b"\x19\x01" + domain_separator + struct_hash)
