"""The bounds the contracts' parameters must keep together, checked on a live deployment.

Each contract checks its own parameters, but some bounds span contracts, and governance changes them
one contract at a time (``setConfig``, ``setStakeFreshness``), which the contracts do not check
again (docs/contracts.md, "Stake freshness"). ``Deploy.s.sol`` refuses to deploy without them; this
reads them back from the chain, for ``avs check-deployment`` and at the aggregator's start:

- W + S <= L <= DEALLOCATION_DELAY, S != 0: W = maxReferenceAge + challenge window (the longer
  one kept after a lowering, while it lasts) + resolution window, L the registry's stake
  look-ahead, S its maximum stake age. Otherwise a batch signer's stake can leave before its fraud
  is proven, and the fraud slashes less than the certificate counted;
- the escalation threshold at least the task manager's (an escalation certificate must be as
  strong as the batch certificate it overrules);
- the wiring: the fault manager a slasher of the registry and the pool's fault manager, the pool
  the registry's redistribution recipient (where slashed stake goes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.deployment import Deployment
from avs.errors import InvalidInputError
from avs.logs import redact_urls

logger = logging.getLogger(__name__)

MIN_ESCALATION_THRESHOLD_BPS = 5_001  # FaultManager.MIN_REJECTION_THRESHOLD_BPS: a majority


@dataclass(frozen=True, slots=True)
class DeploymentParameters:
    """What the bounds are about, as the chain holds them now."""

    threshold_bps: int  # the task manager's certification threshold
    max_reference_age: int
    challenge_window: int  # the longest a batch certified so far may still be in
    resolution_window: int
    escalation_threshold_bps: int
    stake_lookahead: int  # L
    max_stake_age: int  # S
    deallocation_delay: int
    fault_manager_is_slasher: bool
    pool_fault_manager: str
    redistribution_recipient: str
    fault_manager: str
    insurance_pool: str

    @property
    def fault_window(self) -> int:
        """W: the blocks after a batch's reference block within which its fraud can still be slashed."""
        return self.max_reference_age + self.challenge_window + self.resolution_window


def check_parameters(p: DeploymentParameters) -> list[str]:
    """The bounds ``p`` breaks, each as a sentence (none: the deployment keeps them)."""
    problems = []
    w, s, lookahead, delay = p.fault_window, p.max_stake_age, p.stake_lookahead, p.deallocation_delay
    if s == 0:
        problems.append("the registry's maximum stake age (S) is 0: stakes may be any age")
    if w + s > lookahead:
        problems.append(
            f"maxReferenceAge + challenge window + resolution window + maximum stake age = {w} + {s} = {w + s}"
            f" blocks, more than the registry's stake look-ahead ({lookahead}): a signer's deallocation can take"
            " effect before its fraud is slashed"
        )
    if lookahead > delay:
        problems.append(
            f"the registry's stake look-ahead ({lookahead}) is beyond EigenLayer's DEALLOCATION_DELAY ({delay}):"
            " a deallocation started after a stake was read can take effect before its fraud is slashed"
        )
    if p.escalation_threshold_bps < p.threshold_bps:
        problems.append(
            f"the escalation threshold ({p.escalation_threshold_bps} bps) is below the certification threshold"
            f" ({p.threshold_bps} bps): a weaker certificate could overrule a batch's"
        )
    if p.escalation_threshold_bps < MIN_ESCALATION_THRESHOLD_BPS:
        problems.append(
            f"the escalation threshold ({p.escalation_threshold_bps} bps) is below a majority: challenges are"
            f" resolved at {MIN_ESCALATION_THRESHOLD_BPS} bps (FaultManager.escalationThresholdBps)"
        )
    if not p.fault_manager_is_slasher:
        problems.append(f"the fault manager {p.fault_manager} is not a slasher of the registry: no fault is slashed")
    if not _same(p.pool_fault_manager, p.fault_manager):
        problems.append(f"the insurance pool's fault manager is {p.pool_fault_manager}, not {p.fault_manager}")
    if not _same(p.redistribution_recipient, p.insurance_pool):
        problems.append(
            f"slashed stake goes to {p.redistribution_recipient}, not to the insurance pool {p.insurance_pool}"
        )
    return problems


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def read_parameters(w3: Web3, deployment: Deployment) -> DeploymentParameters:
    """The parameters of ``deployment`` at the latest block (it must have its fault manager and pool)."""
    if deployment.fault_manager is None or deployment.insurance_pool is None:
        raise InvalidInputError("the deployment names no fault manager or insurance pool: nothing to check")

    def contract(address: str, name: str) -> Any:
        return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_abi(name))

    block = w3.eth.block_number  # every read at one block: a consistent picture
    registry = contract(deployment.operator_registry, "OperatorRegistry").functions
    tasks = contract(deployment.task_manager, "InferenceTaskManager").functions
    faults = contract(deployment.fault_manager, "FaultManager").functions
    pool = contract(deployment.insurance_pool, "InsurancePool").functions
    # the local core implements EigenLayer's IAllocationManager with its signatures (as avs.chain.registration)
    allocation = contract(deployment.allocation_manager, "LocalRestakingCore").functions

    def read(call: Any) -> Any:
        return call.call(block_identifier=block)

    threshold, max_reference_age, window = read(tasks.config())
    kept, lowered_at = read(tasks.loweredWindow())
    if kept > window and block <= lowered_at + kept:  # batches certified before the lowering keep it
        window = kept
    fault_config = read(faults.config())
    return DeploymentParameters(
        threshold_bps=int(threshold),
        max_reference_age=int(max_reference_age),
        challenge_window=int(window),
        resolution_window=int(fault_config[4]),
        escalation_threshold_bps=int(fault_config[3]),
        stake_lookahead=int(read(registry.stakeLookAheadBlocks())),
        max_stake_age=int(read(registry.maxStakeAgeBlocks())),
        deallocation_delay=int(read(allocation.DEALLOCATION_DELAY())),
        fault_manager_is_slasher=bool(read(registry.isSlasher(deployment.fault_manager))),
        pool_fault_manager=str(read(pool.faultManager())),
        redistribution_recipient=str(read(registry.redistributionRecipient())),
        fault_manager=str(deployment.fault_manager),
        insurance_pool=str(deployment.insurance_pool),
    )


def warn_if_unsound(w3: Web3, deployment: Deployment) -> list[str]:
    """Log each bound the deployment breaks now (a service starting on it goes on: governance must
    mend it); returns them. A deployment without fault manager or pool, or a chain that cannot be
    read, is logged and skipped."""
    if deployment.fault_manager is None or deployment.insurance_pool is None:
        return []
    try:
        problems = check_parameters(read_parameters(w3, deployment))
    except Exception as exc:  # a check at start must not keep the service from starting
        logger.warning("could not check the deployment's parameters", extra={"error": redact_urls(str(exc))})
        return []
    for problem in problems:
        logger.warning("the deployment breaks a bound between its contracts", extra={"problem": problem})
    return problems
