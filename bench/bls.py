"""BLS benchmark: the fast backend (mcl) against the reference (py-ecc), in one process.

    python -m bench.bls [--seconds S]

Rates are per signature on one thread. Batch verification is per signature in a batch of 64
distinct messages; aggregate verification is EigenLayer's gamma check of one aggregate. Every call
hashes its message to G1 afresh (the hash is cached in ``avs.crypto.bls``, ~0.2 ms in Python: the
cache is cleared before each call); "same message" rates keep the cache, as when an aggregator
checks many operators' signatures of one digest.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from eth_utils import keccak

from avs.crypto import bls
from avs.crypto.backends import Bn254Backend, load_backend
from avs.crypto.curve import FR_MODULUS
from bench.results import record_results

BATCH_SIZE = 64


def measure_rate(operation: Callable[[], object], seconds: float, per_call: int = 1, fresh: bool = True) -> float:
    """Operations per second: repeat ``operation`` for about ``seconds`` (at least twice). ``fresh``:
    each call hashes its messages to G1 again, as a call on a message never seen before does."""
    operation()  # warm caches (G2 subgroup checks of the keys) outside the timing
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        if fresh:
            bls.clear_hash_cache()
        operation()
        calls += 1
    return calls * per_call / (time.perf_counter() - start)


def full_size_secret(label: str) -> bls.SecretKey:
    """A 254-bit secret: small scalars would flatter the reference's double-and-add."""
    return bls.SecretKey(int.from_bytes(keccak(text=label), "big") % (FR_MODULUS - 1) + 1)


def measure_backend(backend: Bn254Backend, seconds: float) -> dict[str, float]:
    pair = bls.compute_key_pair(full_size_secret("bench"), backend)
    message = keccak(text="benchmark")
    signature = bls.sign(pair.secret, message, backend)
    signers = [bls.compute_key_pair(full_size_secret(f"signer {i}"), backend) for i in range(8)]
    apk_g1 = bls.aggregate_g1([s.pubkey_g1 for s in signers], backend)
    apk_g2 = bls.aggregate_g2([s.pubkey_g2 for s in signers], backend)
    sigma = bls.aggregate_g1([bls.sign(s.secret, message, backend) for s in signers], backend)
    messages = [keccak(text=f"m{i}") for i in range(BATCH_SIZE)]
    batch = [bls.SignedMessage(pair.pubkey_g2, m, bls.sign(pair.secret, m, backend)) for m in messages]
    return {
        "sign_per_s": measure_rate(lambda: bls.sign(pair.secret, message, backend), seconds),
        "verify_per_s": measure_rate(lambda: bls.verify(pair.pubkey_g2, message, signature, backend), seconds),
        "aggregate_verify_per_s": measure_rate(
            lambda: bls.verify_aggregate(message, apk_g1, apk_g2, sigma, backend), seconds
        ),
        "batch_verify_sigs_per_s": measure_rate(lambda: bls.verify_batch(batch, backend), seconds, BATCH_SIZE),
        "verify_same_message_per_s": measure_rate(
            lambda: bls.verify(pair.pubkey_g2, message, signature, backend), seconds, fresh=False
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement and backend")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    fast = measure_backend(load_backend("mcl"), args.seconds)
    reference = measure_backend(load_backend("py_ecc"), args.seconds)
    print(f"{'operation':<26}{'mcl /s':>12}{'py_ecc /s':>12}{'ratio':>10}")
    for key in fast:
        print(f"{key:<26}{fast[key]:>12.1f}{reference[key]:>12.2f}{fast[key] / reference[key]:>9.0f}x")
    figures = {
        "bls_verify_per_s": round(fast["verify_per_s"], 1),
        "bls_fast_over_reference": round(fast["verify_per_s"] / reference["verify_per_s"], 1),
        "bls_sign_per_s": round(fast["sign_per_s"], 1),
        "bls_aggregate_verify_per_s": round(fast["aggregate_verify_per_s"], 1),
        "bls_batch_verify_sigs_per_s": round(fast["batch_verify_sigs_per_s"], 1),
        "bls_verify_same_message_per_s": round(fast["verify_same_message_per_s"], 1),
        "bls_reference_verify_per_s": round(reference["verify_per_s"], 3),
        "bls_reference_sign_per_s": round(reference["sign_per_s"], 2),
        "bls_reference_aggregate_verify_per_s": round(reference["aggregate_verify_per_s"], 3),
        "bls_reference_batch_verify_sigs_per_s": round(reference["batch_verify_sigs_per_s"], 2),
    }
    record_results("bls", figures)
    print(f"recorded in bench/results.json: {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
