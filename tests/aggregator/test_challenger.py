"""The challenger's logic over fakes (its store on SQLite and PostgreSQL): sampling, checking against
the chain, escalating a REJECT, resolving the challenge with the escalation quorum's certificate (or
expiring it), proving equivocations, and resuming from its own database after a restart."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak

from avs.chain.client import ChallengeWindow, ContractRevertError
from avs.chain.faults import ChallengeStatus, SignedAttestation
from avs.client import CertificateCheck
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import Attestation, BatchHeader, Verdict
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs_aggregator.challenger import core
from avs_aggregator.challenger.core import (
    CHALLENGE_GONE_DEPTH,
    OTHER_OUTPUT,
    CertifiedBatch,
    Challenger,
    OpenedChallenge,
)
from avs_aggregator.challenger.resolution import Resolver
from avs_aggregator.challenger.store import (
    AttestationRow,
    ChallengerStore,
    ChallengeState,
    EquivocationRow,
)
from avs_aggregator.evidence import EvidenceBook, ProofState
from avs_aggregator.pipeline import Pipeline
from avs_aggregator.server import build_status
from avs_aggregator.store import BatchState, Store
from tests.aggregator.fakes import DOMAIN, FakeFaultManager, FakeNetwork, make_envelope
from tests.aggregator.test_pipeline import SETTINGS


class Feed:
    """``BatchFeed`` and ``LeafSource`` over a pipeline's database and the fake chain."""

    def __init__(self, pipeline: Pipeline, network: FakeNetwork) -> None:
        self.pipeline, self.network = pipeline, network

    def get_block_number(self) -> int:
        return self.network.block

    def get_certified_batches(self, from_block: int, to_block: int) -> list[CertifiedBatch]:
        batches = []
        for index, (block, _) in sorted(self.network.certified.items()):
            if from_block <= block <= to_block:
                batch = self.pipeline.store.get_batch(index)
                assert batch is not None
                header = self.pipeline.get_header(batch)
                certificate = self.get_certificate(Feed.get_batch_leaves(self, index)[0].request_hash)
                batches.append(CertifiedBatch(header, bytes(certificate.signatory_record_hash), block))
        return batches

    def get_batch_leaves(self, batch_index: int) -> list[BatchLeaf]:
        batch = self.pipeline.store.get_batch(batch_index)
        assert batch is not None
        return self.pipeline.get_batch_leaves(batch)

    def get_certificate(self, request_hash: bytes) -> ag.Certificate:
        row = self.pipeline.store.get_request(request_hash)
        assert row is not None
        return build_status(self.pipeline, row).certificate


class Checker:
    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        self.checked: list[bytes] = []

    def check(self, certificate: ag.Certificate) -> Verdict:
        self.checked.append(bytes(certificate.request_hash))
        return self.verdict


def certified_pipeline(tmp_path: Path, count: int, network: FakeNetwork | None = None) -> tuple[Pipeline, FakeNetwork]:
    network = network or FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{tmp_path}/agg.sqlite"), network, network, network, SETTINGS)
    for i in range(count):
        pipeline.submit(make_envelope(i, f"leaf {i}"))
    pipeline.run_until_idle()
    return pipeline, network


def colluded_pipeline(tmp_path: Path) -> tuple[Pipeline, FakeNetwork]:
    """Quorum 0 (every batch signer) colludes: a wrong output is generated, accepted and certified.
    Quorum 1, the escalation quorum, is honest."""
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}, {1: 50}, {1: 50}])
    for op in network.operators[:3]:
        op.behaviour = "cheat"
    return certified_pipeline(tmp_path, 1, network)


def make_challenger(
    db: str,
    pipeline: Pipeline,
    network: FakeNetwork,
    manager: FakeFaultManager,
    checker: Checker | None = None,
    sample_rate: float = 1.0,
) -> tuple[Challenger, Resolver, ChallengerStore]:
    """A challenger with its own store at ``db`` (the ``db`` fixture: SQLite, then PostgreSQL)."""
    store = ChallengerStore(db)
    resolver = Resolver(DOMAIN, store, manager, network, network, verify_timeout=5)
    feed = Feed(pipeline, network)
    checker = checker or Checker(Verdict.REJECT)
    challenger = Challenger(feed, feed, checker, manager, store, resolver, sample_rate=sample_rate, start_block=0)
    return challenger, resolver, store


def test_accepted_leaves_are_not_escalated_and_each_batch_is_seen_once(tmp_path: Path) -> None:
    pipeline, network = certified_pipeline(tmp_path, 3)
    feed, checker, manager = Feed(pipeline, network), Checker(Verdict.ACCEPT), FakeFaultManager(network)
    store = ChallengerStore("sqlite://")
    challenger = Challenger(feed, feed, checker, manager, store, sample_rate=1.0, start_block=0)
    findings = challenger.poll()
    assert len(findings) == 3 and all(f.verdict == Verdict.ACCEPT for f in findings)
    assert challenger.poll() == [] and manager.challenges == {}
    assert challenger.findings == findings and challenger.next_block == network.block + 1
    pipeline.close()


def test_batches_are_read_once_they_have_the_confirmations(tmp_path: Path) -> None:
    """A scanned block is never scanned again, so with ``confirmations`` the challenger reads a
    BatchCertified event only once that many blocks are on top of it (a shallower reorg cannot
    hide a batch)."""
    pipeline, network = certified_pipeline(tmp_path, 2)
    feed = Feed(pipeline, network)
    store = ChallengerStore("sqlite://")
    checker = Checker(Verdict.ACCEPT)
    challenger = Challenger(feed, feed, checker, None, store, sample_rate=1.0, start_block=0, confirmations=2)
    certified_at = max(block for block, _ in network.certified.values())
    network.block = certified_at + 1
    assert challenger.poll() == [] and challenger.next_block == certified_at
    network.block = certified_at + 2
    assert len(challenger.poll()) == 2 and challenger.next_block == certified_at + 1
    pipeline.close()


class LaggingFeed(Feed):
    """The aggregator has not recorded the certification yet when the challenger first asks."""

    def __init__(self, pipeline: Pipeline, network: FakeNetwork) -> None:
        super().__init__(pipeline, network)
        self.lagging = True

    def get_certificate(self, request_hash: bytes) -> ag.Certificate:
        return ag.Certificate() if self.lagging else super().get_certificate(request_hash)


def test_a_leaf_without_a_certificate_yet_is_checked_again_not_reported(tmp_path: Path) -> None:
    pipeline, network = certified_pipeline(tmp_path, 1)
    feed = Feed(pipeline, network)
    lagging = LaggingFeed(pipeline, network)
    store = ChallengerStore("sqlite://")
    challenger = Challenger(feed, lagging, Checker(Verdict.ACCEPT), None, store, sample_rate=1.0, start_block=0)
    assert challenger.poll() == []  # deferred, not a finding about a mismatched certificate
    lagging.lagging = False
    network.block += 1
    [finding] = challenger.poll()
    assert finding.verdict == Verdict.ACCEPT
    pipeline.close()


def test_a_rejected_leaf_is_escalated_once(tmp_path: Path) -> None:
    pipeline, network = certified_pipeline(tmp_path, 2)
    feed, manager = Feed(pipeline, network), FakeFaultManager(network)
    store = ChallengerStore("sqlite://")
    challenger = Challenger(feed, feed, Checker(Verdict.REJECT), manager, store, sample_rate=1.0, start_block=0)
    findings = challenger.poll()
    assert [f.detail for f in findings] == ["challenged", "challenged"]
    assert [f.challenge_id for f in findings] == [1, 2]
    assert {c.batch_index for c in manager.challenges.values()} == {1}
    assert [c.state for c in store.list_challenges()] == [ChallengeState.OPEN] * 2
    challenger.store.set_next_block(0)  # even a re-scan of the same batch opens nothing new
    assert challenger.poll() == [] and len(manager.challenges) == 2
    pipeline.close()


