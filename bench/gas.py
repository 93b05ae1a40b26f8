"""Gas per certified inference on anvil, through the real ``certifyBatch``, against per-task responses.

    python -m bench.gas [--operators 8] [--quick] [--no-record]

anvil with the contracts deployed by ``script/Deploy.s.sol`` (``THRESHOLD_BPS=3000`` so that 4
of 8 equal-stake operators may abstain); operators restaked and registered with BLS proofs of
possession (``avs.devnet.restake`` + ``avs.chain.registration``); each batch of n leaves is
Merkle-rooted, its digest signed in Python (``avs.crypto.bls``) by every operator but the
non-signers, and sent by ``Web3AvsClient.certify_batch``. As the aggregator does, the full
operator set's (apk, apkG2) is recorded once with ``verifyKeyPair`` (not counted), so all-signers
certificates take the check without γ randomisation. For each set of non-signers a first
batch of 1 is certified unrecorded (it pays one-off first writes of cold storage slots); each
cell is the median of ``--repeats`` certifications: the gas varies with the digest in steps of
~4.5k (each extra try of the try-and-increment hash to G1 is one more modexp square root). Gas
is the receipt's ``gasUsed``: the whole transaction (21k base cost and calldata included). So the
headline is also given as an expectation over random digests: the one-try gas, plus the measured
cost of a try times the mean extra tries of ``EXPECTED_TRIES_SAMPLES`` random digests (~1: half of
all digests need more than one).

Two deployments are measured. "Ring slot reused": ``BATCH_RECORD_RING=1`` and
``CHALLENGE_WINDOW=1``, two blocks mined before each certification, so every batch record
overwrites the slot of a final batch: the steady state of the default deployment (a ring of 8,192
slots) once it has gone round once. "Every record kept": ``BATCH_RECORD_RING=0``, each batch
record in a new slot (+17.1k): what the ring's first pass and a ring-less deployment pay.

The baseline is a per-task response in the style of EigenLayer's example AVS: one aggregate
signature check per inference, i.e. a batch of 1 for every request. The batch's gas does not
grow with n (only the 32-byte root goes on-chain), so the gas per inference is gas / n.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3

from avs.chain.client import NonSignerStakesAndSignature, Web3AvsClient
from avs.chain.registration import register_operator
from avs.crypto import bls
from avs.crypto.curve import FP_MODULUS
from avs.devnet import ANVIL_KEY_0, Anvil, deploy_contracts, restake
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import BatchHeader
from bench.results import report_results

BATCH_SIZES = (1, 8, 64, 256)
EXPECTED_TRIES_SAMPLES = 20_000
NON_SIGNERS = (0, 1, 4)
QUORUMS = b"\x00"
STAKE = 10 * 10**18


@dataclass(frozen=True)
class Operator:
    account: LocalAccount
    keys: bls.KeyPair


def compute_leaves(batch_index: int, size: int) -> list[BatchLeaf]:
    """``size`` distinct (request hash, output hash) leaves for one batch."""
    return [
        BatchLeaf(Web3.keccak(text=f"request {batch_index}/{i}"), Web3.keccak(text=f"output {batch_index}/{i}"))
        for i in range(size)
    ]


def count_hash_tries(digest: bytes) -> int:
    """How many x the try-and-increment hash to G1 (``BN254.hashToG1``) tests for ``digest``: the
    x it stops at, counted from h mod p."""
    start = int.from_bytes(digest, "big") % FP_MODULUS
    return (bls.compute_hash_to_g1(digest).x - start) % FP_MODULUS + 1


def compute_mean_tries(samples: int, label: str = "digest") -> float:
    return statistics.fmean(count_hash_tries(Web3.keccak(text=f"{label} {i}")) for i in range(samples))


def compute_gas_per_try(samples: Sequence[tuple[int, int]]) -> int | None:
    """From (tries, gas) samples of one cell: the median gas of two tries less that of one."""
    by_tries: dict[int, list[int]] = {}
    for tries, gas in samples:
        by_tries.setdefault(tries, []).append(gas)
    if 1 not in by_tries or 2 not in by_tries:
        return None
    return round(statistics.median(by_tries[2]) - statistics.median(by_tries[1]))


def compute_per_inference(gas: int, batch_size: int) -> int:
    return round(gas / batch_size)


def compute_table(gas: dict[tuple[int, int], int]) -> list[dict[str, Any]]:
    """Rows of (batch size, non-signers, gas per batch, gas per inference, baseline over batched)."""
    rows = []
    for (size, absent), used in sorted(gas.items()):
        per_inference = compute_per_inference(used, size)
        baseline = gas[(1, absent)]
        rows.append(
            {
                "batch_size": size,
                "non_signers": absent,
                "gas_per_batch": used,
                "gas_per_inference": per_inference,
                "per_task_baseline_gas": baseline,
                "baseline_over_batched": round(baseline / per_inference, 2),
            }
        )
    return rows


def register(w3: Web3, deployment: Any, index: int) -> Operator:
    account: LocalAccount = Account.create()
    keys = bls.compute_key_pair(bls.generate_secret_key())
    restake(w3, deployment, account, STAKE)
    register_operator(Web3AvsClient(w3, deployment, account), account, keys, f"127.0.0.1:{6000 + index}", [0], 10**18)
    return Operator(account, keys)


def sign_batch(
    client: Web3AvsClient, header: BatchHeader, operators: Sequence[Operator], absent: Sequence[Operator]
) -> NonSignerStakesAndSignature:
    digest = client.get_batch_digest(header)
    signers = [op for op in operators if op not in absent]
    ordered = sorted(absent, key=lambda op: op.keys.operator_id)
    indices = client.get_check_signatures_indices(
        header.reference_block, QUORUMS, [op.keys.operator_id for op in ordered]
    )
    return NonSignerStakesAndSignature(
        non_signer_pubkeys=tuple(op.keys.pubkey_g1 for op in ordered),
        quorum_apks=(client.get_apk(0),),
        apk_g2=bls.aggregate_g2([op.keys.pubkey_g2 for op in signers]),
        sigma=bls.aggregate_g1([bls.sign(op.keys.secret, digest) for op in signers]),
        indices=indices,
    )


def verify_key_pair(client: Web3AvsClient, signatures: NonSignerStakesAndSignature) -> None:
    """What the aggregator does before its first all-signers certificate of an operator set
    (``Web3ChainWriter``): record (apk, apkG2) so that certificates skip the γ step."""
    apk = bls.aggregate_g1(signatures.quorum_apks)
    if not client.is_key_pair_verified(apk, signatures.apk_g2):
        client.transact(client.verify_key_pair_function(apk, signatures.apk_g2))


RING_REUSED = {"BATCH_RECORD_RING": "1", "CHALLENGE_WINDOW": "1"}
EVERY_RECORD_KEPT = {"BATCH_RECORD_RING": "0"}


def measure(
    operators_count: int,
    sizes: Sequence[int],
    non_signers: Sequence[int],
    repeats: int,
    env: dict[str, str],
    samples: dict[tuple[int, int], list[tuple[int, int]]] | None = None,
) -> dict[tuple[int, int], int]:
    """Median receipt gas of ``repeats`` certifications per (batch size, non-signers), on a
    deployment with ``env`` (``RING_REUSED`` or ``EVERY_RECORD_KEPT``). ``samples`` gets every
    certification's (hash-to-G1 tries of its digest, gas) per cell."""
    anvil = Anvil()
    reuse = env.get("BATCH_RECORD_RING", "0") != "0"  # mine past each record's challenge window
    try:
        with tempfile.TemporaryDirectory() as folder:
            deployment = deploy_contracts(anvil.url, Path(folder) / "deployment.json", {"THRESHOLD_BPS": "3000", **env})
        w3 = anvil.w3
        client = Web3AvsClient(w3, deployment, Account.from_key(ANVIL_KEY_0))
        operators = [register(w3, deployment, i) for i in range(operators_count)]
        anvil.mine(2)
        gas: dict[tuple[int, int], int] = {}
        batch_index = 1
        for absent_count in non_signers:
            for size in (0, *sizes):  # 0: a warm-up batch of 1, not recorded (first writes of cold slots)
                cell: list[tuple[int, int]] = []
                for _ in range(1 if size == 0 else repeats):
                    if reuse:
                        anvil.mine(2)  # the previous batch is final: its record slot may be reused
                    header = BatchHeader(
                        batch_index,
                        compute_merkle_tree(compute_leaves(batch_index, max(size, 1))).root,
                        w3.eth.block_number - 1,
                        QUORUMS,
                    )
                    signatures = sign_batch(client, header, operators, operators[:absent_count])
                    if size == 0 and absent_count == 0:
                        verify_key_pair(client, signatures)
                    tx_hash = client.certify_batch(header, signatures)
                    used = int(w3.eth.get_transaction_receipt(HexBytes(tx_hash))["gasUsed"])
                    cell.append((count_hash_tries(client.get_batch_digest(header)), used))
                    batch_index += 1
                if size:
                    gas[(size, absent_count)] = int(statistics.median(used for _, used in cell))
                    if samples is not None:
                        samples[(size, absent_count)] = cell
                    print(f"  batch of {size:>3}, {absent_count} non-signers: (tries, gas) {cell}", flush=True)
        return gas
    finally:
        anvil.stop()


