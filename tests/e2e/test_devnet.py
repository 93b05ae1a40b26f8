"""End to end, the way ``make demo`` runs it (``demo.create_devnet``): anvil, deployed contracts,
four operator processes, the aggregator and the challenger processes, a request certified on-chain,
a cheating primary rejected and slashed, an insured request certified wrong while the honest
operators are paused, challenged and escalated by the challenger process, its signer slashed and
its requester paid; and ``avs request --insure`` run as a user runs it. A tiny model keeps it fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hexbytes import HexBytes
from tokenizers import Tokenizer
from web3 import Web3

from avs import demo
from avs.chain.abi import load_abi
from avs.chain.faults import ChallengeStatus, CoverageStatus
from avs.chain.insurance import Web3CoverageReader
from avs.client import (
    certificate_from_json,
    certificate_to_json,
    check_on_chain,
    verify_certificate,
    verify_on_chain,
)
from avs.devnet import Devnet, ServiceProcess
from avs.inference.params import compute_prompt_hash
from avs.inference.profile import load_profile
from avs.messages import Domain
from avs.prompts import PromptEncoder
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from tests.inference.conftest import build_tiny_model


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    model = build_tiny_model(tmp_path_factory.mktemp("e2e-model") / "tiny")
    network = demo.create_devnet(tmp_path_factory.mktemp("devnet"), model)
    network.start()
    processes = list(network.processes)
    anvil = network.anvil
    assert anvil is not None and anvil.is_running()
    yield network
    network.stop()
    assert {p.name for p in processes} == {"alice", "bob", "carol", "dave", "aggregator", "challenger"}
    assert all(p.process.poll() is not None for p in processes) and network.anvil is None
    assert not anvil.is_running()


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


def test_a_certificate_is_checked_for_the_deployment_and_the_request_it_claims(
    devnet: Devnet, certificate: ag.Certificate
) -> None:
    """Offline checks alone accept any self-consistent certificate, one made with the forger's own
    keys on the forger's own task manager too: bound to the deployment and request you trust."""
    domain = Domain(devnet.deployment.chain_id, devnet.deployment.task_manager)
    request_hash = bytes(certificate.request_hash)
    assert verify_certificate(certificate, domain=domain, request_hash=request_hash).ok
    elsewhere = Domain(domain.chain_id + 1, "0x" + "11" * 20)
    assert any("is for chain" in p for p in verify_certificate(certificate, domain=elsewhere).problems)
    other = verify_certificate(certificate, domain=domain, request_hash=b"\x01" * 32)
    assert "the certificate is for another request" in other.problems

    def altered(change: Callable[[ag.Certificate], None]) -> tuple[str, ...]:
        copy = ag.Certificate()
        copy.CopyFrom(certificate)
        change(copy)
        return verify_certificate(copy, domain=domain).problems

    signer = bytes(certificate.signers[0].public_key.operator_id)
    assert "an operator is listed as signer and as non-signer" in altered(lambda c: c.non_signer_ids.append(signer))
    assert "the non-signers are not strictly ascending" in altered(lambda c: c.non_signer_ids.extend([signer, signer]))
    extra = ag.QuorumStake(quorum_number=7, signed_stake="1", total_stake="1")
    assert "the stake shares do not name exactly the batch's quorums" in altered(
        lambda c: c.quorum_stakes.append(extra)
    )


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
    registered = next(op.stake for op in devnet.operators if op.name == "dave")
    assert stake_before == registered  # the first request was served by an honest primary: no slash yet
    assert demo.run_attack(devnet, "dave")
    stake_after, pool_after = demo.get_stake_and_pool(devnet, "dave")
    assert stake_after < stake_before
    assert pool_after - pool_before == stake_before - stake_after  # the slashed stake went to the pool


