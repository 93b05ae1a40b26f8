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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_account import Account

from avs import __version__, keystore
from avs.config import RPC_URL_ENV, default_rpc_url
from avs.crypto import bls
from avs.crypto.backends import get_backend
from avs.errors import AvsError, InvalidInputError, KeystoreError, UnavailableError
from avs.inference.params import compute_prompt_hash
from avs.logs import redact_urls

if TYPE_CHECKING:
    from avs.chain.deployment import Deployment
    from avs.chain.insurance import InsuranceBuyer
    from avs.client import PreparedRequest
    from avs.gateway.models import LocalModel
    from avs.messages import Domain

DEFAULT_PASSWORD_ENV = "AVS_KEYSTORE_PASSWORD"
KEYS_DIR_ENV = "AVS_KEYS_DIR"
REQUESTS_DIR_ENV = "AVS_REQUESTS_DIR"
LOCAL_RPC_URL = "http://127.0.0.1:8545"


def default_keys_dir() -> Path:
    return Path(os.environ.get(KEYS_DIR_ENV, Path.home() / ".avs" / "keys"))


def default_requests_dir() -> Path:
    """Where ``avs request --insure`` saves each request before paying for its coverage."""
    return Path(os.environ.get(REQUESTS_DIR_ENV, Path.home() / ".avs" / "requests"))


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


def parse_message_hash(text: str, name: str = "--message-hash") -> bytes:
    value = text[2:] if text.startswith(("0x", "0X")) else text
    try:
        data = bytes.fromhex(value)
    except ValueError as exc:
        raise InvalidInputError(f"{name} must be hex") from exc
    if len(data) != 32:
        raise InvalidInputError(f"{name} must be 32 bytes (64 hex digits)")
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


def load_requester_key(args: argparse.Namespace) -> bytes | None:
    """The requester's ECDSA secret: ``--requester-key NAME`` (a keystore in ``--keys-dir``, or a
    keystore file's path; password from ``--password-env`` or a prompt) or ``--requester-key-env
    VAR`` (a 0x-hex key in that environment variable). Never printed or logged."""
    if args.requester_key and args.requester_key_env:
        raise InvalidInputError("give --requester-key or --requester-key-env, not both")
    if args.requester_key_env:
        value = os.environ.get(args.requester_key_env, "")
        if not value:
            raise InvalidInputError(f"${args.requester_key_env} is not set")
        try:
            return bytes(Account.from_key(value).key)
        except Exception:  # its message could quote the secret: say nothing of it
            raise InvalidInputError(f"${args.requester_key_env} does not hold an ECDSA secret key") from None
    if not args.requester_key:
        return None
    path = Path(args.requester_key)
    if not path.is_file():
        path = keystore.get_key_path(args.keys_dir, args.requester_key, "ecdsa")
        if not path.is_file():
            raise KeystoreError(f"no ECDSA key named {args.requester_key!r} in {args.keys_dir}")
    return keystore.load_ecdsa_keystore(path, read_password(args.password_env, confirm=False))


def parse_token_amount(text: str, decimals: int) -> int:
    """``"2"``, ``"0.5"`` (tokens) or ``"1500000000000000000wei"`` -> base units."""
    from decimal import Decimal, InvalidOperation

    not_an_amount = InvalidInputError(f"--insure must be an amount of tokens (e.g. 2 or 0.5), got {text!r}")
    if text.endswith("wei"):
        try:
            value = int(text.removesuffix("wei"))
        except ValueError:
            raise not_an_amount from None
    else:
        try:
            scaled = Decimal(text) * (Decimal(10) ** decimals)
        except InvalidOperation:
            raise not_an_amount from None
        if not scaled.is_finite() or scaled.adjusted() >= 78:  # 2^256 has 78 digits
            raise InvalidInputError(f"--insure must be a finite amount of tokens below 2^256 wei, got {text!r}")
        if scaled != scaled.to_integral_value():
            raise InvalidInputError(f"--insure {text}: more than {decimals} decimals")
        value = int(scaled)
    if not 0 < value < 2**256:
        raise InvalidInputError("--insure must be positive and below 2^256 wei")
    return value