def compute_expected_batch64(samples: dict[tuple[int, int], list[tuple[int, int]]], digests: int) -> dict[str, Any]:
    """Gas per inference at 64 leaves (all signing) over random digests: the one-try gas plus the
    cost of a try times the mean extra tries. The batch's gas does not depend on its size, so the
    all-signers samples of every size are pooled."""
    mean_tries = compute_mean_tries(digests)
    pooled = [sample for (_, absent), cell in samples.items() if absent == 0 for sample in cell]
    per_try = compute_gas_per_try(pooled)
    one_try = [gas for tries, gas in pooled if tries == 1]
    print(f"hash to G1: {mean_tries:.3f} tries on average over {digests} random digests", flush=True)
    if per_try is None:
        print("  (no all-signers certificate in one try and another in two: no expectation)", flush=True)
        return {"gas_mean_hash_tries": round(mean_tries, 3)}
    expected = statistics.median(one_try) + per_try * (mean_tries - 1)
    print(f"  a try costs {per_try:,} gas: {expected / 64:,.0f} per inference expected", flush=True)
    return {
        "gas_per_inference_batch64_expected": round(expected / 64),
        "gas_per_hash_try": per_try,
        "gas_mean_hash_tries": round(mean_tries, 3),
    }


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print(f"{'batch':>6}{'non-signers':>13}{'gas/batch':>12}{'gas/inference':>15}{'per-task':>10}{'saving':>9}")
    for row in rows:
        print(
            f"{row['batch_size']:>6}{row['non_signers']:>13}{row['gas_per_batch']:>12,}{row['gas_per_inference']:>15,}"
            f"{row['per_task_baseline_gas']:>10,}{row['baseline_over_batched']:>8}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operators", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="certifications per cell (median kept)")
    parser.add_argument("--quick", action="store_true", help="5 operators; batches of 1 and 64; 0 and 1 non-signers")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/results.json alone")
    args = parser.parse_args(argv)
    sizes, absent = (BATCH_SIZES, NON_SIGNERS) if not args.quick else ((1, 64), (0, 1))
    operators = 5 if args.quick else args.operators
    if max(absent) * 10 > operators * 7:
        parser.error("too many non-signers for the 30% threshold")
    repeats = 1 if args.quick else args.repeats
    print("ring slot reused (steady state):", flush=True)
    samples: dict[tuple[int, int], list[tuple[int, int]]] = {}
    rows = compute_table(measure(operators, sizes, absent, repeats, RING_REUSED, samples))
    print_table(rows)
    expected = compute_expected_batch64(samples, EXPECTED_TRIES_SAMPLES // (100 if args.quick else 1))
    print("every record kept (a new slot per batch):", flush=True)
    kept = compute_table(measure(operators, sizes, absent, repeats, EVERY_RECORD_KEPT))
    print_table(kept)
    by_key = {(r["batch_size"], r["non_signers"]): r for r in rows}
    figures: dict[str, Any] = {
        **expected,
        "gas_per_inference_batch64": by_key[(64, 0)]["gas_per_inference"],
        "gas_per_task_response_baseline": by_key[(1, 0)]["gas_per_batch"],
        "gas_batch64_saving_over_per_task": by_key[(64, 0)]["baseline_over_batched"],
        "gas_table": rows,
        "gas_table_every_record_kept": kept,
        "gas_details": {
            "gas_table": "ring slot reused: BATCH_RECORD_RING=1, CHALLENGE_WINDOW=1 (overwrites a final record)",
            "gas_table_every_record_kept": "BATCH_RECORD_RING=0: each record in a new slot (the ring's first pass)",
            "operators": operators,
            "threshold_bps": 3000,
            "gas": "receipt gasUsed of the whole transaction, median of the repeats",
            "repeats": repeats,
        },
    }
    report_results("gas", figures, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
