"""``make demo`` until the devnet exists: the certificate path of the AVS, end to end, for real.

It creates operator keystores, checks each operator's proof of possession as EigenLayer's
registry would, signs a batch of attested inferences, aggregates the quorum's signatures, checks
the aggregate with EigenLayer's gamma equation and the stake threshold, and proves one request's
leaf against the certified root. ``make demo`` then runs the forge tests that hold Solidity to the
same bytes. What is not here yet: anvil, deployed contracts, operator and aggregator processes,
and a real model's completion (see the README's status table).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from eth_utils import keccak, to_checksum_address

from avs import keystore
from avs.crypto import bls
from avs.crypto.backends import get_backend
from avs.merkle import BatchLeaf, compute_merkle_tree, verify_merkle_proof
from avs.messages import (
    BatchHeader,
    Domain,
    InferenceOutput,
    InferenceRequest,
    compute_digest,
    compute_output_hash,
    compute_request_hash,
    compute_stop_sequences_hash,
)

CHAIN_ID = 31337
TASK_MANAGER = to_checksum_address("0x" + "5fbdb2315678afecb367f032d93f642f64180aa3")
REGISTRY_COORDINATOR = to_checksum_address("0x" + "e7f1725e7734ce288f8367e1bb143e90bb3f0512")
THRESHOLD_BPS = 6_667  # two thirds of the quorum's stake
DEMO_PASSWORD = "demo-only-password"


@dataclass(frozen=True)
class DemoOperator:
    name: str
    address: str
    stake: int
    keys: bls.KeyPair


def create_operators(keys_dir: Path) -> list[DemoOperator]:
    operators = []
    for index, (name, stake) in enumerate([("alice", 400), ("bob", 300), ("carol", 200), ("dave", 100)]):
        path = keystore.get_key_path(keys_dir, name, "bls")
        keystore.save_bls_keystore(path, bls.compute_key_pair(bls.generate_secret_key()), DEMO_PASSWORD, 1 << 12)
        pair = keystore.load_bls_keystore(path, DEMO_PASSWORD)
        address = to_checksum_address("0x" + f"{index + 1:040x}")
        operators.append(DemoOperator(name, address, stake, pair))
    return operators


def register(operator: DemoOperator) -> None:
    message = bls.compute_pubkey_registration_hash(operator.address, REGISTRY_COORDINATOR, CHAIN_ID)
    signature = bls.sign_pubkey_registration(operator.keys.secret, operator.address, REGISTRY_COORDINATOR, CHAIN_ID)
    assert bls.verify_pubkey_registration(operator.keys.pubkey_g1, operator.keys.pubkey_g2, signature, message)
    print(
        f"  {operator.name:<6} stake {operator.stake:>4}  operator id 0x{operator.keys.operator_id.hex()[:16]}…  PoP ok"
    )


def build_batch(domain: Domain, count: int) -> list[BatchLeaf]:
    leaves = []
    profile = keccak(text="SmolLM2-135M-Instruct fp32 profile (placeholder until the engine lands)")
    for i in range(count):
        request = InferenceRequest(
            model_id=keccak(text="HuggingFaceTB/SmolLM2-135M-Instruct"),
            prompt_hash=keccak(text=f"prompt {i}"),
            temperature_milli=0,
            top_k=0,
            top_p_micro=1_000_000,
            seed=i,
            max_tokens=64,
            stop_sequences_hash=compute_stop_sequences_hash([]),
            requester=to_checksum_address("0x" + "ab" * 20),
            nonce=i,
        )
        request_hash = compute_request_hash(domain, request)
        output = InferenceOutput(request_hash, profile, tuple(range(100 + i, 110 + i)))
        leaves.append(BatchLeaf(request_hash, compute_output_hash(output)))
    return leaves


def main() -> int:
    print("NOTE: the local devnet (anvil, contracts, operator and aggregator processes) is not built yet.")
    print("      This demo runs the nearest real thing: the BLS certificate path, with real keys and crypto.\n")
    domain = Domain(chain_id=CHAIN_ID, verifying_contract=TASK_MANAGER)
    with tempfile.TemporaryDirectory() as keys_dir:
        operators = create_operators(Path(keys_dir))
    print(f"1. Four operators, keystores in eigensdk format, BN254 backend '{get_backend().name}':")
    for operator in operators:
        register(operator)

    leaves = build_batch(domain, 8)
    tree = compute_merkle_tree(leaves)
    header = BatchHeader(batch_index=0, leaves_root=tree.root, reference_block=100, quorum_numbers=b"\x00")
    digest = compute_digest(domain, header)
    print(f"\n2. Batch 0: {len(leaves)} attested inferences, Merkle root 0x{tree.root.hex()[:16]}…")
    print(f"   EIP-712 digest (chain {CHAIN_ID}, task manager {TASK_MANAGER[:10]}…): 0x{digest.hex()[:16]}…")

    signers = operators[:3]  # dave is offline: a non-signer
    sigma = bls.aggregate_g1([bls.sign(o.keys.secret, digest) for o in signers])
    apk_g1 = bls.aggregate_g1([o.keys.pubkey_g1 for o in signers])
    apk_g2 = bls.aggregate_g2([o.keys.pubkey_g2 for o in signers])
    valid = bls.verify_aggregate(digest, apk_g1, apk_g2, sigma)
    signed = sum(o.stake for o in signers)
    total = sum(o.stake for o in operators)
    share_bps = signed * 10_000 // total
    print(f"\n3. Signed by {', '.join(o.name for o in signers)}; non-signer: {operators[3].name}")
    print(f"   aggregate signature check (EigenLayer's gamma equation): {'VALID' if valid else 'INVALID'}")
    print(
        f"   stake signed {signed}/{total} = {share_bps / 100:.2f}% (threshold {THRESHOLD_BPS / 100:.2f}%):"
        f" {'CERTIFIED' if share_bps >= THRESHOLD_BPS else 'NOT CERTIFIED'}"
    )

    proof = tree.get_proof(3)
    forged = BatchLeaf(leaves[3].request_hash, keccak(text="an edited output"))
    print("\n4. A requester's offline check of its certificate:")
    print(
        f"   Merkle proof of request 3 ({len(proof)} hashes) against the certified root: "
        f"{'OK' if verify_merkle_proof(tree.root, leaves[3], proof) else 'FAILED'}"
    )
    print(
        f"   the same proof for an edited output: "
        f"{'OK (BUG!)' if verify_merkle_proof(tree.root, forged, proof) else 'rejected, as it must be'}"
    )
    tampered = bls.verify_aggregate(keccak(digest), apk_g1, apk_g2, sigma)
    print(
        f"   the aggregate signature over another header: {'VALID (BUG!)' if tampered else 'rejected, as it must be'}"
    )
    print("\nNext: forge checks that Solidity computes the same hashes, points and checks (tests/vectors).")
    return 0 if valid and not tampered else 1


if __name__ == "__main__":
    raise SystemExit(main())