def _number_in(kind: type[int] | type[float], noun: str, low: float, high: float) -> Any:
    """An argparse type: a ``kind`` in [low, high], else a usage error naming the range (nan too)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in [{low}, {high}]")
        return value

    return parse


def int_in(low: int, high: int) -> Any:
    return _number_in(int, "an integer", low, high)


def float_in(low: float, high: float) -> Any:
    return _number_in(float, "a number", low, high)


def format_tokens(amount: int, decimals: int) -> str:
    from decimal import Decimal

    return f"{Decimal(amount) / (Decimal(10) ** decimals):f}".rstrip("0").rstrip(".") or "0"


def _refused(exc: Exception) -> AvsError:
    """A one-line error for an aggregator's gRPC refusal (its status code and message)."""
    code = getattr(exc, "code", lambda: None)()
    details = getattr(exc, "details", lambda: None)() or str(exc)
    name = code.name if code is not None else "UNKNOWN"
    return AvsError(f"the aggregator refused the request ({name}): {details}")


def cmd_request(args: argparse.Namespace) -> int:
    """Submit a prompt to an aggregator (insured with ``--insure``), show progress on stderr, print
    (and save) the certificate."""
    import grpc

    from avs.chain.deployment import load_deployment
    from avs.client import AggregatorClient, certificate_to_json, get_state_name, verify_certificate
    from avs.messages import Domain, is_same_address

    secret = load_requester_key(args)
    requester = Account.from_key(secret).address if secret is not None else args.requester
    if not requester:
        raise InvalidInputError("name the requester: --requester 0xADDRESS, or its key with --requester-key")
    if args.requester and not is_same_address(requester, args.requester):
        raise InvalidInputError(f"--requester {args.requester} is not the address of the requester key ({requester})")
    _check_request_source(args)
    if (args.insure is not None or args.resume is not None) and secret is None:
        raise InvalidInputError(
            "--insure and --resume need the requester's key (--requester-key or --requester-key-env)"
        )
    if secret is not None and not args.deployment:
        raise InvalidInputError("a signed or insured request needs --deployment (the AVS's deployment JSON)")
    if args.out is not None and not args.out.parent.is_dir():  # found out before paying for anything
        raise InvalidInputError(f"--out {args.out}: the folder {args.out.parent} does not exist")
    messages = [{"role": "user", "content": args.prompt}]
    pinned: dict[str, bytes] = {}
    decode = None
    if args.tokenizer is not None:
        prepared_model = load_prepared_model(args.tokenizer)
        if prepared_model is None:
            print(
                f"--tokenizer {args.tokenizer} is no prepared model folder (avs_profile.json): the model id and "
                "prompt hash are the aggregator's to fill in, unchecked",
                file=sys.stderr,
            )
            decode = load_decoder(args.tokenizer)
        else:
            decode = prepared_model.codec.decode
            if args.resume is None:  # the certified request must carry both, as computed here
                prompt_hash = compute_prompt_hash(prepared_model.codec.encode_chat(messages))
                pinned = {"model_id": prepared_model.model_id, "prompt_hash": prompt_hash}
    deployment = load_deployment(args.deployment) if args.deployment is not None else None
    domain = Domain(deployment.chain_id, deployment.task_manager) if deployment is not None else None
    quorums = bytes(sorted(set(args.quorum))) if args.quorum else b""
    fields = {
        "requester": requester,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "temperature_milli": round(args.temperature * 1000),
        "seed": args.seed,
        "quorums": quorums,
        "threshold_bps": args.threshold,
        **pinned,
    }
    buyer: InsuranceBuyer | None = None
    with AggregatorClient(args.aggregator) as client:
        try:
            if secret is None:
                request_hash = client.submit(messages, **fields)
            else:
                assert deployment is not None and domain is not None  # checked above
                coverage: CoveragePlan | None
                if args.resume is not None:
                    prepared, coverage = load_saved_request(args.resume, domain)
                    if not is_same_address(prepared.request.requester, requester):
                        raise InvalidInputError(
                            f"--resume {args.resume} is a request of {prepared.request.requester}, not of {requester}"
                        )
                else:
                    prepared = client.prepare(messages, domain=domain, **fields)  # checked before paying anything
                    if args.insure is not None:
                        buyer = _open_buyer(args, deployment, secret)
                    coverage = _plan_coverage(args, prepared, buyer)
                if coverage is not None:  # bought first (the request saved beforehand), then submitted insured
                    buyer = buyer or _open_buyer(args, deployment, secret)
                    _insure(args, prepared, coverage, buyer)
                submitted = client.submit_prepared(
                    prepared, domain=domain, requester_key=secret, insured=buyer is not None
                )
                request_hash = bytes(submitted)
        except grpc.RpcError as exc:
            raise _refused(exc) from None
        print(f"request 0x{request_hash.hex()}", file=sys.stderr)

        def progress(status: object) -> None:
            print(f"  {get_state_name(status.state)}", file=sys.stderr)  # type: ignore[attr-defined]

        try:
            status = client.wait(request_hash, timeout=args.timeout, on_progress=progress)
        except grpc.RpcError as exc:
            raise _refused(exc) from None
    certificate = status.certificate
    # For this request (the client checked it is the one sent) and, with --deployment, on that chain.
    check = verify_certificate(certificate, args.threshold, domain=domain, request_hash=request_hash)
    text = get_certified_text(certificate, decode)
    shares = ", ".join(f"quorum {q}: {share:.1%}" for q, share in sorted(check.stake_shares.items()))
    print(
        f"certified in batch {certificate.batch_header.batch_index} (tx 0x{certificate.tx_hash.hex()}, the "
        f"aggregator's word), {len(certificate.signers)} signers, {shares}; offline check: "
        f"{'OK' if check.ok else check.problems}",
        file=sys.stderr,
    )
    unverified = list(check.problems)
    if check.ok:
        unverified += check_request_certificate(args, certificate, deployment, decode is not None)
    if not unverified:
        print(text)
    else:  # stdout carries verified output only (a script reading it must not take this as such)
        reasons = "".join(f"\n  - {reason}" for reason in unverified)
        print(f"this output is NOT verified:{reasons}\n{text}", file=sys.stderr)
    if args.out is not None:
        try:
            args.out.write_text(certificate_to_json(certificate))
        except OSError as exc:  # the certificate is not lost: it goes to stdout instead
            print(certificate_to_json(certificate))
            raise InvalidInputError(f"could not write --out {args.out} ({exc}); the certificate is on stdout") from exc
    if buyer is None:
        return 0 if not unverified else 1
    uninsured = _check_insured(buyer, certificate)
    for problem in uninsured:
        print(problem, file=sys.stderr)
    if not uninsured:
        print("insured: a fraud proven in this batch pays the coverage", file=sys.stderr)
    return 0 if not unverified and not uninsured else 1


