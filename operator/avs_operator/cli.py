"""``avs-operator``: the operator binary.

    avs-operator run --config operator.yaml      serve (stops cleanly on SIGTERM / Ctrl-C)
    avs-operator register --config operator.yaml [--quorums 0] [--socket host:port] [--allocate-wad N]
                          [--replace QUORUM=ADDRESS]
    avs-operator update-socket --config operator.yaml [--socket grpc://host:port]
    avs-operator deregister --config operator.yaml [--quorums 0]
    avs-operator status --config operator.yaml [--address 0x...]
    avs-operator slashing-protection init --config operator.yaml     the empty history, on the first start
    avs-operator slashing-protection export --config operator.yaml > history.json
    avs-operator slashing-protection import --config operator.yaml history.json
    avs-operator keys ...                        the key commands of ``avs keys``
    avs-operator version

Secrets come only from the environment: ``OPERATOR_BLS_KEY_PASSWORD`` (and
``OPERATOR_ECDSA_KEY_PASSWORD`` for on-chain commands). Errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_address

from avs import keystore
from avs.chain.client import Web3AvsClient
from avs.cli import main as avs_main
from avs.cli import run_command
from avs.config import MAX_PORT
from avs.crypto.bls import KeyPair
from avs.errors import InvalidInputError
from avs.logs import configure_json_logging
from avs_operator.config import (
    ConfigError,
    GrpcConfig,
    OperatorConfig,
    load_checked_deployment,
    load_config,
    load_secrets,
)
from avs_operator.slashing_protection import SlashingProtection, has_history


def quiet_progress_bars() -> None:
    """stderr carries JSON log lines only: no progress bars from the model libraries."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]


def cmd_run(args: argparse.Namespace) -> int:
    from avs_operator.app import OperatorApp  # imports torch: only for `run`

    configure_json_logging(args.log_level)
    quiet_progress_bars()
    app = OperatorApp(load_config(args.config), load_secrets())

    def on_signal(signum: int, frame: FrameType | None) -> None:
        app.request_stop()  # the main thread stops it: a handler running inside start() must not

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if not app.start():
            return 0
        print(
            json.dumps(
                {
                    "event": "ready",
                    "grpc_port": app.ports.grpc,
                    "node_api_port": app.ports.node_api,
                    "metrics_port": app.ports.metrics,
                }
            ),
            flush=True,
        )
        app.wait()
    finally:
        app.stop(args.grace_seconds)
    return 0


def cmd_protection_init(args: argparse.Namespace) -> int:
    """Create the empty history of an operator that never signed (``run`` refuses to start without one)."""
    url = load_config(args.config).slashing_protection_url
    if has_history(url):
        raise InvalidInputError("the slashing protection history exists already; nothing was changed")
    SlashingProtection(url).close()
    print(json.dumps({"created": True}))
    return 0


def cmd_protection_export(args: argparse.Namespace) -> int:
    protection = SlashingProtection(load_config(args.config).slashing_protection_url, create=False)
    print(json.dumps(protection.export_records(), indent=2))
    return 0


def cmd_protection_import(args: argparse.Namespace) -> int:
    try:
        document = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read {args.file}: {exc}") from None
    protection = SlashingProtection(load_config(args.config).slashing_protection_url)
    attestations, batches = protection.import_records(document)
    print(json.dumps({"imported_attestations": attestations, "imported_batches": batches}))
    return 0


def _chain_client(config: OperatorConfig, with_account: bool) -> tuple[Web3AvsClient, LocalAccount | None]:
    from avs.chain.registration import load_client

    deployment = load_checked_deployment(config.chain)
    account = None
    if with_account:
        if config.keys.ecdsa_keystore is None:
            raise ConfigError("keys.ecdsa_keystore: required for on-chain commands")
        password = load_secrets().ecdsa_key_password
        if password is None:
            raise ConfigError("set OPERATOR_ECDSA_KEY_PASSWORD to unlock the ECDSA keystore")
        account = Account.from_key(
            keystore.load_ecdsa_keystore(config.keys.ecdsa_keystore, password.get_secret_value())
        )
    return load_client(config.chain.rpc_url, deployment, account), account


def _bls_keys(config: OperatorConfig) -> KeyPair:
    password = load_secrets().bls_key_password
    if password is None:
        raise ConfigError("set OPERATOR_BLS_KEY_PASSWORD to unlock the BLS keystore")
    return keystore.load_bls_keystore(config.keys.bls_keystore, password.get_secret_value())


def _replacement(text: str) -> tuple[int, str]:
    quorum, sep, member = text.partition("=")
    if not sep or not quorum.isdigit() or not is_address(member):
        raise argparse.ArgumentTypeError(f"expected QUORUM=ADDRESS, got {text!r}")
    return int(quorum), member


