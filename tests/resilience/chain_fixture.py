"""A real anvil with the deployed contracts and three registered fake operators (gRPC, real BLS),
plus a TCP proxy that can cut the RPC endpoint, for the chain-side resilience tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs.chain.client import Web3AvsClient
from avs.chain.deployment import Deployment
from avs.chain.registration import register_operator
from avs.crypto import bls
from avs.devnet import ANVIL_KEY_0, CONTRACTS, Anvil, deploy_contracts, restake
from avs.messages import Domain
from avs_aggregator.chain import Web3ChainWriter, Web3OperatorSetReader
from avs_aggregator.operators import GrpcOperatorCaller
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.store import Store
from avs_aggregator.txsender import SenderSettings, TransactionSender
from tests.resilience.grpc_operators import FakeOperatorServer

AGGREGATOR: LocalAccount = Account.from_key(ANVIL_KEY_0)
STAKES = (40 * 10**18, 30 * 10**18, 30 * 10**18)
DEFAULT_SENDER = SenderSettings()


@dataclass
class Chain:
    anvil: Anvil
    deployment: Deployment
    deployment_file: Path
    client: Web3AvsClient
    domain: Domain
    servers: list[FakeOperatorServer]
    accounts: list[LocalAccount]  # the operators' EigenLayer accounts, as servers

    def rpc(self, method: str, *params: object) -> object:
        response = self.anvil.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        return response.get("result")

    def certified_logs(self) -> list[int]:
        """Batch indices of every BatchCertified event on the canonical chain."""
        event = self.client.task_manager.events.BatchCertified
        return [int(log["args"]["batchIndex"]) for log in event.get_logs(from_block=0)]


@contextlib.contextmanager
def start_chain(
    workdir: Path, settings: dict[str, str] | None = None, kept_states: int | None = None
) -> Iterator[Chain]:
    """``settings``: Deploy.s.sol's environment (e.g. MAX_STAKE_AGE); ``kept_states``: anvil keeps
    only that many recent blocks' state (a full node, not an archive node)."""
    anvil = Anvil(kept_states=kept_states)
    servers: list[FakeOperatorServer] = []
    accounts: list[LocalAccount] = []
    try:
        out = CONTRACTS / "deployments" / f"pytest-resilience-{os.getpid()}-{anvil.port}.json"
        try:
            deployment = deploy_contracts(anvil.url, out, settings)
            shutil.copy(out, workdir / "deployment.json")
        finally:
            out.unlink(missing_ok=True)
        client = Web3AvsClient(anvil.w3, deployment, AGGREGATOR)
        domain = Domain(deployment.chain_id, deployment.task_manager)
        for i, stake in enumerate(STAKES):
            keys = bls.compute_key_pair(bls.SecretKey(7000 + i))
            server = FakeOperatorServer(keys, domain)
            servers.append(server)
            account: LocalAccount = Account.create()
            accounts.append(account)
            restake(anvil.w3, deployment, account, stake)
            register_operator(client, account, keys, server.socket, [0], allocate_wad=10**18)
        anvil.mine(2)
        yield Chain(anvil, deployment, workdir / "deployment.json", client, domain, servers, accounts)
    finally:
        for server in servers:
            server.stop()
        anvil.stop()


def make_pipeline(
    chain: Chain, db: Path, rpc_url: str | None = None, sender: SenderSettings = DEFAULT_SENDER
) -> tuple[Pipeline, GrpcOperatorCaller]:
    w3 = Web3(Web3.HTTPProvider(rpc_url or chain.anvil.url, request_kwargs={"timeout": 5}))
    client = Web3AvsClient(w3, chain.deployment, AGGREGATOR)
    caller = GrpcOperatorCaller(chain.domain, bytes(AGGREGATOR.key))
    settings = PipelineSettings(batch_max_size=4, batch_max_latency=0.2, workers=4, sign_timeout=5, verify_timeout=5)
    client.sender = TransactionSender(client, AGGREGATOR, sender)
    writer = Web3ChainWriter(client)
    pipeline = Pipeline(chain.domain, Store(f"sqlite:///{db}"), Web3OperatorSetReader(client), caller, writer, settings)
    return pipeline, caller


class PausableProxy:
    """A TCP proxy in front of anvil. ``pause()`` cuts every open connection and refuses new ones
    (the RPC endpoint is down) until ``resume()``; anvil keeps its state."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.paused = threading.Event()
        self.refused = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.paused.is_set():
                self.refused += 1
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._open |= {conn, upstream}
            threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src)
            self._drop(dst)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def pause(self) -> None:
        self.paused.set()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            self._drop(sock)

    def resume(self) -> None:
        self.paused.clear()

    def close(self) -> None:
        self._closed = True
        self.pause()
        self.listener.close()
