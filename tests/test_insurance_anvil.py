"""Integration on anvil: a requester buys coverage with ``avs.chain.insurance.InsuranceBuyer`` from
its own key (approve the premium, ``InsurancePool.buyCoverage``), and the aggregator's intake, with
the real ``Web3CoverageReader``, accepts the insured request over gRPC; every way it can go wrong is
one clear error."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import ContractRevertError
from avs.chain.faults import CoverageStatus
from avs.chain.insurance import (
    InsuranceBuyer,
    InsuranceError,
    Web3CoverageReader,
    compute_coverage_problem,
    compute_payout_problems,
)
from avs.client import AggregatorClient, compute_signatory_record_hash
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import BatchHeader, Domain, InferenceRequest, compute_request_hash, compute_stop_sequences_hash
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.operator.v1 import operator_pb2 as op
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.server import AggregatorServicer, IntakeLimits, ServedModel, build_server
from avs_aggregator.store import Store
from tests.aggregator.fakes import FakeNetwork
from tests.test_contracts_anvil import Devnet, anvil, devnet  # noqa: F401  (fixtures)

TOKENS = 10**18
MODEL_ID = Web3.keccak(text="model")
PROMPT_HASH = Web3.keccak(text="prompt")
COVERAGE_TERM = 1000  # Deploy.s.sol default
THRESHOLD_BPS, FRAUD_WAD, CHALLENGER_REWARD_BPS = 6667, 5 * 10**17, 1000  # Deploy.s.sol defaults


def _certify_leaf(devnet: Devnet, batch_index: int, request_hash: bytes) -> ag.Certificate:  # noqa: F811
    """Certify a batch holding ``request_hash`` (with a made-up output) on chain; its leaf's certificate."""
    from tests.test_contracts_anvil import QUORUMS, _certificate

    leaves = [BatchLeaf(request_hash, Web3.keccak(text="output")), BatchLeaf(Web3.keccak(text="other"), b"\x01" * 32)]
    tree = compute_merkle_tree(leaves)
    header = BatchHeader(batch_index, tree.root, devnet.w3.eth.block_number - 1, QUORUMS)
    devnet.client.certify_batch(header, _certificate(devnet, header, ()))
    return ag.Certificate(
        request_hash=request_hash,
        output_hash=leaves[0].output_hash,
        batch_header=op.BatchHeader(
            batch_index=batch_index,
            leaves_root=tree.root,
            reference_block=header.reference_block,
            quorum_numbers=QUORUMS,
        ),
        merkle_proof=tree.get_proof(0),
        signatory_record_hash=compute_signatory_record_hash(header.reference_block, []),
    )


def _request(requester: str, nonce: int) -> InferenceRequest:
    return InferenceRequest(
        MODEL_ID, PROMPT_HASH, 0, 0, 1_000_000, 0, 8, compute_stop_sequences_hash([]), requester, nonce
    )


def _requester(devnet: Devnet, tokens: int) -> LocalAccount:  # noqa: F811
    account: LocalAccount = Account.create()
    devnet.w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])  # type: ignore[arg-type]
    if tokens:
        token = devnet.w3.eth.contract(
            address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken")
        )
        devnet.client.transact(token.functions.mint(account.address, tokens))
    return account


