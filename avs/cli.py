"""``avs``: the requester-and-tools command line (keys, BLS utilities).

Passwords come from the environment variable named by ``--password-env`` (default
``AVS_KEYSTORE_PASSWORD``) or from an interactive prompt; they are never echoed or logged.
Errors print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eth_account import Account

from avs import __version__, keystore
from avs.crypto import bls
from avs.crypto.backends import get_backend
from avs.errors import AvsError, InvalidInputError, KeystoreError

DEFAULT_PASSWORD_ENV = "AVS_KEYSTORE_PASSWORD"
KEYS_DIR_ENV = "AVS_KEYS_DIR"


def default_keys_dir() -> Path:
    return Path(os.environ.get(KEYS_DIR_ENV, Path.home() / ".avs" / "keys"))


def read_password(env_name: str, *, confirm: bool) -> str:
    """The password from ``$env_name``, else a prompt on a terminal; never from argv."""
    password = os.environ.get(env_name)
    if password is not None:
        if not password:
            raise InvalidInputError(f"${env_name} is set but empty")
        return password
    if not sys.stdin.isatty():
        raise InvalidInputError(f"no password: set ${env_name} or run in a terminal to be prompted")
    password = getpass.getpass("Keystore password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise InvalidInputError("the passwords do not match")
    if not password:
        raise InvalidInputError("an empty password is not allowed")
    return password


def parse_message_hash(text: str) -> bytes:
    value = text[2:] if text.startswith(("0x", "0X")) else text
    try:
        data = bytes.fromhex(value)
    except ValueError as exc:
        raise InvalidInputError("--message-hash must be hex") from exc
    if len(data) != 32:
        raise InvalidInputError("--message-hash must be 32 bytes (64 hex digits)")
    return data


def parse_secret_key(text: str) -> bls.SecretKey:
    try:
        value = int(text, 0)
    except ValueError as exc:
        raise InvalidInputError("--secret-key must be a decimal or 0x-hex integer") from exc
    return bls.SecretKey(value)


# --- commands -------------------------------------------------------------------------


def cmd_keys_create(args: argparse.Namespace) -> int:
    path = keystore.get_key_path(args.keys_dir, args.name, args.type)
    if path.exists():
        raise KeystoreError(f"{path} already exists; refusing to overwrite a key")
    password = read_password(args.password_env, confirm=True)
    if args.type == "bls":
        pair = bls.compute_key_pair(bls.generate_secret_key())
        keystore.save_bls_keystore(path, pair, password, args.scrypt_n)
        public = {"pubkey_g1": pair.pubkey_g1.to_json(), "operator_id": "0x" + pair.operator_id.hex()}
    else:
        account = Account.create()
        address = keystore.save_ecdsa_keystore(path, bytes(account.key), password, args.scrypt_n)
        public = {"address": address}
    print(json.dumps({"name": args.name, "type": args.type, "path": str(path), **public}, indent=2))
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    for info in keystore.list_keys(args.keys_dir):
        print(f"{info.name}\t{info.key_type}\t{info.public}\t{info.path}")
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    """Public parts only; with --decrypt also checks the password and shows G2 and operator id."""
    path = _find_key(args.keys_dir, args.name, args.type)
    info = keystore.get_key_info(path)
    shown: dict[str, object] = {"name": info.name, "type": info.key_type, "path": str(path)}
    if info.key_type == "ecdsa":
        shown["address"] = info.public
    elif args.decrypt:
        pair = keystore.load_bls_keystore(path, read_password(args.password_env, confirm=False))
        shown.update(
            pubkey_g1=pair.pubkey_g1.to_json(),
            pubkey_g2=pair.pubkey_g2.to_json(),
            operator_id="0x" + pair.operator_id.hex(),
        )
    else:
        point = keystore.parse_g1_pubkey(info.public)
        shown.update(pubkey_g1=point.to_json(), operator_id="0x" + bls.compute_operator_id(point).hex())
    print(json.dumps(shown, indent=2))
    return 0


def _find_key(keys_dir: Path, name: str, key_type: str | None) -> Path:
    types = [key_type] if key_type else ["bls", "ecdsa"]
    found = [p for p in (keystore.get_key_path(keys_dir, name, t) for t in types) if p.exists()]
    if not found:
        raise KeystoreError(f"no key named {name!r} in {keys_dir}")
    if len(found) > 1:
        raise InvalidInputError(f"both a BLS and an ECDSA key are named {name!r}; pass --type")
    return found[0]


def cmd_bls_sign(args: argparse.Namespace) -> int:
    """The same JSON as EigenLayer middleware's FFI signer, for tests in any language."""
    secret = parse_secret_key(args.secret_key)
    message_hash = parse_message_hash(args.message_hash)
    pair = bls.compute_key_pair(secret)
    result = {
        "hash_to_g1": bls.compute_hash_to_g1(message_hash).to_json(),
        "signature": bls.sign(secret, message_hash).to_json(),
        "pubkey_g1": pair.pubkey_g1.to_json(),
        "pubkey_g2": pair.pubkey_g2.to_json(),
        "operator_id": "0x" + pair.operator_id.hex(),
    }
    print(json.dumps(result, indent=2))
    return 0


def cmd_version(_: argparse.Namespace) -> int:
    print(f"avs {__version__} (BN254 backend: {get_backend().name})")
    return 0


# --- requester: request, verify (issue 7) -----------------------------------------------


