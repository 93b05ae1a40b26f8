"""EIP-712 typed messages: definitions, validation, and binding to domain and fields."""

from __future__ import annotations

import dataclasses

import pytest
from eth_abi import encode
from eth_utils import keccak, to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from avs.errors import InvalidInputError
from avs.messages import (
    ATTESTATION_TYPE,
    Attestation,
    BatchHeader,
    Domain,
    InferenceOutput,
    InferenceRequest,
    Verdict,
    compute_digest,
    compute_output_hash,
    compute_request_hash,
    compute_stop_sequences_hash,
    is_same_address,
    validate_quorum_numbers,
)

TASK_MANAGER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAIN = Domain(chain_id=31337, verifying_contract=TASK_MANAGER)
b32 = st.binary(min_size=32, max_size=32)


def request(**overrides: object) -> InferenceRequest:
    fields: dict[str, object] = {
        "model_id": keccak(text="model"),
        "prompt_hash": keccak(text="prompt"),
        "temperature_milli": 0,
        "top_k": 0,
        "top_p_micro": 1_000_000,
        "seed": 1,
        "max_tokens": 64,
        "stop_sequences_hash": compute_stop_sequences_hash([]),
        "requester": "0x0000000000000000000000000000000000000001",
        "nonce": 0,
    }
    fields.update(overrides)
    return InferenceRequest(**fields)  # type: ignore[arg-type]


def test_domain_separator_is_standard_eip712() -> None:
    typehash = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    expected = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [typehash, keccak(text="VerifiableInferenceAVS"), keccak(text="1"), 31337, TASK_MANAGER],
        )
    )
    assert DOMAIN.separator == expected


def test_attestation_digest_by_hand() -> None:
    attestation = Attestation(b"\x01" * 32, b"\x02" * 32, Verdict.REJECT)
    struct = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint8"], [keccak(text=ATTESTATION_TYPE), b"\x01" * 32, b"\x02" * 32, 2]
        )
    )
    assert compute_digest(DOMAIN, attestation) == keccak(b"\x19\x01" + DOMAIN.separator + struct)


@given(st.integers(min_value=1, max_value=2**64), st.sampled_from([TASK_MANAGER, "0x" + "11" * 20]))
def test_digests_are_bound_to_chain_and_contract(chain_id: int, contract: str) -> None:
    other = Domain(chain_id=chain_id, verifying_contract=contract)
    message = request()
    if (chain_id, contract) == (31337, TASK_MANAGER):
        assert compute_digest(other, message) == compute_digest(DOMAIN, message)
    else:
        assert compute_digest(other, message) != compute_digest(DOMAIN, message)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_id", keccak(text="other model")),
        ("prompt_hash", keccak(text="other prompt")),
        ("temperature_milli", 1),
        ("top_k", 5),
        ("top_p_micro", 999_999),
        ("seed", 2),
        ("max_tokens", 65),
        ("stop_sequences_hash", compute_stop_sequences_hash(["\n"])),
        ("requester", "0x0000000000000000000000000000000000000002"),
        ("nonce", 1),
    ],
)
def test_every_request_field_changes_the_request_hash(field: str, value: object) -> None:
    changed = dataclasses.replace(request(), **{field: value})  # type: ignore[arg-type]
    assert compute_request_hash(DOMAIN, changed) != compute_request_hash(DOMAIN, request())


@given(b32, b32, b32)
def test_attestations_conflict_only_on_the_same_request(r: bytes, o1: bytes, o2: bytes) -> None:
    accept = Attestation(r, o1, Verdict.ACCEPT)
    assert not accept.is_conflicting(accept)
    assert Attestation(r, o1, Verdict.REJECT).is_conflicting(accept)  # both verdicts on one output
    assert Attestation(r, o2, Verdict.ACCEPT).is_conflicting(accept) == (o1 != o2)  # two outputs accepted
    assert not Attestation(r, o2, Verdict.REJECT).is_conflicting(accept) or o1 == o2  # a retry is honest
    assert not Attestation(r, o2, Verdict.REJECT).is_conflicting(Attestation(r, o1, Verdict.REJECT))
    assert not Attestation(keccak(r), o2, Verdict.ACCEPT).is_conflicting(accept)