def test_sampling_checks_a_share_of_the_leaves(tmp_path: Path) -> None:
    pipeline, network = certified_pipeline(tmp_path, 4)
    feed, checker = Feed(pipeline, network), Checker(Verdict.ACCEPT)
    store = ChallengerStore("sqlite://")
    challenger = Challenger(feed, feed, checker, None, store, sample_rate=0.5, start_block=0, rng=random.Random(3))
    challenger.poll()
    assert 0 < len(checker.checked) < 4
    pipeline.close()


def test_a_certificate_that_does_not_match_the_chain_is_reported_not_checked(tmp_path: Path) -> None:
    pipeline, network = certified_pipeline(tmp_path, 1)
    feed, checker = Feed(pipeline, network), Checker(Verdict.REJECT)
    [batch] = feed.get_certified_batches(0, network.block)
    forged = CertifiedBatch(batch.header, b"\x00" * 32, batch.block)
    store = ChallengerStore("sqlite://")
    challenger = Challenger(feed, feed, checker, FakeFaultManager(network), store, sample_rate=1.0, start_block=0)
    [finding] = challenger.process_batch(forged)
    assert finding.verdict is None and "signatory record" in finding.detail and checker.checked == []
    pipeline.close()


def test_escalation_quorum_rejects_and_the_batch_signers_are_slashed(tmp_path: Path, db: str) -> None:
    pipeline, network = colluded_pipeline(tmp_path)
    [batch] = pipeline.store.list_batches([BatchState.CERTIFIED])
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    [finding] = challenger.poll()
    assert finding.detail == "challenged" and finding.challenge_id == 1
    # the reference block (head - 1) is before the challenge's block: it waits for the next block
    assert manager.get_challenge(1).status == ChallengeStatus.OPEN and "resolve" not in manager.calls
    network.block += 1
    reference_block = network.block - 1  # the resolve mines a block: read the reference before it
    challenger.poll()
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD
    colluders = tuple(sorted(op.keys.operator_id for op in network.operators[:3]))
    assert manager.slashed[1] == colluders  # every signer of the batch, nobody else
    [row] = store.list_challenges()
    assert row.state == ChallengeState.UPHELD and row.verdict == int(Verdict.REJECT) and row.close_tx
    assert row.reference_block == reference_block and row.batch_index == batch.batch_index
    pipeline.close()


def test_signers_beyond_max_slashes_per_call_are_slashed_by_continue_slashing(tmp_path: Path, db: str) -> None:
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    manager.max_slashes_per_call = 1  # the batch's 3 signers take resolve + 2 continueSlashing
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    challenger.poll()
    network.block += 1
    challenger.poll()
    colluders = tuple(sorted(op.keys.operator_id for op in network.operators[:3]))
    assert manager.slashed[1] == colluders and not manager.get_pending_slashing(1).is_pending
    assert manager.calls.count("continue") == 2
    [row] = store.list_challenges()
    assert row.state == ChallengeState.UPHELD and row.close_tx and row.error is None
    pipeline.close()


def test_a_slashing_stopped_halfway_is_finished_at_the_next_poll(tmp_path: Path, db: str) -> None:
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    manager.max_slashes_per_call = 1
    manager.fail_continues = 1  # the chain goes away right after resolveChallenge
    challenger, resolver, store = make_challenger(db, pipeline, network, manager)
    challenger.poll()
    network.block += 1
    challenger.poll()
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD and len(manager.slashed[1]) == 1
    [row] = store.list_challenges()
    assert row.state == ChallengeState.OPEN and row.close_tx and "went away" in (row.error or "")
    resolver.close()
    store.close()  # and the challenger restarts
    again, _, store = make_challenger(db, pipeline, network, manager)
    again.poll()
    assert len(manager.slashed[1]) == 3 and not manager.get_pending_slashing(1).is_pending
    assert [(c.state, c.error) for c in store.list_challenges()] == [(ChallengeState.UPHELD, None)]
    assert manager.calls.count("resolve") == 1
    pipeline.close()


def test_a_challenge_someone_else_upheld_halfway_is_slashed_to_the_end(tmp_path: Path, db: str) -> None:
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    manager.max_slashes_per_call = 1
    manager.front_run_resolve = True  # their resolveChallenge lands first; ours reverts ChallengeNotOpen
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    challenger.poll()
    network.block += 1
    challenger.poll()
    assert len(manager.slashed[1]) == 3 and not manager.get_pending_slashing(1).is_pending
    assert manager.calls.count("continue") == 2
    assert [c.state for c in store.list_challenges()] == [ChallengeState.UPHELD]
    pipeline.close()


def test_escalation_quorum_accepts_and_the_challenge_is_dismissed(tmp_path: Path, db: str) -> None:
    pipeline, network = certified_pipeline(tmp_path, 1)  # an honest output, a wrong checker
    manager = FakeFaultManager(network, threshold_bps=6667)
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    challenger.poll()
    network.block += 1
    challenger.poll()
    assert manager.get_challenge(1).status == ChallengeStatus.DISMISSED and manager.slashed == {}
    assert [c.state for c in store.list_challenges()] == [ChallengeState.DISMISSED]
    pipeline.close()


def test_without_an_escalation_certificate_the_challenge_expires_after_the_window(tmp_path: Path, db: str) -> None:
    pipeline, network = colluded_pipeline(tmp_path)
    for op in network.operators[3:]:
        op.behaviour = "down"  # the escalation quorum does not answer
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", window=5)
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    challenger.poll()
    opened_block = manager.get_challenge(1).opened_block
    while network.block < opened_block + 4:  # up to the window's last block but one: resolvable
        network.block += 1
        challenger.poll()
        assert manager.get_challenge(1).status == ChallengeStatus.OPEN  # within the window: not expired
    [row] = store.list_challenges()
    assert row.attempts >= 3 and "no escalation certificate" in (row.error or "")
    network.block += 1  # the last block: an expire sent now runs past the window
    challenger.poll()
    assert manager.get_challenge(1).status == ChallengeStatus.EXPIRED
    assert [c.state for c in store.list_challenges()] == [ChallengeState.EXPIRED] and "resolve" not in manager.calls
    pipeline.close()


def test_a_restarted_challenger_resumes_without_challenging_again(tmp_path: Path, db: str) -> None:
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    challenger, resolver, store = make_challenger(db, pipeline, network, manager)
    challenger.poll()
    resolver.close()
    store.close()  # stopped with the challenge open
    network.block += 1
    again, _, store = make_challenger(db, pipeline, network, manager)
    assert again.poll() == []  # the batch was scanned before the restart
    assert manager.calls.count("challenge") == 1
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD
    assert [c.state for c in store.list_challenges()] == [ChallengeState.UPHELD]
    pipeline.close()