def test_an_insured_requester_is_paid_from_the_slashed_stake(
    devnet: Devnet, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = demo.run_insured_fraud(devnet, "dave")
    assert demo.is_paid(outcome)
    out = capsys.readouterr().out
    assert "coverage bought" in out and "SIGSTOP" in out and "SIGCONT" in out
    assert "UPHELD" in out and "paid out of the slashed stake" in out
    assert all(p.process.poll() is None for p in devnet.processes)  # paused ones were resumed, none died

    # The wrong output was certified on-chain, by dave alone, at the 5% the requester asked for.
    assert devnet.anvil is not None
    w3 = devnet.anvil.w3
    certificate = outcome.certificate
    assert verify_certificate(certificate, min_share_bps=demo.INSURED_THRESHOLD_BPS).ok
    ids = {op.name: bytes(op.key_pair.operator_id) for op in devnet.operators}
    assert [bytes(s.public_key.operator_id) for s in certificate.signers] == [ids["dave"]]
    assert {bytes(i) for i in certificate.non_signer_ids} == {ids["alice"], ids["bob"], ids["carol"]}
    (quorum,) = certificate.quorum_stakes
    assert int(quorum.signed_stake) == outcome.before.cheater_stake
    task_manager = w3.eth.contract(
        address=Web3.to_checksum_address(devnet.deployment.task_manager), abi=load_abi("InferenceTaskManager")
    )
    assert verify_on_chain(certificate, task_manager)

    # The challenger process opened the challenge with its own key and resolved it: upheld.
    challenge = outcome.challenge
    assert challenge.status == ChallengeStatus.UPHELD
    assert challenge.challenger == challenge.resolved_by == devnet.challenger.address
    assert challenge.batch_index == certificate.batch_header.batch_index
    assert challenge.opened_block > certificate.certified_block and challenge.closed_block > challenge.opened_block
    assert challenge.bond == devnet.get_challenge_bond()
    # what `avs verify --rpc-url` and the gateway's --rpc-url check read now: certified, yet proven fraud
    checked = check_on_chain(certificate, w3, devnet.deployment, demo.INSURED_THRESHOLD_BPS)
    assert checked.certified and checked.challenge == "upheld" and not checked.ok
    assert [p for p in checked.problems if "upheld" in p]

    # Slashing: FRAUD_WAD (half) of dave's stake at the resolution; the challenger's reward (10%) and
    # its bond back; the rest into the pool.
    before, after = outcome.before, outcome.after_resolution
    slashed = before.cheater_stake - after.cheater_stake
    assert after.cheater_stake == before.cheater_stake // 2 == 40 * 10**18  # 100, 80 after the attack, 40
    assert challenge.slashed_amount == slashed  # valued in the stake token: one token a share locally
    assert challenge.challenger_reward == slashed // 10 == 4 * 10**18  # CHALLENGER_REWARD_BPS 1000
    assert before.challenger == challenge.bond  # the bond, locked when it challenged, back now
    assert after.challenger - before.challenger == challenge.challenger_reward
    assert after.pool - before.pool == slashed - challenge.challenger_reward

    # The payout: the coverage, once, from the pool to the requester.
    assert outcome.paid == outcome.purchase.amount == demo.COVERAGE
    assert outcome.after_claim.requester - after.requester == demo.COVERAGE
    assert after.pool - outcome.after_claim.pool == demo.COVERAGE
    reader = Web3CoverageReader(w3, devnet.deployment.insurance_pool or "")
    assert reader.get_coverage(bytes(certificate.request_hash)).status == CoverageStatus.CLAIMED
    assert outcome.coverage_status == CoverageStatus.CLAIMED
    assert outcome.purchase.premium == demo.COVERAGE // 100


def _cli(devnet: Devnet, tmp_path: Path, secret: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert devnet.anvil is not None
    env = {**os.environ, "REQUESTER_SECRET": secret, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "avs.cli", "request", "the quick brown fox", "--model", devnet.model_dir.name]
    command += ["--aggregator", devnet.aggregator_url, "--max-tokens", "4", "--requester-key-env", "REQUESTER_SECRET"]
    command += ["--deployment", str(devnet.deployment_file), "--rpc-url", devnet.anvil.url, *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )


def test_avs_request_insure_buys_coverage_and_is_certified(devnet: Devnet, tmp_path: Path) -> None:
    requester = demo.fund(devnet, 10**18)
    secret = "0x" + bytes(requester.key).hex()
    tokenizer = str(devnet.model_dir)  # the certified tokens are decoded here, not taken from the aggregator
    saved = tmp_path / "requests"
    out = _cli(
        devnet,
        tmp_path,
        secret,
        *("--insure", "2.5", "--request-dir", str(saved)),
        *("--out", str(tmp_path / "cert.json"), "--tokenizer", tokenizer),
    )
    assert out.returncode == 0, out.stderr
    assert secret[2:] not in out.stdout + out.stderr
    assert "coverage bought against quorum 0: premium 0.025 tokens" in out.stderr
    assert "CERTIFIED" in out.stderr and "offline check: OK" in out.stderr
    assert "insured: a fraud proven in this batch pays the coverage" in out.stderr  # its batch, checked on chain
    certificate = certificate_from_json((tmp_path / "cert.json").read_text())
    assert certificate.request.requester == requester.address
    # --tokenizer, a prepared model folder, pinned the model and the prompt hash computed by the CLI
    prompt_ids = PromptEncoder(devnet.model_dir).encode_chat([{"role": "user", "content": "the quick brown fox"}])
    assert bytes(certificate.request.model_id) == load_profile(devnet.model_dir).compute_hash()
    assert bytes(certificate.request.prompt_hash) == compute_prompt_hash(prompt_ids)
    # Saved before the coverage was paid for: `--resume` submits that request again if this stops.
    resume_file = saved / f"0x{bytes(certificate.request_hash).hex()}.json"
    assert f"saved the request to {resume_file}" in out.stderr and resume_file.exists()
    decoded = Tokenizer.from_file(str(devnet.model_dir / "tokenizer.json")).decode(list(certificate.output_token_ids))
    assert out.stdout.startswith(decoded) and "not the certified tokens' decoding" not in out.stderr
    assert devnet.anvil is not None
    coverage = Web3CoverageReader(devnet.anvil.w3, devnet.deployment.insurance_pool or "").get_coverage(
        bytes(certificate.request_hash)
    )
    assert coverage.status == CoverageStatus.ACTIVE and coverage.beneficiary == requester.address
    assert coverage.amount == 25 * 10**17
    verify = [sys.executable, "-m", "avs.cli", "verify", "--deployment", str(devnet.deployment_file)]
    verify += ["--rpc-url", devnet.anvil.url, "--min-share-bps", "6667"]
    checked = subprocess.run([*verify, str(tmp_path / "cert.json")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    stated = {str(q.quorum_number): int(q.signed_stake) / int(q.total_stake) for q in certificate.quorum_stakes}
    verified = json.loads(checked.stdout)
    assert verified["on_chain_stake_shares"] == stated  # counted on chain, as stated
    assert (verified["challenge"], verified["final"]) == ("none", False)  # within its challenge window
    certificate.quorum_stakes[0].total_stake = str(int(certificate.quorum_stakes[0].total_stake) - 1)
    (tmp_path / "inflated.json").write_text(certificate_to_json(certificate))
    inflated = subprocess.run([*verify, str(tmp_path / "inflated.json")], capture_output=True, text=True)
    assert inflated.returncode == 1 and "the chain has" in inflated.stdout, inflated.stdout + inflated.stderr
    command = [sys.executable, "-m", "avs.cli", "claim", "0x" + bytes(certificate.request_hash).hex()]
    command += ["--requester-key-env", "REQUESTER_SECRET", "--deployment", str(devnet.deployment_file)]
    claim = subprocess.run(
        [*command, "--rpc-url", devnet.anvil.url],
        capture_output=True,
        text=True,
        env={**os.environ, "REQUESTER_SECRET": secret},
        stdin=subprocess.DEVNULL,
    )
    assert claim.returncode == 2 and "nothing is claimable" in claim.stderr  # no fraud proven on it

    poor = demo.fund(devnet, 0)
    refused = _cli(devnet, tmp_path, "0x" + bytes(poor.key).hex(), "--insure", "1")
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("avs: error: the premium") and "cannot be approved" in last, refused.stderr
    assert "Traceback" not in refused.stderr


def test_make_demo_refuses_without_a_model(tmp_path: Path) -> None:
    assert demo.main(["--model", str(tmp_path / "none")]) == 2


def test_a_paused_service_is_resumed_and_stopped(tmp_path: Path) -> None:
    """``stop`` sends SIGCONT first: a paused (SIGSTOPped) process handles its SIGTERM at once."""
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(3)); "
        'print(\'{"event": "ready"}\', flush=True); time.sleep(60)'
    )
    process = ServiceProcess("sleeper", [sys.executable, "-c", code], dict(os.environ), tmp_path)
    process.wait_ready(timeout=60)
    process.pause()
    started = time.monotonic()
    process.stop(timeout=10)
    assert process.process.returncode == 3 and time.monotonic() - started < 5
