"""The local devnet: anvil, the contracts with the local restaking core, funded operators, and
the service processes (operators, the aggregator and, on request, the challenger).

Used by ``make demo``/``make devnet`` and by the integration tests, so both run the same path.
Devnet only: minting test tokens and setting balances are anvil conveniences that a real network
does not have (there, operators restake through EigenLayer's own contracts and UI).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs import keystore
from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient
from avs.chain.deployment import Deployment, load_deployment
from avs.chain.registration import register_operator
from avs.crypto import bls
from avs.errors import AvsError

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"
FORGE = CONTRACTS / "tools" / "forge"
ANVIL = CONTRACTS / "tools" / "anvil"
# anvil's first default account (public test key): the devnet deployer, owner and aggregator.
ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ZERO_ADDRESS = "0x" + "00" * 20
DEVNET_SCRYPT_N = 1 << 12  # devnet keystores: fast to open; real keys use 2^18


class DevnetError(AvsError, RuntimeError):
    """The devnet could not be started or set up."""


def get_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Anvil:
    """An anvil process on a free port (or ``port``); ``stop()`` always reaps it. ``kept_states``:
    keep only that many recent blocks' state, as a full (not archive) node does."""

    def __init__(
        self, port: int | None = None, block_time: float | None = None, kept_states: int | None = None
    ) -> None:
        self.port = port or get_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(ANVIL), "--port", str(self.port), "--silent"]
        if block_time is not None:
            args += ["--block-time", str(block_time)]
        if kept_states is not None:
            args += ["--prune-history", str(kept_states)]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.w3 = Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 30}))
        try:
            self._wait_ready()
        except BaseException:  # Ctrl-C or SIGTERM while waiting: nobody holds this object to stop it
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise DevnetError(f"anvil exited with status {self._process.returncode}")
            try:
                self.w3.eth.block_number  # noqa: B018 (a readiness probe)
                return
            except Exception:
                time.sleep(0.1)
        raise DevnetError("anvil did not answer within 20 s")

    def is_running(self) -> bool:
        return self._process.poll() is None

    def mine(self, blocks: int = 1) -> None:
        self.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def build_contracts() -> None:
    if not (CONTRACTS / "out" / "InferenceTaskManager.sol").is_dir():
        _run_forge(["build"], {})


def deploy_contracts(
    rpc_url: str, out: Path, settings: dict[str, str] | None = None, entry: str = "run()"
) -> Deployment:
    """Run ``script/Deploy.s.sol`` (``settings``: its environment, e.g. THRESHOLD_BPS; ``entry``:
    ``run()`` with the local restaking core, ``runWithEigenLayer()`` on EigenLayer's deployed
    contracts named in ``settings``); the deployment JSON is copied to ``out`` (forge may only
    write under ``contracts/deployments``)."""
    build_contracts()
    scratch = CONTRACTS / "deployments" / f"devnet-{os.getpid()}-{get_free_port()}.json"
    env = {"DEPLOYMENT_OUT": os.path.relpath(scratch, CONTRACTS), **(settings or {})}
    args = ["script", "script/Deploy.s.sol", "--sig", entry, "--rpc-url", rpc_url, "--broadcast", "--slow"]
    try:
        _run_forge(args, env)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(scratch.read_text())
    finally:
        scratch.unlink(missing_ok=True)
    return load_deployment(out)


def _run_forge(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(FORGE), *args], cwd=CONTRACTS, env={**os.environ, **env}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise DevnetError(f"forge {args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def fund(w3: Web3, deployment: Deployment, address: str, amount: int) -> None:
    """Devnet only: gas and ``amount`` more test tokens (the stake token) for ``address``."""
    w3.provider.make_request("anvil_setBalance", [address, hex(10**20)])  # type: ignore[arg-type]
    if amount:
        funder = Web3AvsClient(w3, deployment, Account.from_key(ANVIL_KEY_0))
        token = w3.eth.contract(address=Web3.to_checksum_address(deployment.stake_token), abi=load_abi("TestToken"))
        funder.transact(token.functions.mint(Web3.to_checksum_address(address), amount))


def restake(w3: Web3, deployment: Deployment, account: LocalAccount, amount: int) -> None:
    """Devnet only: give ``account`` gas and ``amount`` test tokens, make it an EigenLayer
    operator, and deposit the tokens into the AVS's strategy (what a restaker does on mainnet)."""
    fund(w3, deployment, account.address, amount)
    operator = Web3AvsClient(w3, deployment, account)
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment.stake_token), abi=load_abi("TestToken"))
    core = w3.eth.contract(
        address=Web3.to_checksum_address(deployment.allocation_manager), abi=load_abi("LocalRestakingCore")
    )
    # Become an operator before depositing: the local core credits deposits to operators from then on.
    operator.transact(core.functions.registerAsOperator(ZERO_ADDRESS, 0, ""))
    operator.transact(token.functions.approve(core.address, amount))
    operator.transact(core.functions.depositIntoStrategy(deployment.strategy, token.address, amount))


