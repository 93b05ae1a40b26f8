"""``make demo``: the whole AVS on one machine, for real, then gone.

anvil with the contracts and the local restaking core; four operators with different stakes,
restaked and registered with BLS proofs of possession, each a real ``avs-operator`` process
serving SmolLM2-135M; the ``avs-aggregator`` process; then a real request: generated once by a
stake-weighted primary, verified by prefill on the others, signed, aggregated and certified
on-chain in a batch. The certificate is checked offline (Merkle proof + EigenLayer's aggregate
BLS check) and on-chain (``verifyLeaf``). Then the attacks, by dave, who serves a cheaper model
(``avs.demo_cheater``): as the primary of a request at the default threshold, his output is
rejected by the others, the aggregator proves the rejection on-chain and he is slashed (the
rejected-output path, which pays no one: nothing wrong was certified). Then a fault an honest
aggregator cannot prevent: a requester wanting a fast answer asks for the lowest threshold the
devnet sells (5%) and insures the request; dave is its primary, and while it is verified and signed
the other operators are unreachable (the demo pauses their processes with SIGSTOP, and resumes them
with SIGCONT after), so dave's own ACCEPT is all that counts and his wrong output is certified at
the 5% asked. The ``avs-challenger`` process (its own key and bond) re-verifies every certified
leaf, challenges that one and resolves the challenge with the escalation quorum's REJECT
certificate (the escalated-fraud path: ``FaultManager.resolveChallenge`` slashes the batch's signers
into the pool and ``InsurancePool.recordFraud`` makes the coverage claimable), and the requester
claims its payout. Every process is stopped at the end, on errors and on Ctrl-C (paused ones are
resumed first); the temp folder goes after a run whose checks all passed, and is kept with its
logs otherwise (``--workdir``: always kept). The chain exporter and, when installed, Prometheus scrape every process
(``deploy/prometheus``). ``--keep`` (``make devnet``) keeps the devnet up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
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
from web3.types import EventData

from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient
from avs.chain.faults import ChallengeStatus, CoverageStatus, Web3FaultClient
from avs.chain.insurance import CoveragePurchase, InsuranceBuyer
from avs.client import AggregatorClient, certificate_to_json, get_state_name, verify_certificate, verify_on_chain
from avs.devnet import ZERO_ADDRESS, Devnet, read_profile_hash
from avs.devnet import fund as fund_address
from avs.messages import (
    TOP_P_ONE,
    Domain,
    InferenceRequest,
    compute_request_hash,
    compute_stop_sequences_hash,
)
from avs.monitoring.stack import MonitoringStack, start_monitoring
from avs.monitoring.targets import ScrapeJob, ScrapeTarget
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag

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
# Short aggregator deadlines: operators that do not answer stop counting after a few seconds.
DEMO_DEADLINES = {"verify_seconds": 5.0, "sign_batch_seconds": 3.0}
CHALLENGER_BINARY = "avs-challenger"


def create_devnet(workdir: Path, model: Path) -> Devnet:
    """The demo's devnet (``make demo`` and the end-to-end test): dave cheats, the challenger runs."""
    return Devnet(workdir, model, settings=DEMO_SETTINGS, cheater=CHEATER, challenger=True, deadlines=DEMO_DEADLINES)


def say(text: str = "") -> None:
    print(text, flush=True)