def check_request_certificate(
    args: argparse.Namespace, certificate: Any, deployment: Deployment | None, decoded_here: bool
) -> list[str]:
    """Why a certificate that passed the offline check is still not verified here: the offline check
    takes the signers' keys from the certificate itself, so only the chain (``--deployment``, read at
    ``--rpc-url``: verifyLeaf, the registry's stakes, an upheld challenge) tells the operators'
    signatures from the aggregator's own; and the text is the aggregator's unless decoded here."""
    reasons = []
    if deployment is None:
        reasons.append("no --deployment: the certificate was checked against itself only (any chain, any keys)")
    else:
        from web3 import Web3
        from web3.exceptions import Web3Exception

        from avs.client import check_on_chain

        url = redact_urls(args.rpc_url)
        try:
            w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
            if w3.eth.chain_id != deployment.chain_id:
                reasons.append(f"{url} is not chain {deployment.chain_id}: the certificate was not checked on chain")
            else:
                on_chain = check_on_chain(certificate, w3, deployment, args.threshold)
                reasons += [f"on chain: {problem}" for problem in on_chain.problems]
                if on_chain.ok:
                    print(f"on-chain check at {url}: OK (leaf certified, stakes counted)", file=sys.stderr)
        except (OSError, Web3Exception, ValueError, UnavailableError) as exc:  # not verified, not a crash
            error = redact_urls(str(exc))[:200]
            reasons.append(f"the chain could not be read at {url} ({error}): the certificate was not checked on chain")
    if not decoded_here:
        reasons.append("no --tokenizer: the text is the aggregator's decoding of the certified tokens")
    return reasons


