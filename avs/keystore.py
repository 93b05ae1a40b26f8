"""Key files compatible with EigenLayer's tools.

- ECDSA: Web3 Secret Storage v3 (what geth, eth-account and the eigenlayer CLI write).
- BLS: eigensdk-go's format ``{"pubKey": "E([x,y])", "crypto": {...}}``, where ``crypto`` is the
  same v3 envelope (scrypt + aes-128-ctr + keccak MAC) around the 32-byte big-endian secret.

Files are created with mode 0600 and never overwritten. Passwords are only ever arguments here;
reading them from the environment or a prompt is the CLI's job, and nothing here logs.

A file is opened only with a 32-byte derived key (a shorter one would leave the MAC independent of
the password: a wrong password would open it to a wrong key) and a KDF at least as costly as the
cheapest any Ethereum tool writes: scrypt ``n >= 2^12`` and ``n * r >= 2^12 * 8`` (the memory of
geth's ``--lightkdf``), pbkdf2 ``c >= 2^18`` (EIP-2335's and the Web3 Secret Storage examples'),
and at most 1 GiB of scrypt memory (``128 * n * r``). Writing takes the same bounds, so nothing
here writes a file it would refuse to open. Every way a file can be wrong is a ``KeystoreError``
(``WrongPasswordError`` for a MAC that fails). A password is used as its bytes: UTF-8, with the
raw bytes of an environment variable that is not UTF-8 kept as they are (as geth does), and never
quoted in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES
from Crypto.Util import Counter
from eth_account import Account
from eth_utils import keccak

from avs.crypto.bls import KeyPair, SecretKey, compute_key_pair
from avs.crypto.curve import G1Point
from avs.errors import InvalidKeyError, KeystoreError, WrongPasswordError

SCRYPT_N = 1 << 18  # geth's StandardScryptN, as eigensdk-go uses
SCRYPT_R = 8
SCRYPT_P = 1
MIN_SCRYPT_N = 1 << 12  # geth's LightScryptN (--lightkdf), what the devnet writes
MAX_SCRYPT_N = 1 << 20
MAX_SCRYPT_R = MAX_SCRYPT_P = 16
MIN_SCRYPT_MEMORY = 128 * MIN_SCRYPT_N * SCRYPT_R  # 4 MiB: geth's --lightkdf (n 2^12, r 8)
MAX_SCRYPT_MEMORY = 1 << 30  # hashlib.scrypt refuses maxmem >= 2^31
MIN_PBKDF2_C = 1 << 18  # EIP-2335's and Web3 Secret Storage's example count (eth-account writes 10^6)
MAX_PBKDF2_C = 10_000_000
DKLEN = 32  # aes-128 key ‖ MAC key
IV_BYTES = 16
MAX_KEYSTORE_BYTES = 64 * 1024
BLS_SUFFIX = ".bls.key.json"
ECDSA_SUFFIX = ".ecdsa.key.json"
_PUBKEY_PATTERN = re.compile(r"^E\(\[(\d{1,78}),(\d{1,78})\]\)$")  # BN254's p has 77 digits
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a key file says about itself without a password."""

    name: str
    key_type: str  # "bls" or "ecdsa"
    path: Path
    public: str  # BLS: the "E([x,y])" G1 key; ECDSA: the 0x address


# --- the v3 envelope ------------------------------------------------------------------


def _scrypt_n_to_write(scrypt_n: int) -> int:
    """``scrypt_n`` if a file written with it can be opened again (a power of two, at least ``MIN_SCRYPT_N``)."""
    if (
        isinstance(scrypt_n, bool)
        or not isinstance(scrypt_n, int)
        or not MIN_SCRYPT_N <= scrypt_n <= MAX_SCRYPT_N
        or scrypt_n & (scrypt_n - 1)
    ):
        raise KeystoreError(f"scrypt n must be a power of two from {MIN_SCRYPT_N} to {MAX_SCRYPT_N}, got {scrypt_n!r}")
    return scrypt_n


def _password_bytes(password: str) -> bytes:
    """The password's bytes (an environment variable's raw bytes survive Python's surrogateescape)."""
    try:
        return password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise KeystoreError("the password holds characters that cannot be encoded (lone surrogates)") from None