def run_request(devnet: Devnet, question: str, max_tokens: int) -> ag.Certificate:
    requester = Account.create()
    messages = [{"role": "user", "content": question}]
    # The cheater has his own act below: this plain request gets an honest primary. (With a random
    # nonce he would be picked in proportion to his stake, rejected and slashed already here.)
    honest = next(op.name for op in devnet.operators if op.name != devnet.cheater)
    nonce = find_nonce_for_primary(devnet, messages, requester.address, honest, max_tokens) if devnet.cheater else None
    say(f'\n== A requester ({requester.address[:10]}…) asks: "{question}"')
    started = time.monotonic()
    with AggregatorClient(devnet.aggregator_url) as client:
        model = next(iter(client.list_models()))
        request_hash = client.submit(
            messages, requester=requester.address, model=model, max_tokens=max_tokens, nonce=nonce
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
    on_chain = verify_on_chain(certificate, task_manager, from_block=devnet.deployment.start_block)
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
    from avs.prompts import PromptEncoder
    from avs_aggregator.chain import Web3OperatorSetReader
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
    with AggregatorClient(devnet.aggregator_url) as client:
        model = next(iter(client.list_models()))
        request_hash = client.submit(
            messages, requester=requester.address, model=model, max_tokens=ATTACK_MAX_TOKENS, nonce=nonce
        )
        say(f'   request "{ATTACK_QUESTION}" with nonce {nonce}: the public rule picks {cheater} as primary')
        names = {bytes(op.key_pair.operator_id): op.name for op in devnet.operators}
        status = client.wait(request_hash, timeout=900, on_progress=request_progress(devnet))
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


# --- insurance: a wrong output certified while the others were unreachable; the challenger ------
# --- (a real avs-challenger process) escalates it; the insured requester is paid ---------------


@dataclass(frozen=True)
class Balances:
    """What the insured story moves, in base units (18 decimals)."""

    cheater_stake: int  # in quorum 0
    pool: int
    challenger: int
    requester: int


@dataclass(frozen=True)
class ClosedChallenge:
    """A ``ChallengeOpened`` event and the ``ChallengeClosed`` event that ended it."""

    challenge_id: int
    batch_index: int
    bond: int
    challenger: str  # who opened it (and holds the bond)
    opened_block: int
    resolved_by: str  # who sent the transaction that closed it
    status: ChallengeStatus
    slashed_amount: int
    challenger_reward: int
    closed_block: int


@dataclass(frozen=True)
class InsuranceOutcome:
    certificate: ag.Certificate
    purchase: CoveragePurchase
    challenge: ClosedChallenge
    coverage_status: CoverageStatus  # after the claim
    paid: int
    before: Balances  # at the certification (before any challenge)
    after_resolution: Balances
    after_claim: Balances


def tokens(amount: int) -> str:
    """Base units of an 18-decimal token, readably."""
    return f"{amount / 10**18:,.2f}".rstrip("0").rstrip(".")


def fund(devnet: Devnet, amount: int) -> LocalAccount:
    """Devnet only: a new account with gas and ``amount`` test tokens."""
    assert devnet.anvil is not None
    account: LocalAccount = Account.create()
    fund_address(devnet.anvil.w3, devnet.deployment, account.address, amount)
    return account


def get_balances(devnet: Devnet, cheater: str, buyer: InsuranceBuyer) -> Balances:
    stake, pool = get_stake_and_pool(devnet, cheater)
    return Balances(stake, pool, buyer.get_balance(devnet.challenger.address), buyer.get_balance())


def get_others(devnet: Devnet, cheater: str) -> list[str]:
    return [op.name for op in devnet.operators if op.name != cheater]


def join_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def run_insured_request(
    devnet: Devnet, cheater: str, buyer: InsuranceBuyer
) -> tuple[ag.Certificate, CoveragePurchase, Balances]:
    """The requester insures a fast (low-threshold) request that the cheater serves as primary; the
    aggregator checks the coverage at intake. The other operators are unreachable while it is verified
    and signed (their processes paused), so only the cheater's ACCEPT counts and his wrong output is
    certified at the threshold the requester asked for. Also answers the balances at the
    certification, taken before the others are back (no challenge can be resolved without them)."""
    requester = buyer.account
    domain = Domain(devnet.deployment.chain_id, devnet.deployment.task_manager)
    messages = [{"role": "user", "content": INSURED_QUESTION}]
    buyer.approve_premium(COVERAGE)  # before the nonce search: buyCoverage is then the one block before submit
    nonce = find_nonce_for_primary(devnet, messages, requester.address, cheater, blocks_before_submit=1)
    others = get_others(devnet, cheater)
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
            f'   requester {requester.address[:10]}… wants a fast answer to "{INSURED_QUESTION}": it asks for a '
            f"{INSURED_THRESHOLD_BPS / 100:g}% stake threshold (the lowest the devnet sells) and insures it"
        )
        say(f"   Prepare: request hash 0x{prepared.request_hash.hex()}; the public rule will pick {cheater} as primary")
        purchase = buyer.buy(prepared.request, prepared.quorums[0], COVERAGE)
        say(
            f"   coverage bought: {tokens(purchase.amount)} tokens against quorum {purchase.quorum_number}, premium "
            f"{tokens(purchase.premium)} tokens, active until block {purchase.expires_at_block}"
        )
        with devnet.paused(others):
            say(
                f"   {join_names(others)} become unreachable while it is verified and signed "
                f"(the demo pauses their processes with SIGSTOP)"
            )
            request_hash = client.submit_prepared(
                prepared, domain=domain, requester_key=bytes(requester.key), insured=True
            )
            say("   submitted as insured, signed by the requester: the aggregator found the coverage active on-chain")
            status = client.wait(request_hash, timeout=900, on_progress=request_progress(devnet))
            show_insured_certificate(devnet, status.certificate, others)
            before = get_balances(devnet, cheater, buyer)
        say(f"   {join_names(others)} are back (the demo resumes their processes with SIGCONT)")
    return status.certificate, purchase, before