def load_prepared_model(folder: Path) -> LocalModel | None:
    """The model id and tokenizer (``avs.gateway.models.LocalModel``) of a prepared model folder
    (``avs_profile.json`` and its tokenizer), or None for any other folder or file. Pinning the model
    id and prompt hash binds a certificate to them: otherwise the aggregator fills them in, and could
    certify the chat under another model or template."""
    from avs.inference.profile import PROFILE_FILE

    if not (folder.is_dir() and (folder / PROFILE_FILE).is_file()):
        return None
    from avs.gateway.models import load_local_model

    return load_local_model(folder)


def check_certified_text(certificate: Any, folder: Path) -> list[str]:
    """What a certificate carries beside what is signed, checked with a prepared model folder: the
    chat against the model id and prompt hash, the output text against the output tokens."""
    prepared_model = load_prepared_model(folder)
    if prepared_model is None:
        raise InvalidInputError(f"--tokenizer {folder}: not a prepared model folder (avs_profile.json)")
    model_id, encoder = prepared_model.model_id, prepared_model.codec
    if model_id != bytes(certificate.request.model_id):
        return [f"the certificate is for another model than the one in {folder}"]
    problems = []
    messages = [{"role": m.role, "content": m.content} for m in certificate.request.messages]
    try:
        if compute_prompt_hash(encoder.encode_chat(messages)) != bytes(certificate.request.prompt_hash):
            problems.append("the certificate's chat is not the one its prompt hash commits to")
    except InvalidInputError as exc:  # it does not even encode: it is not the chat hashed
        problems.append(f"the certificate's chat is not the one its prompt hash commits to ({exc})")
    if encoder.decode(list(certificate.output_token_ids)) != certificate.output_text:
        problems.append("the certificate's output_text is not its output tokens' decoding")
    return problems


def load_decoder(folder: Path) -> Callable[[list[int]], str]:
    """The decode every operator of a profile uses (tokenizer.json's own, special tokens left out),
    from a model folder or a tokenizer.json file."""
    path = folder / "tokenizer.json" if folder.is_dir() else folder
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise InvalidInputError("--tokenizer needs the tokenizers package: pip install tokenizers") from exc
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception for a missing or bad file
        raise InvalidInputError(f"--tokenizer {folder}: not a tokenizer.json ({exc})") from exc
    return lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True))


def get_certified_text(certificate: Any, decode: Callable[[list[int]], str] | None) -> str:
    """The output's text. Operators sign token ids, not text: without ``decode`` this is the
    aggregator's decoding of them, with it the ids decoded here (a different text is reported)."""
    if decode is None:
        print(
            "text: the aggregator's decoding of the certified tokens (--tokenizer decodes them here)", file=sys.stderr
        )
        return str(certificate.output_text)
    text = decode(list(certificate.output_token_ids))
    if text != certificate.output_text:
        print("the aggregator's text is not the certified tokens' decoding; printing the decoding", file=sys.stderr)
    return text


def _check_request_source(args: argparse.Namespace) -> None:
    """A new request (a prompt and ``--model``) or a saved one (``--resume``), not both."""
    if args.resume is None:
        if args.prompt is None or not args.model:
            raise InvalidInputError("give the prompt and --model (or --resume a saved insured request)")
        return
    given = [flag for flag, value in (("a prompt", args.prompt), ("--insure", args.insure)) if value is not None]
    if given:
        dropped = " and ".join(given)
        raise InvalidInputError(f"--resume takes the request and its coverage from the file; drop {dropped}")


@dataclass(frozen=True, slots=True)
class CoveragePlan:
    """The coverage an insured request is submitted with: ``amount`` wei against ``quorum``."""

    amount: int
    quorum: int


def _plan_coverage(
    args: argparse.Namespace, prepared: PreparedRequest, buyer: InsuranceBuyer | None
) -> CoveragePlan | None:
    """``--insure`` in the pool asset's base units (its own decimals: 2 tokens of a 6-decimal token
    are 2,000,000, not 2e18)."""
    if args.insure is None or buyer is None:
        return None
    quorum = args.insure_quorum if args.insure_quorum is not None else prepared.quorums[0]
    if quorum not in prepared.quorums:
        wanted = list(prepared.quorums)
        raise InvalidInputError(f"--insure-quorum {quorum} is not one of the request's quorums {wanted}")
    return CoveragePlan(parse_token_amount(args.insure, buyer.get_decimals()), quorum)