def cmd_request(args: argparse.Namespace) -> int:
    """Submit a prompt to an aggregator, show progress on stderr, print (and save) the certificate."""
    from avs.client import AggregatorClient, certificate_to_json, get_state_name, verify_certificate

    quorums = bytes(sorted(set(args.quorum))) if args.quorum else b""
    with AggregatorClient(args.aggregator) as client:
        request_hash = client.submit(
            [{"role": "user", "content": args.prompt}],
            model=args.model,
            requester=args.requester,
            max_tokens=args.max_tokens,
            temperature_milli=round(args.temperature * 1000),
            seed=args.seed,
            quorums=quorums,
            threshold_bps=args.threshold,
        )
        print(f"request 0x{request_hash.hex()}", file=sys.stderr)

        def progress(status: object) -> None:
            print(f"  {get_state_name(status.state)}", file=sys.stderr)  # type: ignore[attr-defined]

        status = client.wait(request_hash, timeout=args.timeout, on_progress=progress)
    certificate = status.certificate
    check = verify_certificate(certificate)
    print(status.output_text)
    shares = ", ".join(f"quorum {q}: {share:.1%}" for q, share in sorted(check.stake_shares.items()))
    print(
        f"certified in batch {certificate.batch_header.batch_index} (tx 0x{certificate.tx_hash.hex()}), "
        f"{len(certificate.signers)} signers, {shares}; offline check: {'OK' if check.ok else check.problems}",
        file=sys.stderr,
    )
    if args.out is not None:
        args.out.write_text(certificate_to_json(certificate))
    return 0 if check.ok else 1


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a certificate JSON offline, and with ``--rpc-url`` also with the task manager's verifyLeaf."""
    from avs.client import certificate_from_json, verify_certificate, verify_on_chain

    try:
        text = args.certificate.read_text()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {args.certificate}: {exc}") from exc
    certificate = certificate_from_json(text)
    check = verify_certificate(certificate, min_share_bps=args.min_share_bps)
    result: dict[str, object] = {
        "request_hash": "0x" + certificate.request_hash.hex(),
        "output_hash": "0x" + certificate.output_hash.hex(),
        "batch_index": certificate.batch_header.batch_index,
        "stake_shares": {str(q): s for q, s in check.stake_shares.items()},
        "offline_ok": check.ok,
        "problems": list(check.problems),
    }
    ok = check.ok
    if args.rpc_url:
        from web3 import Web3

        from avs.chain.abi import load_abi

        w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
        task_manager = w3.eth.contract(
            address=Web3.to_checksum_address(certificate.task_manager), abi=load_abi("InferenceTaskManager")
        )
        on_chain = verify_on_chain(certificate, task_manager)
        result["on_chain_ok"] = on_chain
        ok = ok and on_chain
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


def add_requester_commands(commands: Any) -> None:
    request = commands.add_parser("request", help="ask an aggregator for a certified completion")
    request.add_argument("prompt")
    request.add_argument("--aggregator", default="127.0.0.1:50060", help="the aggregator's gRPC host:port")
    request.add_argument("--model", required=True, help="model name (the aggregator's ListModels)")
    request.add_argument("--requester", required=True, help="your 0x address (the request's requester)")
    request.add_argument("--quorum", type=int, action="append", help="quorum number (repeatable)")
    request.add_argument("--threshold", type=int, default=0, help="stake share per quorum, basis points")
    request.add_argument("--max-tokens", type=int, default=64)
    request.add_argument("--temperature", type=float, default=0.0)
    request.add_argument("--seed", type=int, default=0)
    request.add_argument("--timeout", type=float, default=600.0)
    request.add_argument("--out", type=Path, help="write the certificate JSON here")
    request.set_defaults(func=cmd_request)
    verify = commands.add_parser("verify", help="verify a certificate JSON offline (and on-chain with --rpc-url)")
    verify.add_argument("certificate", type=Path)
    verify.add_argument("--rpc-url", help="also check verifyLeaf on this chain")
    verify.add_argument("--min-share-bps", type=int, default=0, help="fail below this signed stake share")
    verify.set_defaults(func=cmd_verify)


# --- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avs", description="Verifiable-inference AVS tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print the version and the BN254 backend").set_defaults(func=cmd_version)

    keys = commands.add_parser("keys", help="create, list and show keystores").add_subparsers(
        dest="keys_command", required=True
    )
    key_options = argparse.ArgumentParser(add_help=False)
    key_options.add_argument(
        "--keys-dir", type=Path, default=default_keys_dir(), help=f"default ${KEYS_DIR_ENV} or ~/.avs/keys"
    )
    key_options.add_argument(
        "--password-env", default=DEFAULT_PASSWORD_ENV, help="environment variable holding the password"
    )

    create = keys.add_parser("create", parents=[key_options], help="create a new encrypted key")
    create.add_argument("--type", choices=["bls", "ecdsa"], required=True)
    create.add_argument("--scrypt-n", type=int, default=keystore.SCRYPT_N, help=argparse.SUPPRESS)
    create.add_argument("name")
    create.set_defaults(func=cmd_keys_create)

    keys.add_parser("list", parents=[key_options], help="list keys and their public parts").set_defaults(
        func=cmd_keys_list
    )

    show = keys.add_parser("show", parents=[key_options], help="show a key's public parts")
    show.add_argument("--type", choices=["bls", "ecdsa"])
    show.add_argument("--decrypt", action="store_true", help="decrypt to check the password and show the G2 key")
    show.add_argument("name")
    show.set_defaults(func=cmd_keys_show)

    bls_commands = commands.add_parser("bls", help="BN254 BLS utilities").add_subparsers(
        dest="bls_command", required=True
    )
    sign = bls_commands.add_parser("sign", help="sign a 32-byte message hash as EigenLayer does")
    sign.add_argument("--secret-key", required=True, help="decimal or 0x-hex scalar (test keys only!)")
    sign.add_argument("--message-hash", required=True, help="0x-prefixed 32-byte hex")
    sign.set_defaults(func=cmd_bls_sign)
    add_requester_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AvsError as exc:
        print(f"avs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
