"""Equivocation evidence (on SQLite and PostgreSQL): conflicting signed attestations of one operator
for one request are proven on-chain once, also across restarts, by the aggregator's pipeline."""

from __future__ import annotations

import pytest
from sqlalchemy import event, func, select

from avs.chain.client import ContractRevertError
from avs.chain.faults import SignedAttestation
from avs.messages import Attestation, InferenceOutput, Verdict, compute_output_hash, compute_request_hash
from avs.types import OperatorId
from avs_aggregator import protocol
from avs_aggregator.evidence import EvidenceBook, ProofState
from avs_aggregator.pipeline import Pipeline
from avs_aggregator.store import AttestationRow, EquivocationRow, RequestState, Store
from tests.aggregator.fakes import (
    DOMAIN,
    MODEL_ID,
    FakeFaultManager,
    FakeNetwork,
    FakeOperator,
    canonical_tokens,
    make_envelope,
)
from tests.aggregator.test_pipeline import SETTINGS, find_envelope_with_primary

REQUEST = b"\x01" * 32


def signed(network: FakeNetwork, index: int, output: bytes, verdict: Verdict) -> SignedAttestation:
    return SignedAttestation(
        Attestation(REQUEST, output, verdict), network.operators[index].attest(REQUEST, output, verdict)
    )


class Unreachable:
    def __init__(self) -> None:
        self.calls = 0

    def prove_equivocation(self, operator_id: OperatorId, a: SignedAttestation, b: SignedAttestation) -> bytes:
        self.calls += 1
        raise ConnectionError("rpc down")


def book(store: Store, reporter: object) -> EvidenceBook:
    return EvidenceBook(store.session, AttestationRow, EquivocationRow, reporter, store.clock)  # type: ignore[arg-type]


def test_conflicting_attestations_are_proven_once(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 20}])
    manager = FakeFaultManager(network)
    store = Store(db)
    evidence = book(store, manager)
    operator = network.operators[0].keys.operator_id
    assert not evidence.record(operator, signed(network, 0, b"\xaa" * 32, Verdict.ACCEPT))
    assert not evidence.record(operator, signed(network, 0, b"\xaa" * 32, Verdict.ACCEPT))  # the same again
    assert not evidence.record(operator, signed(network, 0, b"\xbb" * 32, Verdict.REJECT))  # honest: rejects another
    assert evidence.record(operator, signed(network, 0, b"\xaa" * 32, Verdict.REJECT))  # two verdicts on one output
    assert manager.equivocations == [(operator, REQUEST)]
    assert not evidence.record(operator, signed(network, 0, b"\xcc" * 32, Verdict.ACCEPT))  # one fault per request
    [row] = evidence.list_equivocations()
    assert row.state == ProofState.PROVEN and row.tx_hash
    assert manager.calls.count("prove_equivocation") == 1
    other = network.operators[1].keys.operator_id
    assert not evidence.record(other, signed(network, 1, b"\xbb" * 32, Verdict.ACCEPT))  # other operators: own book
    store.close()


def test_a_round_is_recorded_in_one_commit_and_its_equivocations_are_found(db: str) -> None:
    """``record_all``: a verification round's attestations in one transaction; conflicts with an
    earlier round and inside the round itself are each recorded once."""
    network = FakeNetwork([{0: 10}, {0: 10}, {0: 10}])
    store = Store(db)
    evidence = book(store, None)  # no reporter: the proofs stay PENDING, no commits of their own
    ids = [o.keys.operator_id for o in network.operators]
    assert not evidence.record(ids[0], signed(network, 0, b"\xaa" * 32, Verdict.ACCEPT))
    commits: list[object] = []

    def count(connection: object) -> None:
        commits.append(connection)

    event.listen(store.engine, "commit", count)
    found = evidence.record_all(
        [
            (ids[0], signed(network, 0, b"\xaa" * 32, Verdict.REJECT)),  # against its earlier ACCEPT
            (ids[1], signed(network, 1, b"\xaa" * 32, Verdict.ACCEPT)),
            (ids[1], signed(network, 1, b"\xaa" * 32, Verdict.ACCEPT)),  # the same twice: kept once
            (ids[2], signed(network, 2, b"\xaa" * 32, Verdict.ACCEPT)),
            (ids[2], signed(network, 2, b"\xbb" * 32, Verdict.ACCEPT)),  # two outputs in one round
        ]
    )
    event.remove(store.engine, "commit", count)
    assert found == 2
    assert len(commits) == 1 + 2  # the round's attestations, then each equivocation
    pending = evidence.list_equivocations(ProofState.PENDING)
    assert sorted(row.operator_id for row in pending) == sorted([ids[0], ids[2]])
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(AttestationRow)) == 5
    assert evidence.record_all([]) == 0
    store.close()