def save_request(folder: Path, prepared: PreparedRequest, coverage: CoveragePlan) -> Path:
    """Write the prepared request and the coverage to buy for it to ``folder/0xHASH.json`` (only
    the owner may read it: it holds the prompt), replacing any earlier copy whole."""
    from avs.client import prepared_to_json

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"0x{prepared.request_hash.hex()}.json"
    saved = {
        "coverage": {"amount_wei": str(coverage.amount), "quorum": coverage.quorum},
        "prepared": json.loads(prepared_to_json(prepared)),
    }
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(saved, indent=2) + "\n")
    partial.chmod(0o600)
    partial.replace(path)
    return path


def load_saved_request(path: Path, domain: Domain) -> tuple[PreparedRequest, CoveragePlan]:
    """A request saved by ``save_request``, checked against ``domain`` (the deployment's)."""
    from avs.client import prepared_from_json

    try:
        saved = json.loads(path.read_text())
        coverage = CoveragePlan(int(saved["coverage"]["amount_wei"]), int(saved["coverage"]["quorum"]))
        prepared = prepared_from_json(json.dumps(saved["prepared"]), domain)
    except OSError as exc:
        raise InvalidInputError(f"--resume {path}: cannot read it ({exc.strerror or exc})") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"--resume {path}: not a request saved by avs request --insure ({exc})") from exc
    except InvalidInputError as exc:
        raise InvalidInputError(f"--resume {path}: {exc}") from exc
    if coverage.quorum not in prepared.quorums or not 0 < coverage.amount < 2**96:
        raise InvalidInputError(f"--resume {path}: its coverage does not fit its request")
    return prepared, coverage


def _open_buyer(args: argparse.Namespace, deployment: Deployment, secret: bytes) -> InsuranceBuyer:
    from web3 import Web3

    from avs.chain.insurance import InsuranceBuyer

    w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
    if w3.eth.chain_id != deployment.chain_id:
        raise InvalidInputError(f"{redact_urls(args.rpc_url)} is not chain {deployment.chain_id} of {args.deployment}")
    return InsuranceBuyer(w3, deployment, Account.from_key(secret))


def _check_insured(buyer: InsuranceBuyer, certificate: Any) -> list[str]:
    """What would keep a fraud proven in the certificate's batch from paying the coverage."""
    return [f"not insured: {problem}" for problem in buyer.check_certificate_insured(certificate)]


def _insure(args: argparse.Namespace, prepared: PreparedRequest, coverage: CoveragePlan, buyer: InsuranceBuyer) -> None:
    """Buy ``coverage`` for the request, saving the request first; on ``--resume``, unless it was
    bought already."""
    from avs.chain.faults import CoverageStatus
    from avs.chain.insurance import InsuranceError, compute_coverage_problem

    w3 = buyer.client.w3
    request_hash = "0x" + prepared.request_hash.hex()
    if args.resume is None:
        path = save_request(args.request_dir, prepared, coverage)
        print(f"saved the request to {path} (if this stops, run again with --resume {path})", file=sys.stderr)
    else:
        bought = buyer.get_coverage(prepared.request_hash)
        if bought.status != CoverageStatus.NONE:
            problem = compute_coverage_problem(bought, buyer.account.address, prepared.quorums, w3.eth.block_number)
            if problem is not None:
                raise InsuranceError(f"request {request_hash} cannot be resumed insured: {problem}")
            print(f"request {request_hash} is insured already (until block {bought.expires_at_block})", file=sys.stderr)
            return
        buyer.check_nothing_pending()
    decimals = buyer.get_decimals()
    print(f"insuring request {request_hash} for {format_tokens(coverage.amount, decimals)} tokens", file=sys.stderr)
    purchase = buyer.buy(prepared.request, coverage.quorum, coverage.amount)
    print(
        f"  coverage bought against quorum {purchase.quorum_number}: "
        f"premium {format_tokens(purchase.premium, decimals)} "
        f"tokens, active until block {purchase.expires_at_block} (tx 0x{purchase.tx_hash.hex()})",
        file=sys.stderr,
    )


