"""Integration: anvil + the deployed contracts + 3 in-process operators (tiny model, real gRPC on
loopback) + the aggregator daemon. Requests are certified on-chain, certificates verify offline
and with ``verifyLeaf``; a restart in the middle of the pipeline loses nothing and certifies once."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractFunction

from avs import keystore
from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient
from avs.chain.deployment import Deployment
from avs.chain.faults import ChallengeStatus, Web3FaultClient
from avs.chain.registration import register_operator
from avs.client import AggregatorClient, RequestFailedError, get_state_name, verify_certificate, verify_on_chain
from avs.crypto import bls
from avs.crypto.curve import G1Point
from avs.devnet import ANVIL_KEY_0, CONTRACTS, Anvil, deploy_contracts, get_free_port, restake
from avs.inference.engine import StreamEvent, load_engine
from avs.inference.params import SamplingParams
from avs.merkle import BatchLeaf
from avs.messages import (
    Attestation,
    BatchHeader,
    Domain,
    InferenceOutput,
    InferenceRequest,
    Verdict,
    compute_digest,
    compute_output_hash,
    compute_request_hash,
    compute_stop_sequences_hash,
)
from avs.prompts import PromptEncoder
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.convert import RequestEnvelope
from avs.types import OutputHash
from avs_aggregator.app import AggregatorApp
from avs_aggregator.chain import Web3ChainWriter, Web3OperatorSetReader
from avs_aggregator.challenger.app import ChallengerApp, ChallengerConfig, ChallengerSecrets
from avs_aggregator.challenger.chain import AggregatorLeafSource, OperatorLeafChecker, Web3BatchFeed, Web3Escalator
from avs_aggregator.challenger.core import Challenger
from avs_aggregator.challenger.resolution import Resolver
from avs_aggregator.challenger.store import ChallengerStore, ChallengeState
from avs_aggregator.config import AggregatorSecrets, parse_config
from avs_aggregator.operators import GrpcOperatorCaller
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.ports import GenerateReply, OperatorInfo, VerifyReply
from avs_aggregator.protocol import select_primary
from avs_aggregator.server import build_status
from avs_aggregator.store import BatchState, Store
from avs_aggregator.txsender import SenderSettings, SentTransaction, TransactionSender
from avs_operator.app import OperatorApp
from avs_operator.config import OperatorSecrets
from avs_operator.config import parse_config as parse_operator_config
from tests.inference.conftest import build_tiny_model

PASSWORD = "pw"
STAKES = (40 * 10**18, 30 * 10**18, 30 * 10**18)
REQUESTER = "0x" + "ab" * 20
AGGREGATOR = Account.from_key(ANVIL_KEY_0)


@dataclass
class Devnet:
    anvil: Anvil
    deployment: Deployment
    client: Web3AvsClient
    operators: list[OperatorApp]
    model_dir: Path
    model_id: bytes
    workdir: Path


def start_operator(workdir: Path, model: Path, cache: Path, deployment: Deployment) -> OperatorApp:
    workdir.mkdir(parents=True)
    keystore.save_bls_keystore(workdir / "bls.json", bls.compute_key_pair(bls.generate_secret_key()), PASSWORD, 1 << 12)
    config = parse_operator_config(
        {
            "chain": {"chain_id": deployment.chain_id, "task_manager": deployment.task_manager},
            "keys": {"bls_keystore": str(workdir / "bls.json")},
            "models": [{"name": "tiny", "path": str(model)}],
            "auth": {"authorised_aggregators": [AGGREGATOR.address]},
            "grpc": {"listen": "127.0.0.1:0"},
            "node_api": {"listen": "127.0.0.1:0"},
            "metrics": {"listen": "127.0.0.1:0"},
            "slashing_protection_url": f"sqlite:///{workdir / 'protection.sqlite'}",
            "threads": 1,
        }
    )
    app = OperatorApp(
        config,
        OperatorSecrets(bls_key_password=PASSWORD),  # type: ignore[arg-type]
        engine_loader=lambda path, config: load_engine(
            path, threads=config.threads, device=config.device, cache_dir=cache
        ),
        create_slashing_protection=True,  # a fresh operator
    )
    app.start()
    return app


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    workdir = tmp_path_factory.mktemp("aggregator-devnet")
    model_dir = build_tiny_model(workdir / "model")
    anvil = Anvil()
    operators: list[OperatorApp] = []
    try:
        # forge may only write inside contracts/: deploy there, keep a copy in the temp folder
        out = CONTRACTS / "deployments" / f"pytest-aggregator-{os.getpid()}.json"
        try:
            deployment = deploy_contracts(anvil.url, out)
            shutil.copy(out, workdir / "deployment.json")
        finally:
            out.unlink(missing_ok=True)
        client = Web3AvsClient(anvil.w3, deployment, AGGREGATOR)
        for i, stake in enumerate(STAKES):
            app = start_operator(workdir / f"op{i}", model_dir, workdir / "cache", deployment)
            operators.append(app)
            account: LocalAccount = Account.create()
            restake(anvil.w3, deployment, account, stake)
            register_operator(
                client, account, app.core.key_pair, f"grpc://127.0.0.1:{app.ports.grpc}", [0], allocate_wad=10**18
            )
        anvil.mine(2)
        model_id = next(iter(operators[0].core.served_models()))
        yield Devnet(anvil, deployment, client, operators, model_dir, model_id, workdir)
    finally:
        for app in operators:
            app.stop(1)
        anvil.stop()


def start_aggregator(devnet: Devnet, db: Path | str, start: bool = True, **overrides: object) -> AggregatorApp:
    """An aggregator on ``db`` (a SQLite file, or any database URL), started unless ``start`` is
    False; ``overrides``: config keys."""
    key_file = devnet.workdir / "aggregator.key.json"
    if not key_file.exists():
        keystore.save_ecdsa_keystore(key_file, bytes.fromhex(ANVIL_KEY_0[2:]), PASSWORD, 1 << 12)
    config = parse_config(
        {
            "chain": {"rpc_url": devnet.anvil.url, "deployment_file": str(devnet.workdir / "deployment.json")},
            "keys": {"ecdsa_keystore": str(key_file)},
            "models": [
                {"name": "tiny", "model_id": "0x" + devnet.model_id.hex(), "tokenizer_path": str(devnet.model_dir)}
            ],
            "database_url": db if isinstance(db, str) else f"sqlite:///{db}",
            "grpc_listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "health_listen": "127.0.0.1:0",
            "batch": {"max_size": 4, "max_latency_seconds": 0.3},
            "workers": 4,
            **overrides,
        }
    )
    app = AggregatorApp(config, AggregatorSecrets(ecdsa_key_password=PASSWORD))  # type: ignore[arg-type]
    if start:
        app.start()
    return app


def test_a_stop_requested_while_starting_gives_up_and_a_stop_releases_the_ports(
    devnet: Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while starting ran stop() inside start(), which went on to serve after "aggregator
    stopped" (with leader election, it took the lease and never released it); the signal handler
    now only requests the stop. And stop() left the metrics and health ports bound, answering
    nothing: probes hung and a restart on the same port failed."""
    import avs_aggregator.app as app_module

    app = start_aggregator(devnet, tmp_path / "agg.sqlite", start=False)
    servicer = app_module.AggregatorServicer  # type: ignore[attr-defined]

    def servicer_then_sigterm(*args: object, **kwargs: object) -> object:
        app.request_stop()  # what the SIGTERM handler does, arriving mid-start
        return servicer(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(app_module, "AggregatorServicer", servicer_then_sigterm)
    assert app.start() is False
    app.wait()  # returns: the stop was requested
    app.stop(1)
    assert (app.ports.grpc, app.ports.metrics, app.ports.health) == (0, 0, 0) and app.runner is None
    monkeypatch.undo()

    app = start_aggregator(devnet, tmp_path / "agg.sqlite")
    ports = (app.ports.metrics, app.ports.health)
    app.stop(1)
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)