def request_progress(devnet: Devnet) -> Callable[[ag.RequestStatus], None]:
    """Prints each new (state, attempt) of a request with its primary."""
    names = {bytes(op.key_pair.operator_id): op.name for op in devnet.operators}
    started = time.monotonic()
    seen: list[tuple[str, int]] = []

    def progress(status: ag.RequestStatus) -> None:
        key = (get_state_name(status.state), status.attempt)
        if not seen or seen[-1] != key:
            seen.append(key)
            primary = names.get(bytes(status.primary_operator_id), "-")
            new_attempt = len(seen) > 1 and seen[-2][1] != key[1]
            note = f"  ({status.error})" if status.error and new_attempt else ""
            say(
                f"   [{time.monotonic() - started:6.1f}s] attempt {status.attempt}, primary {primary}: "
                f"{key[0].lower().replace('_', ' ')}{note}"
            )

    return progress


def show_insured_certificate(devnet: Devnet, certificate: ag.Certificate, others: list[str]) -> None:
    names = {bytes(op.key_pair.operator_id): op.name for op in devnet.operators}
    signers = [names.get(bytes(s.public_key.operator_id), "?") for s in certificate.signers]
    (quorum,) = certificate.quorum_stakes
    share = int(quorum.signed_stake) / int(quorum.total_stake)
    verify, sign = devnet.deadlines.get("verify_seconds", 60.0), devnet.deadlines.get("sign_batch_seconds", 30.0)
    deadlines = f"{verify:g} s to verify, {sign:g} s to sign"
    say(
        f"   certified on-chain in batch {certificate.batch_header.batch_index}: "
        f"{certificate.output_text[:60]!r} ({len(certificate.output_token_ids)} tokens), signed by "
        f"{', '.join(signers)} only ({share:.2%} of quorum 0, at least the {INSURED_THRESHOLD_BPS / 100:g}% asked)"
    )
    say(
        f"   {join_names(others)} missed the aggregator's deadlines ({deadlines}), so only {join_names(signers)}'s "
        f"own ACCEPT counted: enough for the {INSURED_THRESHOLD_BPS / 100:g}% the requester chose. The output is "
        "wrong (cheap weights)"
    )


