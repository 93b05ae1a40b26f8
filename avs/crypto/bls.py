"""BN254 BLS signatures exactly as EigenLayer's middleware checks them.

- signatures and the message point live in G1, public keys in both G1 and G2;
- ``hash_to_g1`` is ``BN254.hashToG1`` (try-and-increment), so a signature made here verifies in
  ``BLSSignatureChecker`` and ``BLSApkRegistry``;
- ``operator_id = keccak256(abi.encodePacked(pk.X, pk.Y))``;
- aggregate checks carry EigenLayer's gamma term, which binds the G1 and G2 keys together.

Aggregating same-message signatures is only safe for keys that passed the proof of possession
(``verify_pubkey_registration``); the registry contract enforces that, and so must callers.

``verify_*`` return False for anything malformed; ``parse_*`` raise ``InvalidPointError``.
Every function takes an optional ``backend``; the default is ``get_backend()``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from eth_abi import encode
from eth_utils import keccak, to_canonical_address

from avs.crypto.backends import Bn254Backend, get_backend, load_backend
from avs.crypto.curve import (
    FP_MODULUS,
    FR_MODULUS,
    G1_GENERATOR,
    G1_IDENTITY,
    G2_GENERATOR,
    G2_IDENTITY,
    G1Point,
    G2Point,
    is_on_curve_g1,
    is_on_curve_g2,
    negate_g1,
    parse_g1,
    parse_g2_on_curve,
)
from avs.eip712 import compute_domain_separator, compute_typed_digest
from avs.errors import InvalidInputError, InvalidKeyError, InvalidPointError
from avs.types import Bytes32, OperatorId

# The proof-of-possession message of EigenLayer's RegistryCoordinator.
PUBKEY_REGISTRATION_TYPE = "BN254PubkeyRegistration(address operator)"
PUBKEY_REGISTRATION_TYPEHASH = keccak(text=PUBKEY_REGISTRATION_TYPE)
REGISTRY_COORDINATOR_DOMAIN_NAME = "AVSRegistryCoordinator"
REGISTRY_COORDINATOR_DOMAIN_VERSION = "v0.0.1"

_SQRT_EXPONENT = (FP_MODULUS + 1) // 4
_BATCH_SCALAR_BITS = 128  # random-linear-combination coefficients: forgery chance 2^-128


@dataclass(frozen=True, slots=True)
class SecretKey:
    """A BLS secret scalar in [1, r). Its repr never shows the value."""

    value: int = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.value < FR_MODULUS:
            raise InvalidKeyError("a BN254 secret key must be in [1, r)")


@dataclass(frozen=True, slots=True)
class KeyPair:
    secret: SecretKey
    pubkey_g1: G1Point
    pubkey_g2: G2Point

    @property
    def operator_id(self) -> OperatorId:
        return compute_operator_id(self.pubkey_g1)


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """One signature to check in a batch: ``signature`` over ``message_hash`` by ``pubkey_g2``."""

    pubkey_g2: G2Point
    message_hash: bytes
    signature: G1Point


def _int32(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _backend(backend: Bn254Backend | None) -> Bn254Backend:
    return backend if backend is not None else get_backend()


# --- keys -----------------------------------------------------------------------------


def generate_secret_key() -> SecretKey:
    return SecretKey(secrets.randbelow(FR_MODULUS - 1) + 1)


def compute_key_pair(secret: SecretKey, backend: Bn254Backend | None = None) -> KeyPair:
    impl = _backend(backend)
    return KeyPair(
        secret=secret,
        pubkey_g1=impl.g1_mul_secret(G1_GENERATOR, secret.value),
        pubkey_g2=impl.g2_mul_secret(G2_GENERATOR, secret.value),
    )


def compute_operator_id(pubkey_g1: G1Point) -> OperatorId:
    """EigenLayer's ``BN254.hashG1Point``: ``keccak256(abi.encodePacked(X, Y))``."""
    return OperatorId(keccak(_int32(pubkey_g1.x) + _int32(pubkey_g1.y)))


def parse_g2(x: tuple[int, int], y: tuple[int, int], backend: Bn254Backend | None = None) -> G2Point:
    """A G2 public key from untrusted Solidity-order coordinates: on the twist, in the subgroup."""
    point = parse_g2_on_curve(x, y)
    if not _backend(backend).is_in_g2_subgroup(point):
        raise InvalidPointError("G2 point is not in the prime-order subgroup")
    return point


def parse_pubkey_g1(x: int, y: int) -> G1Point:
    return parse_g1(x, y)


# --- hashing --------------------------------------------------------------------------


def compute_hash_to_g1(message_hash: bytes) -> G1Point:
    """EigenLayer's ``BN254.hashToG1``: x = h mod p, then x += 1 until x^3 + 3 is a square.

    The y returned is ``(x^3 + 3)^((p+1)/4)``, whichever root that is, exactly as in Solidity.
    """
    return _hash_to_g1(_check_hash(message_hash))


