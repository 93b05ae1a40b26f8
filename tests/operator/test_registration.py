"""``avs-operator register|status|deregister`` as an operator runs them, against contracts on anvil."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs import keystore
from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient
from avs.chain.deployment import Deployment
from avs.crypto import bls
from avs.devnet import ANVIL_KEY_0, CONTRACTS
from avs.errors import InvalidInputError
from tests.test_contracts_anvil import _deploy, anvil  # noqa: F401 (fixture)

STAKE = 5 * 10**18
BLS_PASSWORD = "bls password"
ECDSA_PASSWORD = "ecdsa password"


@pytest.fixture(scope="module")
def deployment(anvil: str) -> Iterator[Deployment]:  # noqa: F811 (the imported fixture)
    out = CONTRACTS / "deployments" / f"pytest-registration-{os.getpid()}.json"
    try:
        yield _deploy(anvil, out)
    finally:
        out.unlink(missing_ok=True)


def fund(w3: Web3, deployment: Deployment, address: str) -> None:
    """Devnet only: ETH for gas and test tokens to restake."""
    funder = Web3AvsClient(w3, deployment, Account.from_key(ANVIL_KEY_0))
    w3.provider.make_request("anvil_setBalance", [address, hex(10**20)])  # type: ignore[arg-type]
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment.stake_token), abi=load_abi("TestToken"))
    funder.transact(token.functions.mint(address, STAKE))


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avs_operator.cli", *args], capture_output=True, text=True, env={**os.environ, **env}
    )


def test_register_status_deregister(anvil: str, deployment: Deployment, tmp_path: Path) -> None:  # noqa: F811
    w3 = Web3(Web3.HTTPProvider(anvil))
    account = Account.create()
    keystore.save_bls_keystore(
        tmp_path / "op.bls.key.json", bls.compute_key_pair(bls.generate_secret_key()), BLS_PASSWORD, 1 << 12
    )
    keystore.save_ecdsa_keystore(tmp_path / "op.ecdsa.key.json", bytes(account.key), ECDSA_PASSWORD, 1 << 12)
    (tmp_path / "deployment.json").write_text(
        json.dumps({field: getattr(deployment, field) for field in deployment.__dataclass_fields__})
    )
    config = {
        "chain": {
            "chain_id": deployment.chain_id,
            "task_manager": deployment.task_manager,
            "rpc_url": anvil,
            "deployment_file": "deployment.json",
        },
        "keys": {"bls_keystore": "op.bls.key.json", "ecdsa_keystore": "op.ecdsa.key.json"},
        "models": [{"name": "tiny", "path": "model"}],
        "auth": {"authorised_aggregators": [deployment.aggregator]},
        "node_api": {"listen": "127.0.0.1:1"},
    }
    (tmp_path / "operator.yaml").write_text(yaml.safe_dump(config))
    env = {"OPERATOR_BLS_KEY_PASSWORD": BLS_PASSWORD, "OPERATOR_ECDSA_KEY_PASSWORD": ECDSA_PASSWORD}
    cfg = str(tmp_path / "operator.yaml")

    # The operator holds tokens but is not yet an EigenLayer operator nor in the AVS.
    fund(w3, deployment, account.address)
    client = Web3AvsClient(w3, deployment, account)
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment.stake_token), abi=load_abi("TestToken"))
    core = w3.eth.contract(
        address=Web3.to_checksum_address(deployment.allocation_manager), abi=load_abi("LocalRestakingCore")
    )
    client.transact(token.functions.approve(core.address, STAKE))
    before = json.loads(run_cli("status", "--config", cfg, env=env).stdout)
    assert before["registered"] is False and before["is_eigenlayer_operator"] is False
    assert before["health"] == "not running"

    registered = run_cli(
        "register", "--config", cfg, "--socket", "op.example:50051", "--allocate-wad", str(10**18), env=env
    )
    assert registered.returncode != 0  # no stake deposited yet: the registry refuses (minimum stake)
    client.transact(core.functions.depositIntoStrategy(deployment.strategy, token.address, STAKE))
    registered = run_cli(
        "register", "--config", cfg, "--socket", "op.example:50051", "--allocate-wad", str(10**18), env=env
    )
    assert registered.returncode == 0, registered.stderr
    assert BLS_PASSWORD not in registered.stdout + registered.stderr

    status = json.loads(run_cli("status", "--config", cfg, env=env).stdout)
    assert status["registered"] and status["quorums"] == [0] and status["socket"] == "op.example:50051"
    assert int(status["stake"]["0"]) == STAKE and int(status["total_stake"]["0"]) >= STAKE
    keys = keystore.load_bls_keystore(tmp_path / "op.bls.key.json", BLS_PASSWORD)
    assert status["operator_id"] == "0x" + keys.operator_id.hex()

    # A loopback socket: refused elsewhere, right on the devnet's chain (31337), whose processes share a host.
    moved = run_cli("update-socket", "--config", cfg, "--socket", "grpc://127.0.0.1:50052", env=env)
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["socket"] == "grpc://127.0.0.1:50052"
    assert json.loads(run_cli("status", "--config", cfg, env=env).stdout)["socket"] == "grpc://127.0.0.1:50052"

    deregistered = run_cli("deregister", "--config", cfg, env=env)
    assert deregistered.returncode == 0, deregistered.stderr
    assert json.loads(run_cli("status", "--config", cfg, env=env).stdout)["quorums"] == []


def test_on_chain_commands_need_a_deployment_and_keys(tmp_path: Path) -> None:
    config = {
        "chain": {"chain_id": 31337, "task_manager": "0x5FbDB2315678afecb367f032d93F642f64180aa3"},
        "keys": {"bls_keystore": "op.bls.key.json"},
        "models": [{"name": "tiny", "path": "model"}],
        "auth": {"authorised_aggregators": ["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"]},
    }
    (tmp_path / "operator.yaml").write_text(yaml.safe_dump(config))
    out = run_cli("register", "--config", str(tmp_path / "operator.yaml"), "--socket", "op.example:50051", env={})
    assert out.returncode == 2 and "chain.deployment_file" in out.stderr
    # The socket is checked first, before any key or RPC: here a wildcard, which nobody can dial.
    out = run_cli("update-socket", "--config", str(tmp_path / "operator.yaml"), "--socket", "0.0.0.0:1", env={})
    assert out.returncode == 2 and "names every interface" in out.stderr, out.stderr
    for bad in (
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "zero=0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0=0x12",
    ):
        out = run_cli("register", "--config", str(tmp_path / "operator.yaml"), "--replace", bad, env={})
        assert out.returncode == 2 and "expected QUORUM=ADDRESS" in out.stderr


@dataclass(frozen=True)
class Staked:
    """A funded EigenLayer operator with STAKE deposited, not yet in the AVS."""

    client: Web3AvsClient
    account: LocalAccount
    keys: bls.KeyPair

    @property
    def address(self) -> str:
        return str(self.account.address)

    def register(self, quorums: list[int], allocate_wad: int, replace: dict[int, str] | None = None) -> None:
        from avs.chain.registration import register_operator

        register_operator(self.client, self.account, self.keys, "op:1", quorums, allocate_wad, replace)


def _staked_operator(w3: Web3, deployment: Deployment) -> Staked:
    account = Account.create()
    fund(w3, deployment, account.address)
    client = Web3AvsClient(w3, deployment, account)
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment.stake_token), abi=load_abi("TestToken"))
    core = w3.eth.contract(
        address=Web3.to_checksum_address(deployment.allocation_manager), abi=load_abi("LocalRestakingCore")
    )
    client.transact(core.functions.registerAsOperator("0x" + "00" * 20, 0, ""))
    client.transact(token.functions.approve(core.address, STAKE))
    client.transact(core.functions.depositIntoStrategy(deployment.strategy, token.address, STAKE))
    return Staked(client, account, bls.compute_key_pair(bls.generate_secret_key()))


def test_deregister_next_block_and_no_return_within_the_delay(anvil: str, deployment: Deployment) -> None:  # noqa: F811
    from avs.chain.registration import deregister_operator, register_operator

    w3 = Web3(Web3.HTTPProvider(anvil))
    operator = _staked_operator(w3, deployment)
    client, account, keys = operator.client, operator.account, operator.keys
    operator.register([0], 10**18)
    deregister_operator(client, account, [0])
    # Leaving keeps it slashable for the core's DEALLOCATION_DELAY: no coming back before that,
    # refused with a clear error before any transaction.
    nonce = w3.eth.get_transaction_count(account.address)
    with pytest.raises(InvalidInputError, match="left quorum 0 less than DEALLOCATION_DELAY"):
        register_operator(client, account, keys, "op:1", [0])
    assert w3.eth.get_transaction_count(account.address) == nonce


def test_a_full_quorum_takes_a_larger_operator_in_place_of_a_smaller_one(anvil: str, deployment: Deployment) -> None:  # noqa: F811
    """Churn on the deployed contracts: quorum 0 is full (governance sets its size to its members),
    a newcomer without a named replacement is refused before any transaction, and with one it takes
    the place of a member holding 2 of its 5 tokens. (The chain is reverted afterwards.)"""
    from avs.monitoring.chain_exporter import Web3ChainStateReader

    w3 = Web3(Web3.HTTPProvider(anvil))
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    try:
        small = _staked_operator(w3, deployment)
        small.register([0], 4 * 10**17)  # 2 of its 5 tokens
        big = _staked_operator(w3, deployment)
        big.register([0], 10**18)
        governance = Web3AvsClient(w3, deployment, Account.from_key(ANVIL_KEY_0))
        registry = governance.registry.functions
        count = registry.operatorCount(0).call()
        _, minimum = registry.quorumConfig(0).call()
        governance.transact(registry.setQuorumConfig(0, (count, minimum)))
        governance.transact(registry.setChurnConfig(0, (11_000, 5_000)))

        newcomer = _staked_operator(w3, deployment)
        nonce = w3.eth.get_transaction_count(newcomer.account.address)
        with pytest.raises(InvalidInputError, match=r"quorum 0 is full .*--replace 0=ADDRESS.*under 50%.*than 110%"):
            newcomer.register([0], 10**18)
        with pytest.raises(InvalidInputError, match="does not join"):
            newcomer.register([0], 10**18, {1: small.address})
        assert w3.eth.get_transaction_count(newcomer.account.address) == nonce

        before = w3.eth.block_number
        newcomer.register([0], 10**18, {0: small.address})
        (churned,) = governance.registry.events.OperatorChurned.get_logs(from_block=before + 1)
        assert (churned["args"]["kicked"], churned["args"]["replacement"]) == (small.address, newcomer.address)
        assert (churned["args"]["kickedStake"], churned["args"]["replacementStake"]) == (2 * 10**18, STAKE)
        assert registry.operatorCount(0).call() == count
        assert registry.getCurrentQuorumBitmap(small.keys.operator_id).call() == 0
        assert registry.getCurrentQuorumBitmap(newcomer.keys.operator_id).call() == 1
        totals = Web3ChainStateReader(w3, deployment).get_event_totals(before + 1, w3.eth.block_number)
        assert totals.churns == {0: 1}  # what the chain exporter counts

        governance.transact(registry.setChurnConfig(0, (0, 0)))
        with pytest.raises(InvalidInputError, match="allows no churn"):
            _staked_operator(w3, deployment).register([0], 10**18, {0: big.address})
    finally:
        w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]


def test_the_daemon_reports_its_registered_stake(
    anvil: str,  # noqa: F811
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    import time
    import urllib.request

    from avs.devnet import DEVNET_PASSWORD, create_operator
    from avs.inference.engine import load_engine
    from avs_operator.app import OperatorApp
    from avs_operator.config import OperatorSecrets, load_config
    from tests.inference.conftest import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    (tmp_path / "deployment.json").write_text(
        json.dumps({field: getattr(deployment, field) for field in deployment.__dataclass_fields__})
    )
    operator = create_operator(
        anvil, deployment, tmp_path / "deployment.json", tmp_path, "erin", STAKE, model, [deployment.aggregator]
    )
    app = OperatorApp(
        load_config(operator.config_path),
        OperatorSecrets(bls_key_password=DEVNET_PASSWORD),  # type: ignore[arg-type]
        engine_loader=lambda path, config: load_engine(
            path, threads=config.threads, device=config.device, cache_dir=tmp_path / "cache"
        ),
    )
    app.start()
    try:
        expected = f'eigen_registered_stakes{{quorum_name="quorum 0",quorum_number="0"}} {float(STAKE)}'
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline and expected not in text:
            with urllib.request.urlopen(f"http://127.0.0.1:{app.ports.metrics}/metrics") as response:
                text = response.read().decode()
            time.sleep(0.2)
        assert expected in text
    finally:
        app.stop(1)


def test_chain_failures_and_bad_addresses_are_one_line_without_the_rpc_secret(tmp_path: Path) -> None:
    """An unreachable node (or a revert web3 could not decode) was a traceback holding the RPC URL,
    whose path is where providers put API keys; a malformed --address was one too."""
    deployment: dict[str, object] = {"chain_id": 31337, "start_block": 0}
    deployment |= {key: "0x" + "11" * 20 for key in ("deployer", "aggregator", "allocation_manager")}
    deployment |= {key: "0x" + "22" * 20 for key in ("delegation_manager", "strategy", "stake_token")}
    deployment |= {key: "0x" + "33" * 20 for key in ("operator_registry", "model_registry", "task_manager")}
    (tmp_path / "deployment.json").write_text(json.dumps(deployment))
    config = {
        "chain": {
            "chain_id": 31337,
            "task_manager": "0x" + "33" * 20,
            "rpc_url": "http://127.0.0.1:1/v3/SECRETKEY",
            "deployment_file": "deployment.json",
        },
        "keys": {"bls_keystore": "op.bls.key.json"},
        "models": [{"name": "tiny", "path": "model"}],
        "auth": {"authorised_aggregators": ["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"]},
    }
    (tmp_path / "operator.yaml").write_text(yaml.safe_dump(config))
    cfg = str(tmp_path / "operator.yaml")
    address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    down = run_cli("status", "--config", cfg, "--address", address, env={})
    assert down.returncode == 2 and down.stderr.startswith("avs-operator: error:"), down.stderr
    assert "Traceback" not in down.stderr and "SECRETKEY" not in down.stderr and "ConnectionError" in down.stderr
    for bad in ("0x1234", "not-an-address"):
        refused = run_cli("status", "--config", cfg, "--address", bad, env={})
        assert refused.returncode == 2 and "is not a 0x address" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_a_changed_or_borrowed_bls_key_is_refused_before_any_transaction(
    anvil: str,  # noqa: F811
    deployment: Deployment,
) -> None:
    """The registry keeps an operator's first key (a second registration with another key succeeded,
    the daemon then signing with a key the chain does not know), and a key belongs to one operator
    (refused only at the last transaction, after registerAsOperator and modifyAllocations)."""
    from avs.chain.registration import register_operator

    w3 = Web3(Web3.HTTPProvider(anvil))
    first, second = _staked_operator(w3, deployment), _staked_operator(w3, deployment)
    first.register([0], 10**18)
    other_key = bls.compute_key_pair(bls.generate_secret_key())
    nonces = [w3.eth.get_transaction_count(o.account.address) for o in (first, second)]
    with pytest.raises(InvalidInputError, match="registry keeps an operator's first key"):
        register_operator(first.client, first.account, other_key, "op:1", [1], 10**18)
    with pytest.raises(InvalidInputError, match="registered to another operator"):
        register_operator(second.client, second.account, first.keys, "op:1", [0], 10**18)
    assert [w3.eth.get_transaction_count(o.account.address) for o in (first, second)] == nonces


def test_update_socket_refuses_an_unregistered_operator_before_any_transaction() -> None:
    """OperatorRegistry.updateSocket reverts for an address it does not know: said before sending."""
    from avs_operator.cli import send_socket_update

    sent: list[object] = []
    functions = SimpleNamespace(
        getOperatorId=lambda address: SimpleNamespace(call=lambda: bytes(32)),
        updateSocket=lambda socket: ("updateSocket", socket),
    )
    client = SimpleNamespace(registry=SimpleNamespace(functions=functions), transact=lambda *call: sent.append(call))
    account = SimpleNamespace(address="0x70997970C51812dc3A010C7d01b50e0d17dc79C8")
    with pytest.raises(InvalidInputError, match="is not registered with the AVS"):
        send_socket_update(client, account, "grpc://op.example:50051")  # type: ignore[arg-type]
    assert sent == []
