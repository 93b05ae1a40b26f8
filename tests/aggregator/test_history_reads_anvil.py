"""The challenger's reads of a past batch on a node that keeps only recent state (anvil
``--prune-history``; a full node keeps 128 blocks, and the challenger resolves batches from further
back): the quorum members at the batch's reference block, and so the batch's signers, come from
the registry's history read at the latest block."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from web3.exceptions import Web3Exception

from avs.chain.faults import Web3FaultClient
from avs.chain.registration import deregister_operator
from avs.messages import BatchHeader
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs_aggregator.chain import Web3OperatorSetReader
from avs_aggregator.challenger.chain import Web3Escalator
from avs_aggregator.challenger.resolution import Resolver
from avs_aggregator.challenger.store import ChallengerStore
from tests.resilience.chain_fixture import Chain, start_chain

KEPT_STATES = 8


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with start_chain(tmp_path_factory.mktemp("pruned-chain"), kept_states=KEPT_STATES) as started:
        yield started


def _ids(chain: Chain, block: int) -> list[bytes]:
    return [o.operator_id for o in Web3OperatorSetReader(chain.client).get_operator_set(block).operators]


def test_a_past_batch_s_members_and_signers_need_no_archive_state(chain: Chain, tmp_path: Path) -> None:
    then = int(chain.anvil.w3.eth.block_number)
    members_then = _ids(chain, then)  # its state is still kept
    assert len(members_then) == 3
    deregister_operator(chain.client, chain.accounts[2], [0])
    chain.anvil.mine(KEPT_STATES + 4)
    with pytest.raises(Web3Exception):  # the state at `then` is gone, as on a full node
        _ids(chain, then)

    reader = Web3OperatorSetReader(chain.client)
    assert reader.get_quorum_members(then, b"\x00") == frozenset(members_then)
    now = int(chain.anvil.w3.eth.block_number)
    assert reader.get_quorum_members(now, b"\x00") == frozenset(_ids(chain, now))
    assert len(_ids(chain, now)) == 2

    non_signer = sorted(members_then)[1]
    header = BatchHeader(7, b"\x11" * 32, then, b"\x00")
    certificate = ag.Certificate(batch_header=convert.batch_header_to_proto(header), non_signer_ids=[non_signer])
    store = ChallengerStore(f"sqlite:///{tmp_path / 'challenger.sqlite'}")
    resolver = Resolver(chain.domain, store, Web3Escalator(Web3FaultClient(chain.client)), reader, caller=None)  # type: ignore[arg-type]
    try:
        signers = resolver.get_batch_signers(certificate)
    finally:
        resolver.close()
        store.close()
    assert signers.signer_ids == tuple(i for i in sorted(members_then) if i != non_signer)
    assert signers.non_signer_ids == (non_signer,)
    assert len(signers.signer_bitmap_indices) == 2 and len(signers.non_signer_bitmap_indices) == 1


def test_a_member_the_event_scan_missed_fails_the_read(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked against the registry's count: a member the event scan missed is an error, not a
    non-member (as a signer of a fraudulent batch, it would be left unslashed)."""
    reader = Web3OperatorSetReader(chain.client)
    now = int(chain.anvil.w3.eth.block_number)
    members = reader.get_quorum_members(now, b"\x00")
    reader._known.pop(sorted(members)[0])  # a provider that dropped a log
    monkeypatch.setattr(reader, "_scan", lambda to_block: None)
    with pytest.raises(RuntimeError, match="found 1 operators of quorum 0"):
        reader.get_quorum_members(now, b"\x00")