def clear_hash_cache() -> None:
    """Forget the cached hashes (the benchmark times a message never seen before)."""
    _hash_to_g1.cache_clear()


# Cached: ~0.2 ms of modular exponentiation in Python, and a verification round checks every
# verifier's signature over the same digest (an ACCEPT of one output), as a batch does its signers'.
@lru_cache(maxsize=4096)
def _hash_to_g1(message_hash: bytes) -> G1Point:
    x = int.from_bytes(message_hash, "big") % FP_MODULUS
    while True:
        beta = (pow(x, 3, FP_MODULUS) + 3) % FP_MODULUS
        y = pow(beta, _SQRT_EXPONENT, FP_MODULUS)
        if y * y % FP_MODULUS == beta:
            return G1Point(x, y)
        x = (x + 1) % FP_MODULUS


def _check_hash(message_hash: bytes) -> bytes:
    if not isinstance(message_hash, bytes | bytearray) or len(message_hash) != 32:
        raise InvalidInputError("a message hash must be exactly 32 bytes")
    return bytes(message_hash)


def _is_hash(message_hash: object) -> bool:
    return isinstance(message_hash, bytes | bytearray) and len(message_hash) == 32


# --- single signatures ----------------------------------------------------------------


def sign(secret: SecretKey, message_hash: bytes, backend: Bn254Backend | None = None) -> G1Point:
    """``sk · hashToG1(message_hash)``."""
    return _backend(backend).g1_mul_secret(compute_hash_to_g1(message_hash), secret.value)


def _is_valid_g2_key(pubkey: G2Point, backend: Bn254Backend) -> bool:
    return _is_valid_g2_key_cached(pubkey, backend.name)


@lru_cache(maxsize=4096)
def _is_valid_g2_key_cached(pubkey: G2Point, backend_name: str) -> bool:
    # Cached: the same operator keys are checked again and again, and a subgroup check costs a
    # G2 scalar multiplication.
    backend = load_backend(backend_name)
    return not pubkey.is_identity() and is_on_curve_g2(pubkey) and backend.is_in_g2_subgroup(pubkey)


def _is_valid_signature_point(signature: G1Point) -> bool:
    return is_on_curve_g1(signature) and not signature.is_identity()


def verify(pubkey_g2: G2Point, message_hash: bytes, signature: G1Point, backend: Bn254Backend | None = None) -> bool:
    """``e(σ, -g2) · e(H(m), pk) == 1``; False for any malformed input."""
    impl = _backend(backend)
    if not (_is_hash(message_hash) and _is_valid_signature_point(signature) and _is_valid_g2_key(pubkey_g2, impl)):
        return False
    point = compute_hash_to_g1(bytes(message_hash))
    return impl.pairing_product_is_one([(negate_g1(signature), G2_GENERATOR), (point, pubkey_g2)])


# --- aggregation ----------------------------------------------------------------------


def aggregate_g1(points: Sequence[G1Point], backend: Bn254Backend | None = None) -> G1Point:
    """Sum of G1 points (signatures or G1 public keys)."""
    impl = _backend(backend)
    total = G1_IDENTITY
    for point in points:
        total = impl.g1_add(total, point)
    return total


def aggregate_g2(points: Sequence[G2Point], backend: Bn254Backend | None = None) -> G2Point:
    """Sum of G2 public keys."""
    impl = _backend(backend)
    total = G2_IDENTITY
    for point in points:
        total = impl.g2_add(total, point)
    return total


def compute_signature_gamma(message_hash: bytes, apk_g1: G1Point, apk_g2: G2Point, sigma: G1Point) -> int:
    """The gamma of ``BLSSignatureChecker.trySignatureAndApkVerification``."""
    packed = _check_hash(message_hash) + b"".join(
        _int32(v) for v in (apk_g1.x, apk_g1.y, apk_g2.x_im, apk_g2.x_re, apk_g2.y_im, apk_g2.y_re, sigma.x, sigma.y)
    )
    return int.from_bytes(keccak(packed), "big") % FR_MODULUS


def verify_aggregate(
    message_hash: bytes,
    apk_g1: G1Point,
    apk_g2: G2Point,
    sigma: G1Point,
    backend: Bn254Backend | None = None,
) -> bool:
    """EigenLayer's aggregate check: ``e(σ + γ·apk, -g2) · e(H(m) + γ·g1, apkG2) == 1``.

    Also proves that ``apk_g1`` and ``apk_g2`` share their discrete log, which is what lets the
    contract aggregate cheaply in G1 while the pairing uses G2.
    """
    impl = _backend(backend)
    if not (_is_hash(message_hash) and is_on_curve_g1(sigma) and is_on_curve_g1(apk_g1)):
        return False
    if apk_g1.is_identity() or not _is_valid_g2_key(apk_g2, impl):
        return False
    gamma = compute_signature_gamma(bytes(message_hash), apk_g1, apk_g2, sigma)
    left = impl.g1_add(sigma, impl.g1_mul(apk_g1, gamma))
    right = impl.g1_add(compute_hash_to_g1(bytes(message_hash)), impl.g1_mul(G1_GENERATOR, gamma))
    return impl.pairing_product_is_one([(negate_g1(left), G2_GENERATOR), (right, apk_g2)])


