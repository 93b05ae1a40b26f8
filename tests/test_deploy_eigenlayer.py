"""``Deploy.s.sol``'s real-network entry point, ``runWithEigenLayer()``, on anvil: a restaking core is
deployed first (the local one stands in for EigenLayer's), then the variant deploys only the AVS
contracts pointed at that core's addresses from the environment. It writes the same deployment JSON,
and an operator restaked in that core registers with the new AVS and counts as its stake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient
from avs.chain.deployment import Deployment, load_deployment
from avs.chain.registration import register_operator
from avs.crypto import bls
from avs.devnet import Anvil, DevnetError, deploy_contracts, restake


@pytest.fixture(scope="module")
def chain() -> Iterator[Anvil]:
    anvil = Anvil()
    try:
        yield anvil
    finally:
        anvil.stop()


@pytest.fixture(scope="module")
def core_file(chain: Anvil, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in for EigenLayer: the local core (and a first AVS, which does not matter here)."""
    path = tmp_path_factory.mktemp("core") / "local.json"
    deploy_contracts(chain.url, path)
    return path


@pytest.fixture(scope="module")
def core(core_file: Path) -> Deployment:
    return load_deployment(core_file)


def _team(chain: Anvil) -> LocalAccount:
    """The AVS team: a key of its own, not the core's deployer."""
    account: LocalAccount = Account.create()
    chain.w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])  # type: ignore[arg-type]
    return account


def test_the_variant_deploys_only_the_avs_on_the_given_core(
    chain: Anvil, core: Deployment, core_file: Path, tmp_path: Path
) -> None:
    team = _team(chain)
    out = tmp_path / "eigenlayer.json"
    settings = {
        "DEPLOYER_KEY": "0x" + bytes(team.key).hex(),
        "ALLOCATION_MANAGER": core.allocation_manager,
        "DELEGATION_MANAGER": core.delegation_manager,
        "STRATEGY_MANAGER": str(core.strategy_manager),
        "STRATEGIES": core.strategy,
        "AVS_METADATA_URI": "https://example.invalid/avs.json",
    }
    kept = [Web3.to_checksum_address(a) for a in (core.allocation_manager, core.strategy, core.stake_token)]
    code_before = {a: chain.w3.eth.get_code(a) for a in kept}
    deployment = deploy_contracts(chain.url, out, settings, entry="runWithEigenLayer()")

    # The same JSON, the given core, new AVS contracts owned by the team.
    assert set(json.loads(out.read_text())) == set(json.loads(core_file.read_text()))
    assert (deployment.allocation_manager, deployment.delegation_manager, deployment.strategy_manager) == (
        core.allocation_manager,
        core.delegation_manager,
        core.strategy_manager,
    )
    assert (deployment.strategy, deployment.stake_token) == (core.strategy, core.stake_token)  # the strategy's token
    assert deployment.deployer == deployment.aggregator == str(team.address)
    new = [deployment.operator_registry, deployment.task_manager, deployment.insurance_pool, deployment.fault_manager]
    old = {core.operator_registry, core.task_manager, core.insurance_pool, core.fault_manager}
    assert all(address is not None and address not in old for address in new)
    assert {a: chain.w3.eth.get_code(a) for a in code_before} == code_before  # nothing redeployed
    registry = chain.w3.eth.contract(
        address=Web3.to_checksum_address(deployment.operator_registry), abi=load_abi("OperatorRegistry")
    )
    assert registry.functions.allocationManager().call() == core.allocation_manager
    assert registry.functions.strategyManager().call() == core.strategy_manager
    assert registry.functions.owner().call() == team.address
    pool = chain.w3.eth.contract(
        address=Web3.to_checksum_address(str(deployment.insurance_pool)), abi=load_abi("InsurancePool")
    )
    assert pool.functions.asset().call() == core.stake_token
    assert registry.functions.redistributionRecipient().call() == deployment.insurance_pool

    # An operator restaked in that core registers with the new AVS; its stake counts there.
    operator: LocalAccount = Account.create()
    restake(chain.w3, core, operator, 5 * 10**18)  # the core's own deposit path (EigenLayer's, on a real network)
    keys = bls.compute_key_pair(bls.generate_secret_key())
    client = Web3AvsClient(chain.w3, deployment, operator)
    register_operator(client, operator, keys, "127.0.0.1:1", [0], allocate_wad=10**18)
    assert registry.functions.getCurrentStake(keys.operator_id, 0).call() == 5 * 10**18


