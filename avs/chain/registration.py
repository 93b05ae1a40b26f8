"""Registering with the AVS's operator sets through EigenLayer's AllocationManager.

These are CLI commands (``avs-operator register|deregister|status``), never part of the daemon:
the daemon does not write to the chain. Registration is the same on the local restaking core and
on EigenLayer's deployed core: ``registerForOperatorSets`` with the AVS registrar's data, which
carries the socket and the BLS keys with their proof of possession (EigenLayer's message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.client import Web3AvsClient, encode_registration_data
from avs.chain.deployment import Deployment
from avs.crypto import bls
from avs.errors import InvalidInputError
from avs.logs import redact_urls

ZERO_ADDRESS = "0x" + "00" * 20
MAX_SOCKET_CHARS = 256


@dataclass(frozen=True, slots=True)
class OperatorStatus:
    address: str
    is_eigenlayer_operator: bool
    operator_id: bytes
    quorums: tuple[int, ...]
    stake: dict[int, int]  # quorum -> this operator's recorded stake
    total_stake: dict[int, int]  # quorum -> the quorum's total
    socket: str

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "is_eigenlayer_operator": self.is_eigenlayer_operator,
            "registered": bool(self.quorums),
            "operator_id": "0x" + self.operator_id.hex(),
            "quorums": list(self.quorums),
            "stake": {str(q): str(s) for q, s in self.stake.items()},
            "total_stake": {str(q): str(s) for q, s in self.total_stake.items()},
            "socket": self.socket,
        }


def _contracts(client: Web3AvsClient) -> tuple[Any, Any]:
    w3 = client.w3
    # The local core implements both AllocationManager and DelegationManager; on EigenLayer they are
    # two contracts, so each is addressed by its own deployment entry.
    allocation = w3.eth.contract(
        address=Web3.to_checksum_address(client.deployment.allocation_manager), abi=load_abi("LocalRestakingCore")
    )
    delegation = w3.eth.contract(
        address=Web3.to_checksum_address(client.deployment.delegation_manager), abi=load_abi("LocalRestakingCore")
    )
    return allocation, delegation


def _check_quorums(quorums: Sequence[int]) -> list[int]:
    if not quorums or any(not 0 <= q < 192 for q in quorums) or len(set(quorums)) != len(quorums):
        raise InvalidInputError("quorums must be distinct numbers in [0, 192)")
    return sorted(quorums)


def register_operator(
    client: Web3AvsClient,
    account: LocalAccount,
    key_pair: bls.KeyPair,
    socket: str,
    quorums: Sequence[int],
    allocate_wad: int | None = None,
    replace: Mapping[int, str] | None = None,
) -> list[bytes]:
    """Register ``account`` for ``quorums``; returns the transaction hashes sent.

    Becomes an EigenLayer operator first if it is not one, and (``allocate_wad``) allocates that
    fraction (1e18 = all) of its stake in each quorum's strategies to the quorum's operator set.
    ``replace`` maps a quorum to the member whose place to take if that quorum is full (churn, within
    the quorum's ``churnConfig``; the registry checks the stakes).
    """
    if not 0 < len(socket) <= MAX_SOCKET_CHARS:
        raise InvalidInputError(f"socket must be 1 to {MAX_SOCKET_CHARS} characters")
    if allocate_wad is not None and not 0 < allocate_wad <= 10**18:
        raise InvalidInputError("allocate_wad must be in (0, 1e18]")
    sets = _check_quorums(quorums)
    _check_bls_key(client, account.address, key_pair.operator_id)
    _check_replacements(client, sets, replace or {})
    allocation, delegation = _contracts(client)
    registry = client.deployment.operator_registry
    _require_not_slashable_after_leaving(allocation, account.address, registry, sets)
    sent = []
    if not delegation.functions.isOperator(account.address).call():
        sent.append(client.transact(delegation.functions.registerAsOperator(ZERO_ADDRESS, 0, ""), account))
    if allocate_wad is not None:
        params = []
        for quorum in sets:
            strategies = allocation.functions.getStrategiesInOperatorSet((registry, quorum)).call()
            params.append(((registry, quorum), strategies, [allocate_wad] * len(strategies)))
        sent.append(client.transact(allocation.functions.modifyAllocations(account.address, params), account))
    pop = bls.sign_pubkey_registration(key_pair.secret, account.address, registry, client.deployment.chain_id)
    data = encode_registration_data(socket, pop, key_pair.pubkey_g1, key_pair.pubkey_g2, replace)
    sent.append(
        client.transact(allocation.functions.registerForOperatorSets(account.address, (registry, sets, data)), account)
    )
    return sent


def _check_bls_key(client: Web3AvsClient, address: str, operator_id: bytes) -> None:
    """Before any transaction: the registry keeps an operator's first BLS key for good, and a key
    belongs to one operator. Registering again with another key would succeed with the old one still
    on chain (the daemon, signing with the new one, would never find itself); a key another operator
    holds would be refused only at the last transaction, after the EigenLayer ones."""
    registry = client.registry.functions
    registered = bytes(registry.getOperatorId(address).call())
    if registered != bytes(32) and registered != bytes(operator_id):
        raise InvalidInputError(
            f"{address} is registered with the BLS key of operator id 0x{registered.hex()}, not this key's"
            f" 0x{bytes(operator_id).hex()}: the registry keeps an operator's first key; use that keystore"
        )
    holder = str(registry.getOperatorFromId(operator_id).call())
    if int(holder, 16) != 0 and holder.lower() != address.lower():
        raise InvalidInputError(f"this BLS key is registered to another operator, {holder}")


def _check_replacements(client: Web3AvsClient, sets: list[int], replace: Mapping[int, str]) -> None:
    """The members to replace, checked before any transaction: each for a quorum being joined, and
    every full quorum joined names one and allows churn (else the registration would revert)."""
    for quorum, member in replace.items():
        if quorum not in sets:
            raise InvalidInputError(
                f"a replacement is named for quorum {quorum}, which this registration does not join"
            )
        if not Web3.is_address(member):
            raise InvalidInputError(f"the member to replace in quorum {quorum} is not an address: {member!r}")
    registry = client.registry.functions
    for quorum in sets:
        max_count, _ = registry.quorumConfig(quorum).call()
        count = int(registry.operatorCount(quorum).call())
        if count < int(max_count):
            continue
        operator_bips, total_bips = registry.churnConfig(quorum).call()
        if int(operator_bips) == 0:
            raise InvalidInputError(f"quorum {quorum} is full ({count}/{max_count}) and allows no churn")
        if quorum not in replace:
            raise InvalidInputError(
                f"quorum {quorum} is full ({count}/{max_count}): name the member to replace (--replace "
                f"{quorum}=ADDRESS), one holding under {int(total_bips) / 100:g}% of the quorum's stake, "
                f"with more than {int(operator_bips) / 100:g}% of that member's stake yourself"
            )


def _require_not_slashable_after_leaving(allocation: Any, operator: str, registry: str, sets: list[int]) -> None:
    """EigenLayer keeps an operator that left a set slashable by it for ``DEALLOCATION_DELAY``
    blocks and refuses to register it there again until then (``AlreadyMemberOfSet``): say so
    before any transaction is sent."""
    for quorum in sets:
        operator_set = (registry, quorum)
        if allocation.functions.isMemberOfOperatorSet(operator, operator_set).call():
            continue
        if allocation.functions.isOperatorSlashable(operator, operator_set).call():
            delay = allocation.functions.DEALLOCATION_DELAY().call()
            raise InvalidInputError(
                f"{operator} left quorum {quorum} less than DEALLOCATION_DELAY ({delay} blocks) ago: it stays "
                "slashable by that quorum until then, and EigenLayer does not let it register there again before"
            )


def deregister_operator(client: Web3AvsClient, account: LocalAccount, quorums: Sequence[int]) -> bytes:
    allocation, _ = _contracts(client)
    params = (account.address, client.deployment.operator_registry, _check_quorums(quorums))
    return client.transact(allocation.functions.deregisterFromOperatorSets(params), account)


def get_operator_status(client: Web3AvsClient, address: str) -> OperatorStatus:
    _, delegation = _contracts(client)
    registry = client.registry.functions
    operator_id = bytes(registry.getOperatorId(address).call())
    bitmap = int(registry.getCurrentQuorumBitmap(operator_id).call()) if any(operator_id) else 0
    quorums = tuple(q for q in range(192) if bitmap >> q & 1)
    return OperatorStatus(
        address=Web3.to_checksum_address(address),
        is_eigenlayer_operator=bool(delegation.functions.isOperator(address).call()),
        operator_id=operator_id,
        quorums=quorums,
        stake={q: int(registry.getCurrentStake(operator_id, q).call()) for q in quorums},
        total_stake={q: int(registry.getCurrentTotalStake(q).call()) for q in quorums},
        socket=str(registry.operatorSocket(operator_id).call()) if any(operator_id) else "",
    )


def load_client(rpc_url: str, deployment: Deployment, account: LocalAccount | None) -> Web3AvsClient:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    if w3.eth.chain_id != deployment.chain_id:
        raise InvalidInputError(
            f"{redact_urls(rpc_url)} is chain {w3.eth.chain_id}, the deployment is for {deployment.chain_id}"
        )
    return Web3AvsClient(w3, deployment, account)