WILDCARD_HOSTS = frozenset({"", "*"})  # and every unspecified IP address (0.0.0.0, ::)
SOCKET_SCHEMES = ("grpc://", "grpcs://")  # what aggregators dial: TLS for grpcs://, plaintext otherwise
# anvil's chain id: the devnet's operators and aggregator all run on one machine, so there a loopback
# socket is the right one; on any other chain it would send every aggregator to its own host.
DEVNET_CHAIN_ID = 31337
# A DNS name (underscores too: Docker service names have them) or an IPv4 address.
# A DNS label starts and ends with a letter, digit (or underscore), hyphens only inside.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


@dataclass(frozen=True, slots=True)
class OperatorSocket:
    scheme: str  # "grpc://", "grpcs://", or "" (plaintext)
    host: str  # a name, an IPv4 address, or an IPv6 address in brackets
    port: int


def parse_socket(socket: str) -> OperatorSocket:
    """``[grpc://|grpcs://]host:port``, the socket aggregators and challengers dial (they strip the
    scheme and hand gRPC ``host:port``); ``InvalidInputError`` for anything else."""
    scheme = next((prefix for prefix in SOCKET_SCHEMES if socket.startswith(prefix)), "")
    host, sep, port = socket[len(scheme) :].rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise InvalidInputError(f"socket {socket!r} must be [grpc://|grpcs://]host:port")
    if not 0 < int(port) <= MAX_PORT:
        raise InvalidInputError(
            f"socket {socket!r}: the port must be in 1-{MAX_PORT} (0 means any free port, which aggregators"
            " cannot know)"
        )
    if host not in WILDCARD_HOSTS and not _is_host(host):
        raise InvalidInputError(f"socket {socket!r}: {host!r} is not a host name or IP address")
    return OperatorSocket(scheme, host, int(port))