def _crash_after_the_challenge(tmp_path: Path, db: str) -> tuple[Pipeline, FakeNetwork, FakeFaultManager]:
    """A challenger killed after its challenge transaction was mined, before its database write."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    manager.crash_after_challenge = True
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    with pytest.raises(KeyboardInterrupt):
        challenger.poll()
    assert store.list_challenges() == [] and len(manager.challenges) == 1  # mined, not recorded
    store.close()
    manager.crash_after_challenge = False
    network.block += 1
    return pipeline, network, manager


def test_a_crash_after_the_challenge_transaction_adopts_it_on_restart(tmp_path: Path, db: str) -> None:
    pipeline, network, manager = _crash_after_the_challenge(tmp_path, db)
    again, _, store = make_challenger(db, pipeline, network, manager)
    [finding] = again.poll()  # the send was marked: the chain's latestChallengeOfLeaf names it
    assert finding.detail == "challenged (adopted from the chain)" and finding.challenge_id == 1
    assert len(manager.challenges) == 1 and manager.get_challenge(1).status == ChallengeStatus.UPHELD
    assert [c.state for c in store.list_challenges()] == [ChallengeState.UPHELD]
    pipeline.close()


def test_a_crash_after_the_challenge_transaction_is_adopted_even_when_sampling_skips_the_leaf(
    tmp_path: Path, db: str
) -> None:
    """After the restart the batch is sampled afresh and this leaf not picked (sample rate 0 here):
    the send was marked before the transaction, so the challenge is found and adopted anyway."""
    pipeline, network, manager = _crash_after_the_challenge(tmp_path, db)
    again, _, store = make_challenger(db, pipeline, network, manager, sample_rate=0.0)
    [finding] = again.poll()
    assert finding.detail == "challenged (adopted from the chain)" and finding.challenge_id == 1
    assert [c.state for c in store.list_challenges()] == [ChallengeState.UPHELD]
    assert again.poll() == []  # and the leaf is no longer pending
    pipeline.close()


def _opened_not_resolved(
    db: str, tmp_path: Path
) -> tuple[Pipeline, FakeNetwork, FakeFaultManager, Resolver, ChallengerStore]:
    """A challenge opened by a challenger that does not resolve it in the same poll."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    _, resolver, store = make_challenger(db, pipeline, network, manager)
    feed = Feed(pipeline, network)
    Challenger(feed, feed, Checker(Verdict.REJECT), manager, store, None, sample_rate=1.0, start_block=0).poll()
    return pipeline, network, manager, resolver, store


@pytest.mark.parametrize("blocks_left", [0, 1])
def test_the_resolver_expires_at_the_last_block_of_the_window_and_resolves_before_it(
    tmp_path: Path, db: str, blocks_left: int
) -> None:
    """A transaction sent at head H runs in block H + 1. At the window's last block (H ==
    openedBlock + resolutionWindowBlocks) a resolve would run past it and revert ChallengeExpired (a
    wasted certificate round): the resolver expires it instead. A block before, it still resolves."""
    pipeline, network, manager, resolver, store = _opened_not_resolved(db, tmp_path)
    [row] = store.list_challenges()
    opened = manager.get_challenge(row.challenge_id)
    network.block = opened.opened_block + opened.resolution_window - blocks_left
    resolver.advance_all()
    if blocks_left == 0:
        assert manager.get_challenge(row.challenge_id).status == ChallengeStatus.EXPIRED
        assert "resolve" not in manager.calls
    else:
        assert manager.get_challenge(row.challenge_id).status == ChallengeStatus.UPHELD
    assert store.get_challenge(row.challenge_id).error is None  # type: ignore[union-attr]
    pipeline.close()


def test_a_challenge_the_chain_does_not_show_is_kept_until_its_block_is_deep(tmp_path: Path, db: str) -> None:
    """A lagging node or a reorg: the challenge is not on-chain for now. It stays OPEN (checked at
    every poll) and is given up only CHALLENGE_GONE_DEPTH blocks after it was opened."""
    pipeline, network, manager, resolver, store = _opened_not_resolved(db, tmp_path)
    [row] = store.list_challenges()
    manager.challenges.clear()  # the node we ask has not seen the block yet
    assert resolver.advance_all() == []
    assert store.get_challenge(row.challenge_id).state == ChallengeState.OPEN  # type: ignore[union-attr]
    network.block = row.opened_block + CHALLENGE_GONE_DEPTH
    assert resolver.advance_all() == []  # given up, not ended: the leaf's challenge goes on
    gone = store.get_challenge(row.challenge_id)
    assert gone is not None and gone.state == ChallengeState.EXPIRED
    assert (gone.error or "").startswith("not on-chain; the leaf's")
    [mark] = store.list_sent_challenges()  # the fraud is still there: its leaf is to be challenged again
    assert (mark.batch_index, mark.request_hash, mark.output_hash) == (
        row.batch_index,
        row.request_hash,
        row.output_hash,
    )
    pipeline.close()


class MempoolFaultManager(FakeFaultManager):
    """The first challenge is broadcast but its receipt wait times out; while it is in the mempool,
    sending it again reverts ``LeafAlreadyChallenged`` (gas is estimated on the pending state) and
    the mined state has no such challenge yet."""

    in_mempool: tuple[Any, ...] | None = None

    def challenge(
        self, header: BatchHeader, signatory_record_hash: bytes, leaf: tuple[bytes, bytes], proof: Sequence[bytes]
    ) -> OpenedChallenge:
        if self.in_mempool is None:
            self.in_mempool = (header, signatory_record_hash, leaf, proof)
            raise TimeoutError("the challenge transaction is not in the chain after 30 seconds")
        raise ContractRevertError("LeafAlreadyChallenged", (len(self.challenges) + 1,))

    def mine(self) -> None:
        assert self.in_mempool is not None
        FakeFaultManager.challenge(self, *self.in_mempool)


def test_a_challenge_still_in_the_mempool_is_adopted_and_resolved_once_mined(tmp_path: Path, db: str) -> None:
    pipeline, network = colluded_pipeline(tmp_path)
    network.block = 500
    manager = MempoolFaultManager(network, escalation_quorums=b"\x01")
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    assert challenger.poll() == []  # the receipt wait timed out: the leaf stays marked "to challenge"
    assert challenger.poll() == []  # sent again: the pending state reverts LeafAlreadyChallenged (a guess)
    assert store.list_challenges() == [] and len(store.list_sent_challenges()) == 1
    assert store.list_findings() == [] and store.list_pending_checks() == []
    manager.mine()
    network.block += 1
    [finding] = challenger.poll()  # the mined state names it: recorded and resolved
    assert finding.detail == "challenged (adopted from the chain)" and finding.challenge_id == 1
    assert [c.challenge_id for c in store.list_challenges()] == [1] and store.list_sent_challenges() == []
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD
    assert [c.state for c in store.list_challenges()] == [ChallengeState.UPHELD]
    assert len(manager.challenges) == 1
    pipeline.close()


def test_a_challenge_id_that_names_another_leaf_is_not_resolved_as_ours(tmp_path: Path, db: str) -> None:
    pipeline, _, manager, resolver, store = _opened_not_resolved(db, tmp_path)
    [row] = store.list_challenges()
    other = manager.challenges[row.challenge_id]
    manager.challenges[row.challenge_id] = dataclasses.replace(other, request_hash=b"\x07" * 32)  # after a reorg
    assert resolver.advance_all() == []
    given_up = store.get_challenge(row.challenge_id)
    assert given_up is not None and given_up.state == ChallengeState.EXPIRED
    assert "another leaf" in (given_up.error or "")
    assert [m.request_hash for m in store.list_sent_challenges()] == [row.request_hash]
    pipeline.close()


def _challenger_of(
    pipeline: Pipeline, network: FakeNetwork, manager: FakeFaultManager, store: ChallengerStore, resolver: Resolver
) -> Challenger:
    feed = Feed(pipeline, network)
    return Challenger(feed, feed, Checker(Verdict.REJECT), manager, store, resolver, sample_rate=1.0, start_block=0)