def verify_batch(items: Sequence[SignedMessage], backend: Bn254Backend | None = None) -> bool:
    """Check many signatures at once by a random linear combination: n + 1 pairings, not 2n.

    ``e(-Σ rᵢσᵢ, g2) · Π e(rᵢ·H(mᵢ), pkᵢ) == 1`` with fresh 128-bit ``rᵢ``; a batch holding any bad
    signature passes with probability at most 2^-128. Use ``find_invalid_signatures`` to name
    the bad ones after a failure.
    """
    impl = _backend(backend)
    if not items:
        return True
    for item in items:
        if not (_is_hash(item.message_hash) and _is_valid_signature_point(item.signature)):
            return False
        if not _is_valid_g2_key(item.pubkey_g2, impl):
            return False
    scalars = [secrets.randbits(_BATCH_SCALAR_BITS) | 1 for _ in items]
    sigma = impl.g1_multi_mul([item.signature for item in items], scalars)
    pairs = [(negate_g1(sigma), G2_GENERATOR)]
    for item, scalar in zip(items, scalars, strict=True):
        pairs.append((impl.g1_mul(compute_hash_to_g1(bytes(item.message_hash)), scalar), item.pubkey_g2))
    return impl.pairing_product_is_one(pairs)


def find_invalid_signatures(items: Sequence[SignedMessage], backend: Bn254Backend | None = None) -> list[int]:
    """Indexes of the items whose signature does not verify, by bisection over batch checks."""
    impl = _backend(backend)
    if verify_batch(items, impl):
        return []
    if len(items) == 1:
        return [0]
    middle = len(items) // 2
    left = find_invalid_signatures(items[:middle], impl)
    right = find_invalid_signatures(items[middle:], impl)
    return left + [middle + index for index in right]


# --- proof of possession --------------------------------------------------------------


def compute_pubkey_registration_hash(operator: str, registry_coordinator: str, chain_id: int) -> Bytes32:
    """The EIP-712 digest ``RegistryCoordinator.calculatePubkeyRegistrationMessageHash`` returns."""
    separator = compute_domain_separator(
        REGISTRY_COORDINATOR_DOMAIN_NAME, REGISTRY_COORDINATOR_DOMAIN_VERSION, chain_id, registry_coordinator
    )
    struct_hash = keccak(encode(["bytes32", "address"], [PUBKEY_REGISTRATION_TYPEHASH, to_canonical_address(operator)]))
    return Bytes32(compute_typed_digest(separator, struct_hash))


def sign_pubkey_registration(
    secret: SecretKey, operator: str, registry_coordinator: str, chain_id: int, backend: Bn254Backend | None = None
) -> G1Point:
    """The ``pubkeyRegistrationSignature`` an operator submits when it registers."""
    return sign(secret, compute_pubkey_registration_hash(operator, registry_coordinator, chain_id), backend)


def compute_pubkey_registration_gamma(
    signature: G1Point, pubkey_g1: G1Point, pubkey_g2: G2Point, message_point: G1Point
) -> int:
    """The gamma of ``BLSApkRegistry.registerBLSPublicKey``."""
    packed = b"".join(
        _int32(v)
        for v in (
            signature.x,
            signature.y,
            pubkey_g1.x,
            pubkey_g1.y,
            pubkey_g2.x_im,
            pubkey_g2.x_re,
            pubkey_g2.y_im,
            pubkey_g2.y_re,
            message_point.x,
            message_point.y,
        )
    )
    return int.from_bytes(keccak(packed), "big") % FR_MODULUS


def verify_pubkey_registration(
    pubkey_g1: G1Point,
    pubkey_g2: G2Point,
    signature: G1Point,
    message_hash: bytes,
    backend: Bn254Backend | None = None,
) -> bool:
    """EigenLayer's proof-of-possession check, with ``message_hash`` from
    ``compute_pubkey_registration_hash``:
    ``e(σ + γ·pkG1, -g2) · e(H(m) + γ·g1, pkG2) == 1``.
    """
    impl = _backend(backend)
    if not (_is_hash(message_hash) and _is_valid_signature_point(signature)):
        return False
    if pubkey_g1.is_identity() or not is_on_curve_g1(pubkey_g1) or not _is_valid_g2_key(pubkey_g2, impl):
        return False
    message_point = compute_hash_to_g1(bytes(message_hash))
    gamma = compute_pubkey_registration_gamma(signature, pubkey_g1, pubkey_g2, message_point)
    left = impl.g1_add(signature, impl.g1_mul(pubkey_g1, gamma))
    right = impl.g1_add(message_point, impl.g1_mul(G1_GENERATOR, gamma))
    return impl.pairing_product_is_one([(negate_g1(left), G2_GENERATOR), (right, pubkey_g2)])