def cmd_claim(args: argparse.Namespace) -> int:
    """Collect the payout of an insured request after fraud on it was proven: prints what this
    claim paid and what of the payout stays owed (the pool pays an owed payout once it holds the
    money, e.g. once the slash is cleared to it after EigenLayer's slash resolution delay; claim
    again then)."""
    buyer = _open_pool_account(args, "claiming needs the requester's key (--requester-key or --requester-key-env)")
    request_hash = parse_message_hash(args.request_hash)
    before = buyer.get_balance()
    result = buyer.claim_payout(request_hash)
    after = buyer.get_balance()
    print(
        json.dumps(
            {
                "request_hash": "0x" + request_hash.hex(),
                "paid": str(result.paid),
                "still_owed": str(result.still_owed),
                "balance_before": str(before),
                "balance_after": str(after),
            },
            indent=2,
        )
    )
    return 0


def cmd_claim_reward(args: argparse.Namespace) -> int:
    """Collect the challenger rewards the insurance pool owes to the key's address (rewards it could
    not pay when the fraud was recorded): prints what was paid and what stays owed."""
    claimer = _open_pool_account(args, "claiming a reward needs the challenger's key (--key or --key-env)")
    result = claimer.claim_reward()
    print(
        json.dumps(
            {"challenger": result.challenger, "paid": str(result.paid), "still_owed": str(result.still_owed)},
            indent=2,
        )
    )
    return 0


def _open_pool_account(args: argparse.Namespace, missing_key: str) -> InsuranceBuyer:
    """The insurance pool of ``--deployment`` at ``--rpc-url``, as the account of the key options."""
    from web3 import Web3

    from avs.chain.deployment import load_deployment
    from avs.chain.insurance import InsuranceBuyer

    secret = load_requester_key(args)
    if secret is None:
        raise InvalidInputError(missing_key)
    deployment = load_deployment(args.deployment)
    w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
    return InsuranceBuyer(w3, deployment, Account.from_key(secret))


def cmd_check_deployment(args: argparse.Namespace) -> int:
    """Read a deployment's parameters and check the bounds between its contracts
    (``avs.chain.governance``); exit 1 when one is broken."""
    from dataclasses import asdict

    from avs.chain.deployment import load_deployment
    from avs.chain.governance import check_parameters, read_parameters
    from avs.chain.registration import load_client

    client = load_client(args.rpc_url, load_deployment(args.deployment), None)  # refuses another chain
    parameters = read_parameters(client.w3, client.deployment)
    problems = check_parameters(parameters)
    report = {**asdict(parameters), "fault_window": parameters.fault_window, "problems": problems}
    print(json.dumps(report, indent=2))
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a certificate JSON offline for ``--deployment``'s chain and task manager, and with
    ``--rpc-url`` also with that task manager's verifyLeaf."""
    from avs.chain.deployment import load_deployment
    from avs.client import certificate_from_json, check_on_chain, verify_certificate
    from avs.messages import Domain

    if args.rpc_url and args.deployment is None:
        raise InvalidInputError(
            "--rpc-url needs --deployment: verifyLeaf must run on the deployment you trust, "
            "not on whatever task manager the certificate names"
        )
    try:
        text = args.certificate.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {args.certificate}: {exc}") from exc
    certificate = certificate_from_json(text)
    deployment = load_deployment(args.deployment) if args.deployment is not None else None
    domain = Domain(deployment.chain_id, deployment.task_manager) if deployment is not None else None
    request_hash = parse_message_hash(args.request_hash, "--request-hash") if args.request_hash else None
    check = verify_certificate(certificate, min_share_bps=args.min_share_bps, domain=domain, request_hash=request_hash)
    result: dict[str, object] = {
        "request_hash": "0x" + certificate.request_hash.hex(),
        "output_hash": "0x" + certificate.output_hash.hex(),
        "batch_index": certificate.batch_header.batch_index,
        "stake_shares": {str(q): s for q, s in check.stake_shares.items()},
        "offline_ok": check.ok,
        "deployment_checked": domain is not None,
        "request_checked": request_hash is not None,
        "problems": list(check.problems),
    }
    if domain is None:
        print("no --deployment: the certificate is checked against itself only", file=sys.stderr)
    problems = list(check.problems)
    if args.tokenizer is not None:
        problems += check_certified_text(certificate, args.tokenizer)
    else:
        print(
            "no --tokenizer: the certificate's chat and output text are not checked (signed: their hashes, the tokens)",
            file=sys.stderr,
        )
    result["problems"] = problems
    ok = not problems
    if args.rpc_url and deployment is not None:
        from web3 import Web3

        w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
        if w3.eth.chain_id != deployment.chain_id:
            raise InvalidInputError(f"{redact_urls(args.rpc_url)} is not chain {deployment.chain_id}")
        on_chain = check_on_chain(certificate, w3, deployment, args.min_share_bps)
        result["on_chain_ok"] = on_chain.certified
        result["problems"] = [*problems, *on_chain.problems]
        if on_chain.certified:
            result["on_chain_stake_shares"] = {str(q): share for q, share in on_chain.stake_shares.items()}
            # final: past the challenge window; challenge: the leaf's latest (an upheld one is a problem)
            result["final"] = on_chain.final
            result["challenge"] = on_chain.challenge
            if not on_chain.final:
                print("not final yet: a challenge can still take the certification back", file=sys.stderr)
        ok = ok and on_chain.ok
    elif args.min_share_bps:
        print("no --rpc-url: the stake shares are the aggregator's word, not checked on chain", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


def add_rpc_url_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, purpose: str) -> None:
    default = default_rpc_url(LOCAL_RPC_URL)
    parser.add_argument("--rpc-url", default=default, help=f"{purpose} (default ${RPC_URL_ENV}, else {LOCAL_RPC_URL})")


