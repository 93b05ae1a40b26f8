"""The bounds between the contracts' parameters: the rule (property tests) and ``avs check-deployment``
on a real deployment, after governance changes one contract's parameters."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from hypothesis import given
from hypothesis import strategies as st
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.deployment import Deployment
from avs.chain.governance import DeploymentParameters, check_parameters, read_parameters, warn_if_unsound
from avs.cli import main
from avs.devnet import ANVIL_KEY_0, Anvil, deploy_contracts

FAULT_MANAGER = "0x" + "11" * 20
POOL = "0x" + "22" * 20
# Deploy.s.sol's defaults on a 100,800-block DEALLOCATION_DELAY: W = 100 + 50 + 100, S = delay - W
GOOD = DeploymentParameters(
    threshold_bps=6667,
    max_reference_age=100,
    challenge_window=50,
    resolution_window=100,
    escalation_threshold_bps=8000,
    stake_lookahead=100_800,
    max_stake_age=100_550,
    deallocation_delay=100_800,
    fault_manager_is_slasher=True,
    pool_fault_manager=FAULT_MANAGER,
    redistribution_recipient=POOL.upper().replace("0X", "0x"),  # addresses compare case-blind
    fault_manager=FAULT_MANAGER,
    insurance_pool=POOL,
)

blocks = st.integers(0, 2**32 - 1)


def test_deploy_defaults_keep_every_bound() -> None:
    assert check_parameters(GOOD) == []


@given(window=blocks, resolution=blocks, age=blocks, s=blocks, lookahead=blocks, delay=blocks)
def test_the_stake_bounds_hold_exactly_when_w_plus_s_fits_the_lookahead_within_the_delay(
    window: int, resolution: int, age: int, s: int, lookahead: int, delay: int
) -> None:
    p = dataclasses.replace(
        GOOD,
        challenge_window=window,
        resolution_window=resolution,
        max_reference_age=age,
        max_stake_age=s,
        stake_lookahead=lookahead,
        deallocation_delay=delay,
    )
    holds = s != 0 and age + window + resolution + s <= lookahead <= delay
    assert (check_parameters(p) == []) == holds


@given(threshold=st.integers(1, 10_000), escalation=st.integers(0, 10_000))
def test_the_escalation_threshold_is_at_least_the_certification_threshold(threshold: int, escalation: int) -> None:
    p = dataclasses.replace(GOOD, threshold_bps=threshold, escalation_threshold_bps=escalation)
    assert (check_parameters(p) == []) == (escalation >= max(threshold, 5_001))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"fault_manager_is_slasher": False}, "not a slasher"),
        ({"pool_fault_manager": "0x" + "33" * 20}, "insurance pool's fault manager"),
        ({"redistribution_recipient": "0x" + "33" * 20}, "slashed stake goes to"),
    ],
)
def test_the_contracts_must_be_wired_to_each_other(change: dict[str, object], problem: str) -> None:
    [found] = check_parameters(dataclasses.replace(GOOD, **change))  # type: ignore[arg-type]
    assert problem in found


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Deployment]]:
    chain = Anvil()
    try:
        saved = tmp_path_factory.mktemp("governance") / "deployment.json"
        yield chain.url, saved, deploy_contracts(chain.url, saved)
    finally:
        chain.stop()


def test_check_deployment_reads_a_fresh_deployment_as_sound_and_a_governance_change_as_not(
    deployed: tuple[str, Path, Deployment], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Deploy.s.sol checks the bounds once; the task manager's owner may then lengthen the challenge
    window, which no contract checks against the registry's stake look-ahead."""
    url, saved, deployment = deployed
    args = ["check-deployment", "--deployment", str(saved), "--rpc-url", url]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    w3 = Web3(Web3.HTTPProvider(url))
    assert report["problems"] == [] and report["fault_window"] == read_parameters(w3, deployment).fault_window
    owner = Account.from_key(ANVIL_KEY_0)
    tasks = w3.eth.contract(
        address=Web3.to_checksum_address(deployment.task_manager), abi=load_abi("InferenceTaskManager")
    )
    threshold, age, _ = tasks.functions.config().call()
    lengthened = tasks.functions.setConfig((threshold, age, report["stake_lookahead"])).build_transaction(
        {"from": owner.address, "nonce": w3.eth.get_transaction_count(owner.address)}
    )
    sent = w3.eth.send_raw_transaction(owner.sign_transaction(lengthened).raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(sent)["status"] == 1  # no contract refuses it
    assert main(args) == 1
    printed = capsys.readouterr()
    assert "more than the registry's stake look-ahead" in printed.err
    assert json.loads(printed.out)["problems"]
    with caplog.at_level(logging.WARNING, logger="avs.chain.governance"):  # what the aggregator logs at start
        [logged] = warn_if_unsound(w3, deployment)
    assert "stake look-ahead" in logged and any(r.__dict__.get("problem") == logged for r in caplog.records)
