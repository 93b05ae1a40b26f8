"""The deployment JSON written by ``contracts/script/Deploy.s.sol``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eth_utils import to_checksum_address

from avs.errors import InvalidInputError
from avs.types import Address

_ADDRESS_KEYS = (
    "deployer",
    "aggregator",
    "allocation_manager",
    "delegation_manager",
    "strategy",
    "stake_token",
    "operator_registry",
    "model_registry",
    "task_manager",
)


@dataclass(frozen=True, slots=True)
class Deployment:
    chain_id: int
    start_block: int
    deployer: Address
    aggregator: Address
    allocation_manager: Address
    delegation_manager: Address
    strategy: Address
    stake_token: Address
    operator_registry: Address
    model_registry: Address
    task_manager: Address
    insurance_pool: Address | None = None
    fault_manager: Address | None = None
    strategy_manager: Address | None = None  # sends slashed tokens out (clearBurnOrRedistributableShares)


# absent in deployments made before the fault contracts (and the strategy manager)
_OPTIONAL_ADDRESS_KEYS = ("insurance_pool", "fault_manager", "strategy_manager")


def parse_deployment(raw: object) -> Deployment:
    """A ``Deployment`` from the decoded JSON object; raises ``InvalidInputError`` if malformed."""
    if not isinstance(raw, dict):
        raise InvalidInputError("a deployment must be a JSON object")
    try:
        addresses = {key: Address(to_checksum_address(str(raw[key]))) for key in _ADDRESS_KEYS}
        optional = {key: Address(to_checksum_address(str(raw[key]))) for key in _OPTIONAL_ADDRESS_KEYS if raw.get(key)}
        return Deployment(chain_id=int(raw["chain_id"]), start_block=int(raw["start_block"]), **addresses, **optional)
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"malformed deployment: {exc}") from exc


def load_deployment(path: Path) -> Deployment:
    """The deployment JSON at ``path``; raises ``InvalidInputError`` naming it if unreadable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read the deployment {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # not UTF-8, or not JSON
        raise InvalidInputError(f"the deployment {path} is not JSON: {exc}") from exc
    return parse_deployment(raw)
