"""``make demo``: the whole AVS on one machine, for real, then gone.

anvil with the contracts and the local restaking core; four operators with different stakes,
restaked and registered with BLS proofs of possession, each a real ``avs-operator`` process
serving SmolLM2-135M; the ``avs-aggregator`` process; then a real request: generated once by a
stake-weighted primary, verified by prefill on the others, signed, aggregated and certified
on-chain in a batch. The certificate is checked offline (Merkle proof + EigenLayer's aggregate
BLS check) and on-chain (``verifyLeaf``). Every process is stopped at the end, on errors and on
Ctrl-C. The chain exporter and, when installed, Prometheus scrape every process
(``deploy/prometheus``). ``--keep`` (``make devnet``) keeps the devnet up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from eth_account import Account
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient
from avs.client import AggregatorClient, certificate_to_json, get_state_name, verify_certificate, verify_on_chain
from avs.devnet import ZERO_ADDRESS, Devnet, read_profile_hash
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


def find_nonce_for_primary(devnet: Devnet, messages: list[dict[str, str]], requester: str, primary: str) -> int:
    """A request nonce for which the aggregator's public, stake-weighted rule picks ``primary``.

    The rule is reproducible by anyone (request hash + reference block hash), which is what lets
    the demo stage the attack; a real cheater gets picked in proportion to its stake."""
    from avs_aggregator.chain import Web3OperatorSetReader
    from avs_aggregator.prompts import PromptEncoder
    from avs_aggregator.protocol import select_primary

    assert devnet.anvil is not None
    reader = Web3OperatorSetReader(Web3AvsClient(devnet.anvil.w3, devnet.deployment), reference_lag=1)
    operator_set = reader.get_operator_set(reader.get_reference_block()[0])
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
            ATTACK_MAX_TOKENS,
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
    say("   (a wrong output that does get certified is challenged and escalated; insured requesters are then paid")
    say("    from the pool: tests/test_faults_anvil.py plays that path on anvil; the demo does not yet)")
    return stake_after < stake_before and pool_after > pool_before and check.ok


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
    devnet = Devnet(workdir, args.model, cheater=CHEATER)

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
