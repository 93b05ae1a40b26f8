"""``make demo``: the whole AVS on one machine, for real, then gone.

anvil with the contracts and the local restaking core; four operators with different stakes,
restaked and registered with BLS proofs of possession, each a real ``avs-operator`` process
serving SmolLM2-135M; the ``avs-aggregator`` process; then a real request: generated once by a
stake-weighted primary, verified by prefill on the others, signed, aggregated and certified
on-chain in a batch. The certificate is checked offline (Merkle proof + EigenLayer's aggregate
BLS check) and on-chain (``verifyLeaf``). Then the attacks, by dave, who serves a cheaper model
(``avs.demo_cheater``): as the primary of a request at the default threshold, his output is
rejected by the others, the aggregator proves the rejection on-chain and he is slashed (the
rejected-output path, which pays no one: nothing wrong was certified); then an insured requester
buys coverage for a request at the lowest threshold the devnet sells (5%), dave's wrong output is
certified by his stake alone, a watcher challenges it and resolves the challenge with the
escalation quorum's REJECT certificate (the escalated-fraud path: ``FaultManager.resolveChallenge``
slashes the batch's signers into the pool and ``InsurancePool.recordFraud`` makes the coverage
claimable), and the requester claims its payout. Every process is stopped at the end, on errors
and on Ctrl-C. The chain exporter and, when installed, Prometheus scrape every process
(``deploy/prometheus``). ``--keep`` (``make devnet``) keeps the devnet up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient
from avs.chain.faults import BatchSigners, ChallengeStatus, CoverageStatus, Web3FaultClient
from avs.chain.insurance import InsuranceBuyer
from avs.client import AggregatorClient, certificate_to_json, get_state_name, verify_certificate, verify_on_chain
from avs.devnet import ZERO_ADDRESS, Devnet, read_profile_hash
from avs.messages import (
    TOP_P_ONE,
    Attestation,
    Domain,
    InferenceRequest,
    Verdict,
    compute_digest,
    compute_request_hash,
    compute_stop_sequences_hash,
)
from avs.monitoring.stack import MonitoringStack, start_monitoring
from avs.monitoring.targets import ScrapeJob, ScrapeTarget
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.types import OperatorId

DEFAULT_MODEL = Path("models/smollm2-135m")
QUESTION = "In one sentence, what does a restaked operator do?"
ATTACK_QUESTION = "Name a color."
ATTACK_MAX_TOKENS = 16
CHEATER = "dave"
INSURED_QUESTION = "Name a fruit."
# The devnet lets requesters buy certificates down to 5% of the stake (the task manager's
# thresholdBps): cheap, and what the insurance part of the demo buys; the default stays 66.67%.
DEMO_SETTINGS = {"THRESHOLD_BPS": "500"}
INSURED_THRESHOLD_BPS = 500
COVERAGE = 20 * 10**18
REQUESTER_TOKENS = 10**18  # enough for the premium (1%)


def say(text: str = "") -> None:
    print(text, flush=True)


def run_request(devnet: Devnet, question: str, max_tokens: int) -> ag.Certificate:
    requester = Account.create()
    say(f'\n== A requester ({requester.address[:10]}…) asks: "{question}"')
    started = time.monotonic()
    with AggregatorClient(devnet.aggregator_url) as client:
        model = next(iter(client.list_models()))
        request_hash = client.submit(
            [{"role": "user", "content": question}], requester=requester.address, model=model, max_tokens=max_tokens
        )
        say(f"   request hash 0x{request_hash.hex()}")
        seen: list[str] = []

        def progress(status: ag.RequestStatus) -> None:
            state = get_state_name(status.state)
            if not seen or seen[-1] != state:
                seen.append(state)
                say(f"   [{time.monotonic() - started:6.1f}s] {state.lower().replace('_', ' ')}")

        status = client.wait(request_hash, timeout=900, on_progress=progress)
    return status.certificate


def show_certificate(devnet: Devnet, certificate: ag.Certificate) -> bool:
    names: dict[bytes, str] = {bytes(op.key_pair.operator_id): op.name for op in devnet.operators}
    say("\n== The completion")
    say(f"   {certificate.output_text.strip()!r}  ({len(certificate.output_token_ids)} tokens)")
    say("\n== The certificate")
    signers = [names.get(bytes(s.public_key.operator_id), "?") for s in certificate.signers]
    non_signers = [names.get(bytes(i), "?") for i in certificate.non_signer_ids]
    say(f"   signed by {', '.join(signers)}" + (f"; not signed by {', '.join(non_signers)}" if non_signers else ""))
    for quorum in certificate.quorum_stakes:
        signed, total = int(quorum.signed_stake), int(quorum.total_stake)
        say(
            f"   quorum {quorum.quorum_number}: {signed / 1e18:.0f} of {total / 1e18:.0f} tokens = {signed / total:.2%}"
        )
    header = certificate.batch_header
    say(
        f"   batch {header.batch_index} (reference block {header.reference_block}), certified in block "
        f"{certificate.certified_block}, transaction 0x{bytes(certificate.tx_hash).hex()}"
    )
    say(f"   output hash 0x{bytes(certificate.output_hash).hex()}")
    check = verify_certificate(certificate)
    say("\n== Verification")
    say(f"   offline (Merkle proof + aggregate BLS check of the batch digest): {'OK' if check.ok else check.problems}")
    assert devnet.anvil is not None
    task_manager = devnet.anvil.w3.eth.contract(
        address=Web3.to_checksum_address(devnet.deployment.task_manager), abi=load_abi("InferenceTaskManager")
    )
    on_chain = verify_on_chain(certificate, task_manager)
    say(f"   on-chain (InferenceTaskManager.verifyLeaf): {'OK' if on_chain else 'FAILED'}")
    path = devnet.workdir / "certificate.json"
    path.write_text(certificate_to_json(certificate))
    say(f"   saved to {path}")
    return check.ok and on_chain


def find_nonce_for_primary(
    devnet: Devnet,
    messages: list[dict[str, str]],
    requester: str,
    primary: str,
    max_tokens: int = ATTACK_MAX_TOKENS,
    blocks_before_submit: int = 0,
) -> int:
    """A request nonce for which the aggregator's public, stake-weighted rule picks ``primary``.

    The rule is reproducible by anyone (request hash + reference block hash), which is what lets
    the demo stage the attack; a real cheater gets picked in proportion to its stake. The
    aggregator's reference block is the latest but one when it picks: ``blocks_before_submit`` says
    how many blocks will be mined before the request is submitted (at most 1: that block's
    reference must already exist)."""
    from avs_aggregator.chain import Web3OperatorSetReader
    from avs_aggregator.prompts import PromptEncoder
    from avs_aggregator.protocol import select_primary

    assert devnet.anvil is not None and 0 <= blocks_before_submit <= 1
    reader = Web3OperatorSetReader(Web3AvsClient(devnet.anvil.w3, devnet.deployment), reference_lag=1)
    operator_set = reader.get_operator_set(int(devnet.anvil.w3.eth.block_number) - 1 + blocks_before_submit)
    target = next(op.key_pair.operator_id for op in devnet.operators if op.name == primary)
    domain = Domain(devnet.deployment.chain_id, devnet.deployment.task_manager)
    prompt_hash = PromptEncoder(devnet.model_dir).compute_prompt_hash(messages)
    model_id = bytes.fromhex(read_profile_hash(devnet.model_dir)[2:])
    for nonce in range(10_000):
        request = InferenceRequest(
            model_id,
            prompt_hash,
            0,
            0,
            TOP_P_ONE,
            0,
            max_tokens,
            compute_stop_sequences_hash([]),
            requester,
            nonce,
        )
        if select_primary(operator_set, b"\x00", compute_request_hash(domain, request), 0).operator_id == target:
            return nonce
    raise AssertionError(f"no nonce makes {primary} the primary")


def get_stake_and_pool(devnet: Devnet, name: str) -> tuple[int, int]:
    assert devnet.anvil is not None
    w3 = devnet.anvil.w3
    operator = next(op for op in devnet.operators if op.name == name)
    registry = w3.eth.contract(
        address=Web3.to_checksum_address(devnet.deployment.operator_registry), abi=load_abi("OperatorRegistry")
    )
    token = w3.eth.contract(address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken"))
    stake = int(registry.functions.getCurrentStake(operator.key_pair.operator_id, 0).call())
    pool = devnet.deployment.insurance_pool or ZERO_ADDRESS
    return stake, int(token.functions.balanceOf(Web3.to_checksum_address(pool)).call())


def run_attack(devnet: Devnet, cheater: str) -> bool:
    """The cheater is made primary: the verifiers reject, the aggregator proves it on-chain, the
    cheater is slashed into the insurance pool, and the request is certified with another primary."""
    say(f"\n== The attack: {cheater} serves a cheaper model (1 layer) under the registered profile")
    requester = Account.create()
    messages = [{"role": "user", "content": ATTACK_QUESTION}]
    nonce = find_nonce_for_primary(devnet, messages, requester.address, cheater)
    stake_before, pool_before = get_stake_and_pool(devnet, cheater)
    started = time.monotonic()
    with AggregatorClient(devnet.aggregator_url) as client:
        model = next(iter(client.list_models()))
        request_hash = client.submit(
            messages, requester=requester.address, model=model, max_tokens=ATTACK_MAX_TOKENS, nonce=nonce
        )
        say(f'   request "{ATTACK_QUESTION}" with nonce {nonce}: the public rule picks {cheater} as primary')
        names = {bytes(op.key_pair.operator_id): op.name for op in devnet.operators}
        seen: list[tuple[str, int]] = []

        def progress(status: ag.RequestStatus) -> None:
            key = (get_state_name(status.state), status.attempt)
            if not seen or seen[-1] != key:
                seen.append(key)
                primary = names.get(bytes(status.primary_operator_id), "-")
                new_attempt = len(seen) == 1 or seen[-2][1] != key[1]
                note = f"  ({status.error})" if status.error and new_attempt else ""
                say(
                    f"   [{time.monotonic() - started:6.1f}s] attempt {status.attempt}, primary {primary}: "
                    f"{key[0].lower().replace('_', ' ')}{note}"
                )

        status = client.wait(request_hash, timeout=900, on_progress=progress)
    stake_after, pool_after = get_stake_and_pool(devnet, cheater)
    say(f"   {cheater}'s stake in quorum 0: {stake_before / 1e18:.0f} -> {stake_after / 1e18:.0f} tokens (slashed)")
    say(f"   insurance pool: {pool_before / 1e18:.0f} -> {pool_after / 1e18:.0f} tokens (the slashed stake)")
    say(
        f"   the request was still served, by {names.get(bytes(status.primary_operator_id), '?')}: "
        f"{status.certificate.output_text.strip()!r}"
    )
    check = verify_certificate(status.certificate)
    say(f"   its certificate verifies offline: {'OK' if check.ok else check.problems}")
    return stake_after < stake_before and pool_after > pool_before and check.ok


# --- insurance: a wrong output certified, challenged, escalated; the insured requester paid ----


@dataclass(frozen=True)
class InsuranceOutcome:
    request_hash: bytes
    certificate: ag.Certificate
    coverage: int
    premium: int
    challenge_id: int
    challenge_status: ChallengeStatus
    coverage_status: CoverageStatus
    stake_before: int  # the cheater's, in quorum 0, before the challenge was resolved
    stake_after: int
    pool_before: int  # the pool's balance before the resolution
    pool_after_resolution: int
    pool_after_claim: int
    challenger_reward: int
    requester_before: int  # the requester's balance before the claim
    requester_after: int
    paid: int


def tokens(amount: int) -> str:
    """Base units of an 18-decimal token, readably."""
    return f"{amount / 10**18:,.2f}".rstrip("0").rstrip(".")


def fund(devnet: Devnet, amount: int) -> LocalAccount:
    """Devnet only: a new account with gas and ``amount`` test tokens (TestToken mints to anyone)."""
    account: LocalAccount = Account.create()
    return fund_account(devnet, account, amount)


def fund_account(devnet: Devnet, account: LocalAccount, amount: int) -> LocalAccount:
    """Devnet only: gas and ``amount`` more test tokens for ``account``."""
    assert devnet.anvil is not None
    w3 = devnet.anvil.w3
    w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])  # type: ignore[arg-type]
    token = w3.eth.contract(address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken"))
    if amount:
        Web3AvsClient(w3, devnet.deployment, account).transact(token.functions.mint(account.address, amount))
    return account


def run_insured_request(devnet: Devnet, cheater: str, buyer: InsuranceBuyer) -> tuple[ag.Certificate, int, int]:
    """The requester insures a cheap (low-threshold) request that the cheater serves as primary;
    the aggregator checks the coverage at intake; the wrong output is certified by the cheater alone."""
    requester = buyer.account
    domain = Domain(devnet.deployment.chain_id, devnet.deployment.task_manager)
    messages = [{"role": "user", "content": INSURED_QUESTION}]
    buyer.approve_premium(COVERAGE)  # before the nonce search: buyCoverage is then the one block before submit
    nonce = find_nonce_for_primary(devnet, messages, requester.address, cheater, blocks_before_submit=1)
    names = {bytes(op.key_pair.operator_id): op.name for op in devnet.operators}
    started = time.monotonic()
    with AggregatorClient(devnet.aggregator_url) as client:
        model = next(iter(client.list_models()))
        prepared = client.prepare(
            messages,
            requester=requester.address,
            model=model,
            max_tokens=ATTACK_MAX_TOKENS,
            nonce=nonce,
            threshold_bps=INSURED_THRESHOLD_BPS,
        )
        say(
            f'   requester {requester.address[:10]}… asks "{INSURED_QUESTION}" at a {INSURED_THRESHOLD_BPS / 100:g}% '
            "stake threshold (the cheapest the AVS sells)"
        )
        say(f"   Prepare: request hash 0x{prepared.request_hash.hex()}; the public rule will pick {cheater} as primary")
        purchase = buyer.buy(prepared.request, prepared.quorums[0], COVERAGE)
        say(
            f"   coverage bought: {tokens(purchase.amount)} tokens against quorum {purchase.quorum_number}, premium "
            f"{tokens(purchase.premium)} tokens, active until block {purchase.expires_at_block}"
        )
        request_hash = client.submit_prepared(prepared, domain=domain, requester_key=bytes(requester.key), insured=True)
        say("   submitted as insured, signed by the requester: the aggregator found the coverage active on-chain")
        seen: list[tuple[str, int]] = []

        def progress(status: ag.RequestStatus) -> None:
            key = (get_state_name(status.state), status.attempt)
            if not seen or seen[-1] != key:
                seen.append(key)
                primary = names.get(bytes(status.primary_operator_id), "-")
                say(
                    f"   [{time.monotonic() - started:6.1f}s] attempt {status.attempt}, primary {primary}: "
                    f"{key[0].lower().replace('_', ' ')}"
                )

        status = client.wait(request_hash, timeout=900, on_progress=progress)
    certificate = status.certificate
    signers = [names.get(bytes(s.public_key.operator_id), "?") for s in certificate.signers]
    (quorum,) = certificate.quorum_stakes
    share = int(quorum.signed_stake) / int(quorum.total_stake)
    say(
        f"   certified on-chain in batch {certificate.batch_header.batch_index}: "
        f"{certificate.output_text[:60]!r} ({len(certificate.output_token_ids)} tokens), signed by "
        f"{', '.join(signers)} only "
        f"({share:.2%} of quorum 0, at least the {INSURED_THRESHOLD_BPS / 100:g}% asked; the others refused to sign it)"
    )
    return certificate, purchase.amount, purchase.premium


def challenge_and_escalate(devnet: Devnet, certificate: ag.Certificate) -> tuple[Web3FaultClient, int]:
    """A watcher re-verifies the certified output through the operators that did not sign it, bonds
    a challenge, and resolves it with the escalation quorum's REJECT certificate."""
    from avs_aggregator.chain import Web3OperatorSetReader
    from avs_aggregator.operators import GrpcOperatorCaller
    from avs_aggregator.protocol import compute_aggregate

    assert devnet.anvil is not None
    w3 = devnet.anvil.w3
    domain = Domain(devnet.deployment.chain_id, devnet.deployment.task_manager)
    names = {bytes(op.key_pair.operator_id): op.name for op in devnet.operators}
    watcher = fund_account(devnet, devnet.watcher, 0)
    faults = Web3FaultClient(Web3AvsClient(w3, devnet.deployment, watcher))
    bond = int(faults.fault_manager.functions.config().call()[5])
    escalation_bps = int(faults.fault_manager.functions.config().call()[3])
    escalation_quorums = bytes(faults.fault_manager.functions.escalationQuorumNumbers().call())
    fund_account(devnet, watcher, bond)
    token = w3.eth.contract(address=Web3.to_checksum_address(devnet.deployment.stake_token), abi=load_abi("TestToken"))
    faults.avs.transact(token.functions.approve(faults.fault_manager.address, bond))

    reader = Web3OperatorSetReader(Web3AvsClient(w3, devnet.deployment), reference_lag=1)
    envelope = convert.request_from_proto(certificate.request)
    signer_ids = sorted(bytes(s.public_key.operator_id) for s in certificate.signers)
    output_hash, request_hash = bytes(certificate.output_hash), bytes(certificate.request_hash)
    caller = GrpcOperatorCaller(domain, bytes(watcher.key))
    rejects = {}
    try:
        current = reader.get_operator_set(reader.get_reference_block()[0])
        for operator in current.operators:
            if operator.operator_id in signer_ids:
                continue
            reply = caller.verify(operator, envelope, list(certificate.output_token_ids), 300.0)
            say(f"   {names.get(operator.operator_id, '?')} re-verifies the output by prefill: {reply.verdict.name}")
            if reply.verdict == Verdict.REJECT and reply.output_hash == output_hash:
                rejects[operator.operator_id] = reply.signature
    finally:
        caller.close()
    header = convert.batch_header_from_proto(certificate.batch_header)
    faults.challenge(
        header, bytes(certificate.signatory_record_hash), (request_hash, output_hash), certificate.merkle_proof
    )
    challenge_id = faults.get_challenge_count()
    say(f"   the watcher opens challenge #{challenge_id} with a {tokens(bond)}-token bond (FaultManager.challenge)")
    devnet.anvil.mine()  # the escalation certificate's reference block must be at or after the challenge
    reference = int(w3.eth.block_number) - 1
    operator_set = reader.get_operator_set(reference)
    digest = compute_digest(domain, Attestation(request_hash, output_hash, Verdict.REJECT))
    aggregate = compute_aggregate(operator_set, escalation_quorums, digest, rejects)
    assert aggregate is not None, "the REJECT signatures do not aggregate"
    indices = faults.avs.get_check_signatures_indices(reference, escalation_quorums, aggregate.non_signer_ids)
    shares = ", ".join(
        f"{sum(o.stakes.get(q, 0) for o in operator_set.operators if o.operator_id in rejects) / total:.2%}"
        for q, total in sorted(operator_set.total_stakes.items())
        if q in escalation_quorums
    )
    voters = ", ".join(names.get(i, "?") for i in aggregate.signer_ids)
    say(
        f"   the escalation quorum certifies REJECT: {voters} ({shares} of quorum "
        f"{', '.join(str(q) for q in escalation_quorums)}, at least the {escalation_bps / 100:g}% required)"
    )
    non_signer_ids = tuple(OperatorId(i) for i in sorted(bytes(i) for i in certificate.non_signer_ids))
    at_batch = faults.avs.get_check_signatures_indices(header.reference_block, header.quorum_numbers, non_signer_ids)
    of_signers = faults.avs.get_check_signatures_indices(
        header.reference_block, header.quorum_numbers, [OperatorId(i) for i in signer_ids]
    )
    signers = BatchSigners(
        header,
        non_signer_ids,
        at_batch.non_signer_quorum_bitmap_indices,
        tuple(OperatorId(i) for i in signer_ids),
        of_signers.non_signer_quorum_bitmap_indices,
        of_signers.quorum_apk_indices,
    )
    faults.resolve_challenge(challenge_id, Verdict.REJECT, reference, aggregate.to_signatures(indices), signers)
    return faults, challenge_id