def test_a_requester_buys_coverage_and_pays_the_premium(devnet: Devnet) -> None:  # noqa: F811
    account = _requester(devnet, TOKENS)
    buyer = InsuranceBuyer(devnet.w3, devnet.deployment, account)
    terms = buyer.get_terms()
    assert terms.asset == devnet.deployment.stake_token and terms.premium_bps == 100
    request = _request(account.address, 1)
    purchase = buyer.buy(request, 0, 2 * TOKENS)
    assert purchase.request_hash == compute_request_hash(devnet.client.get_domain(), request)
    assert purchase.premium == 2 * TOKENS // 100
    assert buyer.get_balance() == TOKENS - purchase.premium
    reader = Web3CoverageReader(devnet.w3, devnet.deployment.insurance_pool or "")
    coverage = reader.get_coverage(purchase.request_hash)
    assert coverage.status == CoverageStatus.ACTIVE and coverage.beneficiary == account.address
    assert coverage.expires_at_block == purchase.expires_at_block
    block = reader.get_block_number()
    assert compute_coverage_problem(coverage, account.address, b"\x00", block) is None
    assert "not one of its quorums" in str(compute_coverage_problem(coverage, account.address, b"\x01", block))
    with pytest.raises(InsuranceError, match=r"the request is already insured \(CoverageExists\)"):
        buyer.buy(request, 0, TOKENS)
    with pytest.raises(InsuranceError, match=r"nothing is claimable .* \(NothingToClaim\)"):
        buyer.claim(purchase.request_hash)


def test_coverage_that_cannot_be_bought_is_one_clear_error(devnet: Devnet) -> None:  # noqa: F811
    poor = _requester(devnet, 0)
    with pytest.raises(InsuranceError, match=r"premium .* cannot be approved: .* holds 0"):
        InsuranceBuyer(devnet.w3, devnet.deployment, poor).buy(_request(poor.address, 1), 0, TOKENS)
    rich = _requester(devnet, 100 * TOKENS)
    buyer = InsuranceBuyer(devnet.w3, devnet.deployment, rich)
    available = buyer.get_available(0)
    # the pool's cap: what a fraud at the threshold slashes of the 40 tokens restaked in quorum 0
    # (FRAUD_WAD of 66.67%), less the challenger's reward: 12.0006 tokens
    cap = 40 * TOKENS * THRESHOLD_BPS * FRAUD_WAD // (10_000 * 10**18) * (10_000 - CHALLENGER_REWARD_BPS) // 10_000
    assert 0 < available <= cap
    with pytest.raises(InsuranceError, match="can be sold against quorum 0 now"):
        buyer.buy(_request(rich.address, 2), 0, available + 1)
    with pytest.raises(InsuranceError, match="the request's requester is"):
        buyer.buy(_request(poor.address, 3), 0, TOKENS)  # someone else's request