def test_our_challenge_renumbered_by_a_reorg_is_found_and_resolved_under_its_new_id(tmp_path: Path, db: str) -> None:
    """A reorg mines someone's challenge of another leaf first (id 1) and ours, with our bond, as 2.
    The challenger gave row 1 up and never resolved or expired 2: the fraud went unpunished."""
    pipeline, network, manager, resolver, store = _opened_not_resolved(db, tmp_path)
    [row] = store.list_challenges()
    ours = manager.challenges[row.challenge_id]
    manager.challenges[1] = dataclasses.replace(ours, request_hash=b"\x07" * 32, challenger="0x" + "ee" * 20)
    manager.challenges[2] = ours
    manager.leaves[(ours.batch_index, ours.request_hash, ours.output_hash)] = 2
    challenger = _challenger_of(pipeline, network, manager, store, resolver)
    for _ in range(3):
        challenger.poll()
        network.block += 1
    assert manager.get_challenge(2).status == ChallengeStatus.UPHELD
    assert manager.get_challenge(1).status == ChallengeStatus.OPEN  # not ours: left alone
    states = [(c.challenge_id, c.state) for c in store.list_challenges()]
    assert states == [(1, ChallengeState.EXPIRED), (2, ChallengeState.UPHELD)]
    assert store.list_sent_challenges() == []
    pipeline.close()


def test_a_challenge_id_a_reorg_gave_to_another_challenge_of_ours_is_recorded_for_it(tmp_path: Path, db: str) -> None:
    """A reorg drops our challenge for good; its leaf is challenged again, and the chain gives that
    challenge the same id: its row was kept as the old, expired one, and the new challenge was
    never resolved."""
    pipeline, network, manager, resolver, store = _opened_not_resolved(db, tmp_path)
    [row] = store.list_challenges()
    manager.challenges.clear()
    manager.leaves.clear()
    network.block = row.opened_block + CHALLENGE_GONE_DEPTH
    resolver.advance_all()
    challenger = _challenger_of(pipeline, network, manager, store, resolver)
    for _ in range(3):
        challenger.poll()
        network.block += 1
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD  # sent again, as id 1, and resolved
    assert [(c.challenge_id, c.state) for c in store.list_challenges()] == [(1, ChallengeState.UPHELD)]
    pipeline.close()


def test_a_challenge_ended_by_someone_else_is_recorded(tmp_path: Path, db: str) -> None:
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", window=2)
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    challenger.poll()
    network.block += 3
    manager.expire_challenge(1)  # another watcher expired it first
    challenger.poll()
    assert [c.state for c in store.list_challenges()] == [ChallengeState.EXPIRED]
    assert manager.calls.count("expire") == 1
    pipeline.close()


def test_an_escalation_answer_that_contradicts_an_earlier_one_is_proven(tmp_path: Path, db: str) -> None:
    """An operator rejected the leaf when the challenger re-checked it, then accepts it when asked
    for the escalation certificate: the challenger proves the equivocation (once)."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x00", threshold_bps=6667)
    store = ChallengerStore(db)
    evidence = EvidenceBook(store.session, AttestationRow, EquivocationRow, manager, store.clock)
    resolver = Resolver(DOMAIN, store, manager, network, network, verify_timeout=5, evidence=evidence)
    feed = Feed(pipeline, network)
    challenger = Challenger(feed, feed, Checker(Verdict.REJECT), manager, store, resolver, 1.0, 0)
    [finding] = challenger.poll()
    turncoat = network.operators[2]
    earlier = turncoat.attest(finding.request_hash, finding.output_hash, Verdict.REJECT)
    evidence.record(
        turncoat.keys.operator_id,
        SignedAttestation(Attestation(finding.request_hash, finding.output_hash, Verdict.REJECT), earlier),
    )
    network.block += 1
    challenger.poll()  # the colluding quorum 0 certifies ACCEPT: dismissed, and the turncoat is proven
    assert manager.get_challenge(1).status == ChallengeStatus.DISMISSED
    assert manager.equivocations == [(turncoat.keys.operator_id, finding.request_hash)]
    assert [e.state for e in evidence.list_equivocations()] == [ProofState.PROVEN]
    pipeline.close()


def test_a_reject_the_escalation_quorum_overrules_costs_no_bond(tmp_path: Path) -> None:
    """One checker REJECTs a correct leaf (a lying or broken operator): asked first, the escalation
    quorum would ACCEPT, so no challenge is opened and no bond is lost. A leaf the escalation quorum
    rejects is still challenged."""
    pipeline, network = certified_pipeline(tmp_path, 1)
    manager = FakeFaultManager(network)
    store = ChallengerStore("sqlite://")
    resolver = Resolver(DOMAIN, store, manager, network, network, verify_timeout=5)
    feed = Feed(pipeline, network)
    challenger = Challenger(
        feed, feed, Checker(Verdict.REJECT), manager, store, sample_rate=1.0, start_block=0,
        confirm=resolver.predict_verdict,
    )  # fmt: skip
    [finding] = challenger.poll()
    assert finding.verdict == Verdict.ACCEPT and finding.detail.startswith("minority REJECT overruled")
    assert manager.challenges == {} and store.list_challenges() == []
    pipeline.close()

    colluded, network = colluded_pipeline(tmp_path / "colluded")
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    store = ChallengerStore("sqlite://")
    resolver = Resolver(DOMAIN, store, manager, network, network, verify_timeout=5)
    feed = Feed(colluded, network)
    challenger = Challenger(
        feed, feed, Checker(Verdict.REJECT), manager, store, sample_rate=1.0, start_block=0,
        confirm=resolver.predict_verdict,
    )  # fmt: skip
    [finding] = challenger.poll()
    assert finding.detail == "challenged" and len(manager.challenges) == 1
    colluded.close()


def test_a_timed_out_challenge_is_not_checked_again_and_is_resolved_once_mined(tmp_path: Path, db: str) -> None:
    """The receipt wait times out, then the aggregator is unreachable: the REJECT was decided, so the
    leaf is neither checked again nor given up unchecked; the marked send is adopted once mined."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = MempoolFaultManager(network, escalation_quorums=b"\x01")
    checker = Checker(Verdict.REJECT)
    challenger, _, store = make_challenger(db, pipeline, network, manager, checker)
    challenger.check_attempts = 2
    assert challenger.poll() == []  # timed out: the send marked, the leaf no longer pending
    assert store.list_pending_checks() == [] and len(store.list_sent_challenges()) == 1
    feed = challenger.leaves
    assert isinstance(feed, Feed)

    def unreachable(request_hash: bytes) -> ag.Certificate:
        raise ConnectionError("aggregator down")

    feed.get_certificate = unreachable  # type: ignore[method-assign]
    for _ in range(3):
        assert challenger.poll() == []
    assert len(checker.checked) == 1 and store.list_findings() == []
    manager.mine()
    network.block += 1
    [adopted] = challenger.poll()
    assert adopted.detail == "challenged (adopted from the chain)" and adopted.challenge_id == 1
    assert [(c.challenge_id, c.state) for c in store.list_challenges()] == [(1, ChallengeState.UPHELD)]
    assert store.list_sent_challenges() == []
    pipeline.close()