def _is_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        return _ip_address(host) is not None and ":" in host
    if host.replace(".", "").isdigit():  # all digits: an IPv4 address or nothing (999.1.1.1, 1.2.3)
        return _ip_address(host) is not None
    return _HOST_NAME.fullmatch(host) is not None and len(host) <= 253


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def is_wildcard_host(host: str) -> bool:
    address = _ip_address(host)
    return host in WILDCARD_HOSTS or (address is not None and address.is_unspecified)


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8, ::1 (an IPv4-mapped one too)."""
    address = _ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost") or (address is not None and address.is_loopback)


def get_public_socket(given: str | None, grpc: GrpcConfig, chain_id: int) -> str:
    """The socket registered on-chain, where aggregators dial: ``given`` (``--socket``), or
    ``grpc.listen`` unless it binds every interface (0.0.0.0 would send aggregators to their own
    host). Its scheme must match the server: ``grpcs://`` with TLS, ``grpc://`` (or none) without.
    A loopback host is refused too, except on the devnet (``DEVNET_CHAIN_ID``), whose processes share
    one machine."""
    tls = grpc.tls_cert_file is not None
    if given is None:
        socket, named = ("grpcs://" if tls else "grpc://") + grpc.listen, f"grpc.listen {grpc.listen}"
    else:
        socket, named = given, f"--socket {given}"
        if tls and not given.startswith("grpcs://"):
            raise InvalidInputError(f"the gRPC server serves TLS: --socket grpcs://host:port, not {given}")
        if not tls and given.startswith("grpcs://"):
            raise InvalidInputError(f"--socket {given} asks for TLS, but grpc.tls_cert_file is not set")
    parsed = parse_socket(socket)
    if is_wildcard_host(parsed.host):
        verb = "binds" if given is None else "names"
        raise InvalidInputError(
            f"{named} {verb} every interface, not an address aggregators can dial: give the one they dial,"
            " --socket host:port"
        )
    if is_loopback_host(parsed.host) and chain_id != DEVNET_CHAIN_ID:
        raise InvalidInputError(
            f"{named} is this machine's loopback address: aggregators would dial their own host. Give the"
            f" address they reach this operator at, --socket host:port (loopback only on the devnet, chain"
            f" {DEVNET_CHAIN_ID})"
        )
    return socket


def cmd_register(args: argparse.Namespace) -> int:
    from avs.chain.registration import register_operator

    config = load_config(args.config)
    socket = get_public_socket(args.socket, config.grpc, config.chain.chain_id)  # before keys and RPC
    client, account = _chain_client(config, with_account=True)
    assert account is not None
    replace = dict(args.replace or [])
    hashes = register_operator(client, account, _bls_keys(config), socket, args.quorums, args.allocate_wad, replace)
    print(
        json.dumps(
            {
                "registered": account.address,
                "quorums": args.quorums,
                "socket": socket,
                "transactions": ["0x" + h.hex() for h in hashes],
            }
        )
    )
    return 0


def cmd_update_socket(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    socket = get_public_socket(args.socket, config.grpc, config.chain.chain_id)
    client, account = _chain_client(config, with_account=True)
    assert account is not None
    tx = send_socket_update(client, account, socket)
    print(json.dumps({"operator": account.address, "socket": socket, "transaction": "0x" + tx.hex()}))
    return 0


def send_socket_update(client: Web3AvsClient, account: LocalAccount, socket: str) -> bytes:
    """``OperatorRegistry.updateSocket``: where aggregators dial this operator from now on. An address
    the registry does not know is refused before the transaction (the registry would revert it)."""
    from avs.chain.registration import MAX_SOCKET_CHARS

    if not 0 < len(socket) <= MAX_SOCKET_CHARS:
        raise InvalidInputError(f"socket must be 1 to {MAX_SOCKET_CHARS} characters")
    registry = client.registry.functions
    if not any(bytes(registry.getOperatorId(account.address).call())):
        raise InvalidInputError(f"{account.address} is not registered with the AVS: run `avs-operator register`")
    return client.transact(registry.updateSocket(socket), account)


def cmd_deregister(args: argparse.Namespace) -> int:
    from avs.chain.registration import deregister_operator

    client, account = _chain_client(load_config(args.config), with_account=True)
    assert account is not None
    tx = deregister_operator(client, account, args.quorums)
    print(json.dumps({"deregistered": account.address, "quorums": args.quorums, "transaction": "0x" + tx.hex()}))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from avs.chain.registration import get_operator_status

    config = load_config(args.config)
    client, _ = _chain_client(config, with_account=False)
    address = args.address
    if address is None:
        _, account = _chain_client(config, with_account=True)
        assert account is not None
        address = account.address
    status = get_operator_status(client, address).to_json()
    status["health"] = _node_health(config)
    print(json.dumps(status, indent=2))
    return 0


def _node_health(config: OperatorConfig) -> str:
    host, port = config.node_api.listen.rsplit(":", 1)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/eigen/node/health", timeout=3) as response:
            return {200: "healthy", 206: "partially healthy"}.get(response.status, str(response.status))
    except urllib.error.HTTPError as error:
        return "unhealthy" if error.code == 503 else f"HTTP {error.code}"
    except OSError:
        return "not running"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avs-operator", description="The verifiable-inference AVS operator.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve the operator's gRPC API")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--log-level", default="INFO")
    run.add_argument("--grace-seconds", type=float, default=10.0, help="time for in-flight calls at shutdown")
    run.set_defaults(func=cmd_run)

    protection = commands.add_parser("slashing-protection", help="export or import the signing history")
    sub = protection.add_subparsers(dest="protection_command", required=True)
    init = sub.add_parser("init", help="create the empty history of an operator that never signed (first start)")
    init.add_argument("--config", type=Path, required=True)
    init.set_defaults(func=cmd_protection_init)
    export = sub.add_parser("export", help="print the history as JSON")
    export.add_argument("--config", type=Path, required=True)
    export.set_defaults(func=cmd_protection_export)
    imported = sub.add_parser("import", help="merge a history exported elsewhere (refuses conflicts)")
    imported.add_argument("--config", type=Path, required=True)
    imported.add_argument("file")
    imported.set_defaults(func=cmd_protection_import)

    register = commands.add_parser("register", help="register with the AVS's operator sets (sends transactions)")
    register.add_argument("--config", type=Path, required=True)
    register.add_argument("--quorums", type=int, nargs="+", default=[0])
    register.add_argument(
        "--socket",
        help="where aggregators reach this operator, grpc://host:port (grpcs:// with TLS); default: grpc.listen "
        "unless it binds every interface",
    )
    register.add_argument("--allocate-wad", type=int, help="allocate this fraction (1e18 = all) of stake first")
    register.add_argument(
        "--replace",
        type=_replacement,
        action="append",
        metavar="QUORUM=ADDRESS",
        help="in a full quorum, take this member's place (churn, within the quorum's limits); repeatable",
    )
    register.set_defaults(func=cmd_register)
    update_socket = commands.add_parser(
        "update-socket", help="change the socket registered on-chain, where aggregators dial (sends a transaction)"
    )
    update_socket.add_argument("--config", type=Path, required=True)
    update_socket.add_argument(
        "--socket", help="grpc://host:port (grpcs:// with TLS); default: grpc.listen unless it binds every interface"
    )
    update_socket.set_defaults(func=cmd_update_socket)
    deregister = commands.add_parser("deregister", help="leave the AVS's operator sets (sends a transaction)")
    deregister.add_argument("--config", type=Path, required=True)
    deregister.add_argument("--quorums", type=int, nargs="+", default=[0])
    deregister.set_defaults(func=cmd_deregister)
    status = commands.add_parser("status", help="registration, stake per quorum and health")
    status.add_argument("--config", type=Path, required=True)
    status.add_argument(
        "--address", type=parse_address, help="another operator's address (default: this operator's ECDSA key)"
    )
    status.set_defaults(func=cmd_status)

    commands.add_parser("keys", help="key commands (same as `avs keys`)", add_help=False)
    commands.add_parser("version", help="print the version")
    return parser


def parse_address(text: str) -> str:
    if not is_address(text):
        raise argparse.ArgumentTypeError(f"{text[:64]!r} is not a 0x address")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in {"keys", "version"}:
        return avs_main(args_list)
    return run_command("avs-operator", build_parser().parse_args(args_list))


if __name__ == "__main__":
    raise SystemExit(main())
