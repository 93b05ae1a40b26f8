"""Write the shared test vectors in ``tests/vectors/`` (format: ``tests/vectors/README.md``).

Run ``python -m avs.vectors [DIR]``. Inputs are fixed, so the output is deterministic; pytest
checks that the committed files equal what this module computes now, and forge checks the same
files against the Solidity code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from eth_utils import keccak, to_checksum_address

from avs.crypto import bls
from avs.crypto.backends import using_backend
from avs.crypto.curve import G1Point
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import (
    TYPE_STRINGS,
    Attestation,
    BatchHeader,
    Domain,
    InferenceOutput,
    InferenceRequest,
    Message,
    Verdict,
    compute_digest,
    compute_output_hash,
    compute_stop_sequences_hash,
)

COMPUTED = "computed"
MIDDLEWARE_BLS_MOCK = "Layr-Labs/eigenlayer-middleware test/utils/BLSMockAVSDeployer.sol (aggSignerPrivKey = 69)"
MIDDLEWARE_FFI_KEYS = "Layr-Labs/eigenlayer-middleware test/ffi/configs/operatorBLSKeys.json (privateKeys[0])"
EIGENSDK_KEYS = "Layr-Labs/eigensdk-go crypto/utils/test_data/bls_keys (private_key_hex.txt lines 1-2)"
CHAIN_ID = 31337
TASK_MANAGER = to_checksum_address("0x" + "5fbdb2315678afecb367f032d93f642f64180aa3")
REGISTRY_COORDINATOR = to_checksum_address("0x" + "e7f1725e7734ce288f8367e1bb143e90bb3f0512")

# Numbers copied from EigenLayer's sources; the tests check that our code reproduces them.
EXTERNAL_KEYS: list[dict[str, Any]] = [
    {
        "source": MIDDLEWARE_BLS_MOCK,
        "secret_key": 69,
        "pubkey_g2": {
            "X": [
                5334410886741819556325359147377682006012228123419628681352847439302316235957,
                19101821850089705274637533855249918363070101489527618151493230256975900223847,
            ],
            "Y": [
                4185483097059047421902184823581361466320657066600218863748375739772335928910,
                354176189041917478648604979334478067325821134838555150300539079146482658331,
            ],
        },
    },
    {
        "source": MIDDLEWARE_FFI_KEYS,
        "secret_key": 853,
        "pubkey_g1": {
            "X": 21008703310028844141620162130587521182514488709533704622337026710714836074802,
            "Y": 1145283673551783492487423178395020830991754869805176606412560778073024405948,
        },
    },
    {
        "source": EIGENSDK_KEYS,
        "secret_key": 2695733600625131346122864983303466385927445828993184612262398097053003827945,
        "pubkey_g1": {
            "X": 20770760626397288647989719952430268435412940027317835986854114355284449304367,
            "Y": 14860742301798284656486681596150725088757741265286915113692865360170725264111,
        },
        "operator_id": "0x7fa05738e9c607b3a9cd453c479c674748d2eef4b982d80125db3d60447f7bc8",
    },
    {
        "source": EIGENSDK_KEYS,
        "secret_key": 8605448476381973975809603788929135888378871499562201547767959402074076235219,
        "pubkey_g1": {
            "X": 4648943875184248607357788340159405012950960504516188565107353869715506236335,
            "Y": 7501586147268558313116967332995665819044819171170704584958862395468948086362,
        },
        "operator_id": "0xb5d35467b051ce3b700f97cf5d6a7c96bab335f6c600803201420f9519bfad67",
    },
]

SECRET_KEYS = [1, 2, 69, 853, 0xC0FFEE, 2**200 + 12345]
MESSAGES = [b"\x00" * 32, keccak(b""), keccak(text="hello world"), keccak(text="verified inference"), b"\xff" * 32]


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _key_case(secret: int, source: str = COMPUTED) -> dict[str, Any]:
    pair = bls.compute_key_pair(bls.SecretKey(secret))
    return {
        "source": source,
        "secret_key": str(secret),
        "pubkey_g1": pair.pubkey_g1.to_json(),
        "pubkey_g2": pair.pubkey_g2.to_json(),
        "operator_id": _hex(pair.operator_id),
    }


def _aggregate_case(secrets: list[int], message: bytes, *, tamper: str | None = None) -> dict[str, Any]:
    pairs = [bls.compute_key_pair(bls.SecretKey(s)) for s in secrets]
    apk_g1 = bls.aggregate_g1([p.pubkey_g1 for p in pairs])
    apk_g2 = bls.aggregate_g2([p.pubkey_g2 for p in pairs])
    sigma = bls.aggregate_g1([bls.sign(p.secret, message) for p in pairs])
    if tamper == "message":
        message = keccak(message)
    elif tamper == "apk":
        apk_g1 = bls.aggregate_g1([apk_g1, G1Point(1, 2)])
    return {
        "source": COMPUTED,
        "note": f"signers {secrets}" + (f", tampered {tamper}" if tamper else ""),
        "message_hash": _hex(message),
        "apk_g1": apk_g1.to_json(),
        "apk_g2": apk_g2.to_json(),
        "sigma": sigma.to_json(),
        "gamma": str(bls.compute_signature_gamma(message, apk_g1, apk_g2, sigma)),
        "valid": bls.verify_aggregate(message, apk_g1, apk_g2, sigma),
    }


def _pop_case(secret: int, operator: str, signer: int | None = None) -> dict[str, Any]:
    pair = bls.compute_key_pair(bls.SecretKey(secret))
    message = bls.compute_pubkey_registration_hash(operator, REGISTRY_COORDINATOR, CHAIN_ID)
    signature = bls.sign(bls.SecretKey(signer or secret), message)
    return {
        "source": COMPUTED,
        "operator": operator,
        "registry_coordinator": REGISTRY_COORDINATOR,
        "chain_id": str(CHAIN_ID),
        "message_hash": _hex(message),
        "message_point": bls.compute_hash_to_g1(message).to_json(),
        "pubkey_g1": pair.pubkey_g1.to_json(),
        "pubkey_g2": pair.pubkey_g2.to_json(),
        "signature": signature.to_json(),
        "valid": bls.verify_pubkey_registration(pair.pubkey_g1, pair.pubkey_g2, signature, message),
    }


def compute_bn254_vectors() -> dict[str, Any]:
    operator = to_checksum_address("0x" + "70997970c51812dc3a010c7d01b50e0d17dc79c8")
    return {
        "description": "BN254 BLS as EigenLayer middleware checks it; format in README.md",
        "hash_to_g1": [
            {"source": COMPUTED, "message_hash": _hex(m), "point": bls.compute_hash_to_g1(m).to_json()}
            for m in MESSAGES
        ],
        "keys": [_key_case(s) for s in SECRET_KEYS] + [_key_case(k["secret_key"], k["source"]) for k in EXTERNAL_KEYS],
        "signatures": [
            {
                "source": COMPUTED,
                "secret_key": str(s),
                "message_hash": _hex(m),
                "signature": bls.sign(bls.SecretKey(s), m).to_json(),
            }
            for s in SECRET_KEYS[:4]
            for m in MESSAGES[1:3]
        ],
        "aggregate_checks": [
            _aggregate_case([69], keccak(text="hello world")),
            _aggregate_case([1, 2, 853], MESSAGES[3]),
            _aggregate_case([1, 2, 853], MESSAGES[3], tamper="message"),
            _aggregate_case([1, 2, 853], MESSAGES[3], tamper="apk"),
        ],
        "proofs_of_possession": [
            _pop_case(69, operator),
            _pop_case(853, REGISTRY_COORDINATOR),
            _pop_case(69, operator, signer=70),
        ],
    }


def _request(index: int) -> InferenceRequest:
    return InferenceRequest(
        model_id=keccak(text="HuggingFaceTB/SmolLM2-135M-Instruct"),
        prompt_hash=keccak(text=f"prompt {index}"),
        temperature_milli=[0, 700, 1000][index % 3],
        top_k=[0, 40, 1][index % 3],
        top_p_micro=[1_000_000, 950_000, 1][index % 3],
        seed=[0, 42, 2**64 - 1][index % 3],
        max_tokens=[128, 1, 2**32 - 1][index % 3],
        stop_sequences_hash=compute_stop_sequences_hash([[], ["\n\n"], ["</s>", "User:"]][index % 3]),
        requester=to_checksum_address("0x" + f"{index + 1:040x}"),
        nonce=[0, 7, 2**256 - 1][index % 3],
    )


def _struct_case(domain: Domain, message: Message) -> dict[str, str]:
    return {
        "source": COMPUTED,
        "struct_hash": _hex(message.compute_struct_hash()),
        "digest": _hex(compute_digest(domain, message)),
    }


def compute_message_vectors() -> dict[str, Any]:
    domain = Domain(chain_id=CHAIN_ID, verifying_contract=TASK_MANAGER)
    requests = [_request(i) for i in range(3)]
    attestations = [
        Attestation(compute_digest(domain, r), keccak(text=f"output {i}"), verdict)
        for i, r in enumerate(requests)
        for verdict in Verdict
    ]
    outputs = [
        InferenceOutput(compute_digest(domain, requests[0]), keccak(text="profile"), ()),
        InferenceOutput(compute_digest(domain, requests[1]), keccak(text="profile"), (0, 1, 2**32 - 1)),
        InferenceOutput(compute_digest(domain, requests[2]), keccak(text="other"), tuple(range(100, 164))),
    ]
    headers = [
        BatchHeader(0, keccak(text="root 0"), 1, b"\x00"),
        BatchHeader(2**64 - 1, keccak(text="root 1"), 2**32 - 1, bytes([0, 1, 191])),
    ]
    return {
        "description": "EIP-712 typed messages of the AVS; format in README.md",
        "domain": {
            "name": domain.name,
            "version": domain.version,
            "chain_id": str(domain.chain_id),
            "verifying_contract": domain.verifying_contract,
            "separator": _hex(domain.separator),
        },
        "typehashes": {name: {"type": t, "hash": _hex(keccak(text=t))} for name, t in TYPE_STRINGS.items()},
        "inference_requests": [
            {
                "model_id": _hex(r.model_id),
                "prompt_hash": _hex(r.prompt_hash),
                "temperature_milli": str(r.temperature_milli),
                "top_k": str(r.top_k),
                "top_p_micro": str(r.top_p_micro),
                "seed": str(r.seed),
                "max_tokens": str(r.max_tokens),
                "stop_sequences_hash": _hex(r.stop_sequences_hash),
                "requester": r.requester,
                "nonce": str(r.nonce),
                **_struct_case(domain, r),
            }
            for r in requests
        ],
        "attestations": [
            {
                "request_hash": _hex(a.request_hash),
                "output_hash": _hex(a.output_hash),
                "verdict": str(int(a.verdict)),
                **_struct_case(domain, a),
            }
            for a in attestations
        ],
        "inference_outputs": [
            {
                "request_hash": _hex(o.request_hash),
                "model_profile_hash": _hex(o.model_profile_hash),
                "token_ids": [str(t) for t in o.token_ids],
                "output_hash": _hex(compute_output_hash(o)),
                **_struct_case(domain, o),
            }
            for o in outputs
        ],
        "batch_headers": [
            {
                "batch_index": str(h.batch_index),
                "leaves_root": _hex(h.leaves_root),
                "reference_block": str(h.reference_block),
                "quorum_numbers": _hex(h.quorum_numbers),
                **_struct_case(domain, h),
            }
            for h in headers
        ],
    }


def compute_merkle_vectors() -> dict[str, Any]:
    trees = []
    for size in (1, 2, 3, 5, 8):
        leaves = [BatchLeaf(keccak(text=f"request {size}-{i}"), keccak(text=f"output {size}-{i}")) for i in range(size)]
        tree = compute_merkle_tree(leaves)
        trees.append(
            {
                "source": COMPUTED,
                "leaves": [
                    {
                        "request_hash": _hex(leaf.request_hash),
                        "output_hash": _hex(leaf.output_hash),
                        "leaf_hash": _hex(leaf.compute_hash()),
                    }
                    for leaf in leaves
                ],
                "root": _hex(tree.root),
                "proofs": [[_hex(node) for node in tree.get_proof(i)] for i in range(size)],
            }
        )
    return {"description": "OpenZeppelin StandardMerkleTree over batch leaves; format in README.md", "trees": trees}


def compute_all_vectors() -> dict[str, dict[str, Any]]:
    """File name -> document, computed with the reference backend, which is the definition."""
    with using_backend("py_ecc"):
        return {
            "bn254.json": compute_bn254_vectors(),
            "messages.json": compute_message_vectors(),
            "merkle.json": compute_merkle_vectors(),
        }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "tests" / "vectors"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, document in compute_all_vectors().items():
        (out_dir / name).write_text(render(document))
        print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