def test_the_variant_refuses_without_the_core_addresses(chain: Anvil, core: Deployment, tmp_path: Path) -> None:
    team = _team(chain)
    settings = {"DEPLOYER_KEY": "0x" + bytes(team.key).hex(), "STRATEGIES": core.strategy}
    with pytest.raises(DevnetError, match="ALLOCATION_MANAGER"):
        deploy_contracts(chain.url, tmp_path / "x.json", settings, entry="runWithEigenLayer()")
    settings |= {"ALLOCATION_MANAGER": team.address, "DELEGATION_MANAGER": team.address}
    settings |= {"STRATEGY_MANAGER": team.address}  # no code at any of them
    with pytest.raises(DevnetError, match="no contract at"):
        deploy_contracts(chain.url, tmp_path / "y.json", settings, entry="runWithEigenLayer()")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def test_fault_windows_longer_than_the_deallocation_delay_are_refused(chain: Anvil, tmp_path: Path) -> None:
    """A signer that left its quorum must still be slashable when its batch's fraud is proven:
    MAX_REFERENCE_AGE + CHALLENGE_WINDOW + RESOLUTION_WINDOW (250 by default) within the core's
    DEALLOCATION_DELAY, or no deployment; and the signing weight slashable until then: W + MAX_STAKE_AGE
    <= STAKE_LOOKAHEAD <= DEALLOCATION_DELAY."""
    with pytest.raises(DevnetError, match="= 250 blocks, more than the core's DEALLOCATION_DELAY of 249"):
        deploy_contracts(chain.url, tmp_path / "short.json", {"DEALLOCATION_DELAY": "249"})
    assert not (tmp_path / "short.json").exists()
    # the stake freshness bound needs room too: W + MAX_STAKE_AGE <= STAKE_LOOKAHEAD <= DEALLOCATION_DELAY
    # with a non-zero MAX_STAKE_AGE (defaults: the delay, and the delay - W)
    with pytest.raises(DevnetError, match=r"MAX_STAKE_AGE = 250 blocks \(MAX_STAKE_AGE 0, must be non-zero\)"):
        deploy_contracts(chain.url, tmp_path / "no-age.json", {"DEALLOCATION_DELAY": "250"})
    with pytest.raises(DevnetError, match=r"= 300 blocks .* at most STAKE_LOOKAHEAD = 299"):
        settings = {"DEALLOCATION_DELAY": "400", "MAX_STAKE_AGE": "50", "STAKE_LOOKAHEAD": "299"}
        deploy_contracts(chain.url, tmp_path / "short-look.json", settings)
    with pytest.raises(DevnetError, match="STAKE_LOOKAHEAD = 401, itself at most the core's DEALLOCATION_DELAY of 400"):
        settings = {"DEALLOCATION_DELAY": "400", "MAX_STAKE_AGE": "50", "STAKE_LOOKAHEAD": "401"}
        deploy_contracts(chain.url, tmp_path / "long-look.json", settings)
    deployment = deploy_contracts(chain.url, tmp_path / "exact.json", {"DEALLOCATION_DELAY": "251"})
    core = chain.w3.eth.contract(
        address=Web3.to_checksum_address(deployment.allocation_manager), abi=load_abi("LocalRestakingCore")
    )
    assert core.functions.DEALLOCATION_DELAY().call() == 251
    registry = chain.w3.eth.contract(
        address=Web3.to_checksum_address(deployment.operator_registry), abi=load_abi("OperatorRegistry")
    )
    assert registry.functions.stakeLookAheadBlocks().call() == 251
    assert registry.functions.maxStakeAgeBlocks().call() == 1


def test_the_local_core_can_be_deployed_with_a_slash_resolution_delay(chain: Anvil, tmp_path: Path) -> None:
    """SLASH_RESOLUTION_DELAY rehearses EigenLayer v1.13 on the devnet: slashed funds reach the pool
    only that many blocks after the slash (payouts and rewards owed meanwhile); unset, at once."""
    for settings, expected in (({"SLASH_RESOLUTION_DELAY": "20"}, 20), ({}, 0)):
        deployment = deploy_contracts(chain.url, tmp_path / f"delay-{expected}.json", settings)
        core = chain.w3.eth.contract(
            address=Web3.to_checksum_address(deployment.allocation_manager), abi=load_abi("LocalRestakingCore")
        )
        assert core.functions.slashResolutionDelayBlocks().call() == expected


def test_the_example_environment_names_only_what_the_script_reads() -> None:
    script = (Path(__file__).resolve().parent.parent / "contracts" / "script" / "Deploy.s.sol").read_text()
    example = Path(__file__).resolve().parent.parent / "deploy" / "eigenlayer.env.example"
    names = [
        line.lstrip("# ").split("=", 1)[0]
        for line in example.read_text().splitlines()
        if "=" in line and line.lstrip("# ").split("=", 1)[0].isupper()
    ]
    assert {"ALLOCATION_MANAGER", "DELEGATION_MANAGER", "STRATEGY_MANAGER", "STRATEGIES", "DEPLOYER_KEY"} <= set(names)
    for name in set(names) - {"RPC_URL"}:  # RPC_URL is for forge's command line
        assert f'"{name}"' in script, name
