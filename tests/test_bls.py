"""BLS signatures, aggregation, batch verification and proof of possession."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from avs.crypto import bls
from avs.crypto.backends import Bn254Backend, load_backend
from avs.crypto.curve import FP_MODULUS, FR_MODULUS, G1_GENERATOR, G2_GENERATOR, G1Point, G2Point, negate_g1
from avs.errors import InvalidInputError, InvalidKeyError
from tests.helpers import find_twist_point_outside_subgroup

FAST = load_backend("mcl")
hashes = st.binary(min_size=32, max_size=32)
secrets_ = st.integers(min_value=1, max_value=FR_MODULUS - 1)
OPERATOR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
COORDINATOR = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"


def pair(secret: int, backend: Bn254Backend = FAST) -> bls.KeyPair:
    return bls.compute_key_pair(bls.SecretKey(secret), backend)


# --- EigenLayer's own numbers ---------------------------------------------------------


def test_key_69_matches_middleware_bls_mock_avs_deployer(backend: Bn254Backend) -> None:
    # eigenlayer-middleware test/utils/BLSMockAVSDeployer.sol: aggSignerApkG2 = 69·g2, X[0] imaginary.
    assert pair(69, backend).pubkey_g2 == G2Point(
        x_im=5334410886741819556325359147377682006012228123419628681352847439302316235957,
        x_re=19101821850089705274637533855249918363070101489527618151493230256975900223847,
        y_im=4185483097059047421902184823581361466320657066600218863748375739772335928910,
        y_re=354176189041917478648604979334478067325821134838555150300539079146482658331,
    )


def test_key_853_matches_middleware_ffi_key_table() -> None:
    # eigenlayer-middleware test/ffi/configs/operatorBLSKeys.json, privateKeys[0] = 853.
    keys = pair(853)
    assert keys.pubkey_g1 == G1Point(
        21008703310028844141620162130587521182514488709533704622337026710714836074802,
        1145283673551783492487423178395020830991754869805176606412560778073024405948,
    )
    assert keys.pubkey_g2.x_re == 6165304727519233866734872371230711537271438274887895122159800183137631832999
    assert keys.pubkey_g2.y_re == 18968097867253340074033854544884184550661418114696404027942755287485933653143


def test_hash_to_g1_edge_cases() -> None:
    assert bls.compute_hash_to_g1(b"\x00" * 32) == G1Point(1, 2)  # x = 0 is no square; x = 1 gives y = 2
    # A hash above p is reduced mod p first, exactly as BN254.hashToG1 does.
    above = (FP_MODULUS + 5).to_bytes(32, "big")
    assert bls.compute_hash_to_g1(above) == bls.compute_hash_to_g1((5).to_bytes(32, "big"))
    with pytest.raises(InvalidInputError):
        bls.compute_hash_to_g1(b"\x01" * 31)


def test_operator_id_of_the_zero_key_is_eigenlayers_zero_pk_hash() -> None:
    assert bls.compute_operator_id(G1Point(0, 0)).hex() == (
        "ad3228b676f7d3cd4284a5443f17f1962b36e491b30a40b2405849e597ba5fb5"
    )


# --- single signatures ----------------------------------------------------------------


@settings(max_examples=25)
@given(secrets_, hashes, hashes)
def test_sign_verify_round_trip(secret: int, message: bytes, other: bytes) -> None:
    keys = pair(secret)
    signature = bls.sign(keys.secret, message)
    assert bls.verify(keys.pubkey_g2, message, signature)
    assert bls.verify(keys.pubkey_g2, other, signature) == (other == message)
    assert not bls.verify(pair(secret % (FR_MODULUS - 1) + 1 if secret != 1 else 2).pubkey_g2, message, signature)


@settings(max_examples=3)
@given(secrets_, hashes)
def test_backends_sign_and_verify_identically(secret: int, message: bytes) -> None:
    reference = load_backend("py_ecc")
    signature = bls.sign(bls.SecretKey(secret), message, FAST)
    assert signature == bls.sign(bls.SecretKey(secret), message, reference)
    keys = pair(secret)
    assert bls.verify(keys.pubkey_g2, message, signature, reference)


def test_verify_returns_false_for_malformed_input() -> None:
    keys = pair(7)
    message = keccak(text="m")
    signature = bls.sign(keys.secret, message)
    assert bls.verify(keys.pubkey_g2, message, signature)
    bad_points = [G1Point(0, 0), G1Point(1, 3), G1Point(signature.x + FP_MODULUS, signature.y)]
    for bad in bad_points:
        assert not bls.verify(keys.pubkey_g2, message, bad)
    assert not bls.verify(keys.pubkey_g2, message[:31], signature)
    assert not bls.verify(G2Point(0, 0, 0, 0), message, signature)
    assert not bls.verify(find_twist_point_outside_subgroup(), message, signature)
    assert not bls.verify(keys.pubkey_g2, message, negate_g1(signature))


def test_secret_key_range_and_repr() -> None:
    for bad in (0, FR_MODULUS, -1):
        with pytest.raises(InvalidKeyError):
            bls.SecretKey(bad)
    assert "123456789" not in repr(bls.SecretKey(123456789))


# --- aggregation as BLSSignatureChecker does it ---------------------------------------


def test_aggregate_check_matches_middleware_gamma() -> None:
    # The gamma EigenLayer's trySignatureAndApkVerification computes for key 69 and "hello world".
    keys = pair(69)
    message = keccak(text="hello world")
    sigma = bls.sign(keys.secret, message)
    assert sigma == G1Point(
        3095504313192397867640265882947370117143314255587256824669549216160437685094,
        3219447536722777835206265243383146421648403604516865461825648587432521920879,
    )
    gamma = bls.compute_signature_gamma(message, keys.pubkey_g1, keys.pubkey_g2, sigma)
    assert gamma == 3117615047686008098826864784513513879492701687114675930388672258997613200972
    assert bls.verify_aggregate(message, keys.pubkey_g1, keys.pubkey_g2, sigma)


@settings(max_examples=10)
@given(st.lists(secrets_, min_size=1, max_size=6, unique=True), hashes)
def test_aggregate_of_signers_verifies(secret_list: list[int], message: bytes) -> None:
    pairs = [pair(s) for s in secret_list]
    apk_g1 = bls.aggregate_g1([p.pubkey_g1 for p in pairs])
    apk_g2 = bls.aggregate_g2([p.pubkey_g2 for p in pairs])
    sigma = bls.aggregate_g1([bls.sign(p.secret, message) for p in pairs])
    assert bls.verify_aggregate(message, apk_g1, apk_g2, sigma)
    # A G1 apk that does not match the G2 apk is caught by the gamma term.
    assert not bls.verify_aggregate(message, bls.aggregate_g1([apk_g1, G1_GENERATOR]), apk_g2, sigma)
    # Dropping one signature breaks it.
    if len(pairs) > 1:
        partial = bls.aggregate_g1([bls.sign(p.secret, message) for p in pairs[1:]])
        assert not bls.verify_aggregate(message, apk_g1, apk_g2, partial)


# --- batch verification ---------------------------------------------------------------


def _batch(n: int) -> list[bls.SignedMessage]:
    items = []
    for i in range(n):
        keys = pair(1000 + i)
        message = keccak(text=f"message {i}")
        items.append(bls.SignedMessage(keys.pubkey_g2, message, bls.sign(keys.secret, message)))
    return items


def test_batch_verification_accepts_good_and_finds_bad_signatures() -> None:
    items = _batch(9)
    assert bls.verify_batch(items)
    assert bls.verify_batch([])
    bad = list(items)
    bad[2] = bls.SignedMessage(items[2].pubkey_g2, items[3].message_hash, items[2].signature)
    bad[7] = bls.SignedMessage(items[7].pubkey_g2, items[7].message_hash, items[6].signature)
    assert not bls.verify_batch(bad)
    assert bls.find_invalid_signatures(bad) == [2, 7]
    assert bls.find_invalid_signatures(items) == []


def test_batch_rejects_swapped_signatures_that_cancel_in_a_plain_sum() -> None:
    # Without random coefficients, swapping two signatures of one key on two messages would pass.
    keys = pair(4242)
    m1, m2 = keccak(text="a"), keccak(text="b")
    s1, s2 = bls.sign(keys.secret, m1), bls.sign(keys.secret, m2)
    swapped = [bls.SignedMessage(keys.pubkey_g2, m1, s2), bls.SignedMessage(keys.pubkey_g2, m2, s1)]
    assert not bls.verify_batch(swapped)


def test_batch_returns_false_on_malformed_item() -> None:
    items = _batch(2)
    items[1] = bls.SignedMessage(items[1].pubkey_g2, items[1].message_hash, G1Point(1, 3))
    assert not bls.verify_batch(items)


# --- proof of possession --------------------------------------------------------------


def test_proof_of_possession_round_trip_and_binding() -> None:
    keys = pair(69)
    message = bls.compute_pubkey_registration_hash(OPERATOR, COORDINATOR, 31337)
    signature = bls.sign_pubkey_registration(keys.secret, OPERATOR, COORDINATOR, 31337)
    assert bls.verify_pubkey_registration(keys.pubkey_g1, keys.pubkey_g2, signature, message)
    # Bound to the operator, the chain and the coordinator contract.
    for other in (
        bls.compute_pubkey_registration_hash(COORDINATOR, COORDINATOR, 31337),
        bls.compute_pubkey_registration_hash(OPERATOR, COORDINATOR, 1),
        bls.compute_pubkey_registration_hash(OPERATOR, OPERATOR, 31337),
    ):
        assert not bls.verify_pubkey_registration(keys.pubkey_g1, keys.pubkey_g2, signature, other)
    # G1 and G2 keys of different secrets (a rogue-key attempt) fail.
    assert not bls.verify_pubkey_registration(pair(70).pubkey_g1, keys.pubkey_g2, signature, message)
    assert not bls.verify_pubkey_registration(G1Point(0, 0), keys.pubkey_g2, signature, message)


def test_registration_typehash_is_eigenlayers() -> None:
    assert bls.PUBKEY_REGISTRATION_TYPEHASH.hex().startswith("2bd82124")


# --- multiplications by the secret ----------------------------------------------------


@settings(max_examples=50)
@given(scalar=st.one_of(st.integers(0, 2**256 - 1), st.sampled_from([0, 1, 2, 3, FR_MODULUS - 1, FR_MODULUS])))
def test_constant_time_multiplication_equals_the_variable_time_one(scalar: int) -> None:
    point = bls.compute_hash_to_g1(keccak(scalar.to_bytes(32, "big")))
    assert FAST.g1_mul_secret(point, scalar) == FAST.g1_mul(point, scalar)
    assert FAST.g2_mul_secret(G2_GENERATOR, scalar) == FAST.g2_mul(G2_GENERATOR, scalar)


class _Recording:
    """A backend that records which multiplication each call used."""

    def __init__(self, inner: Bn254Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.used: list[str] = []

    def __getattr__(self, name: str) -> object:
        method = getattr(self.inner, name)
        if name.startswith(("g1_mul", "g2_mul")):
            self.used.append(name)
        return method


def test_signing_and_key_derivation_multiply_the_secret_in_constant_time() -> None:
    """mcl's variable-time mul runs in a time, and touches memory, that depends on the scalar: signing
    (sk · H(m)) and deriving public keys (sk · G) use ``mulCT``, with the same results."""
    recording = _Recording(FAST)
    keys = bls.compute_key_pair(bls.SecretKey(0xC0FFEE), recording)  # type: ignore[arg-type]
    signature = bls.sign(keys.secret, b"\x42" * 32, recording)  # type: ignore[arg-type]
    assert recording.used == ["g1_mul_secret", "g2_mul_secret", "g1_mul_secret"]
    assert keys == pair(0xC0FFEE, load_backend("py_ecc"))
    assert signature == load_backend("py_ecc").g1_mul(bls.compute_hash_to_g1(b"\x42" * 32), 0xC0FFEE)