def encrypt_v3(secret: bytes, password: str, scrypt_n: int = SCRYPT_N) -> dict[str, Any]:
    """geth's ``EncryptDataV3``: scrypt-derived key, aes-128-ctr, MAC = keccak(dk[16:32] ‖ ct)."""
    scrypt_n = _scrypt_n_to_write(scrypt_n)
    salt, iv = secrets.token_bytes(32), secrets.token_bytes(IV_BYTES)
    derived = _scrypt(_password_bytes(password), salt, scrypt_n, SCRYPT_R, SCRYPT_P, DKLEN)
    ciphertext = _aes_ctr(derived[:16], iv, secret)
    return {
        "cipher": "aes-128-ctr",
        "ciphertext": ciphertext.hex(),
        "cipherparams": {"iv": iv.hex()},
        "kdf": "scrypt",
        "kdfparams": {"dklen": DKLEN, "n": scrypt_n, "p": SCRYPT_P, "r": SCRYPT_R, "salt": salt.hex()},
        "mac": keccak(derived[16:32] + ciphertext).hex(),
    }


def decrypt_v3(crypto: Any, password: str) -> bytes:
    """Open a v3 ``crypto`` object (scrypt or pbkdf2); ``WrongPasswordError`` if the MAC fails."""
    secret = _password_bytes(password)  # outside the try: its errors must not quote the password
    try:
        if crypto["cipher"] != "aes-128-ctr":
            raise KeystoreError(f"unsupported cipher {crypto['cipher']!r}")
        ciphertext = bytes.fromhex(crypto["ciphertext"])
        iv = bytes.fromhex(crypto["cipherparams"]["iv"])
        if len(iv) != IV_BYTES:
            raise KeystoreError(f"the cipher's iv must be {IV_BYTES} bytes")
        mac = bytes.fromhex(crypto["mac"])
        derived = _derive_key(crypto["kdf"], crypto["kdfparams"], secret)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise KeystoreError(f"malformed keystore crypto section: {exc!r}") from exc
    if not hmac.compare_digest(keccak(derived[16:32] + ciphertext), mac):
        raise WrongPasswordError("wrong password for this keystore (its MAC does not match)")
    return _aes_ctr(derived[:16], iv, ciphertext)


def _derive_key(kdf: str, params: dict[str, Any], password: bytes) -> bytes:
    salt = bytes.fromhex(params["salt"])
    if int(params["dklen"]) != DKLEN:
        raise KeystoreError(f"the derived key must be {DKLEN} bytes (dklen), not {params['dklen']!r}")
    if kdf == "scrypt":
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
        if n > MAX_SCRYPT_N or r > MAX_SCRYPT_R or p > MAX_SCRYPT_P or n < 2 or r < 1 or p < 1:
            raise KeystoreError("scrypt parameters out of the supported range")
        if n < MIN_SCRYPT_N or 128 * n * r < MIN_SCRYPT_MEMORY:
            raise KeystoreError(
                f"scrypt n={n}, r={r} is too weak to protect a key; at least n={MIN_SCRYPT_N} and "
                f"n*r={MIN_SCRYPT_MEMORY // 128}: re-encrypt it"
            )
        if 128 * n * r > MAX_SCRYPT_MEMORY:
            raise KeystoreError(f"scrypt n={n}, r={r} needs more than {MAX_SCRYPT_MEMORY >> 20} MiB")
        return _scrypt(password, salt, n, r, p, DKLEN)
    if kdf == "pbkdf2":
        c = int(params["c"])
        if params.get("prf") != "hmac-sha256" or c > MAX_PBKDF2_C:
            raise KeystoreError("unsupported pbkdf2 parameters")
        if c < MIN_PBKDF2_C:
            raise KeystoreError(f"pbkdf2 c={c} is too weak to protect a key; at least {MIN_PBKDF2_C}: re-encrypt it")
        return hashlib.pbkdf2_hmac("sha256", password, salt, c, DKLEN)
    raise KeystoreError(f"unsupported kdf {kdf!r}")


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # scrypt's memory is 128*r*n for V plus 128*r*p for B; the margin covers OpenSSL's own accounting.
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def _aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    counter = Counter.new(128, initial_value=int.from_bytes(iv, "big"))
    return bytes(AES.new(key, AES.MODE_CTR, counter=counter).encrypt(data))


# --- files ----------------------------------------------------------------------------


def _write_private_file(path: Path, document: dict[str, Any]) -> None:
    """Create ``path`` with mode 0600; refuse to overwrite (a lost key cannot be recovered)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeystoreError(f"{path} already exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_KEYSTORE_BYTES:
            raise KeystoreError(f"{path} is too large to be a keystore")
        document = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise KeystoreError(f"no key file at {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeystoreError(f"{path} is not a readable JSON keystore: {exc}") from exc
    if not isinstance(document, dict):
        raise KeystoreError(f"{path} is not a JSON object")
    return document


def format_g1_pubkey(point: G1Point) -> str:
    """gnark's ``G1Affine.String()``: ``E([x,y])`` in decimal."""
    return f"E([{point.x},{point.y}])"