def test_an_equivocation_lost_to_a_failure_is_found_when_the_attestation_comes_again(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = FakeNetwork([{0: 10}])
    store = Store(db)
    evidence = book(store, None)
    operator = network.operators[0].keys.operator_id
    assert not evidence.record(operator, signed(network, 0, b"\xaa" * 32, Verdict.ACCEPT))
    with monkeypatch.context() as patched:  # the attestation is kept, its equivocation not recorded
        patched.setattr(evidence, "_add_equivocation", lambda *_: (_ for _ in ()).throw(ConnectionError("db down")))
        with pytest.raises(ConnectionError):
            evidence.record(operator, signed(network, 0, b"\xaa" * 32, Verdict.REJECT))
    assert evidence.list_equivocations() == []
    assert evidence.record(operator, signed(network, 0, b"\xaa" * 32, Verdict.REJECT))  # the step runs again
    assert len(evidence.list_equivocations(ProofState.PENDING)) == 1
    store.close()


def test_an_equivocators_verdicts_are_not_found(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever signed conflicting attestations for the request has no verdict on any of its outputs:
    both verdicts on one output (even while its equivocation row could not be written), or ACCEPT
    of two outputs. The honest operators' verdicts stay."""
    network = FakeNetwork([{0: 10}, {0: 10}, {0: 10}])
    store = Store(db)
    evidence = book(store, None)
    both, two_outputs, honest = (o.keys.operator_id for o in network.operators)
    evidence.record_all(
        [
            (both, signed(network, 0, b"\xaa" * 32, Verdict.ACCEPT)),
            (two_outputs, signed(network, 1, b"\xbb" * 32, Verdict.ACCEPT)),
            (honest, signed(network, 2, b"\xaa" * 32, Verdict.REJECT)),
            (honest, signed(network, 2, b"\xbb" * 32, Verdict.ACCEPT)),
        ]
    )
    assert evidence.find_verdicts(REQUEST, b"\xaa" * 32) == {both: Verdict.ACCEPT, honest: Verdict.REJECT}
    with monkeypatch.context() as patched:  # the REJECT is kept, the equivocation row is not written
        patched.setattr(evidence, "_add_equivocation", lambda *_: (_ for _ in ()).throw(ConnectionError("db down")))
        with pytest.raises(ConnectionError):
            evidence.record(both, signed(network, 0, b"\xaa" * 32, Verdict.REJECT))
    assert evidence.find_equivocators(REQUEST) == set()
    assert evidence.find_verdicts(REQUEST, b"\xaa" * 32) == {honest: Verdict.REJECT}
    assert evidence.find_verdicts(REQUEST, b"\xbb" * 32) == {two_outputs: Verdict.ACCEPT, honest: Verdict.ACCEPT}
    assert evidence.record(two_outputs, signed(network, 1, b"\xaa" * 32, Verdict.ACCEPT))
    assert evidence.find_equivocators(REQUEST) == {two_outputs}
    assert evidence.find_verdicts(REQUEST, b"\xbb" * 32) == {honest: Verdict.ACCEPT}
    assert evidence.find_verdicts(b"\x02" * 32, b"\xbb" * 32) == {}  # another request: its own book
    store.close()


def test_a_proof_not_sent_before_a_restart_is_sent_after_it(db: str) -> None:
    network = FakeNetwork([{0: 10}])
    store = Store(db)
    down = Unreachable()
    evidence = book(store, down)
    operator = network.operators[0].keys.operator_id
    evidence.record(operator, signed(network, 0, b"\xaa" * 32, Verdict.ACCEPT))
    assert evidence.record(operator, signed(network, 0, b"\xbb" * 32, Verdict.ACCEPT))
    assert down.calls == 1 and evidence.list_equivocations()[0].state == ProofState.PENDING
    store.close()

    store = Store(db)  # restarted: the pending proof is sent
    manager = FakeFaultManager(network)
    assert book(store, manager).report_pending() == 1
    assert manager.equivocations == [(operator, REQUEST)]
    assert book(store, manager).report_pending() == 0  # proven: not sent again
    store.close()


def test_a_proof_the_chain_already_has_counts_as_proven(db: str) -> None:
    network = FakeNetwork([{0: 10}])
    manager = FakeFaultManager(network)
    store = Store(db)
    operator = network.operators[0].keys.operator_id
    a, b = signed(network, 0, b"\xaa" * 32, Verdict.ACCEPT), signed(network, 0, b"\xbb" * 32, Verdict.ACCEPT)
    manager.prove_equivocation(OperatorId(operator), a, b)  # someone else proved it first
    evidence = book(store, manager)
    evidence.record(operator, a)
    assert evidence.record(operator, b)
    [row] = evidence.list_equivocations()
    assert row.state == ProofState.PROVEN and row.error == "already proven on-chain"
    store.close()


def test_a_refused_proof_is_not_sent_again(db: str) -> None:
    network = FakeNetwork([{0: 10}])

    class Refuses:
        calls = 0

        def prove_equivocation(self, operator_id: OperatorId, a: SignedAttestation, b: SignedAttestation) -> bytes:
            Refuses.calls += 1
            raise ContractRevertError("InvalidAttestationSignature", ())

    store = Store(db)
    evidence = book(store, Refuses())
    operator = network.operators[0].keys.operator_id
    evidence.record(operator, signed(network, 0, b"\xaa" * 32, Verdict.ACCEPT))
    evidence.record(operator, signed(network, 0, b"\xbb" * 32, Verdict.ACCEPT))
    assert evidence.list_equivocations()[0].state == ProofState.FAILED
    assert evidence.report_pending() == 0 and Refuses.calls == 1
    store.close()


def test_the_pipeline_proves_a_verifier_that_accepts_two_outputs(db: str) -> None:
    """Attempt 0: a cheating primary's output is rejected by 70% (the equivocator accepts it);
    attempt 1: an honest primary's output, which the equivocator accepts too -> proven on-chain."""
    network = FakeNetwork([{0: 20}, {0: 10}, {0: 35}, {0: 35}])
    cheater, equivocator = network.operators[0], network.operators[1]
    cheater.behaviour, equivocator.behaviour = "cheat", "accept_all"
    operator_set = network.get_operator_set(network.get_reference_block()[0])
    nonce = next(
        n
        for n in range(500)
        if protocol.select_primary(
            operator_set, b"\x00", compute_request_hash(DOMAIN, make_envelope(n).request), 0
        ).operator_id
        == cheater.keys.operator_id
    )
    manager = FakeFaultManager(network)
    store = Store(db)
    pipeline = Pipeline(DOMAIN, store, network, network, network, SETTINGS, equivocation_reporter=manager)
    request_hash = pipeline.submit(make_envelope(nonce))
    pipeline.run_until_idle()
    row = store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.attempt >= 1
    assert manager.equivocations == [(equivocator.keys.operator_id, request_hash)]
    [proof] = pipeline.evidence.list_equivocations()
    assert proof.state == ProofState.PROVEN
    pipeline.close()
    store.close()


def test_a_known_equivocators_accept_cannot_carry_a_cheating_output(db: str) -> None:
    """A 45% operator that has already ACCEPTed two outputs of the request (it signs ACCEPT of
    anything) is neither asked nor counted: with it, a 25% cheating primary's output would reach
    70% ACCEPT and be certified; without it, neither side has the stake and the request fails."""
    network = FakeNetwork([{0: 25}, {0: 45}, {0: 30}])
    cheater, equivocator = network.operators[0], network.operators[1]
    cheater.behaviour, equivocator.behaviour = "cheat", "accept_all"
    pipeline = Pipeline(DOMAIN, Store(db), network, network, network, SETTINGS)
    request_hash = pipeline.submit(find_envelope_with_primary(network, cheater.keys.operator_id))
    for output in (b"\xaa" * 32, b"\xbb" * 32):  # an earlier attempt's outputs, say
        record_accept(pipeline, equivocator, request_hash, output)
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.FAILED, row
    assert "accept 25/100" in (row.error or "")
    assert ("verify", equivocator.keys.operator_id) not in network.calls
    pipeline.close()


def test_an_equivocators_reject_found_in_the_round_cannot_reject_an_honest_primary(db: str) -> None:
    """A 55% operator that ACCEPTed the honest output before and REJECTs it now is caught in the
    round's own records: its REJECT neither counts nor goes into a rejection proof, so the honest
    primary is not slashed; the equivocation is proven."""
    network = FakeNetwork([{0: 30}, {0: 55}, {0: 15}])
    primary, equivocator = network.operators[0], network.operators[1]
    equivocator.behaviour = "cheat"  # as a verifier: REJECTs every correct output
    manager = FakeFaultManager(network)
    pipeline = Pipeline(DOMAIN, Store(db), network, network, network, SETTINGS, equivocation_reporter=manager)
    envelope = find_envelope_with_primary(network, primary.keys.operator_id)
    request_hash = pipeline.submit(envelope)
    honest_output = compute_output_hash(InferenceOutput(request_hash, MODEL_ID, canonical_tokens(envelope.request)))
    record_accept(pipeline, equivocator, request_hash, honest_output)
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.FAILED and row.attempt == 0, row
    assert pipeline.store.list_rejections(request_hash) == []
    assert manager.equivocations == [(equivocator.keys.operator_id, request_hash)]
    pipeline.close()


def record_accept(pipeline: Pipeline, operator: FakeOperator, request_hash: bytes, output: bytes) -> None:
    signature = operator.attest(request_hash, output, Verdict.ACCEPT)
    attestation = Attestation(request_hash, output, Verdict.ACCEPT)
    pipeline.evidence.record(operator.keys.operator_id, SignedAttestation(attestation, signature))
