"""Keystores: eigensdk-go's BLS files, Web3 Secret Storage for ECDSA, and every way to get them wrong."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from avs import keystore
from avs.crypto import bls
from avs.errors import KeystoreError, WrongPasswordError
from tests.conftest import VECTORS_DIR

EIGENSDK = VECTORS_DIR / "eigensdk_keystores"
FAST_SCRYPT = keystore.MIN_SCRYPT_N  # the cheapest a keystore may be; real keys use geth's 2^18
EXPECTED = json.loads((EIGENSDK / "expected.json").read_text())["keys"]


@pytest.mark.parametrize("case", EXPECTED, ids=[c["file"] for c in EXPECTED])
def test_decrypts_keystores_written_by_eigensdk_go(case: dict[str, str]) -> None:
    pair = keystore.load_bls_keystore(EIGENSDK / case["file"], case["password"])
    assert pair.secret.value == int(case["secret_key"])
    assert "0x" + pair.operator_id.hex() == case["operator_id"]


def test_wrong_password_is_a_clear_error() -> None:
    with pytest.raises(WrongPasswordError, match="wrong password"):
        keystore.load_bls_keystore(EIGENSDK / "test.bls.key.json", "not test")


def test_bls_round_trip_and_file_mode(tmp_path: Path) -> None:
    pair = bls.compute_key_pair(bls.generate_secret_key())
    path = tmp_path / "keys" / "op.bls.key.json"
    keystore.save_bls_keystore(path, pair, "pw", scrypt_n=FAST_SCRYPT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["pubKey"] == keystore.format_g1_pubkey(pair.pubkey_g1)
    assert str(pair.secret.value) not in path.read_text()
    assert keystore.load_bls_keystore(path, "pw") == pair


def test_never_overwrites_a_key(tmp_path: Path) -> None:
    pair = bls.compute_key_pair(bls.generate_secret_key())
    path = tmp_path / "op.bls.key.json"
    keystore.save_bls_keystore(path, pair, "pw", scrypt_n=FAST_SCRYPT)
    before = path.read_bytes()
    with pytest.raises(KeystoreError, match="already exists"):
        keystore.save_bls_keystore(path, pair, "pw", scrypt_n=FAST_SCRYPT)
    assert path.read_bytes() == before


def test_a_file_without_pubkey_is_not_a_bls_key(tmp_path: Path) -> None:
    path = tmp_path / "eth.ecdsa.key.json"
    keystore.save_ecdsa_keystore(path, b"\x07" * 32, "pw", scrypt_n=FAST_SCRYPT)
    with pytest.raises(KeystoreError, match="no pubKey"):
        keystore.load_bls_keystore(path, "pw")


def test_a_bls_file_is_not_an_ecdsa_key() -> None:
    with pytest.raises(KeystoreError, match="BLS keystore"):
        keystore.load_ecdsa_keystore(EIGENSDK / "test.bls.key.json", "test")


def test_pubkey_that_does_not_match_the_secret_is_refused(tmp_path: Path) -> None:
    document = json.loads((EIGENSDK / "test.bls.key.json").read_text())
    document["pubKey"] = "E([1,2])"
    path = tmp_path / "x.bls.key.json"
    path.write_text(json.dumps(document))
    with pytest.raises(KeystoreError, match="does not belong"):
        keystore.load_bls_keystore(path, "test")


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"pubKey": "E([1,2])"}',
        '{"pubKey": "garbage", "crypto": {}}',
        '{"pubKey": "E([1,2])", "crypto": {}}',
    ],
)
def test_malformed_files_are_clear_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.bls.key.json"
    path.write_text(content)
    with pytest.raises(KeystoreError):
        keystore.load_bls_keystore(path, "pw")


def test_missing_file_and_absurd_kdf_parameters(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="no key file"):
        keystore.load_bls_keystore(tmp_path / "none.bls.key.json", "pw")
    document = json.loads((EIGENSDK / "test.bls.key.json").read_text())
    document["crypto"]["kdfparams"]["n"] = 1 << 30  # would take gigabytes: refused, not attempted
    path = tmp_path / "big.bls.key.json"
    path.write_text(json.dumps(document))
    with pytest.raises(KeystoreError, match="out of the supported range"):
        keystore.load_bls_keystore(path, "test")


def test_ecdsa_round_trip_and_wrong_password(tmp_path: Path) -> None:
    path = tmp_path / "eth.ecdsa.key.json"
    address = keystore.save_ecdsa_keystore(path, b"\x07" * 32, "pw", scrypt_n=FAST_SCRYPT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keystore.load_ecdsa_keystore(path, "pw") == b"\x07" * 32
    assert keystore.get_key_info(path).public == address
    with pytest.raises(WrongPasswordError):
        keystore.load_ecdsa_keystore(path, "nope")


def test_key_names_are_validated(tmp_path: Path) -> None:
    for bad in ("", "../escape", "a/b", ".hidden", "x" * 65):
        with pytest.raises(KeystoreError):
            keystore.get_key_path(tmp_path, bad, "bls")
    with pytest.raises(KeystoreError):
        keystore.get_key_path(tmp_path, "ok", "rsa")


def test_v3_envelope_round_trip_with_pbkdf2_reader() -> None:
    crypto = keystore.encrypt_v3(b"secret bytes", "pw", scrypt_n=FAST_SCRYPT)
    assert keystore.decrypt_v3(crypto, "pw") == b"secret bytes"
    with pytest.raises(WrongPasswordError):
        keystore.decrypt_v3(crypto, "PW")


def crafted_v3(
    secret: bytes, password: str, dklen: int = 32, n: int = FAST_SCRYPT, iv_bytes: int = 16
) -> dict[str, Any]:
    """A v3 ``crypto`` section as another tool might write it, with a MAC that matches its own dk."""
    salt, iv = secrets.token_bytes(32), secrets.token_bytes(iv_bytes)
    derived = hashlib.scrypt(password.encode(), salt=salt, n=n, r=8, p=1, dklen=dklen, maxmem=1 << 26)
    ciphertext = keystore._aes_ctr((derived + bytes(16))[:16], iv[-16:], secret)
    return {
        "cipher": "aes-128-ctr",
        "ciphertext": ciphertext.hex(),
        "cipherparams": {"iv": iv.hex()},
        "kdf": "scrypt",
        "kdfparams": {"dklen": dklen, "n": n, "p": 1, "r": 8, "salt": salt.hex()},
        "mac": keccak(derived[16:32] + ciphertext).hex(),
    }


def write_ecdsa(tmp_path: Path, crypto: dict[str, Any]) -> Path:
    path = tmp_path / "crafted.ecdsa.key.json"
    path.write_text(json.dumps({"version": 3, "crypto": crypto}))
    return path


@pytest.mark.parametrize("dklen", [16, 8, 64])
def test_only_a_32_byte_derived_key_is_accepted(tmp_path: Path, dklen: int) -> None:
    """With dklen 16 the MAC covers no password-derived bytes: a wrong password would open the file
    to a wrong key (no address field to catch it). Shorter ones used to raise a bare ValueError."""
    path = write_ecdsa(tmp_path, crafted_v3(b"\x11" * 32, "right", dklen=dklen))
    for password in ("right", "WRONG"):
        with pytest.raises(KeystoreError, match="dklen"):
            keystore.load_ecdsa_keystore(path, password)


def test_a_kdf_weaker_than_the_floor_is_refused(tmp_path: Path) -> None:
    path = write_ecdsa(tmp_path, crafted_v3(b"\x11" * 32, "pw", n=keystore.MIN_SCRYPT_N // 4))
    with pytest.raises(KeystoreError, match="too weak"):
        keystore.load_ecdsa_keystore(path, "pw")
    weak = Account.encrypt(b"\x11" * 32, "pw", kdf="pbkdf2", iterations=1000)
    (tmp_path / "weak.json").write_text(json.dumps(dict(weak)))
    with pytest.raises(KeystoreError, match="too weak"):
        keystore.load_ecdsa_keystore(tmp_path / "weak.json", "pw")


def test_pbkdf2_at_the_floor_opens(tmp_path: Path) -> None:
    document = Account.encrypt(b"\x11" * 32, "pw", kdf="pbkdf2", iterations=keystore.MIN_PBKDF2_C)
    (tmp_path / "ok.json").write_text(json.dumps(dict(document)))
    assert keystore.load_ecdsa_keystore(tmp_path / "ok.json", "pw") == b"\x11" * 32


@pytest.mark.parametrize("scrypt_n", [1 << 4, keystore.MIN_SCRYPT_N - 1, keystore.MIN_SCRYPT_N + 1, 0, True])
def test_writing_below_the_floor_is_refused_not_silently_raised(tmp_path: Path, scrypt_n: int) -> None:
    pair = bls.compute_key_pair(bls.SecretKey(5))
    with pytest.raises(KeystoreError, match="scrypt n must be a power of two"):
        keystore.save_bls_keystore(tmp_path / "a.bls.key.json", pair, "pw", scrypt_n=scrypt_n)
    with pytest.raises(KeystoreError, match="scrypt n must be a power of two"):
        keystore.save_ecdsa_keystore(tmp_path / "a.ecdsa.key.json", b"\x07" * 32, "pw", scrypt_n=scrypt_n)
    assert not list(tmp_path.iterdir())  # nothing written
    keystore.save_bls_keystore(tmp_path / "a.bls.key.json", pair, "pw", scrypt_n=keystore.MIN_SCRYPT_N)
    assert keystore.load_bls_keystore(tmp_path / "a.bls.key.json", "pw") == pair


def test_oversized_fields_are_keystore_errors(tmp_path: Path) -> None:
    path = tmp_path / "big.bls.key.json"
    crypto = keystore.encrypt_v3(b"\x00" * 31 + b"\x05", "pw", FAST_SCRYPT)
    path.write_text(json.dumps({"pubKey": "E([" + "1" * 5000 + ",2])", "crypto": crypto}))
    with pytest.raises(KeystoreError, match="pubKey"):  # int() of 5000 digits raised a bare ValueError
        keystore.load_bls_keystore(path, "pw")
    with pytest.raises(KeystoreError, match="iv"):
        keystore.load_ecdsa_keystore(write_ecdsa(tmp_path, crafted_v3(b"\x11" * 32, "pw", iv_bytes=17)), "pw")
    overflowing = crafted_v3(b"\x11" * 32, "pw")
    overflowing["kdfparams"]["n"] = float("inf")  # JSON's 1e400
    with pytest.raises(KeystoreError):
        keystore.load_ecdsa_keystore(write_ecdsa(tmp_path, overflowing), "pw")


def test_a_password_that_is_not_utf8_is_used_as_its_bytes_and_never_quoted(tmp_path: Path) -> None:
    """os.environ holds a non-UTF-8 byte as a lone surrogate: encoding it used to fail inside the
    KDF, and the error quoted the whole password ("malformed keystore crypto section:
    UnicodeEncodeError('utf-8', 'S3cr3t-Passw0rd\\udcff', ...)"), which the CLI printed."""
    path = tmp_path / "op.bls.key.json"
    pair = bls.compute_key_pair(bls.SecretKey(12345))
    raw_password = os.fsdecode(b"S3cr3t-Passw0rd\xff")
    keystore.save_bls_keystore(path, pair, raw_password, scrypt_n=keystore.MIN_SCRYPT_N)
    assert keystore.load_bls_keystore(path, raw_password).secret == pair.secret
    with pytest.raises(KeystoreError) as info:
        keystore.load_bls_keystore(path, os.fsdecode(b"S3cr3t-Passw0rd\xfe"))
    assert "S3cr3t" not in str(info.value) and "wrong password" in str(info.value)
    with pytest.raises(KeystoreError, match="cannot be encoded") as refused:
        keystore.load_bls_keystore(path, "S3cr3t-Passw0rd\ud800")
    assert "S3cr3t" not in str(refused.value)


def test_the_largest_scrypt_n_written_opens_again_and_a_larger_one_is_refused(tmp_path: Path) -> None:
    """hashlib.scrypt refuses maxmem >= 2^31: a file written with n = 2^20 (eth-account) could not
    be opened, and writing a BLS key with it escaped as a bare ValueError."""
    path = tmp_path / "a.ecdsa.key.json"
    secret = bytes(range(1, 33))
    keystore.save_ecdsa_keystore(path, secret, "pw", scrypt_n=keystore.MAX_SCRYPT_N)
    assert keystore.load_ecdsa_keystore(path, "pw") == secret
    pair = bls.compute_key_pair(bls.SecretKey(5))
    with pytest.raises(KeystoreError, match="power of two from"):
        keystore.save_bls_keystore(tmp_path / "b.bls.key.json", pair, "pw", scrypt_n=keystore.MAX_SCRYPT_N * 2)


@pytest.mark.parametrize(("n", "r", "message"), [(1 << 12, 1, "too weak"), (1 << 20, 16, "more than 1024 MiB")])
def test_scrypt_bounds_count_memory_not_only_n(tmp_path: Path, n: int, r: int, message: str) -> None:
    """n = 2^12 with r = 1 is an eighth of geth --lightkdf's memory; n = 2^20 with r = 16 is 2 GiB."""
    envelope = keystore.encrypt_v3(b"\x11" * 32, "pw", keystore.MIN_SCRYPT_N)
    envelope["kdfparams"].update(n=n, r=r)
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"version": 3, "crypto": envelope}))
    with pytest.raises(KeystoreError, match=message):
        keystore.load_ecdsa_keystore(path, "pw")