def test_a_premium_spent_between_the_check_and_the_purchase_is_one_clear_error(
    devnet: Devnet,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The balance moved after buy() checked it (another wallet of the requester spent it): the
    token's own revert (ERC20InsufficientBalance) escaped as web3's raw ContractCustomError."""
    account = _requester(devnet, TOKENS)
    buyer = InsuranceBuyer(devnet.w3, devnet.deployment, account)
    token = devnet.w3.eth.contract(
        address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken")
    )
    send = buyer.client.transact

    def spend_first(fn: Any, account_: Any = None) -> bytes:
        if fn.fn_name == "approve":  # between the balance check and buyCoverage
            send(token.functions.transfer(Account.create().address, TOKENS))
        return send(fn, account_)

    monkeypatch.setattr(buyer.client, "transact", spend_first)
    with pytest.raises(InsuranceError, match="ERC20InsufficientBalance"):
        buyer.buy(_request(account.address, 11), 0, TOKENS)


def test_coverage_too_short_for_the_aggregator_to_take_is_not_bought(devnet: Devnet) -> None:  # noqa: F811
    """The aggregator refuses an insured request with under MIN_COVERAGE_BLOCKS_LEFT blocks of
    coverage left; a pool whose term is about that short sold coverage no request could use (the
    premium kept)."""
    account = _requester(devnet, TOKENS)
    buyer = InsuranceBuyer(devnet.w3, devnet.deployment, account)
    terms = buyer.get_terms()
    set_config = buyer.pool.functions.setConfig
    devnet.client.transact(set_config((terms.premium_bps, terms.coverage_cap_bps, terms.challenger_reward_bps, 36)))
    try:
        with pytest.raises(InsuranceError, match=r"coverage term is 36 blocks.* at least 40"):
            buyer.buy(_request(account.address, 8), 0, TOKENS)
    finally:
        devnet.client.transact(set_config(dataclasses.astuple(terms)[1:]))
    assert buyer.get_balance() == TOKENS  # nothing paid, nothing approved
    assert buyer.get_terms() == terms


def test_coverage_expires_after_its_term(devnet: Devnet) -> None:  # noqa: F811
    account = _requester(devnet, TOKENS)
    purchase = InsuranceBuyer(devnet.w3, devnet.deployment, account).buy(_request(account.address, 7), 0, TOKENS)
    devnet.w3.provider.make_request("anvil_mine", [hex(COVERAGE_TERM + 1)])  # type: ignore[arg-type]
    reader = Web3CoverageReader(devnet.w3, devnet.deployment.insurance_pool or "")
    problem = compute_coverage_problem(
        reader.get_coverage(purchase.request_hash), account.address, b"\x00", reader.get_block_number()
    )
    assert problem is not None and f"expired at block {purchase.expires_at_block}" in problem
    # On-chain the term ends the coverage only once the challenge window after it is over too: a
    # batch certified within the term can be challenged until then.
    pool = devnet.w3.eth.contract(
        address=Web3.to_checksum_address(devnet.deployment.insurance_pool or ""), abi=load_abi("InsurancePool")
    )
    task_manager = devnet.w3.eth.contract(
        address=Web3.to_checksum_address(devnet.deployment.task_manager), abi=load_abi("InferenceTaskManager")
    )
    window = int(task_manager.functions.config().call()[2])
    with pytest.raises(ContractRevertError, match="CoverageNotExpired"):
        devnet.client.transact(pool.functions.expireCoverage(purchase.request_hash))
    last = purchase.expires_at_block + window  # the last block a batch of the term can be challenged in
    devnet.w3.provider.make_request("anvil_mine", [hex(last - devnet.w3.eth.block_number)])  # type: ignore[arg-type]
    devnet.client.transact(pool.functions.expireCoverage(purchase.request_hash))  # mined in block last + 1
    assert reader.get_coverage(purchase.request_hash).status == CoverageStatus.EXPIRED


@pytest.fixture
def intake(devnet: Devnet, tmp_path: Path) -> Iterator[AggregatorClient]:  # noqa: F811
    """The aggregator's intake for this deployment, reading coverage from anvil."""
    domain = devnet.client.get_domain()
    network = FakeNetwork([{0: 100}])
    pipeline = Pipeline(
        domain, Store(f"sqlite:///{tmp_path / 'agg.sqlite'}"), network, network, network, PipelineSettings()
    )
    reader = Web3CoverageReader(devnet.w3, devnet.deployment.insurance_pool or "")
    servicer = AggregatorServicer(pipeline, {MODEL_ID: ServedModel("tiny", MODEL_ID)}, IntakeLimits(), reader)
    server, port, _ = build_server(servicer, "127.0.0.1:0", max_workers=4)
    server.start()
    with AggregatorClient(f"127.0.0.1:{port}") as client:
        yield client
    server.stop(None).wait()
    pipeline.close()


def test_the_intake_accepts_an_insured_request_only_once_covered(
    devnet: Devnet,  # noqa: F811
    intake: AggregatorClient,
) -> None:
    account = _requester(devnet, TOKENS)
    domain: Domain = devnet.client.get_domain()
    prepared = intake.prepare(
        [{"role": "user", "content": "hi"}], requester=account.address, model="tiny", prompt_hash=PROMPT_HASH, nonce=9
    )
    key = bytes(account.key)
    with pytest.raises(grpc.RpcError) as info:
        intake.submit_prepared(prepared, domain=domain, requester_key=key, insured=True)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no coverage" in str(info.value.details())
    InsuranceBuyer(devnet.w3, devnet.deployment, account).buy(prepared.request, prepared.quorums[0], TOKENS)
    assert intake.submit_prepared(prepared, domain=domain, requester_key=key, insured=True) == prepared.request_hash


def _resume(devnet: Devnet, intake_url: str, deployment_file: Path, saved: Path, key: bytes) -> tuple[int, str]:  # noqa: F811
    """``avs request --resume`` in this process (its wait times out: this intake certifies nothing)."""
    import contextlib
    import io

    from avs.cli import main

    rpc_url = devnet.w3.provider.endpoint_uri  # type: ignore[attr-defined]
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setenv("REQUESTER_SECRET", "0x" + key.hex())
        args = ["request", "--resume", str(saved), "--aggregator", intake_url, "--timeout", "0.5"]
        code = main(
            [
                *args,
                "--requester-key-env",
                "REQUESTER_SECRET",
                "--deployment",
                str(deployment_file),
                "--rpc-url",
                rpc_url,
            ]
        )
    return code, stderr.getvalue()


def test_an_insured_request_saved_before_paying_is_resumed_without_buying_twice(
    devnet: Devnet,  # noqa: F811
    intake: AggregatorClient,
    tmp_path: Path,
) -> None:
    """``avs request --insure`` saves the prepared request before buying its coverage; ``--resume``
    buys it only if no coverage was bought, refuses while a transaction of the requester is still
    pending (a purchase whose receipt timed out), and submits the same request again."""
    import dataclasses
    import json

    from avs.cli import CoveragePlan, load_saved_request, save_request

    account = _requester(devnet, TOKENS)
    domain: Domain = devnet.client.get_domain()
    deployment_file = tmp_path / "deployment.json"
    deployment_file.write_text(json.dumps(dataclasses.asdict(devnet.deployment)))
    prepared = intake.prepare(
        [{"role": "user", "content": "hi"}],
        requester=account.address,
        model="tiny",
        prompt_hash=PROMPT_HASH,
        max_tokens=8,
    )
    saved = save_request(tmp_path / "requests", prepared, CoveragePlan(TOKENS // 2, prepared.quorums[0]))
    assert saved.name == f"0x{prepared.request_hash.hex()}.json" and saved.stat().st_mode & 0o077 == 0
    assert load_saved_request(saved, domain) == (prepared, CoveragePlan(TOKENS // 2, 0))
    url = intake._channel._channel.target().decode()  # type: ignore[attr-defined]
    buyer = InsuranceBuyer(devnet.w3, devnet.deployment, account)
    key = bytes(account.key)

    # A transaction of the requester not mined yet: resuming now could race it.
    devnet.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    nonce = devnet.w3.eth.get_transaction_count(account.address)
    tx: dict[str, Any] = {"to": account.address, "value": 0, "gas": 21_000, "nonce": nonce}
    tx |= {"gasPrice": devnet.w3.eth.gas_price, "chainId": domain.chain_id}
    try:
        devnet.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        code, err = _resume(devnet, url, deployment_file, saved, key)
    finally:
        devnet.w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        devnet.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert code == 2 and "not mined yet" in err, err
    assert buyer.get_coverage(prepared.request_hash).status == CoverageStatus.NONE

    code, err = _resume(devnet, url, deployment_file, saved, key)
    assert "coverage bought against quorum 0" in err and "did not" not in err, err
    coverage = buyer.get_coverage(prepared.request_hash)
    assert coverage.status == CoverageStatus.ACTIVE and coverage.amount == TOKENS // 2
    assert bytes(intake.get_status(prepared.request_hash).request_hash) == prepared.request_hash  # submitted
    balance = buyer.get_balance()

    code, err = _resume(devnet, url, deployment_file, saved, key)
    assert "is insured already" in err and "coverage bought" not in err, err
    assert buyer.get_balance() == balance  # no second premium

    other = _requester(devnet, 0)
    code, err = _resume(devnet, url, deployment_file, saved, bytes(other.key))
    assert code == 2 and f"is a request of {account.address}" in err, err
    assert '"max_tokens": 8,' in saved.read_text()
    saved.write_text(saved.read_text().replace('"max_tokens": 8,', '"max_tokens": 9,'))
    code, err = _resume(devnet, url, deployment_file, saved, key)
    assert code == 2 and "not the digest of its request under this deployment" in err, err


def test_a_certificate_is_checked_against_what_its_coverage_pays_for(devnet: Devnet) -> None:  # noqa: F811
    """A fraud pays the coverage only in a batch of its quorum certified after the purchase and
    within the term; the request commits to none of these, so the requester checks its certificate's
    batch against the coverage, and that the chain certified the leaf there at all: a certificate
    the aggregator made up, naming a batch certified in the term, is not insured."""
    account = _requester(devnet, TOKENS)
    buyer = InsuranceBuyer(devnet.w3, devnet.deployment, account)
    request = _request(account.address, 70)
    request_hash = compute_request_hash(devnet.client.get_domain(), request)
    before = _certify_leaf(devnet, 700, request_hash)
    purchase = buyer.buy(request, 0, TOKENS)
    assert purchase.request_hash == request_hash
    devnet.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    after = _certify_leaf(devnet, 701, request_hash)
    assert buyer.check_certificate_insured(after) == []
    [too_early] = buyer.check_certificate_insured(before)
    assert "not after the block that bought the coverage" in too_early
    for field, value in (("output_hash", Web3.keccak(text="made up")), ("quorum_numbers", b"\x01")):
        forged = ag.Certificate()
        forged.CopyFrom(after)
        setattr(forged.batch_header if field == "quorum_numbers" else forged, field, value)
        assert buyer.check_certificate_insured(forged) == [
            "the chain did not certify this certificate's output in batch 701"
        ]
    forged.CopyFrom(after)
    forged.batch_header.batch_index = 702
    assert "did not certify" in buyer.check_certificate_insured(forged)[0]
    coverage = buyer.get_coverage(purchase.request_hash)
    late = compute_payout_problems(coverage, 0, b"\x00", coverage.expires_at_block + 1)
    assert late == [
        f"the batch was certified in block {coverage.expires_at_block + 1}, after the coverage's term"
        f" (block {coverage.expires_at_block})"
    ]


def test_a_payout_owed_until_the_slash_is_cleared_is_claimed_in_parts(devnet: Devnet) -> None:  # noqa: F811
    """EigenLayer since v1.13 clears a slash to the pool only a slash resolution delay after it: with
    the local core's delay set, the fraud is recorded with the pool empty, so the payout and the
    challenger's reward are owed. A claim then pays what the pool holds and says what stays owed
    (``ClaimResult``); once the slash is cleared the rest is paid, and the challenger's reward too."""
    from avs.chain.faults import Web3FaultClient
    from avs.messages import Attestation, Verdict, compute_digest
    from avs_aggregator.challenger.rewards import RewardCollector, Web3RewardPool
    from avs_aggregator.challenger.slashes import SlashClearer, Web3SlashChain
    from tests.test_contracts_anvil import QUORUMS
    from tests.test_faults_anvil import _batch_signers, _quorum_certificate

    w3, client, deployment = devnet.w3, devnet.client, devnet.deployment
    core = w3.eth.contract(
        address=Web3.to_checksum_address(deployment.allocation_manager), abi=load_abi("LocalRestakingCore")
    )
    pool = w3.eth.contract(
        address=Web3.to_checksum_address(deployment.insurance_pool or ""), abi=load_abi("InsurancePool")
    )
    token = w3.eth.contract(address=Web3.to_checksum_address(deployment.stake_token), abi=load_abi("TestToken"))
    quorum0 = (Web3.to_checksum_address(deployment.operator_registry), 0)
    faults = Web3FaultClient(client)
    account = _requester(devnet, TOKENS)
    buyer = InsuranceBuyer(w3, deployment, account)
    challenger = InsuranceBuyer(w3, deployment, client.account)  # type: ignore[arg-type]  # the deployer challenges
    request = _request(account.address, 90)
    request_hash = compute_request_hash(client.get_domain(), request)
    amount = TOKENS
    buyer.buy(request, 0, amount)
    client.transact(core.functions.setSlashResolutionDelay(5))
    try:
        client.transact(pool.functions.withdrawSurplus(client.account.address, pool.functions.freeBalance().call()))  # type: ignore[union-attr]
        assert token.functions.balanceOf(pool.address).call() == 0  # nothing else to pay from

        certificate = _certify_leaf(devnet, 900, request_hash)
        batch = certificate.batch_header
        header = BatchHeader(batch.batch_index, batch.leaves_root, batch.reference_block, QUORUMS)
        record = Web3.keccak(header.reference_block.to_bytes(4, "big"))
        client.transact(token.functions.mint(client.account.address, 10**19))  # type: ignore[union-attr]
        client.transact(token.functions.approve(deployment.fault_manager, 10**19))
        faults.challenge(header, record, (request_hash, certificate.output_hash), list(certificate.merkle_proof))
        challenge_id = faults.get_challenge_count()
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        reference = w3.eth.block_number - 1
        reject = compute_digest(client.get_domain(), Attestation(request_hash, certificate.output_hash, Verdict.REJECT))
        slashes_before = int(core.functions.getSlashCount(quorum0).call())
        faults.resolve_challenge(
            challenge_id,
            Verdict.REJECT,
            reference,
            _quorum_certificate(devnet, reject, reference),
            _batch_signers(devnet, header, list(devnet.operators)),
        )
        slashes_after = int(core.functions.getSlashCount(quorum0).call())
        assert slashes_after > slashes_before
        assert token.functions.balanceOf(pool.address).call() == 0  # the slash is not cleared yet
        assert buyer.get_coverage(request_hash).status == CoverageStatus.CLAIMABLE
        assert buyer.get_payout_owed(request_hash) == amount
        reward = challenger.get_reward_owed()
        assert reward > 0

        with pytest.raises(InsuranceError, match=rf"claim again later \(ClaimNotFunded\); {amount} owed"):
            buyer.claim_payout(request_hash)
        collector = RewardCollector(Web3RewardPool(InsuranceBuyer(w3, deployment, challenger.account, client=client)))
        assert collector.tick() == 0  # nothing to pay it with: nothing sent, asked again next poll

        client.transact(token.functions.mint(pool.address, amount * 2 // 5))  # some money arrives (a premium)
        first = buyer.claim_payout(request_hash)
        assert (first.paid, first.still_owed) == (amount * 2 // 5, amount - amount * 2 // 5)
        assert buyer.get_coverage(request_hash).status == CoverageStatus.CLAIMABLE

        # The challenger clears the slashes the registry could not (SlashedFundsNotCleared), once it can.
        clearer = SlashClearer(Web3SlashChain(client, deployment.strategy_manager or ""), lookback_blocks=50)
        assert clearer.tick() == 0 and clearer.pending == slashes_after - slashes_before
        for _ in range(5):  # the slash resolution delay
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        assert clearer.tick() == slashes_after - slashes_before and clearer.pending == 0
        assert token.functions.balanceOf(pool.address).call() > 0
        second = buyer.claim_payout(request_hash)
        assert (second.paid, second.still_owed) == (amount - first.paid, 0)
        assert buyer.get_coverage(request_hash).status == CoverageStatus.CLAIMED
        assert collector.tick() == reward  # the challenger daemon's next poll collects it
        with pytest.raises(InsuranceError, match=r"\(NoRewardOwed\)"):
            challenger.claim_reward()
    finally:
        client.transact(core.functions.setSlashResolutionDelay(0))
