"""Rejected-output proofs survive what interrupts them: a leader that loses its lease while sending,
an unreachable chain, a restart. Each is kept PENDING in the shared database and sent again, by
whichever aggregator leads then; reverts settle it (proven, or failed for good)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from eth_utils import keccak
from web3.exceptions import Web3RPCError

from avs.chain.client import ContractRevertError, NonSignerStakesAndSignature
from avs.crypto.curve import G1Point
from avs.types import OperatorId
from avs_aggregator.evidence import ProofState
from avs_aggregator.leader import NotLeaderError
from avs_aggregator.pipeline import Pipeline
from avs_aggregator.ports import OperatorSet
from avs_aggregator.store import RequestRow, RequestState, Store
from tests.aggregator.fakes import DOMAIN, FakeNetwork
from tests.aggregator.test_pipeline import SETTINGS, find_envelope_with_primary

TWO_QUORUMS = dataclasses.replace(SETTINGS, allowed_quorums=frozenset({0, 1}))


class FlakyRejectionReporter:
    """Fails with the given errors first, then "sends" (records the proof, returns a tx hash)."""

    def __init__(self, failures: Sequence[Exception] = ()) -> None:
        self.failures = list(failures)
        self.sent: list[tuple[bytes, bytes, bytes, int]] = []
        self.quorums: list[bytes] = []  # each sent proof's quorum numbers

    def report_rejected_output(
        self,
        primary: OperatorId,
        request_hash: bytes,
        output_hash: bytes,
        primary_signature: G1Point,
        quorum_numbers: bytes,
        reference_block: int,
        certificate: NonSignerStakesAndSignature,
    ) -> bytes:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((bytes(primary), request_hash, output_hash, reference_block))
        self.quorums.append(quorum_numbers)
        return keccak(b"proveRejectedOutput" + request_hash)


def reject_once(network: FakeNetwork, db: str, reporter: FlakyRejectionReporter) -> tuple[Pipeline, bytes, bytes]:
    """A cheating primary's output is rejected by the rest; returns (pipeline, request, cheater)."""
    cheater = network.operators[0]
    cheater.behaviour = "cheat"
    pipeline = Pipeline(DOMAIN, Store(db), network, network, network, SETTINGS, reporter=reporter)
    request_hash = pipeline.submit(find_envelope_with_primary(network, cheater.keys.operator_id))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.attempt == 1
    return pipeline, request_hash, cheater.keys.operator_id