@given(st.integers(0, 2**64 - 1), b32, st.integers(0, 2**32 - 1), st.sets(st.integers(0, 191), min_size=1))
def test_batch_header_hash_covers_every_field(index: int, root: bytes, block: int, quorums: set[int]) -> None:
    header = BatchHeader(index, root, block, bytes(sorted(quorums)))
    digest = compute_digest(DOMAIN, header)
    other_quorums = quorums ^ {min(quorums) + 1 if min(quorums) < 191 else 0}  # one quorum in or out
    variants = [
        dataclasses.replace(header, batch_index=(index + 1) % 2**64),
        dataclasses.replace(header, leaves_root=keccak(root)),
        dataclasses.replace(header, reference_block=(block + 1) % 2**32),
        dataclasses.replace(header, quorum_numbers=bytes(sorted(other_quorums))),
    ]
    assert all(compute_digest(DOMAIN, v) != digest for v in variants)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model_id": b"\x00" * 31},
        {"temperature_milli": -1},
        {"top_k": 2**32},
        {"top_p_micro": 0},
        {"top_p_micro": 1_000_001},
        {"seed": 2**64},
        {"max_tokens": 0},
        {"requester": "0x1234"},
        {"nonce": True},
    ],
)
def test_invalid_requests_are_refused_with_a_clear_error(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        request(**overrides)


@pytest.mark.parametrize("quorums", [b"", b"\x01\x00", b"\x00\x00", bytes([192])])
def test_quorum_numbers_must_be_ascending_and_in_range(quorums: bytes) -> None:
    with pytest.raises(InvalidInputError):
        validate_quorum_numbers(quorums)


def test_attestation_rejects_a_bare_int_verdict() -> None:
    with pytest.raises(InvalidInputError):
        Attestation(b"\x00" * 32, b"\x00" * 32, 1)  # type: ignore[arg-type]


def test_stop_sequences_hash_is_eip712_string_array() -> None:
    assert compute_stop_sequences_hash(["a", "b"]) == keccak(keccak(text="a") + keccak(text="b"))
    assert compute_stop_sequences_hash(["a", "b"]) != compute_stop_sequences_hash(["b", "a"])


@given(b32, b32, st.lists(st.integers(0, 2**32 - 1), max_size=64))
def test_output_hash_binds_request_profile_and_every_token(
    request_hash: bytes, profile: bytes, tokens: list[int]
) -> None:
    output = InferenceOutput(request_hash, profile, tuple(tokens))
    digest = compute_output_hash(output)
    assert compute_output_hash(InferenceOutput(keccak(request_hash), profile, tuple(tokens))) != digest
    assert compute_output_hash(InferenceOutput(request_hash, keccak(profile), tuple(tokens))) != digest
    assert compute_output_hash(InferenceOutput(request_hash, profile, (*tokens, 0))) != digest
    if tokens:
        edited = [*tokens[:-1], (tokens[-1] + 1) % 2**32]
        assert compute_output_hash(InferenceOutput(request_hash, profile, tuple(edited))) != digest


@pytest.mark.parametrize("tokens", [(-1,), (2**32,), [1, 2]])
def test_output_token_ids_are_validated(tokens: object) -> None:
    with pytest.raises(InvalidInputError):
        InferenceOutput(b"\x00" * 32, b"\x00" * 32, tokens)  # type: ignore[arg-type]


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20))
def test_an_address_is_the_same_however_it_is_spelled(raw: bytes, other: bytes) -> None:
    checksummed = to_checksum_address(raw)
    spellings = [checksummed, checksummed.lower(), checksummed[2:], "0X" + checksummed[2:].upper()]
    assert all(is_same_address(a, b) for a in spellings for b in spellings)
    assert is_same_address(checksummed, to_checksum_address(other)) == (raw == other)
    assert not is_same_address(checksummed, checksummed[:-1])  # not an address at all