def test_a_guessed_challenge_id_is_not_taken_for_ours(tmp_path: Path, db: str) -> None:
    """Ours times out; resent, the pending state reverts LeafAlreadyChallenged(1), a guess; then
    someone else's challenge of another leaf is mined as 1 and ours as 2. Ours is read from the
    mined state (latestChallengeOfLeaf): 2 is resolved, 1 is left alone."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = MempoolFaultManager(network, escalation_quorums=b"\x01")
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    challenger.poll()
    assert challenger.poll() == []  # resent: LeafAlreadyChallenged(1) on the pending state, not taken
    assert store.list_challenges() == [] and manager.in_mempool is not None
    header = manager.in_mempool[0]
    FakeFaultManager.challenge(manager, header, b"", (b"\x07" * 32, b"\x08" * 32), [])  # theirs: id 1
    manager.mine()  # ours: id 2
    network.block += 1
    challenger.poll()
    assert [(c.challenge_id, c.state) for c in store.list_challenges()] == [(2, ChallengeState.UPHELD)]
    assert manager.get_challenge(1).status == ChallengeStatus.OPEN
    pipeline.close()


class FailingSends(FakeFaultManager):
    """The first ``failures`` challenge transactions fail without reaching the chain (RPC down, the
    bond token short: reverts the challenger cannot decode, or a timeout that dropped the transaction)."""

    failures = 0

    def challenge(
        self, header: BatchHeader, signatory_record_hash: bytes, leaf: tuple[bytes, bytes], proof: Sequence[bytes]
    ) -> OpenedChallenge:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("https://rpc.example.invalid/v3/SECRETKEY unreachable")
        return super().challenge(header, signatory_record_hash, leaf, proof)


def test_a_challenge_that_fails_to_send_is_sent_again_for_as_long_as_the_window_is_open(
    tmp_path: Path, db: str
) -> None:
    """More failed sends than ``check_attempts``: a decided REJECT is not given up while the chain's
    challenge window is open, and the operators are not asked again."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FailingSends(network, escalation_quorums=b"\x01", challenge_window=10_000)
    manager.failures = 12
    checker = Checker(Verdict.REJECT)
    challenger, _, store = make_challenger(db, pipeline, network, manager, checker)
    challenger.check_attempts = 3
    for _ in range(12):
        assert challenger.poll() == []
        network.block += 1
    [finding] = challenger.poll()
    assert finding.detail == "challenged" and finding.challenge_id == 1
    assert len(checker.checked) == 1 and store.list_sent_challenges() == []
    network.block += 5  # the escalation certificate is for a reference block from the challenge's on
    challenger.poll()
    assert [c.state for c in store.list_challenges()] == [ChallengeState.UPHELD]
    pipeline.close()


def test_a_challenge_not_sent_before_the_window_closes_is_refused_for_good(tmp_path: Path, db: str) -> None:
    """A mark never shown by the chain (a transaction dropped from the mempool) is sent again; once the
    window has closed the chain refuses it, and only then the leaf is given up."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FailingSends(network, escalation_quorums=b"\x01", challenge_window=5)
    manager.failures = 1_000
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    while network.block <= network.certified[1][0] + 5:
        assert challenger.poll() == [] and len(store.list_sent_challenges()) == 1
        network.block += 1
    manager.failures = 0
    [finding] = challenger.poll()
    assert finding.verdict == Verdict.REJECT and "challenge refused" in finding.detail
    assert "ChallengeWindowClosed" in finding.detail
    assert store.list_sent_challenges() == [] and store.list_pending_checks() == [] and manager.challenges == {}
    assert challenger.poll() == []
    pipeline.close()


def test_a_challenge_someone_else_upheld_halfway_is_adopted_and_slashed_to_the_end(tmp_path: Path, db: str) -> None:
    """Another challenger opened and resolved the challenge, then stopped with signers left to slash:
    ours finds the leaf challenged, adopts the challenge as open and finishes the slashing."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    manager.max_slashes_per_call = 1
    manager.fail_continues = 10**6  # the other challenger's continueSlashing never gets through
    theirs, their_resolver, their_store = make_challenger("sqlite://", pipeline, network, manager)
    theirs.poll()
    network.block += 1
    theirs.poll()
    assert manager.get_pending_slashing(1).is_pending
    their_resolver.close()
    their_store.close()
    manager.fail_continues = 0
    ours, _, store = make_challenger(db, pipeline, network, manager)
    [finding] = ours.poll()
    assert finding.detail == "already challenged" and finding.challenge_id == 1
    assert len(manager.slashed[1]) == 3 and not manager.get_pending_slashing(1).is_pending
    assert [c.state for c in store.list_challenges()] == [ChallengeState.UPHELD]
    pipeline.close()


class LeavesDownFeed(Feed):
    """The aggregator cannot give the batch's leaves while ``down`` (the chain's events still come)."""

    down = True

    def get_certified_batches(self, from_block: int, to_block: int) -> list[CertifiedBatch]:
        down, self.down = self.down, False
        try:
            return super().get_certified_batches(from_block, to_block)
        finally:
            self.down = down

    def get_batch_leaves(self, batch_index: int) -> list[BatchLeaf]:
        if self.down:
            raise ConnectionError("aggregator down")
        return super().get_batch_leaves(batch_index)


def test_a_crash_while_checking_a_deferred_batchs_leaves_keeps_them_pending(tmp_path: Path, db: str) -> None:
    pipeline, network = certified_pipeline(tmp_path, 2)
    feed, manager = LeavesDownFeed(pipeline, network), FakeFaultManager(network)
    store = ChallengerStore(db)
    challenger = Challenger(feed, feed, Checker(Verdict.ACCEPT), manager, store, sample_rate=1.0, start_block=0)
    assert challenger.poll() == []  # the batch is deferred
    feed.down = False

    class Crashing(Checker):
        def check(self, certificate: ag.Certificate) -> Verdict:
            raise KeyboardInterrupt("killed while checking")

    crashing = Challenger(feed, feed, Crashing(Verdict.ACCEPT), manager, store, sample_rate=1.0)
    with pytest.raises(KeyboardInterrupt):
        crashing.poll()
    leaves = [leaf.request_hash for leaf in feed.get_batch_leaves(1)]
    assert {row.request_hash for row in store.list_pending_checks()} == set(leaves)
    again = Challenger(feed, feed, Checker(Verdict.ACCEPT), manager, store, sample_rate=1.0)
    assert sorted(f.request_hash for f in again.poll()) == sorted(leaves)
    assert store.list_pending_checks() == []
    pipeline.close()


def test_errors_kept_in_the_database_hold_no_rpc_url_secret(tmp_path: Path, db: str) -> None:
    """The store is backed up and read by more people than the key's owner: an RPC URL's path, where
    providers put API keys, is cut from the errors it keeps, as from the logs."""
    pipeline, network = certified_pipeline(tmp_path, 1)
    challenger, _, store = make_challenger(db, pipeline, network, FakeFaultManager(network))
    challenger.check_attempts = 2

    class Unreachable:
        def get_batch_leaves(self, batch_index: int) -> list[BatchLeaf]:
            raise ConnectionError("HTTPSConnectionPool(host='rpc.example.io'): https://rpc.example.io/v3/SECRETKEY")

        def get_certificate(self, request_hash: bytes) -> ag.Certificate:
            raise AssertionError("no leaves, no certificates")

    challenger.leaves = Unreachable()
    assert challenger.poll() == []
    [pending] = store.list_pending_checks()
    assert "rpc.example.io" in pending.error and "SECRETKEY" not in pending.error
    [given_up] = challenger.poll()
    assert "unchecked after 2 attempts" in given_up.detail
    [stored] = store.list_findings()
    assert "rpc.example.io/..." in stored.detail and "SECRETKEY" not in stored.detail
    pipeline.close()


class LyingLeaves(Feed):
    """The watched aggregator answers GetBatch with a list that is not the certified one."""

    def __init__(self, pipeline: Pipeline, network: FakeNetwork, lie: str) -> None:
        super().__init__(pipeline, network)
        self.lie = lie

    def get_batch_leaves(self, batch_index: int) -> list[BatchLeaf]:
        leaves = super().get_batch_leaves(batch_index)
        return [] if self.lie == "empty" else leaves[1:]