def test_a_proof_refused_by_a_demoted_leader_is_sent_by_the_next_leader(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    demoted = FlakyRejectionReporter([NotLeaderError("this aggregator does not hold the leader lease")])
    old_leader, request_hash, cheater = reject_once(network, db, demoted)
    [rejection] = old_leader.store.list_rejections(request_hash)
    assert rejection.state == ProofState.PENDING and rejection.attempts == 0 and rejection.tx_hash is None
    assert "leader lease" in (rejection.error or "")
    assert demoted.sent == []
    old_leader.close()

    reporter = FlakyRejectionReporter()
    new_leader = Pipeline(DOMAIN, Store(db), network, network, network, SETTINGS, reporter=reporter)
    assert new_leader.process_evidence() == 1
    [rejection] = new_leader.store.list_rejections(request_hash)
    assert rejection.state == ProofState.PROVEN and rejection.tx_hash == keccak(b"proveRejectedOutput" + request_hash)
    assert rejection.error is None and rejection.attempts == 1
    [(primary, sent_request, output_hash, _)] = reporter.sent
    assert (primary, sent_request, output_hash) == (cheater, request_hash, rejection.output_hash)
    assert new_leader.process_evidence() == 0  # proven once: nothing is sent again
    assert len(reporter.sent) == 1
    new_leader.close()


@pytest.mark.parametrize(
    ("revert", "state", "error"),
    [
        ("FaultAlreadySlashed", ProofState.PROVEN, "already proven on-chain"),  # the chain has it already
        ("StaleReferenceBlock", ProofState.PENDING, "StaleReferenceBlock"),  # counted; rebuilt at a fresh block
        ("InvalidAttestationSignature", ProofState.FAILED, "InvalidAttestationSignature"),  # never succeeds
        ("SomethingTransient", ProofState.PENDING, "SomethingTransient"),  # counted, tried again later
    ],
)
def test_reverts_settle_a_proof_or_count_an_attempt(db: str, revert: str, state: ProofState, error: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    reporter = FlakyRejectionReporter([ContractRevertError(revert, ())])
    pipeline, request_hash, _ = reject_once(network, db, reporter)
    [rejection] = pipeline.store.list_rejections(request_hash)
    assert (rejection.state, rejection.attempts) == (state, 1)
    assert error in (rejection.error or "")
    assert pipeline.process_evidence() == (1 if state == ProofState.PENDING else 0)
    pipeline.close()


@pytest.mark.parametrize("outage", [ConnectionError("node down"), Web3RPCError("rate limit exceeded")])
def test_an_unreachable_chain_keeps_the_proof_pending_without_using_up_attempts(db: str, outage: Exception) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    reporter = FlakyRejectionReporter([outage] * 12)
    pipeline, request_hash, _ = reject_once(network, db, reporter)
    for _ in range(11):  # more tries than max_attempts: a long outage must not give the proof up
        assert pipeline.process_evidence() == 0
    [rejection] = pipeline.store.list_rejections(request_hash)
    assert rejection.state == ProofState.PENDING and rejection.attempts == 0
    assert pipeline.process_evidence() == 1
    assert pipeline.store.list_rejections(request_hash)[0].state == ProofState.PROVEN
    pipeline.close()


def test_a_proof_delayed_past_the_reference_age_is_rebuilt_at_a_fresh_block(db: str) -> None:
    """The REJECT signatures are bound to no block: after an outage longer than maxReferenceAge the
    proof is built at a fresh reference block, with the stake the signers hold there."""
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    reporter = FlakyRejectionReporter([ConnectionError("node down")])
    pipeline, request_hash, cheater = reject_once(network, db, reporter)
    [rejection] = pipeline.store.list_rejections(request_hash)
    assert rejection.state == ProofState.PENDING
    network.block += SETTINGS.max_reference_age + 10  # the outage outlasts the reference block
    assert pipeline.process_evidence() == 1
    [(primary, _, _, reference_block)] = reporter.sent
    assert primary == cheater and reference_block == network.get_reference_block()[0]
    assert reference_block > rejection.reference_block + SETTINGS.max_reference_age
    pipeline.close()


class PrunedNetwork(FakeNetwork):
    """A node that keeps only the last 128 blocks of state (a full node, not an archive one)."""

    def get_operator_set(self, reference_block: int) -> OperatorSet:
        if reference_block < self.block - 128:
            raise ValueError(f"missing trie node: state of block {reference_block} is pruned")
        return super().get_operator_set(reference_block)


def test_a_late_proof_is_rebuilt_at_a_fresh_block_on_a_node_without_old_state(db: str) -> None:
    network = PrunedNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    reporter = FlakyRejectionReporter([ConnectionError("node down")])
    pipeline, _, cheater = reject_once(network, db, reporter)
    network.block += 200  # the outage outlasts the node's state of the rejection's reference block
    assert pipeline.process_evidence() == 1
    [(primary, _, _, reference_block)] = reporter.sent
    assert primary == cheater and reference_block == network.get_reference_block()[0]
    pipeline.close()


def test_a_late_proof_whose_signers_left_fails_with_the_stake_they_hold(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    reporter = FlakyRejectionReporter([ConnectionError("node down")])
    pipeline, request_hash, cheater = reject_once(network, db, reporter)
    network.block += SETTINGS.max_reference_age + 10
    for operator in network.operators[1:3]:  # two of the three REJECT signers deregistered meanwhile
        operator.stakes = {}
    network.by_id(cheater).stakes = {0: 100}  # and the primary restaked
    assert pipeline.process_evidence() == 0
    [rejection] = pipeline.store.list_rejections(request_hash)
    assert rejection.state == ProofState.FAILED and reporter.sent == []
    assert "quorum 0: 30/130" in (rejection.error or "") and "below 6667 bps" in (rejection.error or "")
    pipeline.close()


class ReentrantReporter(FlakyRejectionReporter):
    """While its send is in flight, the retry tick runs (as the batch thread would)."""

    pipeline: Pipeline | None = None

    def report_rejected_output(self, *args: object, **kwargs: object) -> bytes:
        if self.pipeline is not None and not self.sent:
            assert self.pipeline.report_pending_rejections() == 0  # the tick leaves the proof in flight alone
        return super().report_rejected_output(*args, **kwargs)  # type: ignore[arg-type]


def test_the_retry_tick_does_not_send_a_proof_that_is_being_sent(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    reporter = ReentrantReporter()
    cheater = network.operators[0]
    cheater.behaviour = "cheat"
    pipeline = Pipeline(DOMAIN, Store(db), network, network, network, SETTINGS, reporter=reporter)
    reporter.pipeline = pipeline
    request_hash = pipeline.submit(find_envelope_with_primary(network, cheater.keys.operator_id))
    pipeline.run_until_idle()
    [rejection] = pipeline.store.list_rejections(request_hash)
    assert rejection.state == ProofState.PROVEN and len(reporter.sent) == 1
    pipeline.close()


def test_a_failure_that_is_not_an_outage_counts_and_gives_up_after_the_attempts(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    reporter = FlakyRejectionReporter([ValueError("a panic the ABI does not decode")] * 20)
    pipeline, request_hash, _ = reject_once(network, db, reporter)
    for _ in range(12):
        pipeline.process_evidence()
    [rejection] = pipeline.store.list_rejections(request_hash)
    assert rejection.state == ProofState.FAILED and rejection.attempts == 10
    assert "panic" in (rejection.error or "") and reporter.sent == []
    pipeline.close()


class BlippingNode(FakeNetwork):
    """A node whose reads the proof is rebuilt from fail once each, when armed."""

    def __init__(self, stakes: Sequence[dict[int, int]], error: type[Exception] = ConnectionError) -> None:
        super().__init__(stakes)
        self.blips = {"reference_block": 0, "threshold": 0}
        self.error = error

    def _blip(self, read: str) -> None:
        if self.blips[read]:
            self.blips[read] -= 1
            raise self.error(f"the node failed reading the {read}")

    def get_reference_block(self) -> tuple[int, bytes]:
        self._blip("reference_block")
        return super().get_reference_block()

    def get_threshold_bps(self) -> int:  # a ThresholdReader, as the Web3 chain writer is
        self._blip("threshold")
        return 6667


@pytest.mark.parametrize("error", [ConnectionError, Web3RPCError])  # unreachable; a JSON-RPC error (rate limit)
@pytest.mark.parametrize("read", ["reference_block", "threshold"])
def test_a_failed_read_while_rebuilding_a_proof_does_not_give_it_up(db: str, read: str, error: type[Exception]) -> None:
    """A chain read of the rebuild (a fresh reference block for a stale proof, the threshold) that
    failed once marked a genuine proof FAILED for good: the cheating primary was never slashed."""
    network = BlippingNode([{0: 10}, {0: 30}, {0: 30}, {0: 30}], error)
    reporter = FlakyRejectionReporter([ConnectionError("node down")])  # the outage: stays PENDING
    pipeline, request_hash, cheater = reject_once(network, db, reporter)
    network.block += SETTINGS.max_reference_age + 10  # the outage outlasted its reference block
    network.blips[read] = 1
    assert pipeline.process_evidence() == 0
    [rejection] = pipeline.store.list_rejections(request_hash)
    assert rejection.state == ProofState.PENDING and rejection.attempts == 0, rejection.error
    assert pipeline.process_evidence() == 1  # the node answers again
    assert [sent[0] for sent in reporter.sent] == [cheater]
    pipeline.close()


def reject_in_two_quorums(
    network: FakeNetwork, db: str, reporter: FlakyRejectionReporter
) -> tuple[Pipeline, bytes, bytes]:
    """Operator 0, in quorums 0 and 1, is the primary of a request over both, and cheats."""
    cheater = network.operators[0]
    cheater.behaviour = "cheat"
    pipeline = Pipeline(DOMAIN, Store(db), network, network, network, TWO_QUORUMS, reporter=reporter)
    envelope = find_envelope_with_primary(network, cheater.keys.operator_id, b"\x00\x01")
    request_hash = pipeline.submit(envelope, quorums=b"\x00\x01")
    pipeline.run_until_idle()
    return pipeline, request_hash, cheater.keys.operator_id


def test_a_rejection_by_one_quorums_majority_is_proven_in_that_quorum(db: str) -> None:
    """Quorum 0's majority rejects the primary's output; quorum 1 is the primary and an ally that
    accepts anything. The output was neither rejected in every quorum nor accepted, so the request
    failed and the cheater kept its stake; now it is slashed in quorum 0 and the request retried."""
    network = FakeNetwork([{0: 10, 1: 10}, {0: 45}, {0: 45}, {1: 90}])
    network.operators[3].behaviour = "accept_all"
    reporter = FlakyRejectionReporter()
    pipeline, request_hash, cheater = reject_in_two_quorums(network, db, reporter)
    [rejection] = pipeline.store.list_rejections(request_hash)
    assert rejection.primary_id == cheater and rejection.state == ProofState.PROVEN
    assert reporter.quorums == [b"\x00"]  # quorum 1 did not reject: its stake is not judged
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.attempt >= 1 and row.primary_id != cheater
    pipeline.close()


def test_a_late_proof_proves_the_quorums_its_signers_still_carry(db: str) -> None:
    """Both quorums rejected; rebuilt at a fresh block after quorum 1's REJECT signer left, the proof
    slashes in quorum 0 (it failed outright before, and the cheater kept its stake in both)."""
    network = FakeNetwork([{0: 10, 1: 10}, {0: 45}, {0: 45}, {1: 90}])
    reporter = FlakyRejectionReporter([ConnectionError("node down")])
    pipeline, request_hash, cheater = reject_in_two_quorums(network, db, reporter)
    [rejection] = pipeline.store.list_rejections(request_hash)
    assert rejection.state == ProofState.PENDING
    network.block += SETTINGS.max_reference_age + 10
    network.operators[3].stakes = {}  # quorum 1's REJECT signer deregistered meanwhile
    network.by_id(cheater).stakes = {0: 10, 1: 100}
    assert pipeline.process_evidence() == 1
    assert [sent[0] for sent in reporter.sent] == [cheater] and reporter.quorums == [b"\x00"]
    pipeline.close()


class CrashBeforeRetry(Pipeline):
    """Stops (as a crash would) after the rejection is written, before the request is retried."""

    def _retry(self, row: RequestRow, reason: str) -> None:
        raise SystemExit("crash")


def test_a_crash_between_the_rejection_and_the_retry_records_it_once(db: str) -> None:
    """After the restart the same output is verified and rejected again: it was a second rejection
    row (counted twice, a second proof sent for the same fault)."""
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    cheater = network.operators[0]
    cheater.behaviour = "cheat"
    reporter = FlakyRejectionReporter()
    crashing = CrashBeforeRetry(DOMAIN, Store(db), network, network, network, SETTINGS, reporter=reporter)
    request_hash = crashing.submit(find_envelope_with_primary(network, cheater.keys.operator_id))
    with pytest.raises(SystemExit):
        crashing.run_until_idle()
    crashing.close()
    restarted = Pipeline(DOMAIN, Store(db), network, network, network, SETTINGS, reporter=reporter)
    restarted.run_until_idle()
    row = restarted.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.attempt == 1
    [rejection] = restarted.store.list_rejections(request_hash)
    assert rejection.primary_id == cheater.keys.operator_id and rejection.state == ProofState.PROVEN
    assert len(reporter.sent) == 1
    restarted.close()