def run_insured_fraud(devnet: Devnet, cheater: str) -> InsuranceOutcome:
    """The insured requester's story, end to end, on the devnet (see the module docstring)."""
    assert devnet.anvil is not None
    say("\n== Insurance: a wrong output gets certified; the insured requester is paid from the slashed stake")
    buyer = InsuranceBuyer(devnet.anvil.w3, devnet.deployment, fund(devnet, REQUESTER_TOKENS))
    certificate, coverage, premium = run_insured_request(devnet, cheater, buyer)
    request_hash = bytes(certificate.request_hash)
    say("\n== A watcher re-checks the certificate and escalates it")
    stake_before, pool_before = get_stake_and_pool(devnet, cheater)
    faults, challenge_id = challenge_and_escalate(devnet, certificate)
    challenge = faults.get_challenge(challenge_id)
    stake_after, pool_after = get_stake_and_pool(devnet, cheater)
    reward = next(
        int(e["args"]["reward"])
        for e in faults.pool.events.FraudRecorded().get_logs(from_block=0)
        if bytes(e["args"]["requestHash"]) == request_hash
    )
    coverage_state = faults.get_coverage(request_hash)
    say(f"   challenge #{challenge_id}: {challenge.status.name}; {cheater}, the batch's signer, is slashed")
    say(f"   {cheater}'s stake in quorum 0: {tokens(stake_before)} -> {tokens(stake_after)} tokens")
    say(
        f"   insurance pool: {tokens(pool_before)} -> {tokens(pool_after)} tokens (the slashed stake in, the "
        f"challenger's {tokens(reward)}-token reward out); coverage {coverage_state.status.name.lower()}, "
        f"{tokens(coverage_state.payout)} tokens reserved for the requester"
    )
    say("\n== The insured requester claims (InsurancePool.claim)")
    requester_before = buyer.get_balance()
    paid = buyer.claim(request_hash)
    requester_after = buyer.get_balance()
    pool_final = get_stake_and_pool(devnet, cheater)[1]
    say(
        f"   requester {buyer.account.address[:10]}…: {tokens(requester_before)} -> {tokens(requester_after)} tokens "
        f"(+{tokens(paid)}: its coverage, paid out of the slashed stake; it had paid a {tokens(premium)}-token premium)"
    )
    say(f"   insurance pool: {tokens(pool_after)} -> {tokens(pool_final)} tokens")
    return InsuranceOutcome(
        request_hash,
        certificate,
        coverage,
        premium,
        challenge_id,
        challenge.status,
        faults.get_coverage(request_hash).status,
        stake_before,
        stake_after,
        pool_before,
        pool_after,
        pool_final,
        reward,
        requester_before,
        requester_after,
        paid,
    )