def add_requester_key_options(parser: argparse.ArgumentParser) -> None:
    keys = parser.add_argument_group("requester key (ECDSA; never printed)")
    keys.add_argument("--requester-key", help="a keystore name in --keys-dir, or a keystore file's path")
    keys.add_argument("--requester-key-env", help="environment variable holding a 0x-hex secret key instead")
    keys.add_argument(
        "--keys-dir", type=Path, default=default_keys_dir(), help=f"default ${KEYS_DIR_ENV} or ~/.avs/keys"
    )
    keys.add_argument(
        "--password-env", default=DEFAULT_PASSWORD_ENV, help="environment variable holding the keystore password"
    )


def add_requester_commands(commands: Any) -> None:
    request = commands.add_parser("request", help="ask an aggregator for a certified completion")
    request.add_argument("prompt", nargs="?", help="the user message (not with --resume)")
    request.add_argument("--aggregator", default="127.0.0.1:50060", help="the aggregator's gRPC host:port")
    request.add_argument("--model", help="model name (the aggregator's ListModels); needed unless --resume")
    request.add_argument("--requester", help="your 0x address (default: the address of --requester-key)")
    request.add_argument("--quorum", type=int_in(0, 255), action="append", help="quorum number (repeatable)")
    request.add_argument("--threshold", type=int_in(0, 10_000), default=0, help="stake share per quorum, basis points")
    request.add_argument("--max-tokens", type=int_in(1, 2**32 - 1), default=64)
    request.add_argument("--temperature", type=float_in(0.0, 10.0), default=0.0)
    request.add_argument("--seed", type=int_in(0, 2**64 - 1), default=0)
    request.add_argument("--timeout", type=float, default=600.0)
    request.add_argument("--out", type=Path, help="write the certificate JSON here")
    request.add_argument(
        "--tokenizer",
        type=Path,
        help="the model's prepared folder (avs_profile.json + tokenizer): the request pins its model id and "
        "the prompt hash computed here, and the certified tokens are decoded here, not the aggregator's text "
        "(a bare tokenizer.json only decodes)",
    )
    insurance = request.add_argument_group("insurance (pays out from slashed stake if the output is proven wrong)")
    insurance.add_argument("--insure", metavar="AMOUNT", help="buy this much coverage (tokens of the pool's asset)")
    insurance.add_argument(
        "--insure-quorum", type=int_in(0, 255), help="the quorum to insure against (default: the first)"
    )
    insurance.add_argument(
        "--request-dir",
        type=Path,
        default=default_requests_dir(),
        help=f"where an insured request is saved before its coverage is bought (default ${REQUESTS_DIR_ENV} or "
        "~/.avs/requests)",
    )
    insurance.add_argument(
        "--resume",
        type=Path,
        metavar="FILE",
        help="submit a saved insured request again (its coverage is bought unless it was), e.g. after a timeout",
    )
    insurance.add_argument(
        "--deployment", type=Path, help="the AVS's deployment JSON (the certificate must be for its chain)"
    )
    add_rpc_url_option(insurance, "an RPC endpoint of that chain")
    add_requester_key_options(request)
    request.set_defaults(func=cmd_request)
    claim = commands.add_parser("claim", help="collect the insurance payout of a request proven wrong")
    claim.add_argument("request_hash", help="0x request hash")
    claim.add_argument("--deployment", type=Path, required=True, help="the AVS's deployment JSON")
    add_rpc_url_option(claim, "an RPC endpoint of the deployment's chain")
    add_requester_key_options(claim)
    claim.set_defaults(func=cmd_claim)
    reward = commands.add_parser(
        "claim-reward", help="collect challenger rewards the insurance pool owes (paid later than the fraud)"
    )
    reward.add_argument("--deployment", type=Path, required=True, help="the AVS's deployment JSON")
    add_rpc_url_option(reward, "an RPC endpoint of the deployment's chain")
    keys = reward.add_argument_group("challenger key (ECDSA; never printed)")
    keys.add_argument("--key", dest="requester_key", help="a keystore name in --keys-dir, or a keystore file's path")
    keys.add_argument("--key-env", dest="requester_key_env", help="environment variable holding a 0x-hex secret key")
    keys.add_argument(
        "--keys-dir", type=Path, default=default_keys_dir(), help=f"default ${KEYS_DIR_ENV} or ~/.avs/keys"
    )
    keys.add_argument(
        "--password-env", default=DEFAULT_PASSWORD_ENV, help="environment variable holding the keystore password"
    )
    reward.set_defaults(func=cmd_claim_reward)
    check = commands.add_parser(
        "check-deployment", help="check the bounds between a deployment's contracts' parameters, on its chain"
    )
    check.add_argument("--deployment", type=Path, required=True, help="the AVS's deployment JSON")
    add_rpc_url_option(check, "an RPC endpoint of the deployment's chain")
    check.set_defaults(func=cmd_check_deployment)
    verify = commands.add_parser("verify", help="verify a certificate JSON offline (and on-chain with --rpc-url)")
    verify.add_argument("certificate", type=Path)
    verify.add_argument(
        "--deployment", type=Path, help="deployment JSON of the AVS you trust (its chain id and task manager)"
    )
    verify.add_argument(
        "--rpc-url", help="also check verifyLeaf on that deployment's task manager (needs --deployment)"
    )
    verify.add_argument(
        "--request-hash", help="0x hash of the request you sent (avs request prints it): the certificate must be for it"
    )
    verify.add_argument(
        "--min-share-bps",
        type=int_in(0, 10_000),
        default=0,
        help="fail below this signed stake share per quorum (counted on chain with --rpc-url)",
    )
    verify.add_argument(
        "--tokenizer",
        type=Path,
        help="the model's prepared folder: the certificate's chat and output text must be what its model "
        "id, prompt hash and output tokens commit to (the signatures cover only those)",
    )
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


def run_command(prog: str, args: argparse.Namespace) -> int:
    """``args.func(args)``; a refusal, or a failure of the chain or its RPC (a node unreachable, a
    revert web3 could not decode, funds short), is one line with exit status 2, never a traceback,
    with URL paths cut from it (providers put API keys there)."""
    from requests import RequestException
    from web3.exceptions import Web3Exception

    try:
        return int(args.func(args))
    except AvsError as exc:
        print(f"{prog}: error: {redact_urls(str(exc))}", file=sys.stderr)
    except (Web3Exception, RequestException, OSError) as exc:
        print(f"{prog}: error: {type(exc).__name__}: {redact_urls(str(exc))}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("avs", build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
