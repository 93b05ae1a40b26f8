"""The local devnet: anvil, the contracts with the local restaking core, funded operators.

Used by ``make demo``/``make devnet`` and by the integration tests, so both run the same path.
Devnet only: minting test tokens and setting balances are anvil conveniences that a real network
does not have (there, operators restake through EigenLayer's own contracts and UI).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient
from avs.chain.deployment import Deployment, load_deployment
from avs.errors import AvsError

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"
FORGE = CONTRACTS / "tools" / "forge"
ANVIL = CONTRACTS / "tools" / "anvil"
# anvil's first default account (public test key): the devnet deployer, owner and aggregator.
ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ZERO_ADDRESS = "0x" + "00" * 20


class DevnetError(AvsError, RuntimeError):
    """The devnet could not be started or set up."""


def get_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Anvil:
    """An anvil process on a free port (or ``port``); ``stop()`` always reaps it."""

    def __init__(self, port: int | None = None, block_time: float | None = None) -> None:
        self.port = port or get_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(ANVIL), "--port", str(self.port), "--silent"]
        if block_time is not None:
            args += ["--block-time", str(block_time)]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.w3 = Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 30}))
        self._wait_ready()

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
        self.stop()
        raise DevnetError("anvil did not answer within 20 s")

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


def deploy_contracts(rpc_url: str, out: Path, settings: dict[str, str] | None = None) -> Deployment:
    """Run ``script/Deploy.s.sol`` (``settings``: its environment, e.g. THRESHOLD_BPS) and read its JSON."""
    build_contracts()
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"DEPLOYMENT_OUT": os.path.relpath(out, CONTRACTS), **(settings or {})}
    _run_forge(["script", "script/Deploy.s.sol", "--rpc-url", rpc_url, "--broadcast", "--slow"], env)
    return load_deployment(out)


def _run_forge(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(FORGE), *args], cwd=CONTRACTS, env={**os.environ, **env}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise DevnetError(f"forge {args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def restake(w3: Web3, deployment: Deployment, account: LocalAccount, amount: int) -> None:
    """Devnet only: give ``account`` gas and ``amount`` test tokens, make it an EigenLayer
    operator, and deposit the tokens into the AVS's strategy (what a restaker does on mainnet)."""
    w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])  # type: ignore[arg-type]
    funder = Web3AvsClient(w3, deployment, Account.from_key(ANVIL_KEY_0))
    operator = Web3AvsClient(w3, deployment, account)
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment.stake_token), abi=load_abi("TestToken"))
    core = w3.eth.contract(
        address=Web3.to_checksum_address(deployment.allocation_manager), abi=load_abi("LocalRestakingCore")
    )
    funder.transact(token.functions.mint(account.address, amount))
    # Become an operator before depositing: the local core credits deposits to operators from then on.
    operator.transact(core.functions.registerAsOperator(ZERO_ADDRESS, 0, ""))
    operator.transact(token.functions.approve(core.address, amount))
    operator.transact(core.functions.depositIntoStrategy(deployment.strategy, token.address, amount))
