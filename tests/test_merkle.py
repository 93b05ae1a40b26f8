"""OpenZeppelin-compatible Merkle trees of batch leaves."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from eth_abi import encode
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from avs.errors import InvalidInputError
from avs.merkle import BatchLeaf, compute_merkle_tree, verify_merkle_proof

ROOT = Path(__file__).resolve().parent.parent
b32 = st.binary(min_size=32, max_size=32)
leaves_strategy = st.lists(st.builds(BatchLeaf, b32, b32), min_size=1, max_size=40)


def test_leaf_hash_is_double_keccak_of_abi_encoding() -> None:
    leaf = BatchLeaf(b"\x01" * 32, b"\x02" * 32)
    assert leaf.compute_hash() == keccak(keccak(encode(["bytes32", "bytes32"], [b"\x01" * 32, b"\x02" * 32])))


def test_single_leaf_tree_root_is_the_leaf() -> None:
    leaf = BatchLeaf(b"\x01" * 32, b"\x02" * 32)
    tree = compute_merkle_tree([leaf])
    assert tree.root == leaf.compute_hash()
    assert tree.get_proof(0) == []


@given(leaves_strategy)
def test_every_leaf_proves_and_tampering_fails(leaves: list[BatchLeaf]) -> None:
    tree = compute_merkle_tree(leaves)
    for index, leaf in enumerate(leaves):
        proof = tree.get_proof(index)
        assert verify_merkle_proof(tree.root, leaf, proof)
        forged = BatchLeaf(leaf.request_hash, keccak(leaf.output_hash))
        if forged not in leaves:
            assert not verify_merkle_proof(tree.root, forged, proof)
        if proof:
            broken = [keccak(proof[0]), *proof[1:]]
            assert not verify_merkle_proof(tree.root, leaf, broken)


@given(leaves_strategy, st.randoms())
def test_root_does_not_depend_on_leaf_order(leaves: list[BatchLeaf], rng: object) -> None:
    shuffled = list(leaves)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert compute_merkle_tree(shuffled).root == compute_merkle_tree(leaves).root


def test_bad_input_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        compute_merkle_tree([])
    with pytest.raises(InvalidInputError):
        BatchLeaf(b"\x00" * 31, b"\x00" * 32)
    tree = compute_merkle_tree([BatchLeaf(b"\x00" * 32, b"\x00" * 32)])
    with pytest.raises(InvalidInputError):
        tree.get_proof(1)
    assert not verify_merkle_proof(tree.root, tree.leaves[0], [b"\x00" * 31])


@pytest.mark.skipif(
    not (ROOT / "node_modules" / "@openzeppelin" / "merkle-tree").is_dir() or shutil.which("node") is None,
    reason="needs `npm ci` (make setup)",
)
def test_roots_and_proofs_match_openzeppelin_merkle_tree_js() -> None:
    leaves = [BatchLeaf(keccak(text=f"r{i}"), keccak(text=f"o{i}")) for i in range(13)]
    values = [["0x" + leaf.request_hash.hex(), "0x" + leaf.output_hash.hex()] for leaf in leaves]
    script = (
        "const {StandardMerkleTree} = require('@openzeppelin/merkle-tree');"
        "const t = StandardMerkleTree.of(JSON.parse(process.argv[1]), ['bytes32','bytes32']);"
        "console.log(JSON.stringify({root: t.root, proofs: [...Array(t.length).keys()].map(i => t.getProof(i))}));"
    )
    out = subprocess.run(
        ["node", "-e", script, json.dumps(values)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    expected = json.loads(out.stdout)
    tree = compute_merkle_tree(leaves)
    assert "0x" + tree.root.hex() == expected["root"]
    assert [["0x" + n.hex() for n in tree.get_proof(i)] for i in range(len(leaves))] == expected["proofs"]