# --- operator processes -----------------------------------------------------------------

DEVNET_PASSWORD = "devnet-only-password"  # devnet keystores only; never use for real keys
READY_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class DevnetOperator:
    name: str
    account: LocalAccount
    key_pair: bls.KeyPair
    stake: int
    config_path: Path
    grpc_port: int
    node_api_port: int
    metrics_port: int


def create_operator(
    rpc_url: str,
    deployment: Deployment,
    deployment_file: Path,
    workdir: Path,
    name: str,
    stake: int,
    model_dir: Path,
    aggregators: list[str],
) -> DevnetOperator:
    """Keys, a config file, restaked tokens and AVS registration for one devnet operator."""
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    account: LocalAccount = Account.create()
    key_pair = bls.compute_key_pair(bls.generate_secret_key())
    keystore.save_bls_keystore(home / "operator.bls.key.json", key_pair, DEVNET_PASSWORD, DEVNET_SCRYPT_N)
    keystore.save_ecdsa_keystore(home / "operator.ecdsa.key.json", bytes(account.key), DEVNET_PASSWORD, DEVNET_SCRYPT_N)
    ports = [get_free_port() for _ in range(3)]
    config = {
        "chain": {
            "chain_id": deployment.chain_id,
            "task_manager": deployment.task_manager,
            "rpc_url": rpc_url,
            "deployment_file": str(deployment_file.resolve()),
        },
        "keys": {"bls_keystore": "operator.bls.key.json", "ecdsa_keystore": "operator.ecdsa.key.json"},
        "models": [{"name": model_dir.name, "path": str(model_dir.resolve())}],
        "auth": {"authorised_aggregators": aggregators},
        "grpc": {"listen": f"127.0.0.1:{ports[0]}"},
        "node_api": {"listen": f"127.0.0.1:{ports[1]}"},
        "metrics": {"listen": f"127.0.0.1:{ports[2]}"},
        "slashing_protection_url": f"sqlite:///{(home / 'slashing-protection.sqlite').resolve()}",
        "threads": 1,
        "node_name": name,
    }
    config_path = home / "operator.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    # What `avs-operator slashing-protection init` does on an operator's first start (`run` refuses to
    # start without a history).
    from avs_operator.slashing_protection import SlashingProtection

    SlashingProtection(str(config["slashing_protection_url"])).close()
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    restake(w3, deployment, account, stake)
    client = Web3AvsClient(w3, deployment, account)
    register_operator(client, account, key_pair, f"127.0.0.1:{ports[0]}", [0], allocate_wad=10**18)
    return DevnetOperator(name, account, key_pair, stake, config_path, ports[0], ports[1], ports[2])


def operator_environment() -> dict[str, str]:
    return {
        **os.environ,
        "OPERATOR_BLS_KEY_PASSWORD": DEVNET_PASSWORD,
        "OPERATOR_ECDSA_KEY_PASSWORD": DEVNET_PASSWORD,
        "HF_HUB_OFFLINE": "1",
    }