@pytest.mark.parametrize("lie", ["empty", "one left out"])
def test_a_leaf_list_that_does_not_build_the_certified_root_is_a_finding(tmp_path: Path, lie: str) -> None:
    """Leaving a wrong output out of GetBatch's answer would keep it from being sampled: the list must
    rebuild the root the chain certified, else the batch is reported, not taken as checked."""
    pipeline, network = certified_pipeline(tmp_path, 3)
    feed, checker = LyingLeaves(pipeline, network, lie), Checker(Verdict.ACCEPT)
    store = ChallengerStore("sqlite://")
    challenger = Challenger(feed, feed, checker, None, store, sample_rate=1.0, start_block=0)
    [finding] = challenger.poll()
    assert finding.verdict is None and finding.request_hash == b""
    assert "do not build the certified leaves root" in finding.detail
    assert checker.checked == [] and store.list_pending_checks() == []
    challenger.store.set_next_block(0)  # a re-scan (a restart) reports it once
    assert challenger.poll() == [] and len(store.list_findings()) == 1
    pipeline.close()


class SlowChecker:
    """REJECTs the first leaf it sees; every other leaf's check takes a block (a slow operator)."""

    def __init__(self, network: FakeNetwork) -> None:
        self.network = network
        self.first: bytes | None = None

    def check(self, certificate: ag.Certificate) -> Verdict:
        request_hash = bytes(certificate.request_hash)
        if self.first in (None, request_hash):
            self.first = request_hash
            return Verdict.REJECT
        self.network.block += 1
        return Verdict.ACCEPT


def test_a_long_poll_moves_the_open_challenges_on_between_leaves(tmp_path: Path, db: str) -> None:
    """A big batch checked leaf by leaf takes longer than the resolution window: the open challenge is
    resolved in the middle of the poll, not expired at its end."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", window=10)
    store = ChallengerStore(db)
    resolver = Resolver(DOMAIN, store, manager, network, network, verify_timeout=5)
    feed = Feed(pipeline, network)
    clock = lambda: 12.0 * network.block  # noqa: E731  # 12 s blocks
    challenger = Challenger(
        feed, feed, SlowChecker(network), manager, store, resolver, sample_rate=1.0, start_block=0, clock=clock
    )
    [finding] = challenger.poll()
    assert finding.detail == "challenged"
    for operator in network.operators[:3]:
        operator.behaviour = "honest"
    network.block += 1
    for i in range(12):  # certified meanwhile: 12 blocks of checks, beyond the 10-block window
        pipeline.submit(make_envelope(100 + i, f"more {i}"))
    pipeline.run_until_idle()
    network.block += 1
    challenger.poll()
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD
    assert [c.state for c in store.list_challenges()] == [ChallengeState.UPHELD]
    pipeline.close()


def test_a_challenge_adopted_under_an_id_recorded_for_another_leaf_replaces_it(tmp_path: Path, db: str) -> None:
    """After a reorg the chain names another leaf's challenge with an id the store holds for an open
    one: the new one is recorded (it was dropped: add_challenge refused it) and the old leaf's
    challenge is looked up again."""
    pipeline, network, manager, resolver, store = _opened_not_resolved(db, tmp_path)
    [row] = store.list_challenges()
    challenger = _challenger_of(pipeline, network, manager, store, resolver)
    other = ag.Certificate(request_hash=b"\x07" * 32, output_hash=b"\x08" * 32)
    other.batch_header.batch_index = row.batch_index
    challenger._adopt(row.challenge_id, other, row.opened_block + 3)
    [adopted] = store.list_challenges()
    assert (adopted.challenge_id, adopted.request_hash, adopted.state) == (row.challenge_id, b"\x07" * 32, "OPEN")
    assert [m.request_hash for m in store.list_sent_challenges()] == [row.request_hash]
    challenger._adopt(row.challenge_id, other, row.opened_block + 3)  # again: the same challenge, kept
    assert [c.opened_block for c in store.list_challenges()] == [row.opened_block + 3]
    pipeline.close()


def test_a_requeued_challenge_is_not_taken_for_an_older_expired_one_of_its_leaf(tmp_path: Path, db: str) -> None:
    """Someone's challenge of the leaf expired (a 2-block resolution window), then ours opened. A
    reorg drops ours, and latestChallengeOfLeaf names theirs again: adopting that dead challenge
    left the fraud unchallenged. Ours is sent again and upheld."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", window=2)
    feed = Feed(pipeline, network)
    someone = ChallengerStore("sqlite://")
    Challenger(feed, feed, Checker(Verdict.REJECT), manager, someone, None, sample_rate=1.0, start_block=0).poll()
    network.block += 3
    manager.expire_challenge(1)
    _, resolver, store = make_challenger(db, pipeline, network, manager)
    Challenger(feed, feed, Checker(Verdict.REJECT), manager, store, None, sample_rate=1.0, start_block=0).poll()
    [ours] = store.list_challenges()
    assert ours.challenge_id == 2
    del manager.challenges[2]  # the reorg
    manager.leaves[(ours.batch_index, ours.request_hash, ours.output_hash)] = 1
    network.block = ours.opened_block + CHALLENGE_GONE_DEPTH
    challenger = _challenger_of(pipeline, network, manager, store, resolver)
    for _ in range(3):
        challenger.poll()
        network.block += 1
    assert manager.calls.count("challenge") == 3  # theirs, ours, ours again
    assert manager.get_challenge(2).status == ChallengeStatus.UPHELD
    assert [(c.challenge_id, c.state) for c in store.list_challenges()] == [(2, ChallengeState.UPHELD)]
    pipeline.close()


def test_a_leafs_finding_names_the_challenge_opened_again_after_a_reorg(tmp_path: Path, db: str) -> None:
    """A reorg drops our challenge and gives its id to someone's challenge of another leaf: the leaf
    is challenged again, as id 2, and its finding names that challenge, not the id it lost."""
    pipeline, network, manager, resolver, store = _opened_not_resolved(db, tmp_path)
    [before] = store.list_findings()
    ours = manager.challenges[1]
    assert before.challenge_id == 1 and before.challenge_tx
    manager.challenges[1] = dataclasses.replace(ours, request_hash=b"\x07" * 32)
    del manager.leaves[(ours.batch_index, ours.request_hash, ours.output_hash)]
    challenger = _challenger_of(pipeline, network, manager, store, resolver)
    for _ in range(3):
        challenger.poll()
        network.block += 1
    assert manager.get_challenge(2).status == ChallengeStatus.UPHELD
    [after] = store.list_findings()
    assert after.challenge_id == 2 and after.challenge_tx not in (None, before.challenge_tx)
    assert after.detail == "challenged"
    pipeline.close()


def test_batches_past_their_challenge_window_are_not_checked_while_escalating(tmp_path: Path, db: str) -> None:
    """Back from a downtime: batch 1 can no longer be challenged, batch 2 still can. Checking batch
    1's leaves first spent the time batch 2 had left; it is recorded as such, unchecked."""
    pipeline, network = colluded_pipeline(tmp_path)
    network.block += 50
    pipeline.submit(make_envelope(1, "leaf 1"))
    pipeline.run_until_idle()
    assert sorted(network.certified) == [1, 2]
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", challenge_window=30)
    checker = Checker(Verdict.REJECT)
    challenger, _, store = make_challenger(db, pipeline, network, manager, checker)
    findings = challenger.poll()
    [late_leaf] = Feed.get_batch_leaves(Feed(pipeline, network), 2)
    assert checker.checked == [late_leaf.request_hash]
    assert [(f.batch_index, f.request_hash, f.verdict) for f in findings] == [
        (1, b"", None),
        (2, late_leaf.request_hash, Verdict.REJECT),
    ]
    assert "challenge window closed" in findings[0].detail and findings[1].detail == "challenged"
    assert store.list_pending_checks() == []
    pipeline.close()


