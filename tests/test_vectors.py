"""The committed shared vectors are exactly what the Python definitions compute now.

forge reads the same files (contracts/test/Vectors.t.sol), so Python and Solidity agree byte
for byte. After a deliberate change of an encoding, run ``make vectors`` and commit the diff.
"""

from __future__ import annotations

import pytest

from avs.crypto import bls
from avs.vectors import EXTERNAL_KEYS, compute_all_vectors, render
from tests.conftest import VECTORS_DIR, load_vectors


@pytest.fixture(scope="module")
def computed() -> dict[str, dict[str, object]]:
    return compute_all_vectors()


@pytest.mark.parametrize("name", ["bn254.json", "messages.json", "merkle.json"])
def test_committed_vectors_are_current(name: str, computed: dict[str, dict[str, object]]) -> None:
    committed = (VECTORS_DIR / name).read_text()
    assert committed == render(computed[name]), f"tests/vectors/{name} is stale: run `make vectors`"


def test_vectors_reproduce_every_external_key() -> None:
    keys = {case["secret_key"]: case for case in load_vectors("bn254.json")["keys"]}
    for external in EXTERNAL_KEYS:
        case = keys[str(external["secret_key"])]
        assert case["source"] == external["source"]
        for field in ("pubkey_g1", "pubkey_g2"):
            if field in external:
                expected = external[field]
                as_strings = {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in expected.items()}
                assert case[field] == as_strings
        if "operator_id" in external:
            assert case["operator_id"] == external["operator_id"]


def test_vectors_hold_valid_and_invalid_cases() -> None:
    document = load_vectors("bn254.json")
    for table in ("aggregate_checks", "proofs_of_possession"):
        assert {case["valid"] for case in document[table]} == {True, False}


def test_signature_vectors_verify_with_the_fast_backend() -> None:
    for case in load_vectors("bn254.json")["signatures"]:
        secret = bls.SecretKey(int(case["secret_key"]))
        message = bytes.fromhex(case["message_hash"][2:])
        assert bls.sign(secret, message).to_json() == case["signature"]