def submit(client: AggregatorClient, text: str, nonce: int, **kwargs: object) -> bytes:
    messages = [{"role": "user", "content": text}]
    kwargs.setdefault("max_tokens", 6)
    return client.submit(messages, model="tiny", requester=REQUESTER, nonce=nonce, **kwargs)  # type: ignore[arg-type]


def test_requests_are_certified_on_chain_and_verify_offline(devnet: Devnet, tmp_path: Path) -> None:
    app = start_aggregator(devnet, tmp_path / "agg.sqlite")
    try:
        with AggregatorClient(f"127.0.0.1:{app.ports.grpc}") as client:
            assert client.list_models() == {"tiny": devnet.model_id}
            hashes = [submit(client, f"hello world {i}", nonce=i) for i in range(2)]
            seen: list[str] = []
            statuses = [
                client.wait(h, timeout=90, on_progress=lambda s: seen.append(get_state_name(s.state))) for h in hashes
            ]
        assert seen[-1] == "CERTIFIED"
        encoder = PromptEncoder(devnet.model_dir)
        for i, status in enumerate(statuses):
            expected_tokens = len(encoder.encode_chat([{"role": "user", "content": f"hello world {i}"}]))
            assert status.prompt_tokens == expected_tokens > 5  # counted at intake, templated
            certificate = status.certificate
            check = verify_certificate(certificate, min_share_bps=6667)
            assert check.ok, check.problems
            assert check.stake_shares == {0: 1.0}
            assert verify_on_chain(certificate, devnet.client.task_manager)
            assert devnet.client.get_certified_block(certificate.batch_header.batch_index) > 0
            assert len(certificate.signers) == 3 and certificate.tx_hash
        # a tampered certificate fails offline
        tampered = ag.Certificate()
        tampered.CopyFrom(statuses[0].certificate)
        tampered.output_token_ids[0] ^= 1
        assert not verify_certificate(tampered).ok
        with urllib.request.urlopen(f"http://127.0.0.1:{app.ports.health}/health", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "ok", "role": "leader"}  # SQLite: no election
        with urllib.request.urlopen(f"http://127.0.0.1:{app.ports.metrics}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "avs_aggregator_batches_certified_total" in text and 'state="certified"' in text
        assert "avs_aggregator_batch_gas_used_count" in text
        assert "avs_aggregator_operators_responding 3.0" in text  # every operator answered
    finally:
        app.stop(1)


def test_bad_requests_get_clear_status_codes(devnet: Devnet, tmp_path: Path) -> None:
    app = start_aggregator(devnet, tmp_path / "agg.sqlite")
    try:
        with AggregatorClient(f"127.0.0.1:{app.ports.grpc}") as client:
            cases: list[tuple[Callable[[], object], str]] = [
                (
                    lambda: client.submit([{"role": "user", "content": "x"}], model="nope", requester=REQUESTER),
                    "NOT_FOUND",
                ),
                (lambda: submit(client, "x", 1, threshold_bps=100), "INVALID_ARGUMENT"),
                (lambda: submit(client, "x", 1, quorums=b"\x05"), "INVALID_ARGUMENT"),
                (lambda: submit(client, "x", 1, max_tokens=100_000), "INVALID_ARGUMENT"),
                (
                    lambda: client.submit([{"role": "robot", "content": "x"}], model="tiny", requester=REQUESTER),
                    "INVALID_ARGUMENT",
                ),
                (lambda: client.get_status(b"\x01" * 32), "NOT_FOUND"),
            ]
            for call, code in cases:
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code().name == code, info.value.details()
    finally:
        app.stop(1)


def test_restart_mid_pipeline_resumes_and_certifies_once(devnet: Devnet, tmp_path: Path) -> None:
    db = tmp_path / "agg.sqlite"
    app = start_aggregator(devnet, db)
    with AggregatorClient(f"127.0.0.1:{app.ports.grpc}") as client:
        request_hash = submit(client, "the quick brown fox", nonce=100)
        deadline = time.monotonic() + 60
        while client.get_status(request_hash).state < ag.REQUEST_STATE_VERIFYING and time.monotonic() < deadline:
            time.sleep(0.02)
    app.stop(1)  # killed while verifying (or later): the state is in the database
    second = start_aggregator(devnet, db)
    try:
        with AggregatorClient(f"127.0.0.1:{second.ports.grpc}") as client:
            status = client.wait(request_hash, timeout=90)
        assert verify_certificate(status.certificate).ok
        certified = second.store.list_batches([BatchState.CERTIFIED])
        assert [b.batch_index for b in certified] == [status.batch_index]
        event = devnet.client.task_manager.events.BatchCertified
        logs = event.get_logs(from_block=0, argument_filters={"batchIndex": status.batch_index})
        assert len(logs) >= 1
    finally:
        second.stop(1)


def test_unanswerable_request_fails_clearly(devnet: Devnet, tmp_path: Path) -> None:
    app = start_aggregator(devnet, tmp_path / "agg.sqlite")
    try:
        with AggregatorClient(f"127.0.0.1:{app.ports.grpc}") as client:
            # a wrong prompt hash: every operator refuses it before compute
            request_hash = submit(client, "hi", nonce=7, prompt_hash=Web3.keccak(text="not the prompt"))
            with pytest.raises(RequestFailedError):
                client.wait(request_hash, timeout=60)
            assert client.get_status(request_hash).prompt_tokens == 0  # not the prompt we can count
            chat = [{"role": "user", "content": "hi"}]
            own_hash = PromptEncoder(devnet.model_dir).compute_prompt_hash(chat)
            counted = submit(client, "hi", nonce=8, prompt_hash=own_hash)  # the requester hashed it right
            assert client.get_status(counted).prompt_tokens == len(PromptEncoder(devnet.model_dir).encode_chat(chat))
    finally:
        app.stop(1)


def test_cheating_primary_is_rejected_slashed_and_the_request_retried(
    devnet: Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Operator 1 (30% of the stake) edits its output as primary: the other 70% reject it, the
    aggregator proves the rejected output on-chain (the cheater is slashed) and retries."""
    cheater = devnet.operators[1]
    engine = cheater.engines.get(devnet.model_id)
    honest_stream = engine.stream

    def cheating_stream(prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[StreamEvent]:
        events = list(honest_stream(prompt_ids, params))
        last = events[-1]
        yield from events[:-1]
        yield dataclasses.replace(last, token_id=(last.token_id + 1) % engine.vocab_size)

    monkeypatch.setattr(engine, "stream", cheating_stream)
    # Find a nonce whose first primary is the cheater (no block is mined in between).
    reader = Web3OperatorSetReader(devnet.client)
    operator_set = reader.get_operator_set(reader.get_reference_block()[0])
    domain = Domain(devnet.deployment.chain_id, devnet.deployment.task_manager)
    prompt_hash = PromptEncoder(devnet.model_dir).compute_prompt_hash([{"role": "user", "content": "cheat"}])
    for nonce in range(1000, 1200):
        request = InferenceRequest(
            devnet.model_id, prompt_hash, 0, 0, 1_000_000, 0, 6, compute_stop_sequences_hash([]), REQUESTER, nonce
        )
        request_hash = compute_request_hash(domain, request)
        if select_primary(operator_set, b"\x00", request_hash, 0).operator_id == cheater.core.operator_id:
            break
    stake_before = devnet.client.registry.functions.getCurrentStake(cheater.core.operator_id, 0).call()
    app = start_aggregator(devnet, tmp_path / "agg.sqlite")
    try:
        with AggregatorClient(f"127.0.0.1:{app.ports.grpc}") as client:
            assert submit(client, "cheat", nonce=nonce) == request_hash
            status = client.wait(request_hash, timeout=90)
        assert status.attempt == 1 and status.primary_operator_id != cheater.core.operator_id
        assert verify_certificate(status.certificate).ok
        [rejection] = app.store.list_rejections(request_hash)
        assert rejection.primary_id == cheater.core.operator_id
        assert rejection.error is None and rejection.tx_hash and rejection.state == "PROVEN"
        stake_after = devnet.client.registry.functions.getCurrentStake(cheater.core.operator_id, 0).call()
        assert stake_after < stake_before
    finally:
        app.stop(1)


def test_cli_request_and_verify(devnet: Devnet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avs.cli import main

    app = start_aggregator(devnet, tmp_path / "agg.sqlite")
    try:
        out = tmp_path / "certificate.json"
        args = ["request", "hello from the cli", "--aggregator", f"127.0.0.1:{app.ports.grpc}", "--model", "tiny"]
        args += ["--requester", REQUESTER, "--max-tokens", "4", "--out", str(out)]
        deployment = str(devnet.workdir / "deployment.json")
        # stdout only once verified: certified on the deployment's chain and decoded here
        assert main(args) == 1
        printed = capsys.readouterr()
        assert "CERTIFIED" in printed.err and printed.out == "" and out.exists()
        assert "no --deployment" in printed.err and "no --tokenizer" in printed.err
        verified = ["--deployment", deployment, "--rpc-url", devnet.anvil.url, "--tokenizer", str(devnet.model_dir)]
        assert main([*args, *verified]) == 0
        printed = capsys.readouterr()
        assert printed.out.strip() and "on-chain check at" in printed.err and "NOT verified" not in printed.err
        on_chain = ["--deployment", deployment, "--rpc-url", devnet.anvil.url, "--min-share-bps", "6667"]
        assert main(["verify", str(out), *on_chain]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["offline_ok"] and result["on_chain_ok"] and result["deployment_checked"]
        assert main(["verify", str(out), "--rpc-url", devnet.anvil.url]) == 2  # verifyLeaf on whose contract?
        assert "needs --deployment" in capsys.readouterr().err
        elsewhere = json.loads(out.read_text())
        elsewhere["task_manager"] = "0x" + "11" * 20  # a certificate of another deployment
        out.write_text(json.dumps(elsewhere))
        assert main(["verify", str(out), "--deployment", deployment]) == 1
        assert any("for chain" in p for p in json.loads(capsys.readouterr().out)["problems"])
        tampered = json.loads(out.read_text())
        tampered["output_hash"] = tampered["request_hash"]
        out.write_text(json.dumps(tampered))
        assert main(["verify", str(out)]) == 1
    finally:
        app.stop(1)


def test_challenger_rechecks_through_an_operator_and_escalates_a_rejected_leaf(devnet: Devnet, tmp_path: Path) -> None:
    app = start_aggregator(devnet, tmp_path / "agg.sqlite")
    try:
        start = devnet.anvil.w3.eth.block_number + 1  # batches certified from now on
        with AggregatorClient(f"127.0.0.1:{app.ports.grpc}") as client:
            status = client.wait(submit(client, "watch me", nonce=500), timeout=90)
            source = AggregatorLeafSource(client)
            feed = Web3BatchFeed(devnet.client)
            # honest operators re-verify the certified leaf: ACCEPT, nothing escalated
            caller = GrpcOperatorCaller(
                Domain(devnet.deployment.chain_id, devnet.deployment.task_manager), AGGREGATOR.key
            )
            checker = OperatorLeafChecker(Web3OperatorSetReader(devnet.client), caller, seed=1)
            honest = Challenger(
                feed, source, checker, None, ChallengerStore("sqlite://"), sample_rate=1.0, start_block=start
            )
            findings = [f for f in honest.poll() if f.request_hash == status.request_hash]
            assert [f.verdict for f in findings] == [Verdict.ACCEPT]
            caller.close()
            # a checker that finds it wrong escalates on-chain: the bond is locked, the challenge is open
            token = devnet.anvil.w3.eth.contract(
                address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken")
            )
            devnet.client.transact(token.functions.mint(AGGREGATOR.address, 10 * 10**18))
            faults = Web3FaultClient(devnet.client)

            class Rejects:
                def check(self, certificate: ag.Certificate) -> Verdict:
                    return Verdict.REJECT

            escalator = Web3Escalator(faults)
            escalating = Challenger(
                feed, source, Rejects(), escalator, ChallengerStore("sqlite://"), sample_rate=1.0, start_block=start
            )
            [finding] = [f for f in escalating.poll() if f.request_hash == status.request_hash]
        assert finding.challenge_tx
        challenge = faults.get_challenge(faults.get_challenge_count())
        assert challenge.status == ChallengeStatus.OPEN and challenge.request_hash == status.request_hash
        # the contract's latestChallengeOfLeaf, as a challenger whose receipt wait timed out reads it
        leaf = (challenge.batch_index, status.request_hash, challenge.output_hash)
        assert escalator.find_leaf_challenge(*leaf) == finding.challenge_id == faults.get_challenge_count()
        assert escalator.find_leaf_challenge(challenge.batch_index, status.request_hash, b"\x00" * 32) == 0
    finally:
        app.stop(1)


def read_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def test_challenger_daemon_checks_new_batches(devnet: Devnet, tmp_path: Path) -> None:
    key_file = devnet.workdir / "aggregator.key.json"  # written by start_aggregator; operators authorise it
    app = start_aggregator(devnet, tmp_path / "agg.sqlite")
    config = ChallengerConfig(
        rpc_url=devnet.anvil.url,
        deployment_file=devnet.workdir / "deployment.json",
        aggregator=f"127.0.0.1:{app.ports.grpc}",
        ecdsa_keystore=key_file,
        sample_rate=1.0,
        escalate=False,
        poll_seconds=0.2,
        metrics_listen="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path / 'challenger.sqlite'}",
    )
    challenger = ChallengerApp(config, ChallengerSecrets(ecdsa_key_password=PASSWORD))  # type: ignore[arg-type]
    challenger.start()
    try:
        with AggregatorClient(f"127.0.0.1:{app.ports.grpc}") as client:
            request_hash = client.wait(submit(client, "daemon", nonce=900), timeout=90).request_hash
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            f.request_hash == request_hash for f in challenger.challenger.findings
        ):
            time.sleep(0.1)
        [finding] = [f for f in challenger.challenger.findings if f.request_hash == request_hash]
        assert finding.verdict == Verdict.ACCEPT
        metric = 'avs_challenger_leaves_checked_total{verdict="accept"}'
        deadline = time.monotonic() + 10  # the poll records its findings in the metrics once it returns
        while time.monotonic() < deadline and metric not in read_metrics(challenger.metrics_port):
            time.sleep(0.1)
        assert metric in read_metrics(challenger.metrics_port)
    finally:
        challenger.stop()
        app.stop(1)


def _rpc(devnet: Devnet, method: str, *params: object) -> object:
    return devnet.anvil.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]


def _pending_fees(devnet: Devnet) -> list[int]:
    """maxFeePerGas of the aggregator account's transactions in anvil's pool."""
    pending = _rpc(devnet, "txpool_content")["result"]["pending"]  # type: ignore[index]
    ours: dict[str, dict[str, str]] = next(
        (txs for sender, txs in pending.items() if sender.lower() == AGGREGATOR.address.lower()), {}
    )
    return [int(tx["maxFeePerGas"], 16) for tx in ours.values()]


def _mint_fn(devnet: Devnet, to: str) -> ContractFunction:
    token = devnet.anvil.w3.eth.contract(
        address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken")
    )
    return token.functions.mint(Web3.to_checksum_address(to), 1)


def test_sender_bumps_fees_of_a_stuck_transaction(devnet: Devnet, caplog: pytest.LogCaptureFixture) -> None:
    sender = TransactionSender(devnet.client, AGGREGATOR, SenderSettings(receipt_timeout=0.3, poll_seconds=0.05))
    _rpc(devnet, "evm_setAutomine", False)
    result: list[SentTransaction] = []
    try:
        thread = threading.Thread(target=lambda: result.append(sender.send(_mint_fn(devnet, REQUESTER))))
        thread.start()
        deadline = time.monotonic() + 30  # nothing is mined meanwhile: the sender re-sends with higher fees
        first_fee = None
        # Mined only once the bumped version is in the pool (the log line comes before its broadcast).
        while first_fee is None or max(_pending_fees(devnet), default=0) <= first_fee:
            assert thread.is_alive() and time.monotonic() < deadline, "the sender never bumped its fees"
            first_fee = first_fee or max(_pending_fees(devnet), default=None)
            time.sleep(0.05)
        assert "bumping fees" in caplog.text
        _rpc(devnet, "evm_mine")
        thread.join(10)
    finally:
        _rpc(devnet, "evm_setAutomine", True)
    [sent] = result
    assert sent.bumps >= 1
    receipt = devnet.anvil.w3.eth.get_transaction_receipt(HexBytes(sent.tx_hash))
    assert receipt["status"] == 1


def test_sender_resends_after_a_reorg(devnet: Devnet, caplog: pytest.LogCaptureFixture) -> None:
    w3 = devnet.anvil.w3
    recipient = Account.create().address
    token = w3.eth.contract(address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken"))
    settings = SenderSettings(receipt_timeout=5, poll_seconds=0.05, confirmations=3)
    sender = TransactionSender(devnet.client, AGGREGATOR, settings)
    snapshot = _rpc(devnet, "evm_snapshot")["result"]  # type: ignore[index]
    nonce = w3.eth.get_transaction_count(AGGREGATOR.address)
    result: list[SentTransaction] = []
    thread = threading.Thread(target=lambda: result.append(sender.send(_mint_fn(devnet, recipient))))
    thread.start()
    while w3.eth.get_transaction_count(AGGREGATOR.address) == nonce:
        time.sleep(0.02)
    _rpc(devnet, "evm_revert", snapshot)  # the block holding it is gone
    assert token.functions.balanceOf(recipient).call() == 0
    deadline = time.monotonic() + 60  # the never-saw-the-receipt path waits out its 5 s receipt_timeout first
    while thread.is_alive() and time.monotonic() < deadline:
        _rpc(devnet, "evm_mine")
        time.sleep(0.05)
    thread.join(5)
    [sent] = result
    assert token.functions.balanceOf(recipient).call() == 1
    assert w3.eth.get_transaction_receipt(HexBytes(sent.tx_hash))["status"] == 1
    # Which path recovers depends on whether the sender saw the receipt before the revert: the reorg
    # check (receipt seen, then gone) or the stuck-transaction path (never saw it). Either re-sends.
    assert "dropped by a reorg" in caplog.text or "bumping fees" in caplog.text


def test_binary_serves_and_stops_cleanly_on_sigterm(devnet: Devnet, tmp_path: Path) -> None:
    start_aggregator(devnet, tmp_path / "warmup.sqlite").stop(1)  # writes the keystore
    grpc_port, metrics_port, health_port = get_free_port(), get_free_port(), get_free_port()
    config = {
        "chain": {"rpc_url": devnet.anvil.url, "deployment_file": str(devnet.workdir / "deployment.json")},
        "keys": {"ecdsa_keystore": str(devnet.workdir / "aggregator.key.json")},
        "models": [{"name": "tiny", "model_id": "0x" + devnet.model_id.hex()}],
        "database_url": f"sqlite:///{tmp_path / 'agg.sqlite'}",
        "grpc_listen": f"127.0.0.1:{grpc_port}",
        "metrics_listen": f"127.0.0.1:{metrics_port}",
        "health_listen": f"127.0.0.1:{health_port}",
    }
    config_file = tmp_path / "aggregator.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "AGGREGATOR_ECDSA_KEY_PASSWORD": PASSWORD}
    process = subprocess.Popen(
        [sys.executable, "-m", "avs_aggregator.cli", "run", "--config", str(config_file)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/health", timeout=1) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        logs = [json.loads(line) for line in (process.stderr.read() if process.stderr else "").splitlines() if line]
        assert {"aggregator serving", "aggregator stopped"} <= {entry["message"] for entry in logs}
        assert PASSWORD not in json.dumps(logs)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class ColludingCaller:
    """Every operator's BLS key used directly, bypassing their engines and slashing protection: a
    colluding quorum (or a stolen set of keys) that generates, accepts and certifies a wrong output."""

    WRONG_TOKENS = (5, 6, 7)

    def __init__(self, devnet: Devnet, domain: Domain) -> None:
        self.domain = domain
        self.keys = {bytes(app.core.operator_id): app.core.key_pair for app in devnet.operators}

    def _attest(self, operator: OperatorInfo, envelope: RequestEnvelope) -> tuple[bytes, bytes, G1Point]:
        request_hash = compute_request_hash(self.domain, envelope.request)
        output = InferenceOutput(request_hash, envelope.request.model_id, self.WRONG_TOKENS)
        output_hash = compute_output_hash(output)
        digest = compute_digest(self.domain, Attestation(request_hash, output_hash, Verdict.ACCEPT))
        return request_hash, output_hash, bls.sign(self.keys[operator.operator_id].secret, digest)

    def generate(self, operator: OperatorInfo, envelope: RequestEnvelope, timeout: float) -> GenerateReply:
        _, output_hash, signature = self._attest(operator, envelope)
        return GenerateReply(self.WRONG_TOKENS, "wrong", OutputHash(output_hash), signature)

    def verify(
        self, operator: OperatorInfo, envelope: RequestEnvelope, output_ids: Sequence[int], timeout: float
    ) -> VerifyReply:
        _, output_hash, signature = self._attest(operator, envelope)
        return VerifyReply(OutputHash(output_hash), Verdict.ACCEPT, signature)

    def sign_batch(
        self, operator: OperatorInfo, header: BatchHeader, leaves: Sequence[BatchLeaf], timeout: float
    ) -> G1Point:
        return bls.sign(self.keys[operator.operator_id].secret, compute_digest(self.domain, header))


class PipelineLeaves:
    """``LeafSource`` over the colluding pipeline's database (what its intake API would answer)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def get_batch_leaves(self, batch_index: int) -> list[BatchLeaf]:
        batch = self.pipeline.store.get_batch(batch_index)
        if batch is None:
            raise LookupError(f"batch {batch_index} is not this aggregator's")
        return self.pipeline.get_batch_leaves(batch)

    def get_certificate(self, request_hash: bytes) -> ag.Certificate:
        row = self.pipeline.store.get_request(request_hash)
        assert row is not None
        return build_status(self.pipeline, row).certificate


def test_challenger_resolves_a_colluded_output_slashing_the_signers_across_a_restart(
    devnet: Devnet, tmp_path: Path
) -> None:
    """A colluding quorum certifies a wrong output; the challenger's operator re-check rejects it, it
    opens a bonded challenge, is restarted, and then resolves it with the escalation quorum's REJECT
    certificate: every batch signer loses FaultManager's fraudWad of its stake (one per transaction:
    maxSlashesPerCall 1, the rest by continueSlashing) and the challenger gets its bond back plus a
    reward. (Runs last in this module: it halves every operator's stake.)"""
    client, w3 = devnet.client, devnet.anvil.w3
    domain = Domain(devnet.deployment.chain_id, devnet.deployment.task_manager)
    reader = Web3OperatorSetReader(client)
    settings = PipelineSettings(batch_max_size=1, batch_max_latency=0.0, first_batch_index=10_000, workers=4)
    store = Store(f"sqlite:///{tmp_path / 'colluding.sqlite'}")
    pipeline = Pipeline(domain, store, reader, ColludingCaller(devnet, domain), Web3ChainWriter(client), settings)
    token = w3.eth.contract(address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken"))
    faults = Web3FaultClient(client)
    caller = GrpcOperatorCaller(domain, AGGREGATOR.key)  # operators authorise this key's Verify calls
    try:
        start = w3.eth.block_number + 1
        messages = ({"role": "user", "content": "collude"},)
        prompt_hash = PromptEncoder(devnet.model_dir).compute_prompt_hash(list(messages))
        request = InferenceRequest(
            devnet.model_id, prompt_hash, 0, 0, 1_000_000, 0, 6, compute_stop_sequences_hash([]), REQUESTER, 4242
        )
        request_hash = pipeline.submit(RequestEnvelope(request, messages, ()))
        pipeline.run_until_idle()
        row = store.get_request(request_hash)
        assert row is not None and row.state == "CERTIFIED", row and row.error
        ids = [bytes(app.core.operator_id) for app in devnet.operators]
        stakes_before = [int(client.registry.functions.getCurrentStake(i, 0).call()) for i in ids]
        client.transact(token.functions.mint(AGGREGATOR.address, 10 * 10**18))
        balance_before = int(token.functions.balanceOf(AGGREGATOR.address).call())

        def challenger_on(db: Path) -> tuple[Challenger, Resolver, ChallengerStore]:
            own = ChallengerStore(f"sqlite:///{db}")
            gateway = Web3Escalator(faults)
            resolver = Resolver(domain, own, gateway, reader, caller, verify_timeout=60)
            checker = OperatorLeafChecker(reader, caller, seed=1)
            feed = Web3BatchFeed(client)
            leaves = PipelineLeaves(pipeline)
            return Challenger(feed, leaves, checker, gateway, own, resolver, 1.0, start), resolver, own

        first, resolver, own = challenger_on(tmp_path / "challenger.sqlite")
        [finding] = [f for f in first.scan() if f.request_hash == request_hash]
        assert finding.verdict == Verdict.REJECT and finding.detail == "challenged" and finding.challenge_id
        challenge_id = finding.challenge_id
        assert faults.get_challenge(challenge_id).status == ChallengeStatus.OPEN
        assert int(token.functions.balanceOf(AGGREGATOR.address).call()) < balance_before  # the bond is locked
        resolver.close()
        own.close()  # stopped (restart in the middle) with the challenge open

        devnet.anvil.mine(1)  # the escalation certificate's reference block is at or after openedBlock
        faults.set_max_slashes_per_call(1)  # one signer per transaction: resolve, then continueSlashing
        second, resolver, own = challenger_on(tmp_path / "challenger.sqlite")
        second.poll()
        assert not faults.get_pending_slashing(challenge_id).is_pending
        assert [f.request_hash for f in second.findings].count(request_hash) == 1  # not checked twice
        [record] = own.list_challenges()
        assert record.challenge_id == challenge_id and record.state == ChallengeState.UPHELD, record.error
        assert faults.get_challenge(challenge_id).status == ChallengeStatus.UPHELD
        assert faults.get_challenge_count() == challenge_id  # no second challenge after the restart
        stakes_after = [int(client.registry.functions.getCurrentStake(i, 0).call()) for i in ids]
        for before, after in zip(stakes_before, stakes_after, strict=True):
            assert after == pytest.approx(before // 2, rel=1e-6)  # Deploy.s.sol FRAUD_WAD = 0.5e18
        assert int(token.functions.balanceOf(AGGREGATOR.address).call()) > balance_before  # bond back + reward
        resolver.close()
        own.close()
    finally:
        faults.set_max_slashes_per_call(64)
        caller.close()
        pipeline.close()
        store.close()
