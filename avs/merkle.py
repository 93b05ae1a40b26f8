"""Merkle trees of batch leaves, compatible with OpenZeppelin's ``StandardMerkleTree``.

A leaf commits to one certified inference, ``(bytes32 requestHash, bytes32 outputHash)``:
``leaf = keccak256(keccak256(abi.encode(requestHash, outputHash)))`` (double hashing keeps a leaf
from ever being read as an inner node). Pairs are hashed sorted, so a proof is a plain list of
siblings that ``MerkleProof.verify`` accepts. Leaves are sorted by hash and laid out in one
array exactly as ``@openzeppelin/merkle-tree`` does, so roots match that library too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_abi import encode
from eth_utils import keccak

from avs.errors import InvalidInputError
from avs.types import Bytes32


@dataclass(frozen=True, slots=True)
class BatchLeaf:
    request_hash: bytes
    output_hash: bytes

    def __post_init__(self) -> None:
        for name in ("request_hash", "output_hash"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise InvalidInputError(f"{name} must be 32 bytes")

    def compute_hash(self) -> Bytes32:
        return Bytes32(keccak(keccak(encode(["bytes32", "bytes32"], [self.request_hash, self.output_hash]))))


def compute_pair_hash(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative ``_hashPair``: the smaller hash goes first."""
    return keccak(a + b) if a <= b else keccak(b + a)


@dataclass(frozen=True)
class MerkleTree:
    """A built tree: ``nodes`` in OpenZeppelin's array layout (root at 0, leaves at the end)."""

    leaves: tuple[BatchLeaf, ...]
    nodes: tuple[bytes, ...]
    leaf_positions: tuple[int, ...]  # node index of leaves[i]

    @property
    def root(self) -> Bytes32:
        return Bytes32(self.nodes[0])

    def get_proof(self, leaf_index: int) -> list[Bytes32]:
        if not 0 <= leaf_index < len(self.leaves):
            raise InvalidInputError(f"leaf index {leaf_index} out of range 0..{len(self.leaves) - 1}")
        index = self.leaf_positions[leaf_index]
        proof: list[Bytes32] = []
        while index > 0:
            sibling = index + 1 if index % 2 == 1 else index - 1
            proof.append(Bytes32(self.nodes[sibling]))
            index = (index - 1) // 2
        return proof


def compute_merkle_tree(leaves: Sequence[BatchLeaf]) -> MerkleTree:
    if not leaves:
        raise InvalidInputError("a Merkle tree needs at least one leaf")
    hashes = [leaf.compute_hash() for leaf in leaves]
    order = sorted(range(len(leaves)), key=lambda i: hashes[i])
    size = 2 * len(leaves) - 1
    nodes: list[bytes] = [b""] * size
    positions = [0] * len(leaves)
    for rank, leaf_index in enumerate(order):
        positions[leaf_index] = size - 1 - rank
        nodes[size - 1 - rank] = hashes[leaf_index]
    for i in range(size - 1 - len(leaves), -1, -1):
        nodes[i] = compute_pair_hash(nodes[2 * i + 1], nodes[2 * i + 2])
    return MerkleTree(leaves=tuple(leaves), nodes=tuple(nodes), leaf_positions=tuple(positions))


def verify_merkle_proof(root: bytes, leaf: BatchLeaf, proof: Sequence[bytes]) -> bool:
    """``MerkleProof.verify(proof, root, leafHash)``."""
    node: bytes = leaf.compute_hash()
    for sibling in proof:
        if not isinstance(sibling, bytes) or len(sibling) != 32:
            return False
        node = compute_pair_hash(node, sibling)
    return node == root
