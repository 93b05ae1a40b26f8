"""End to end, the way ``make demo`` runs it: anvil, deployed contracts, four operator processes,
the aggregator process, a request certified on-chain; a tiny model keeps it fast."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hexbytes import HexBytes
from web3 import Web3

from avs import demo
from avs.chain.abi import load_abi
from avs.client import verify_certificate, verify_on_chain
from avs.devnet import Devnet
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from tests.inference.conftest import build_tiny_model


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    model = build_tiny_model(tmp_path_factory.mktemp("e2e-model") / "tiny")
    network = Devnet(tmp_path_factory.mktemp("devnet"), model, cheater="dave")
    network.start()
    yield network
    network.stop()
    assert all(p.process.poll() is not None for p in network.processes) and network.anvil is None


@pytest.fixture(scope="module")
def certificate(devnet: Devnet) -> ag.Certificate:
    return demo.run_request(devnet, "the quick brown fox", max_tokens=8)


def test_the_request_is_certified_by_the_stake_and_verifies_offline(
    devnet: Devnet, certificate: ag.Certificate
) -> None:
    check = verify_certificate(certificate, min_share_bps=6667)
    assert check.ok, check.problems
    assert 0 < len(certificate.output_token_ids) <= 8
    registered = {bytes(op.key_pair.operator_id) for op in devnet.operators}
    signers = {bytes(s.public_key.operator_id) for s in certificate.signers}
    assert signers <= registered and len(signers) >= 3
    stakes: dict[bytes, int] = {bytes(op.key_pair.operator_id): op.stake for op in devnet.operators}
    (quorum,) = certificate.quorum_stakes
    assert int(quorum.total_stake) == sum(stakes.values())
    assert int(quorum.signed_stake) == sum(stakes[s] for s in signers)


def test_the_certificate_is_anchored_on_chain(devnet: Devnet, certificate: ag.Certificate) -> None:
    assert devnet.anvil is not None
    w3 = devnet.anvil.w3
    task_manager = w3.eth.contract(
        address=Web3.to_checksum_address(devnet.deployment.task_manager), abi=load_abi("InferenceTaskManager")
    )
    assert verify_on_chain(certificate, task_manager)
    receipt = w3.eth.get_transaction_receipt(HexBytes(certificate.tx_hash))
    assert receipt["status"] == 1 and receipt["blockNumber"] == certificate.certified_block
    forged = ag.Certificate()
    forged.CopyFrom(certificate)
    forged.output_hash = Web3.keccak(text="another output")
    assert not verify_on_chain(forged, task_manager)
    assert not verify_certificate(forged).ok


def test_the_demo_shows_and_checks_the_certificate(
    devnet: Devnet, certificate: ag.Certificate, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.show_certificate(devnet, certificate)
    out = capsys.readouterr().out
    assert "offline" in out and "OK" in out and "verifyLeaf): OK" in out
    assert (devnet.workdir / "certificate.json").is_file()


def test_a_cheating_primary_is_rejected_slashed_and_replaced(devnet: Devnet) -> None:
    stake_before, pool_before = demo.get_stake_and_pool(devnet, "dave")
    assert demo.run_attack(devnet, "dave")
    stake_after, pool_after = demo.get_stake_and_pool(devnet, "dave")
    assert stake_after < stake_before
    assert pool_after - pool_before == stake_before - stake_after  # the slashed stake went to the pool


def test_make_demo_refuses_without_a_model(tmp_path: Path) -> None:
    assert demo.main(["--model", str(tmp_path / "none")]) == 2