class ServiceProcess:
    """A service binary run as a real process, its stdout and stderr in files under ``log_dir``.

    ``wait_ready`` watches stdout for the ``{"event": "ready", ...}`` line the binaries print.
    ``pause``/``resume`` (SIGSTOP/SIGCONT) make it unreachable for a while without killing it;
    ``stop`` resumes a paused process before it asks it to stop.
    """

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.stdout_path = log_dir / f"{name}.out"
        self.log_path = log_dir / f"{name}.log"
        with self.stdout_path.open("w") as stdout, self.log_path.open("w") as stderr:
            self.process = subprocess.Popen(args, stdout=stdout, stderr=stderr, env=env, cwd=ROOT)

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stdout_path.read_text().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "ready":
                    return event
            if self.process.poll() is not None:
                raise DevnetError(f"{self.name} exited with status {self.process.returncode}; see {self.log_path}")
            time.sleep(0.3)
        raise DevnetError(f"{self.name} was not ready within {timeout:.0f} s; see {self.log_path}")

    def pause(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused process would not handle SIGTERM
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_operator(operator: DevnetOperator, log_dir: Path) -> ServiceProcess:
    args = [
        sys.executable,
        "-m",
        "avs_operator.cli",
        "run",
        "--config",
        str(operator.config_path),
        "--grace-seconds",
        "5",
    ]
    return ServiceProcess(operator.name, args, operator_environment(), log_dir)


# --- the whole devnet -------------------------------------------------------------------

DEFAULT_STAKES = (("alice", 400), ("bob", 300), ("carol", 200), ("dave", 100))  # in whole test tokens


def read_profile_hash(model_dir: Path) -> str:
    """The model id the operators serve: the hash of the profile written beside the weights."""
    from avs.inference.profile import load_profile  # torch-free

    return "0x" + load_profile(model_dir).compute_hash().hex()


class Devnet:
    """anvil + contracts + registered operators (processes) + the aggregator (a process) + with
    ``challenger=True`` the challenger (a process, its own funded key).

    ``start()`` builds it all; ``stop()`` (also on any failure in ``start``) leaves no process
    behind. Everything is written under ``workdir``: keystores, configs, logs, databases.
    ``deadlines`` overrides the aggregator's ``deadlines`` section (e.g. ``verify_seconds``).
    """

    def __init__(
        self,
        workdir: Path,
        model_dir: Path,
        stakes: tuple[tuple[str, int], ...] = DEFAULT_STAKES,
        settings: dict[str, str] | None = None,
        cheater: str | None = None,
        challenger: bool = False,
        deadlines: dict[str, float] | None = None,
    ) -> None:
        self.workdir = workdir
        self.model_dir = model_dir.resolve()
        self.stakes = stakes
        self.settings = settings or {}
        # demo only: this operator serves other weights and rubber-stamps Verify (avs.demo_cheater)
        self.cheater = cheater
        self.with_challenger = challenger
        self.deadlines = deadlines or {}
        self.operators: list[DevnetOperator] = []
        self.processes: list[ServiceProcess] = []
        self.anvil: Anvil | None = None
        self.aggregator_url = ""
        self.aggregator_ports: dict[str, int] = {}
        # The challenger's key: the honest operators answer its Verify calls; it holds the bond.
        self.challenger: LocalAccount = Account.create()
        self.challenger_metrics_port = 0

    def start(self, on_step: Callable[[str], None] = lambda _: None) -> None:
        try:
            self._start(on_step)
        except BaseException:
            self.stop()
            raise

    def _start(self, on_step: Callable[[str], None]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        on_step("starting anvil")
        self.anvil = Anvil()
        on_step("deploying the contracts and the local restaking core")
        self.deployment_file = self.workdir / "deployment.json"
        self.deployment = deploy_contracts(self.anvil.url, self.deployment_file, self.settings)
        for name, tokens in self.stakes:
            on_step(f"restaking {tokens} tokens for {name} and registering it with BLS proof of possession")
            self.operators.append(
                create_operator(
                    self.anvil.url,
                    self.deployment,
                    self.deployment_file,
                    self.workdir / "operators",
                    name,
                    tokens * 10**18,
                    self.model_dir,
                    self._authorised_callers(),
                )
            )
        self.anvil.mine(2)  # the registrations lie before any reference block
        on_step(f"starting {len(self.operators)} operator processes (loading {self.model_dir.name})")
        for operator in self.operators:  # each kept as it starts: stop() reaps them if a later one fails
            self.processes.append(self._start_operator(operator))
        for process in self.processes:
            process.wait_ready()
        on_step("starting the aggregator")
        self._start_aggregator()
        if self.with_challenger:
            on_step("starting the challenger (its own key, funded with the challenge bond)")
            self._start_challenger()

    def _authorised_callers(self) -> list[str]:
        """The aggregator and the challenger (the cheater too: the challenger asks the operators that
        did not sign a batch before its signers, so the cheater's ACCEPT of its own output is no check)."""
        return [self.deployment.aggregator, self.challenger.address]

    def _start_operator(self, operator: DevnetOperator) -> ServiceProcess:
        if operator.name != self.cheater:
            return start_operator(operator, self.workdir / "logs")
        from avs.demo_cheater import make_cheap_weights

        cheap = make_cheap_weights(self.model_dir, self.workdir / "cheap-model", keep_layers=1)
        args = [sys.executable, "-m", "avs.demo_cheater", "--config", str(operator.config_path)]
        args += ["--honest", str(self.model_dir), "--weights", str(cheap)]
        return ServiceProcess(operator.name, args, operator_environment(), self.workdir / "logs")

    def _start_aggregator(self) -> None:
        home = self.workdir / "aggregator"
        home.mkdir(exist_ok=True)
        keystore.save_ecdsa_keystore(
            home / "aggregator.ecdsa.key.json", bytes.fromhex(ANVIL_KEY_0[2:]), DEVNET_PASSWORD, DEVNET_SCRYPT_N
        )
        ports = {"grpc": get_free_port(), "metrics": get_free_port(), "health": get_free_port()}
        lowest = int(self.settings.get("THRESHOLD_BPS", "6667"))
        assert self.anvil is not None
        config = {
            "chain": {"rpc_url": self.anvil.url, "deployment_file": str(self.deployment_file.resolve())},
            "keys": {"ecdsa_keystore": "aggregator.ecdsa.key.json"},
            "models": [
                {
                    "name": self.model_dir.name,
                    "model_id": read_profile_hash(self.model_dir),
                    "tokenizer_path": str(self.model_dir),
                }
            ],
            "database_url": f"sqlite:///{(home / 'aggregator.sqlite').resolve()}",
            "grpc_listen": f"127.0.0.1:{ports['grpc']}",
            "metrics_listen": f"127.0.0.1:{ports['metrics']}",
            "health_listen": f"127.0.0.1:{ports['health']}",
            "batch": {"max_size": 4, "max_latency_seconds": 1.0},
            "deadlines": dict(self.deadlines),  # empty: the aggregator's defaults
            # the task manager's thresholdBps (Deploy.s.sol's THRESHOLD_BPS) is the lowest it certifies
            "policy": {"min_threshold_bps": lowest, "default_threshold_bps": max(lowest, 6667)},
        }
        process = self._start_service("aggregator", "avs_aggregator.cli", home, config, "AGGREGATOR_ECDSA_KEY_PASSWORD")
        wait_http_ok(f"http://127.0.0.1:{ports['health']}/health", process)
        self.aggregator_url = f"127.0.0.1:{ports['grpc']}"
        self.aggregator_ports = ports

    def get_challenge_bond(self) -> int:
        assert self.anvil is not None and self.deployment.fault_manager is not None
        fault_manager = self.anvil.w3.eth.contract(
            address=Web3.to_checksum_address(self.deployment.fault_manager), abi=load_abi("FaultManager")
        )
        return int(fault_manager.functions.config().call()[5])  # IFaultManagerTypes.Config.challengeBond

    def _start_challenger(self) -> None:
        """``avs-challenger``: re-verifies every certified leaf (sample rate 1), challenges a wrong one
        with its bond and resolves the challenge with the escalation quorum's certificate."""
        assert self.anvil is not None
        home = self.workdir / "challenger"
        home.mkdir(exist_ok=True)
        keystore.save_ecdsa_keystore(
            home / "challenger.ecdsa.key.json", bytes(self.challenger.key), DEVNET_PASSWORD, DEVNET_SCRYPT_N
        )
        fund(self.anvil.w3, self.deployment, self.challenger.address, self.get_challenge_bond())
        self.challenger_metrics_port = get_free_port()
        config = {
            "rpc_url": self.anvil.url,
            "deployment_file": str(self.deployment_file.resolve()),
            "aggregator": self.aggregator_url,
            "ecdsa_keystore": "challenger.ecdsa.key.json",
            "sample_rate": 1.0,
            "escalate": True,
            "resolve": True,
            "prove_equivocations": True,
            "database_url": f"sqlite:///{(home / 'challenger.sqlite').resolve()}",
            "reference_lag_blocks": 1,
            "poll_seconds": 1.0,
            "verify_seconds": 60.0,
            "metrics_listen": f"127.0.0.1:{self.challenger_metrics_port}",
        }
        process = self._start_service(
            "challenger", "avs_aggregator.challenger.cli", home, config, "CHALLENGER_ECDSA_KEY_PASSWORD"
        )
        process.wait_ready()  # printed once its store holds the scan position: later batches are seen

    def _start_service(
        self, name: str, module: str, home: Path, config: Mapping[str, object], password_env: str
    ) -> ServiceProcess:
        """Write ``home/<name>.yaml`` and run ``python -m <module> run`` on it, its keystore
        password in ``password_env``."""
        config_path = home / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        env = {**os.environ, password_env: DEVNET_PASSWORD, "HF_HUB_OFFLINE": "1"}
        args = [sys.executable, "-m", module, "run", "--config", str(config_path)]
        process = ServiceProcess(name, args, env, self.workdir / "logs")
        self.processes.append(process)
        return process

    def get_process(self, name: str) -> ServiceProcess:
        return next(p for p in self.processes if p.name == name)

    @contextmanager
    def paused(self, names: Sequence[str]) -> Iterator[None]:
        """Those processes stopped (SIGSTOP) for the block: unreachable, as if their machines were
        cut off; resumed (SIGCONT) after it, also on errors and Ctrl-C."""
        processes = [self.get_process(name) for name in names]
        try:
            for process in processes:
                process.pause()
            yield
        finally:
            for process in processes:
                process.resume()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None


def wait_http_ok(url: str, process: ServiceProcess, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise DevnetError(f"{process.name} exited with status {process.process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise DevnetError(f"{process.name} did not become healthy within {timeout:.0f} s")
