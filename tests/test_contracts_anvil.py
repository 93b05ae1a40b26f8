"""Integration: deploy the contracts on a real anvil, register operators with keys and proofs of
possession made by ``avs.crypto``, and get a batch signed in Python certified on-chain; tampered
certificates are rejected with the contracts' custom errors."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import (
    CheckSignaturesIndices,
    ContractRevertError,
    NonSignerStakesAndSignature,
    Web3AvsClient,
    encode_registration_data,
)
from avs.chain.deployment import Deployment, load_deployment
from avs.crypto import bls
from avs.crypto.curve import G1Point
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import BatchHeader
from avs.types import Address

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"
FORGE = CONTRACTS / "tools" / "forge"
ANVIL = CONTRACTS / "tools" / "anvil"
ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
STAKE = 10 * 10**18
QUORUMS = b"\x00"


@dataclass(frozen=True)
class Operator:
    account: LocalAccount
    keys: bls.KeyPair


@dataclass(frozen=True)
class Devnet:
    w3: Web3
    deployment: Deployment
    client: Web3AvsClient
    operators: tuple[Operator, ...]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_rpc(w3: Web3, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("anvil exited early")
        try:
            if w3.eth.block_number >= 0:
                return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError("anvil did not start")


@pytest.fixture(scope="module")
def anvil() -> Iterator[str]:
    if not (CONTRACTS / "out" / "InferenceTaskManager.sol").is_dir():
        subprocess.run([str(FORGE), "build"], cwd=CONTRACTS, check=True, capture_output=True)
    port = _free_port()
    proc = subprocess.Popen([str(ANVIL), "--port", str(port), "--silent"], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_rpc(Web3(Web3.HTTPProvider(url)), proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _deploy(url: str, out: Path) -> Deployment:
    env = {**os.environ, "DEPLOYMENT_OUT": str(out.relative_to(CONTRACTS))}
    subprocess.run(
        [str(FORGE), "script", "script/Deploy.s.sol", "--rpc-url", url, "--broadcast", "--slow"],
        cwd=CONTRACTS,
        env=env,
        check=True,
        capture_output=True,
    )
    return load_deployment(out)


def _register(client: Web3AvsClient, w3: Web3, deployment: Deployment, secret: int) -> Operator:
    account: LocalAccount = Account.create()
    w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])  # type: ignore[arg-type]
    keys = bls.compute_key_pair(bls.SecretKey(secret))
    core = w3.eth.contract(
        address=Web3.to_checksum_address(deployment.allocation_manager), abi=load_abi("LocalRestakingCore")
    )
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment.stake_token), abi=load_abi("TestToken"))
    strategy, registry = deployment.strategy, deployment.operator_registry
    client.transact(token.functions.mint(account.address, STAKE), account)
    client.transact(token.functions.approve(core.address, STAKE), account)
    client.transact(core.functions.registerAsOperator("0x" + "00" * 20, 0, ""), account)
    client.transact(core.functions.depositIntoStrategy(strategy, token.address, STAKE), account)
    allocation = ((registry, 0), [strategy], [10**18])
    client.transact(core.functions.modifyAllocations(account.address, [allocation]), account)
    pop = bls.sign_pubkey_registration(keys.secret, account.address, registry, deployment.chain_id)
    data = encode_registration_data("grpc://127.0.0.1:50051", pop, keys.pubkey_g1, keys.pubkey_g2)
    client.transact(core.functions.registerForOperatorSets(account.address, (registry, [0], data)), account)
    return Operator(account, keys)


@pytest.fixture(scope="module")
def devnet(anvil: str) -> Iterator[Devnet]:
    out = CONTRACTS / "deployments" / f"pytest-{os.getpid()}.json"
    try:
        deployment = _deploy(anvil, out)
    finally:
        out.unlink(missing_ok=True)
    w3 = Web3(Web3.HTTPProvider(anvil))
    client = Web3AvsClient(w3, deployment, Account.from_key(ANVIL_KEY_0))
    operators = tuple(_register(client, w3, deployment, secret) for secret in (11, 22, 33, 44))
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    yield Devnet(w3, deployment, client, operators)


def _header(devnet: Devnet, batch_index: int) -> BatchHeader:
    leaves = [BatchLeaf(Web3.keccak(text=f"req{i}"), Web3.keccak(text=f"out{i}")) for i in range(64)]
    root = compute_merkle_tree(leaves).root
    return BatchHeader(batch_index, root, devnet.w3.eth.block_number - 1, QUORUMS)


def _certificate(devnet: Devnet, header: BatchHeader, non_signers: tuple[Operator, ...]) -> NonSignerStakesAndSignature:
    digest = devnet.client.get_batch_digest(header)
    signers = [op for op in devnet.operators if op not in non_signers]
    ordered = sorted(non_signers, key=lambda op: op.keys.operator_id)
    ids = [op.keys.operator_id for op in ordered]
    indices: CheckSignaturesIndices = devnet.client.get_check_signatures_indices(header.reference_block, QUORUMS, ids)
    return NonSignerStakesAndSignature(
        non_signer_pubkeys=tuple(op.keys.pubkey_g1 for op in ordered),
        quorum_apks=(devnet.client.get_apk(0),),
        apk_g2=bls.aggregate_g2([op.keys.pubkey_g2 for op in signers]),
        sigma=bls.aggregate_g1([bls.sign(op.keys.secret, digest) for op in signers]),
        indices=indices,
    )


def test_registered_operator_ids_match_python(devnet: Devnet) -> None:
    for op in devnet.operators:
        assert devnet.client.get_operator_id(Address(op.account.address)) == op.keys.operator_id


def test_batch_digest_matches_python(devnet: Devnet) -> None:
    from avs.messages import compute_digest

    header = _header(devnet, 99)
    assert devnet.client.get_batch_digest(header) == compute_digest(devnet.client.get_domain(), header)


def test_certify_batch_all_signers_accepted(devnet: Devnet) -> None:
    header = _header(devnet, 1)
    devnet.client.certify_batch(header, _certificate(devnet, header, ()))
    assert devnet.client.get_certified_block(1) > 0


def test_certify_batch_with_non_signer_accepted(devnet: Devnet) -> None:
    header = _header(devnet, 2)
    devnet.client.certify_batch(header, _certificate(devnet, header, (devnet.operators[2],)))
    assert devnet.client.get_certified_block(2) > 0


def test_certify_batch_tampered_root_rejected(devnet: Devnet) -> None:
    header = _header(devnet, 3)
    cert = _certificate(devnet, header, ())
    tampered = BatchHeader(3, Web3.keccak(text="other root"), header.reference_block, QUORUMS)
    with pytest.raises(ContractRevertError) as info:
        devnet.client.certify_batch(tampered, cert)
    assert info.value.name == "InvalidBLSSignature"


def test_certify_batch_tampered_signature_rejected(devnet: Devnet) -> None:
    header = _header(devnet, 4)
    cert = _certificate(devnet, header, ())
    bad = NonSignerStakesAndSignature(
        cert.non_signer_pubkeys, cert.quorum_apks, cert.apk_g2, G1Point(1, 2), cert.indices
    )
    with pytest.raises(ContractRevertError) as info:
        devnet.client.certify_batch(header, bad)
    assert info.value.name == "InvalidBLSSignature"


def test_certify_batch_replay_rejected(devnet: Devnet) -> None:
    header = _header(devnet, 5)
    devnet.client.certify_batch(header, _certificate(devnet, header, ()))
    header2 = _header(devnet, 5)
    with pytest.raises(ContractRevertError) as info:
        devnet.client.certify_batch(header2, _certificate(devnet, header2, ()))
    assert info.value.name == "BatchAlreadyCertified"
    assert info.value.args_ == (5,)