def wait_for_challenge(devnet: Devnet, request_hash: bytes, timeout: float = 300.0) -> ClosedChallenge:
    """Waits for the challenger process to open and close a challenge of the request's leaf. While it
    is open the demo mines a block a second, as a live chain would: anvil mines only on transactions,
    and the escalation certificate must be from a block at or after the challenge."""
    assert devnet.anvil is not None
    events = Web3FaultClient(Web3AvsClient(devnet.anvil.w3, devnet.deployment)).fault_manager.events
    challenger = devnet.get_process("challenger")
    started = time.monotonic()
    opened: EventData | None = None
    while time.monotonic() - started < timeout:
        if challenger.process.poll() is not None:
            raise AssertionError(f"the challenger exited; see {challenger.log_path}")
        if opened is None:
            opened = next(iter(events.ChallengeOpened().get_logs({"requestHash": request_hash}, from_block=0)), None)
            if opened is not None:
                args = opened["args"]
                say(
                    f"   [{time.monotonic() - started:6.1f}s] an operator it asked re-verified the leaf by prefill: "
                    f"REJECT; it opened challenge #{args['challengeId']} with a {tokens(args['bond'])}-token bond in "
                    f"block {opened['blockNumber']} (FaultManager.challenge); the demo now mines a block a second"
                )
        if opened is not None:
            closed = events.ChallengeClosed().get_logs({"challengeId": opened["args"]["challengeId"]}, from_block=0)
            for event in closed:
                status = ChallengeStatus(event["args"]["status"])
                say(
                    f"   [{time.monotonic() - started:6.1f}s] it resolved the challenge with the escalation quorum's "
                    f"certificate (FaultManager.resolveChallenge) in block {event['blockNumber']}: {status.name}"
                )
                resolved_by = str(devnet.anvil.w3.eth.get_transaction(event["transactionHash"])["from"])
                return compute_closed_challenge(opened, event, resolved_by)
            devnet.anvil.mine()
        time.sleep(1.0)
    raise AssertionError(f"no challenge of 0x{request_hash.hex()} closed in {timeout:.0f} s; see {challenger.log_path}")


def compute_closed_challenge(opened: EventData, closed: EventData, resolved_by: str) -> ClosedChallenge:
    return ClosedChallenge(
        challenge_id=int(closed["args"]["challengeId"]),
        batch_index=int(opened["args"]["batchIndex"]),
        bond=int(opened["args"]["bond"]),
        challenger=str(opened["args"]["challenger"]),
        opened_block=int(opened["blockNumber"]),
        resolved_by=resolved_by,
        status=ChallengeStatus(closed["args"]["status"]),
        slashed_amount=int(closed["args"]["slashedAmount"]),
        challenger_reward=int(closed["args"]["challengerReward"]),
        closed_block=int(closed["blockNumber"]),
    )


def show_resolution(cheater: str, challenge: ClosedChallenge, before: Balances, after: Balances) -> None:
    slashed = challenge.slashed_amount
    say(
        f"   challenge #{challenge.challenge_id}: {challenge.status.name}; {cheater}, the batch's signer, is slashed "
        f"{tokens(slashed)} tokens ({slashed / before.cheater_stake:.0%} of his stake: the fault manager's fraudWad)"
    )
    say(f"   {cheater}'s stake in quorum 0: {tokens(before.cheater_stake)} -> {tokens(after.cheater_stake)} tokens")
    say(
        f"   challenger {challenge.challenger[:10]}…: {tokens(before.challenger)} -> {tokens(after.challenger)} tokens "
        f"(its {tokens(challenge.bond)}-token bond back and a {tokens(challenge.challenger_reward)}-token reward)"
    )
    say(
        f"   insurance pool: {tokens(before.pool)} -> {tokens(after.pool)} tokens (the slashed stake in, "
        "the challenger's reward out)"
    )