def test_a_batch_at_its_last_challengeable_block_is_closed_for_a_challenge_sent_now(tmp_path: Path, db: str) -> None:
    """A transaction sent at head H runs in block H + 1: at H == the batch's challenge deadline the
    chain would refuse the challenge, so the batch is recorded closed, not checked for nothing."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", challenge_window=30)
    network.block = manager.get_challenge_window().deadline(network.certified[1][0])
    checker = Checker(Verdict.REJECT)
    challenger, _, _ = make_challenger(db, pipeline, network, manager, checker)
    [finding] = challenger.poll()
    assert finding.verdict is None and "challenge window closed" in finding.detail
    assert checker.checked == []
    pipeline.close()


def test_a_batch_certified_before_the_window_was_lowered_is_still_checked(tmp_path: Path, db: str) -> None:
    """Batch 1 was certified under a 100-block window, lowered to 30 since: it keeps its window on
    chain (``challengeDeadline``), so it is checked and challenged, not skipped as closed."""
    pipeline, network = colluded_pipeline(tmp_path)
    network.block += 50
    pipeline.submit(make_envelope(1, "leaf 1"))
    pipeline.run_until_idle()
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", challenge_window=30)
    manager.lowered_window = (100, network.certified[1][0] + 1)
    challenger, _, _ = make_challenger(db, pipeline, network, manager, Checker(Verdict.REJECT))
    findings = challenger.poll()
    assert [(f.batch_index, f.verdict, f.detail) for f in findings] == [
        (1, Verdict.REJECT, "challenged"),
        (2, Verdict.REJECT, "challenged"),
    ]
    pipeline.close()


def test_an_open_challenge_past_its_resolution_window_is_expired_not_adopted(tmp_path: Path, db: str) -> None:
    """Someone's challenge of the leaf was never resolved nor expired, and is past its resolution
    window: it can only expire now. Adopting it left the fraud unpunished (the resolver expired it
    and the leaf was done); the contract refuses a new challenge of the leaf while it is open, so the
    challenger expires it, then opens its own, which is upheld."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", window=2)
    feed = Feed(pipeline, network)
    someone = ChallengerStore("sqlite://")
    Challenger(feed, feed, Checker(Verdict.REJECT), manager, someone, None, sample_rate=1.0, start_block=0).poll()
    network.block += 3  # theirs is still OPEN on chain, past openedBlock + resolutionWindowBlocks
    assert manager.get_challenge(1).status == ChallengeStatus.OPEN
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    for _ in range(3):
        challenger.poll()
        network.block += 1
    assert manager.get_challenge(1).status == ChallengeStatus.EXPIRED
    assert manager.get_challenge(2).status == ChallengeStatus.UPHELD
    assert [(c.challenge_id, c.state) for c in store.list_challenges()] == [(2, ChallengeState.UPHELD)]
    [finding] = store.list_findings()
    assert finding.challenge_id == 2 and finding.detail == "challenged"
    assert store.list_sent_challenges() == [] and store.list_pending_checks() == []
    pipeline.close()


@pytest.mark.parametrize("blocks_left", [0, 1])
def test_someones_open_challenge_is_adopted_up_to_the_last_block_of_its_window(
    tmp_path: Path, db: str, blocks_left: int
) -> None:
    """At the last block of its resolution window someone's open challenge can only be expired (a
    resolve sent then runs a block later, past it): expired, and ours opened. A block before, it is
    adopted and resolved in time."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", window=3)
    feed = Feed(pipeline, network)
    someone = ChallengerStore("sqlite://")
    Challenger(feed, feed, Checker(Verdict.REJECT), manager, someone, None, sample_rate=1.0, start_block=0).poll()
    theirs = manager.get_challenge(1)
    network.block = theirs.opened_block + theirs.resolution_window - blocks_left
    challenger, _, _ = make_challenger(db, pipeline, network, manager)
    challenger.poll()
    if blocks_left == 0:
        assert manager.get_challenge(1).status == ChallengeStatus.EXPIRED and "resolve" not in manager.calls
        for _ in range(2):  # ours is sent at the next poll and resolved once its block is referenced
            network.block += 1
            challenger.poll()
        assert manager.get_challenge(2).status == ChallengeStatus.UPHELD
    else:
        assert manager.get_challenge(1).status == ChallengeStatus.UPHELD and 2 not in manager.challenges
    pipeline.close()


def test_a_requeued_leaf_is_not_given_a_stale_open_challenge(tmp_path: Path, db: str) -> None:
    """The same through the "to challenge" mark: a reorg drops ours and latestChallengeOfLeaf names
    someone's open challenge past its resolution window. It is expired, and ours is sent again."""
    pipeline, network, manager, resolver, store = _opened_not_resolved(db, tmp_path)
    [ours] = store.list_challenges()
    theirs = dataclasses.replace(manager.challenges[1], challenger="0x" + "ee" * 20, opened_block=1)
    manager.challenges = {5: theirs}  # the reorg: only their stale, still OPEN, challenge of the leaf
    manager.leaves[(ours.batch_index, ours.request_hash, ours.output_hash)] = 5
    network.block = ours.opened_block + CHALLENGE_GONE_DEPTH
    resolver.advance_all()  # ours is given up; its leaf is marked "to challenge" again
    assert len(store.list_sent_challenges()) == 1
    challenger = _challenger_of(pipeline, network, manager, store, resolver)
    for _ in range(3):
        challenger.poll()
        network.block += 1
    assert manager.get_challenge(5).status == ChallengeStatus.EXPIRED
    assert manager.get_challenge(2).status == ChallengeStatus.UPHELD  # ours, sent again
    assert [(c.challenge_id, c.state) for c in store.list_challenges()] == [
        (1, ChallengeState.EXPIRED),  # ours, given up to the reorg
        (2, ChallengeState.UPHELD),
    ]
    assert [f.challenge_id for f in store.list_findings()] == [2]
    pipeline.close()


def test_a_challenge_adopted_after_a_crash_names_its_transaction(tmp_path: Path, db: str) -> None:
    """The finding of a challenge adopted from the chain names the transaction that opened it (its
    ChallengeOpened log), and so does its challenge row."""
    pipeline, network, manager = _crash_after_the_challenge(tmp_path, db)
    mined = keccak(b"challenge" + (1).to_bytes(8, "big"))  # FakeFaultManager's transaction of challenge 1
    looked_up: list[tuple[int, int]] = []

    def find_challenge_tx(challenge_id: int, opened_block: int) -> bytes | None:
        looked_up.append((challenge_id, opened_block))
        return keccak(b"challenge" + challenge_id.to_bytes(8, "big"))

    again, _, store = make_challenger(db, pipeline, network, manager)
    again.find_challenge_tx = find_challenge_tx
    [finding] = again.poll()
    assert finding.detail == "challenged (adopted from the chain)" and finding.challenge_id == 1
    assert finding.challenge_tx == mined and looked_up == [(1, manager.get_challenge(1).opened_block)]
    [stored] = store.list_findings()
    assert stored.challenge_tx == mined
    [row] = store.list_challenges()
    assert row.open_tx == mined and row.state == ChallengeState.UPHELD
    pipeline.close()


def test_a_challenge_transaction_not_found_does_not_stop_the_adoption(tmp_path: Path, db: str) -> None:
    pipeline, network, manager = _crash_after_the_challenge(tmp_path, db)

    def unreachable(challenge_id: int, opened_block: int) -> bytes | None:
        raise ConnectionError("https://rpc.example.invalid/v3/SECRETKEY unreachable")

    again, _, store = make_challenger(db, pipeline, network, manager)
    again.find_challenge_tx = unreachable
    [finding] = again.poll()
    assert finding.challenge_id == 1 and finding.challenge_tx is None  # recorded without it
    assert [c.state for c in store.list_challenges()] == [ChallengeState.UPHELD]
    pipeline.close()