def is_paid(outcome: InsuranceOutcome) -> bool:
    return (
        outcome.challenge_status == ChallengeStatus.UPHELD
        and outcome.coverage_status == CoverageStatus.CLAIMED
        and outcome.paid == outcome.coverage
        and outcome.requester_after - outcome.requester_before == outcome.coverage
        and outcome.stake_after < outcome.stake_before
    )


def start_devnet_monitoring(devnet: Devnet) -> MonitoringStack:
    """The chain exporter and, when installed, Prometheus scraping every devnet process."""
    assert devnet.anvil is not None
    operators = [ScrapeTarget(f"127.0.0.1:{op.metrics_port}", {"operator": op.name}) for op in devnet.operators]
    aggregator = [ScrapeTarget(f"127.0.0.1:{devnet.aggregator_ports['metrics']}")]
    targets = {ScrapeJob.OPERATORS: operators, ScrapeJob.AGGREGATOR: aggregator}
    return start_monitoring(devnet.workdir, devnet.anvil.url, devnet.deployment_file, targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--workdir", type=Path, help="keep keys, configs and logs here (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the devnet running until Ctrl-C")
    parser.add_argument("--max-tokens", type=int, default=40)
    args = parser.parse_args(argv)
    if not (args.model / "avs_profile.json").is_file():
        say(f"no model at {args.model}: run `make model` first")
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="avs-devnet-"))
    devnet = Devnet(workdir, args.model, settings=DEMO_SETTINGS, cheater=CHEATER)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    started = time.monotonic()
    closers: list[Callable[[], None]] = []
    try:
        say(f"== Local devnet in {workdir} (logs in {workdir / 'logs'})")
        devnet.start(lambda step: say(f"   [{time.monotonic() - started:6.1f}s] {step}"))
        for op in devnet.operators:
            say(
                f"   {op.name:<6} stake {op.stake / 1e18:>4.0f}  operator id 0x{op.key_pair.operator_id.hex()[:16]}…"
                f"  gRPC :{op.grpc_port}  metrics :{op.metrics_port}  node API :{op.node_api_port}"
            )
        say(f"   aggregator gRPC {devnet.aggregator_url}, metrics :{devnet.aggregator_ports['metrics']}")
        monitoring = start_devnet_monitoring(devnet)
        closers.append(monitoring.stop)
        where = monitoring.prometheus_url or "not installed (apt-get install prometheus)"
        say(f"   chain exporter metrics :{monitoring.exporter_port}; Prometheus {where}")
        ok = show_certificate(devnet, run_request(devnet, QUESTION, args.max_tokens))
        ok = run_attack(devnet, CHEATER) and ok
        ok = is_paid(run_insured_fraud(devnet, CHEATER)) and ok
        if args.keep:
            say("\nThe devnet keeps running; Ctrl-C stops it.")
            signal.pause()
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    finally:
        for close in reversed(closers):
            close()
        devnet.stop()
        say(f"== Stopped every process ({time.monotonic() - started:.0f}s in all)")


if __name__ == "__main__":
    sys.exit(main())