def run_insured_fraud(devnet: Devnet, cheater: str) -> InsuranceOutcome:
    """The insured requester's story, end to end, on the devnet (see the module docstring)."""
    assert devnet.anvil is not None
    say("\n== Insurance: a fast answer, insured, is certified wrong while the other operators are unreachable")
    buyer = InsuranceBuyer(devnet.anvil.w3, devnet.deployment, fund(devnet, REQUESTER_TOKENS))
    certificate, purchase, before = run_insured_request(devnet, cheater, buyer)
    request_hash = bytes(certificate.request_hash)
    say(f"\n== The challenger ({CHALLENGER_BINARY}, its own process and key) re-checks every certified leaf")
    challenge = wait_for_challenge(devnet, request_hash)
    after_resolution = get_balances(devnet, cheater, buyer)
    show_resolution(cheater, challenge, before, after_resolution)
    coverage = buyer.reader.get_coverage(request_hash)
    say(
        f"   coverage {coverage.status.name.lower()}: {tokens(coverage.payout)} tokens reserved for the requester "
        "(InsurancePool.recordFraud)"
    )
    say("\n== The insured requester claims (InsurancePool.claim)")
    paid = buyer.claim(request_hash)
    after_claim = get_balances(devnet, cheater, buyer)
    say(
        f"   requester {buyer.account.address[:10]}…: {tokens(after_resolution.requester)} -> "
        f"{tokens(after_claim.requester)} tokens (+{tokens(paid)}: its coverage, paid out of the slashed stake; "
        f"it had paid a {tokens(purchase.premium)}-token premium)"
    )
    say(f"   insurance pool: {tokens(after_resolution.pool)} -> {tokens(after_claim.pool)} tokens")
    status = buyer.reader.get_coverage(request_hash).status
    return InsuranceOutcome(certificate, purchase, challenge, status, paid, before, after_resolution, after_claim)


def is_paid(outcome: InsuranceOutcome) -> bool:
    return (
        outcome.challenge.status == ChallengeStatus.UPHELD
        and outcome.coverage_status == CoverageStatus.CLAIMED
        and outcome.paid == outcome.purchase.amount
        and outcome.after_claim.requester - outcome.after_resolution.requester == outcome.purchase.amount
        and outcome.after_resolution.cheater_stake < outcome.before.cheater_stake
    )


def start_devnet_monitoring(devnet: Devnet) -> MonitoringStack:
    """The chain exporter and, when installed, Prometheus scraping every devnet process."""
    assert devnet.anvil is not None
    operators = [ScrapeTarget(f"127.0.0.1:{op.metrics_port}", {"operator": op.name}) for op in devnet.operators]
    aggregator = [ScrapeTarget(f"127.0.0.1:{devnet.aggregator_ports['metrics']}")]
    targets = {ScrapeJob.OPERATORS: operators, ScrapeJob.AGGREGATOR: aggregator}
    if devnet.challenger_metrics_port:
        targets[ScrapeJob.CHALLENGER] = [ScrapeTarget(f"127.0.0.1:{devnet.challenger_metrics_port}")]
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
    devnet = create_devnet(workdir, args.model)

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
        say(
            f"   challenger {devnet.challenger.address[:10]}… ({CHALLENGER_BINARY}, re-verifies every certified leaf), "
            f"metrics :{devnet.challenger_metrics_port}"
        )
        monitoring = start_devnet_monitoring(devnet)
        closers.append(monitoring.stop)
        where = monitoring.prometheus_url or "not installed (apt-get install prometheus)"
        say(f"   chain exporter metrics :{monitoring.exporter_port}; Prometheus {where}")
        ok = show_certificate(devnet, run_request(devnet, QUESTION, args.max_tokens))
        ok = run_attack(devnet, CHEATER) and ok
        ok = is_paid(run_insured_fraud(devnet, CHEATER)) and ok
        say("\n== Every check passed" if ok else "\n== A check FAILED (above)")
        if args.keep:
            say("\nThe devnet keeps running; Ctrl-C stops it.")
            signal.pause()
        status = 0 if ok else 1
    except KeyboardInterrupt:
        say("\ninterrupted")
        status = 130
    finally:
        for close in reversed(closers):
            close()
        devnet.stop()
        say(f"== Stopped every process ({time.monotonic() - started:.0f}s in all)")
    if args.workdir is None and status == 0:  # a temp folder of a passing run: keys, databases, a cheap model
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"   kept {workdir} (configs, logs, databases)")
    return status


if __name__ == "__main__":
    sys.exit(main())