class CountingWindowReads(FakeFaultManager):
    window_reads = 0

    def get_challenge_window(self) -> ChallengeWindow:
        self.window_reads += 1
        return super().get_challenge_window()


def test_the_challenge_window_is_read_once_per_poll(tmp_path: Path, db: str) -> None:
    """Every batch and leaf is checked against the challenge window; the task manager's config is
    read once per poll, not with an RPC call each."""
    pipeline, network = certified_pipeline(tmp_path, 3)
    network.block += 1
    for i in range(3):
        pipeline.submit(make_envelope(10 + i, f"more {i}"))
    pipeline.run_until_idle()
    assert len(network.certified) >= 2
    manager = CountingWindowReads(network, challenge_window=10_000)
    challenger, _, _ = make_challenger(db, pipeline, network, manager, Checker(Verdict.ACCEPT))
    assert len(challenger.poll()) == 6
    assert manager.window_reads == 1
    network.block += 1
    pipeline.submit(make_envelope(20, "one more"))
    pipeline.run_until_idle()
    assert len(challenger.poll()) == 1
    assert manager.window_reads == 2  # read again at the next poll (governance may change it)
    pipeline.close()


REQUEST, GOOD, BAD, ELSE = (keccak(text=name) for name in ("R", "good", "bad", "else"))


class TwiceCertified:
    """``BatchFeed`` and ``LeafSource`` of one batch whose tree holds two outputs of one request,
    (R, good) and (R, bad), and one other leaf; GetStatus(R) answers (R, good)'s certificate."""

    leaves = (BatchLeaf(REQUEST, GOOD), BatchLeaf(ELSE, ELSE), BatchLeaf(REQUEST, BAD))
    header = BatchHeader(7, compute_merkle_tree(leaves).root, 90, b"\x00")

    def __init__(self) -> None:
        self.down = False

    def get_block_number(self) -> int:
        return 100

    def get_certified_batches(self, from_block: int, to_block: int) -> list[CertifiedBatch]:
        return [CertifiedBatch(self.header, b"\x11" * 32, 95)] if from_block <= 95 <= to_block else []

    def get_batch_leaves(self, batch_index: int) -> list[BatchLeaf]:
        return list(self.leaves)

    def get_certificate(self, request_hash: bytes) -> ag.Certificate:
        if self.down:
            raise ConnectionError("the aggregator is down")
        certificate = ag.Certificate(request_hash=REQUEST, output_hash=GOOD, signatory_record_hash=b"\x11" * 32)
        certificate.batch_header.batch_index, certificate.batch_header.leaves_root = 7, self.header.leaves_root
        certificate.batch_header.reference_block, certificate.batch_header.quorum_numbers = 90, b"\x00"
        certificate.merkle_proof.extend(compute_merkle_tree(self.leaves).get_proof(0))
        return certificate


class OutputChecker:
    """Rejects the bad output; records the outputs it was asked about."""

    def __init__(self) -> None:
        self.outputs: list[bytes] = []

    def check(self, certificate: ag.Certificate) -> Verdict:
        self.outputs.append(bytes(certificate.output_hash))
        return Verdict.REJECT if bytes(certificate.output_hash) == BAD else Verdict.ACCEPT


@pytest.fixture
def genuine_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The colluding signers really signed the batch: its certificates verify offline."""
    monkeypatch.setattr(core, "verify_certificate", lambda certificate: CertificateCheck((), {}))


@pytest.mark.usefixtures("genuine_certificates")
def test_every_output_certified_for_one_request_is_looked_at(db: str) -> None:
    """GetStatus answers one certificate per request: the challenger sampled request hashes, so it
    checked (R, good) and never looked at the certified (R, bad), which the chain lets anyone
    challenge. Every leaf of such a request is sampled (here at a sample rate of 0); the one the
    certificate is not for cannot be re-verified (its tokens are not to be had): reported, not
    accepted."""
    source, checker, store = TwiceCertified(), OutputChecker(), ChallengerStore(db)
    challenger = Challenger(source, source, checker, None, store, sample_rate=0.0, start_block=0)
    findings = challenger.poll()
    assert [(f.request_hash, f.output_hash, f.verdict) for f in findings] == [
        (REQUEST, GOOD, Verdict.ACCEPT),
        (REQUEST, BAD, None),
    ]
    assert findings[1].detail == OTHER_OUTPUT and checker.outputs == [GOOD]
    challenger.store.set_next_block(0)  # a re-scan finds each leaf's finding: nothing new
    assert challenger.poll() == [] and store.list_pending_checks() == []
    store.close()


@pytest.mark.usefixtures("genuine_certificates")
def test_both_outputs_of_a_request_wait_for_a_retry(db: str) -> None:
    """Pending checks are kept per leaf (migration c0004; it was one per (batch, request)): with the
    aggregator down, (R, good) and (R, bad) both wait for the next poll, each with its own attempts."""
    source, checker, store = TwiceCertified(), OutputChecker(), ChallengerStore(db)
    challenger = Challenger(source, source, checker, None, store, sample_rate=0.0, start_block=0)
    source.down = True
    assert challenger.poll() == []
    assert sorted((r.output_hash, r.attempts) for r in store.list_pending_checks()) == sorted([(GOOD, 1), (BAD, 1)])
    source.down = False
    findings = challenger.poll()
    assert sorted((f.output_hash, f.verdict is None) for f in findings) == sorted([(GOOD, False), (BAD, True)])
    assert store.list_pending_checks() == [] and len(store.list_findings()) == 2
    store.close()


def test_a_challenge_a_reorg_dropped_is_sent_again_within_the_challenge_window(tmp_path: Path, db: str) -> None:
    """A reorg drops our challenge and the chain names none for its leaf. The resolver waited
    CHALLENGE_GONE_DEPTH (64) blocks before handing the leaf back, past the deployed 50-block
    challenge window: the challenge sent again was always refused. Sending it again at once risks no
    bond (ours still pending would make the gas estimate revert LeafAlreadyChallenged)."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", window=100, challenge_window=50)
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    [finding] = challenger.poll()
    deadline = manager.get_challenge_window().deadline(network.certified[finding.batch_index][0])
    manager.challenges.clear()  # a reorg dropped the challenge transaction
    manager.leaves.clear()
    while not manager.challenges and network.block < deadline:
        network.block += 1
        challenger.poll()
    assert manager.challenges, "not sent again while the challenge window was open"
    for _ in range(2):
        network.block += 1
        challenger.poll()
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD
    assert [(c.challenge_id, c.state) for c in store.list_challenges()] == [(1, ChallengeState.UPHELD)]
    assert store.list_sent_challenges() == []
    pipeline.close()


def test_a_dropped_challenge_past_the_challenge_window_is_waited_for(tmp_path: Path, db: str) -> None:
    """Past the batch's challenge window a challenge sent again would be refused for good, so the
    leaf is not handed back early: a challenge the reorg's chain mines again is still resolved."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", window=100, challenge_window=5)
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    challenger.poll()
    dropped = dict(manager.challenges), dict(manager.leaves)
    manager.challenges.clear()  # a reorg dropped the challenge transaction
    manager.leaves.clear()
    network.block += 10
    challenger.poll()
    assert [c.state for c in store.list_challenges()] == [ChallengeState.OPEN]
    assert store.list_sent_challenges() == [] and "challenge" not in manager.calls[1:]
    manager.challenges.update(dropped[0])  # mined again
    manager.leaves.update(dropped[1])
    network.block += 1
    challenger.poll()
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD
    pipeline.close()