def parse_g1_pubkey(text: str) -> G1Point:
    match = _PUBKEY_PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise KeystoreError("pubKey must look like E([x,y]) with decimal coordinates")
    return G1Point(int(match.group(1)), int(match.group(2)))


def save_bls_keystore(path: Path, key_pair: KeyPair, password: str, scrypt_n: int = SCRYPT_N) -> None:
    secret = key_pair.secret.value.to_bytes(32, "big")
    _write_private_file(
        path, {"pubKey": format_g1_pubkey(key_pair.pubkey_g1), "crypto": encrypt_v3(secret, password, scrypt_n)}
    )


def load_bls_keystore(path: Path, password: str) -> KeyPair:
    """Decrypt an eigensdk-format BLS key; the stored ``pubKey`` must match the secret."""
    document = _read_json(path)
    if "pubKey" not in document:
        raise KeystoreError(f"{path} has no pubKey: it is not an eigensdk BLS keystore")
    if "crypto" not in document:
        raise KeystoreError(f"{path} has no crypto section")
    stored = parse_g1_pubkey(document["pubKey"])
    secret_bytes = decrypt_v3(document["crypto"], password)
    try:
        key_pair = compute_key_pair(SecretKey(int.from_bytes(secret_bytes, "big")))
    except InvalidKeyError as exc:
        raise KeystoreError(f"{path} holds a secret that is not a BN254 scalar") from exc
    if key_pair.pubkey_g1 != stored:
        raise KeystoreError(f"{path}: pubKey does not belong to the encrypted secret")
    return key_pair


def save_ecdsa_keystore(path: Path, private_key: bytes, password: str, scrypt_n: int = SCRYPT_N) -> str:
    """Write a Web3 Secret Storage v3 file; returns the checksummed address."""
    iterations = _scrypt_n_to_write(scrypt_n)
    password_bytes = _password_bytes(password)  # eth-account takes bytes as they are (typed str only)
    document = Account.encrypt(private_key, password_bytes, kdf="scrypt", iterations=iterations)  # type: ignore[arg-type]
    _write_private_file(path, dict(document))
    return str(Account.from_key(private_key).address)


def load_ecdsa_keystore(path: Path, password: str) -> bytes:
    """Decrypt a Web3 Secret Storage v3 file; any malformed document is a ``KeystoreError``."""
    document = _read_json(path)
    if "pubKey" in document:
        raise KeystoreError(f"{path} is a BLS keystore, not an ECDSA one")
    if document.get("version") != 3 or not isinstance(document.get("crypto"), dict):
        raise KeystoreError(f"{path} is not a Web3 Secret Storage v3 keystore")
    secret = decrypt_v3(document["crypto"], password)
    try:
        address = Account.from_key(secret).address
    except ValueError as exc:
        raise KeystoreError(f"{path} holds a secret that is not a secp256k1 key") from exc
    stored = document.get("address")
    if stored and str(stored).lower().removeprefix("0x") != address.lower().removeprefix("0x"):
        raise KeystoreError(f"{path}: address does not belong to the encrypted key")
    return secret


# --- a directory of named keys --------------------------------------------------------


def validate_key_name(name: str) -> str:
    if not _NAME_PATTERN.match(name):
        raise KeystoreError("a key name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def get_key_path(keys_dir: Path, name: str, key_type: str) -> Path:
    suffix = {"bls": BLS_SUFFIX, "ecdsa": ECDSA_SUFFIX}.get(key_type)
    if suffix is None:
        raise KeystoreError(f"unknown key type {key_type!r}; use bls or ecdsa")
    return keys_dir / f"{validate_key_name(name)}{suffix}"


def get_key_info(path: Path) -> KeyInfo:
    document = _read_json(path)
    if path.name.endswith(BLS_SUFFIX):
        if "pubKey" not in document:
            raise KeystoreError(f"{path} has no pubKey")
        return KeyInfo(path.name[: -len(BLS_SUFFIX)], "bls", path, str(document["pubKey"]))
    address = document.get("address", "")
    return KeyInfo(path.name[: -len(ECDSA_SUFFIX)], "ecdsa", path, f"0x{address}" if address else "")


def list_keys(keys_dir: Path) -> list[KeyInfo]:
    if not keys_dir.is_dir():
        return []
    paths = [p for p in keys_dir.iterdir() if p.name.endswith((BLS_SUFFIX, ECDSA_SUFFIX))]
    return sorted((get_key_info(p) for p in paths), key=lambda info: (info.name, info.key_type))
