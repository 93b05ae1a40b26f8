"""The pipeline over fakes: happy path, faulty operators, rejections, restarts at every stage."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from avs.chain.client import ContractRevertError, NonSignerStakesAndSignature
from avs.errors import InvalidInputError, OverloadedError
from avs.messages import BatchHeader, checksum, compute_request_hash
from avs.rpc.convert import RequestEnvelope
from avs_aggregator.evidence import ProofState
from avs_aggregator.metrics import AggregatorMetrics
from avs_aggregator.pipeline import (
    MAX_REBATCHES,
    NO_PROOFS,
    STRAGGLER_SECONDS,
    Pipeline,
    PipelineError,
    PipelineSettings,
)
from avs_aggregator.ports import OperatorSet
from avs_aggregator.protocol import select_primary
from avs_aggregator.store import BatchState, RequestRow, RequestState, StaleRowError, Store, load_hex_list
from avs_aggregator.txsender import TransactionFailedError
from tests.aggregator.fakes import DOMAIN, FakeNetwork, make_envelope

SETTINGS = PipelineSettings(batch_max_size=4, batch_max_latency=0.0, max_attempts=3, workers=4, busy_backoff=0.0)


def make_pipeline(network: FakeNetwork, db: str, settings: PipelineSettings = SETTINGS) -> Pipeline:
    store = Store(db)
    return Pipeline(DOMAIN, store, network, network, network, settings)


def test_requests_are_certified_in_one_batch(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = make_pipeline(network, db)
    hashes = [pipeline.submit(make_envelope(i, f"prompt {i}")) for i in range(3)]
    assert pipeline.submit(make_envelope(0, "prompt 0")) == hashes[0]  # idempotent
    pipeline.run_until_idle()
    rows = [pipeline.store.get_request(h) for h in hashes]
    assert all(r is not None and r.state == RequestState.CERTIFIED for r in rows)
    assert {r.batch_index for r in rows if r is not None} == {1}
    assert network.certify_calls == [1]
    pipeline.close()


def test_policy_limits_are_enforced(db: str) -> None:
    pipeline = make_pipeline(FakeNetwork([{0: 1}]), db)
    with pytest.raises(PipelineError):
        pipeline.submit(make_envelope(1), quorums=b"\x01")
    with pytest.raises(PipelineError):
        pipeline.submit(make_envelope(1), threshold_bps=5000)
    with pytest.raises(InvalidInputError):
        pipeline.submit(make_envelope(1), quorums=b"\x00\x00")
    pipeline.close()


def test_a_request_submitted_again_with_other_settings_or_messages_is_refused(db: str) -> None:
    """The request hash covers neither the quorums, the threshold nor the messages: a second submit
    asking others used to answer the same hash and silently keep the first's (a requester wanting
    100% got 66.67%; a squatter's garbage messages stayed the request's)."""
    pipeline = make_pipeline(FakeNetwork([{0: 1}]), db)
    envelope = make_envelope(1)
    request_hash = pipeline.submit(envelope, threshold_bps=6667)
    assert pipeline.submit(envelope) == request_hash  # the same again (the default threshold is 6667)
    with pytest.raises(PipelineError, match="threshold 6667"):
        pipeline.submit(envelope, threshold_bps=9000)
    with pytest.raises(PipelineError, match="other messages"):
        pipeline.submit(dataclasses.replace(envelope, messages=({"role": "user", "content": "garbage"},)))
    pipeline.close()


def test_down_operator_is_excluded_and_stake_still_suffices(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    network.operators[0].behaviour = "down"
    pipeline = make_pipeline(network, db)
    hashes = [pipeline.submit(make_envelope(i, f"p{i}")) for i in range(6)]
    pipeline.run_until_idle()
    states = {pipeline.store.get_request(h).state for h in hashes}  # type: ignore[union-attr]
    assert states == {RequestState.CERTIFIED}
    batch = pipeline.store.get_batch(1)
    assert batch is not None and network.operators[0].keys.operator_id.hex() in (batch.certificate or "")
    pipeline.close()


class BusyOnceNetwork(FakeNetwork):
    """Operators in ``busy`` refuse their next Generate (RESOURCE_EXHAUSTED), then serve again."""

    busy: set[bytes]

    def generate(self, operator: Any, envelope: RequestEnvelope, timeout: float) -> Any:
        if operator.operator_id in self.busy:
            self.busy.discard(operator.operator_id)
            raise OverloadedError("this operator is serving its limit of 4 requests; retry later")
        return super().generate(operator, envelope, timeout)


def test_a_busy_primary_is_asked_again_without_using_an_attempt(db: str) -> None:
    """A busy answer (the operator at its concurrency limit) computed nothing: the same primary is
    asked again after ``busy_backoff``, no attempt used and nobody excluded (under load every
    operator is busy in turn, and each busy answer used up an attempt until requests failed)."""
    network = BusyOnceNetwork([{0: 400}, {0: 300}, {0: 200}, {0: 100}])
    alice = network.operators[0].keys.operator_id
    network.busy = {alice}
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(find_envelope_with_primary(network, alice))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED, row.error if row else None
    assert row.attempt == 0 and row.primary_id == alice and load_hex_list(row.excluded) == []
    assert network.busy == set() and network.calls.count(("generate", alice)) == 1  # refused, then served
    pipeline.close()


def test_a_primary_busy_past_the_busy_wait_is_a_failed_primary(db: str) -> None:
    """Busy for longer than ``busy_wait``: the next busy answer counts as a failure, and the busy
    primary's stake still counts as a verifier (stakes 40/30/20/10: leaving alice's 40% out would
    fail a request every operator accepts)."""
    network = BusyOnceNetwork([{0: 400}, {0: 300}, {0: 200}, {0: 100}])
    alice = network.operators[0].keys.operator_id
    network.busy = {alice}
    pipeline = make_pipeline(network, db, dataclasses.replace(SETTINGS, busy_wait=0.0))
    request_hash = pipeline.submit(find_envelope_with_primary(network, alice))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED, row.error if row else None
    assert row.attempt == 1 and row.primary_id != alice and load_hex_list(row.excluded) == [alice]
    assert network.calls.count(("verify", alice)) == 1
    pipeline.close()


class BusyVerifiersNetwork(FakeNetwork):
    """Operators in ``busy`` refuse Verify calls until ``refusals`` were refused in all, then serve."""

    busy: set[bytes]
    lock: threading.Lock
    refusals: int = 5

    def verify(self, operator: Any, envelope: RequestEnvelope, output_ids: Any, timeout: float) -> Any:
        with self.lock:
            refused = operator.operator_id in self.busy and self.refusals > 0
            self.refusals -= refused
        if refused:
            raise OverloadedError("this operator is serving its limit of 4 requests; retry later")
        return super().verify(operator, envelope, output_ids, timeout)


def test_busy_verifiers_are_asked_again_past_the_verification_rounds(db: str) -> None:
    """Bob and carol (half the stake) busy for three rounds (more than ``verify_rounds``): the
    request waits for them, a backoff between rounds, instead of failing "not enough stake verified"."""
    network = BusyVerifiersNetwork([{0: 400}, {0: 300}, {0: 200}, {0: 100}])
    network.lock = threading.Lock()
    alice, bob, carol = (o.keys.operator_id for o in network.operators[:3])
    network.busy = {bob, carol}
    pipeline = make_pipeline(network, db, dataclasses.replace(SETTINGS, verify_rounds=2))
    request_hash = pipeline.submit(find_envelope_with_primary(network, alice))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED, row.error if row else None
    assert row.attempt == 0 and network.refusals == 0 and network.calls.count(("verify", bob)) == 1
    assert row.verify_rounds >= 2  # past the rounds allowed
    pipeline.close()


class BusyThenMissedOnce(FakeNetwork):
    """``bob`` answers his first Verify busy, misses the next (a blip), then answers."""

    bob: bytes
    lock: threading.Lock
    seen: dict[bytes, int]

    def verify(self, operator: Any, envelope: RequestEnvelope, output_ids: Any, timeout: float) -> Any:
        with self.lock:
            calls = self.seen[operator.operator_id] = self.seen.get(operator.operator_id, 0) + 1
        if operator.operator_id == self.bob and calls == 1:
            raise OverloadedError("this operator is serving its limit of 4 requests; retry later")
        if operator.operator_id == self.bob and calls == 2:
            raise TimeoutError("no answer by the end of the round")
        return super().verify(operator, envelope, output_ids, timeout)


def test_a_round_busy_verifiers_left_short_is_not_counted_as_a_round(db: str) -> None:
    """Bob (40%) busy, then missing once: the busy round is not one of ``verify_rounds``, so the
    missed one is still retried, as it is without the busy answer (a review found it FAILED)."""
    network = BusyThenMissedOnce([{0: 400}, {0: 400}, {0: 100}, {0: 100}])
    network.lock, network.seen = threading.Lock(), {}
    alice, network.bob = (o.keys.operator_id for o in network.operators[:2])
    pipeline = make_pipeline(network, db, dataclasses.replace(SETTINGS, verify_rounds=2))
    request_hash = pipeline.submit(find_envelope_with_primary(network, alice))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED, row.error if row else None
    assert network.seen[network.bob] == 3
    pipeline.close()


def test_a_busy_answer_backs_the_request_off() -> None:
    """Between busy answers the request is not stepped (it returns at once: the runner comes back)."""
    now = [100.0]
    network = BusyOnceNetwork([{0: 400}, {0: 300}])
    alice = network.operators[0].keys.operator_id
    network.busy = {alice}
    settings = dataclasses.replace(SETTINGS, busy_backoff=2.0)
    pipeline = Pipeline(DOMAIN, Store("sqlite://"), network, network, network, settings, clock=lambda: now[0])
    request_hash = pipeline.submit(find_envelope_with_primary(network, alice))
    while pipeline.advance_request(request_hash):
        pass
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.GENERATING and network.busy == set()  # refused once
    now[0] += 1.9
    assert not pipeline.advance_request(request_hash) and network.calls.count(("generate", alice)) == 0
    now[0] += 0.1
    assert pipeline.advance_request(request_hash)
    assert network.calls.count(("generate", alice)) == 1
    pipeline.close()


def test_hung_operators_with_little_stake_do_not_hold_up_requests_or_batches(db: str) -> None:
    """Two 5% operators accept connections and never answer (their calls end at the 3 s deadline).
    Once the others' answers decide a verification round (or a batch's signers hold its threshold),
    the round waits only ``STRAGGLER_SECONDS`` more; before, each hung call added its own
    deadline plus grace (16 s for two), and every batch waited out the whole signing deadline."""
    network = FakeNetwork([{0: 400}, {0: 300}, {0: 200}, {0: 50}, {0: 50}])
    network.operators[3].behaviour = network.operators[4].behaviour = "hung"
    settings = dataclasses.replace(SETTINGS, verify_timeout=3.0, sign_timeout=3.0, batch_max_size=1)
    pipeline = make_pipeline(network, db, settings)
    started = time.monotonic()
    request_hash = pipeline.submit(find_envelope_with_primary(network, network.operators[0].keys.operator_id))
    pipeline.run_until_idle()
    elapsed = time.monotonic() - started
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED
    assert elapsed < 2 * STRAGGLER_SECONDS + 2.0, elapsed  # one verification round and one batch, 3 s each before
    pipeline.close()


@pytest.mark.parametrize("raised_threshold", [False, True])
def test_a_fast_bad_signature_or_a_raised_chain_threshold_does_not_cut_off_a_slower_honest_verifier(
    db: str, raised_threshold: bool
) -> None:
    """A round stops waiting once its answers settle it. Counted before their signatures were
    checked, a fast ACCEPT signed over the wrong digest (30%) settled it with the 40% primary, cut off
    the honest 2 s verifier (30%), then was dropped: 40%, failed, every round. Counted against the
    request's threshold only, 90% settled a round the chain's 9500 bps could not accept, and the
    slow 10% verifier was cut off in every round."""
    if raised_threshold:
        network: FakeNetwork = RaisedThresholdNetwork([{0: 600}, {0: 300}, {0: 100}])
    else:
        network = FakeNetwork([{0: 400}, {0: 300}, {0: 300}])
        network.operators[1].behaviour = "fast_bad_verify_signature"
    network.operators[2].behaviour = "slow"
    settings = dataclasses.replace(SETTINGS, verify_timeout=10.0)
    pipeline = make_pipeline(network, db, settings)
    request_hash = pipeline.submit(find_envelope_with_primary(network, network.operators[0].keys.operator_id))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED, row.error if row else None
    assert network.calls.count(("verify", network.operators[2].keys.operator_id)) == 1  # waited for in round 1
    pipeline.close()


def test_calls_cut_off_at_the_end_of_a_round_count_as_errors(db: str) -> None:
    """Else a hung operator shows no failed call at all, and the signing-rate alert never fires for it."""
    network = FakeNetwork([{0: 400}, {0: 300}, {0: 200}, {0: 100}])
    network.operators[3].behaviour = "hung"
    settings = dataclasses.replace(SETTINGS, verify_timeout=3.0, sign_timeout=3.0, batch_max_size=1)
    registry = CollectorRegistry()
    pipeline = Pipeline(DOMAIN, Store(db), network, network, network, settings, AggregatorMetrics(registry))
    request_hash = pipeline.submit(find_envelope_with_primary(network, network.operators[0].keys.operator_id))
    pipeline.run_until_idle()
    assert pipeline.store.get_request(request_hash).state == RequestState.CERTIFIED  # type: ignore[union-attr]
    hung = "0x" + network.operators[3].keys.operator_id.hex()[:8]
    for call in ("verify", "sign_batch"):
        labels = {"operator": hung, "call": call, "outcome": "error"}
        assert registry.get_sample_value("avs_aggregator_operator_calls_total", labels) == 1.0, call
    pipeline.close()


class PrunedStateNetwork(FakeNetwork):
    """A node that keeps the state of its last 128 blocks only (geth's default)."""

    def get_operator_set(self, reference_block: int) -> OperatorSet:
        if reference_block < self.block - 128:
            raise ValueError("missing trie node")
        return super().get_operator_set(reference_block)


@pytest.mark.parametrize("steps", [1, 2], ids=["generating", "verifying"])
def test_a_request_whose_reference_block_went_stale_moves_to_a_fresh_one(db: str, steps: int) -> None:
    """After an outage longer than the node's state window, every step of a request in flight failed
    to read its reference block's operators, for ever (retried each second, holding a pending slot).
    Now a generating request picks its primary again at a fresh block; a verifying one is counted
    at a fresh block (attestations are bound to none)."""
    network = PrunedStateNetwork([{0: 25}] * 4)
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(1))
    for _ in range(steps):
        pipeline.advance_request(request_hash)
    before = pipeline.store.get_request(request_hash)
    assert before is not None and before.state == (RequestState.GENERATING, RequestState.VERIFYING)[steps - 1]
    network.block += 500  # the aggregator was down
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.attempt == 0
    assert row.reference_block is not None and row.reference_block > network.block - 128
    pipeline.close()


def test_not_enough_stake_fails_clearly(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    network.operators[2].behaviour = "down"
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(1))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.FAILED
    assert "stake" in (row.error or "")
    pipeline.close()


def test_cheating_primary_is_rejected_recorded_and_retried(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    cheater = network.operators[0]
    cheater.behaviour = "cheat"
    pipeline = make_pipeline(network, db)
    envelope = find_envelope_with_primary(network, cheater.keys.operator_id)
    request_hash = pipeline.submit(envelope)
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.attempt == 1
    rejections = pipeline.store.list_rejections(request_hash)
    assert [r.primary_id for r in rejections] == [cheater.keys.operator_id]
    # the cheater is not asked to verify the retry (its ACCEPT of the old output would conflict)
    assert network.calls.count(("verify", cheater.keys.operator_id)) == 0
    pipeline.close()


def test_a_request_submitted_again_is_the_same_request_whatever_its_address_spelling(db: str) -> None:
    """The hash reads the requester's address, not its spelling: the same request sent again with
    the address checksummed answers its hash (it was refused as "other messages"); other messages
    under the same hash are still refused."""
    network = FakeNetwork([{0: 10}])
    pipeline = make_pipeline(network, db)
    envelope = make_envelope(1)
    request_hash = pipeline.submit(envelope)
    checksummed = dataclasses.replace(envelope.request, requester=checksum(envelope.request.requester))
    assert checksummed.requester != envelope.request.requester
    assert pipeline.submit(dataclasses.replace(envelope, request=checksummed)) == request_hash
    other_chat = dataclasses.replace(envelope, messages=({"role": "user", "content": "something else"},))
    with pytest.raises(PipelineError, match="other messages"):
        pipeline.submit(other_chat)
    pipeline.close()


def test_without_rejection_proofs_a_rejection_is_settled_and_its_request_can_be_pruned(db: str) -> None:
    """No reporter (``prove_rejections: false``, or no fault manager): a rejection left PENDING kept
    its request, attestations and rejection from retention for ever."""
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    cheater = network.operators[0]
    cheater.behaviour = "cheat"
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(find_envelope_with_primary(network, cheater.keys.operator_id))
    pipeline.run_until_idle()
    network.block += 5  # the batch's certification confirmed
    pipeline.run_until_idle()
    [rejection] = pipeline.store.list_rejections(request_hash)
    assert rejection.state == ProofState.FAILED and rejection.error == NO_PROOFS
    assert pipeline.report_pending_rejections() == 0
    while pipeline.store.prune_finished(time.time() + 10):
        pass
    assert pipeline.store.get_request(request_hash) is None
    assert pipeline.store.list_rejections(request_hash) == []
    pipeline.close()


def test_a_provable_rejection_wins_over_a_low_requested_threshold(db: str) -> None:
    """With an AVS minimum of 5%, a cheating primary's own ACCEPT (10%) meets a 5% request; the
    90% that REJECT must still win: the output is rejected, proven, and the request retried."""
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    cheater = network.operators[0]
    cheater.behaviour = "cheat"
    settings = dataclasses.replace(SETTINGS, min_threshold_bps=500)
    pipeline = make_pipeline(network, db, settings)
    envelope = find_envelope_with_primary(network, cheater.keys.operator_id)
    request_hash = pipeline.submit(envelope, threshold_bps=500)
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.attempt == 1
    assert row.primary_id != cheater.keys.operator_id
    assert [r.primary_id for r in pipeline.store.list_rejections(request_hash)] == [cheater.keys.operator_id]
    pipeline.close()


def test_a_minority_reject_cannot_reject_an_honest_primary(db: str) -> None:
    """With an AVS minimum of 5%, a 30% operator that REJECTs correct outputs must not get the
    honest primary's output rejected (and the primary slashed): a rejection needs a majority."""
    network = FakeNetwork([{0: 30}, {0: 35}, {0: 35}])
    network.operators[0].behaviour = "cheat"  # as a verifier: REJECTs every correct output
    settings = dataclasses.replace(SETTINGS, min_threshold_bps=500)
    pipeline = make_pipeline(network, db, settings)
    envelope = find_envelope_with_primary(network, network.operators[1].keys.operator_id)
    request_hash = pipeline.submit(envelope, threshold_bps=500)
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.attempt == 0
    assert pipeline.store.list_rejections(request_hash) == []
    pipeline.close()


@pytest.mark.parametrize("behaviour", ["nul_text", "nul_error"])
def test_a_nul_character_from_an_operator_is_stored_on_every_database(db: str, behaviour: str) -> None:
    """PostgreSQL refuses NUL in text: a primary's output text or error holding one made every write
    of the request fail, and the same primary was asked again forever. Now NUL is stored as U+FFFD."""
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 30}, {0: 30}])
    primary = network.operators[0]
    primary.behaviour = behaviour
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(find_envelope_with_primary(network, primary.keys.operator_id))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED, row
    if behaviour == "nul_text":  # its output, certified; only the unsigned text lost the NUL
        assert row.primary_id == primary.keys.operator_id and row.output_text == "te\ufffdxt"
    else:  # the next primary answered; the first one's error is kept
        assert row.attempt == 1 and row.error is not None and "operator\ufffddown" in row.error
    pipeline.close()


def test_a_primary_that_timed_out_is_not_picked_again_for_a_while(db: str) -> None:
    """Found in review: a primary that accepts the call and never answers held a request worker for
    generate_timeout every time it was picked, in proportion to its stake, and eight such picks held
    every worker. After a timeout it is benched for primary_bench_seconds (for every request); a
    bench ends, so it is not written into the requests' excluded lists (a review of the first fix:
    excluded for good, it left a request with no primary while it was healthy again)."""
    network = FakeNetwork([{0: 25}] * 4)
    hung = network.operators[0]
    hung.behaviour = "down"  # the call fails as a timeout or a refused connection does
    now = [1000.0]
    settings = dataclasses.replace(SETTINGS, primary_bench_seconds=60.0)
    pipeline = Pipeline(DOMAIN, Store(db), network, network, network, settings, clock=lambda: now[0])
    operator_set = network.get_operator_set(network.block - 1)

    def picks_hung_first(nonce: int) -> bool:
        request_hash = compute_request_hash(DOMAIN, make_envelope(nonce, "which primary").request)
        return select_primary(operator_set, b"\x00", request_hash, 0).operator_id == hung.keys.operator_id

    first, second, third = [n for n in range(500) if picks_hung_first(n)][:3]

    def generate_calls() -> int:
        return [op for call, op in network.calls if call == "generate"].count(hung.keys.operator_id)

    pipeline.submit(make_envelope(first, "which primary"))
    pipeline.run_until_idle()
    assert generate_calls() == 1
    request_hash = pipeline.submit(make_envelope(second, "which primary"))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.attempt == 0
    assert generate_calls() == 1 and hung.keys.operator_id.hex() not in (row.excluded or "")
    now[0] += 61.0  # the bench is over: picked again
    pipeline.submit(make_envelope(third, "which primary"))
    pipeline.run_until_idle()
    assert generate_calls() == 2
    pipeline.close()


def test_a_bench_that_ended_leaves_the_operator_a_primary_for_requests_picked_meanwhile(db: str) -> None:
    """Three operators: A benched by another request, then healthy again; B and C fail this request's
    Generate, each call taking past A's bench. A, untried, must still be its primary."""
    network = FakeNetwork([{0: 30}, {0: 30}, {0: 40}])
    a, b, c = network.operators
    now = [1000.0]
    settings = dataclasses.replace(SETTINGS, primary_bench_seconds=60.0, max_attempts=3)
    pipeline = Pipeline(DOMAIN, Store(db), network, network, network, settings, clock=lambda: now[0])
    a.behaviour = "generate_down"
    pipeline.submit(find_envelope_with_primary(network, a.keys.operator_id))
    pipeline.run_until_idle()  # A fails once: benched
    a.behaviour = "honest"
    b.behaviour = c.behaviour = "generate_down"
    original_generate = network.generate

    def slow_generate(*args: Any, **kwargs: Any) -> Any:
        now[0] += 61.0  # every call outlasts a bench
        return original_generate(*args, **kwargs)

    network.generate = slow_generate  # type: ignore[method-assign]
    request_hash = pipeline.submit(make_envelope(500, "after the bench"))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    pipeline.close()
    assert row is not None and row.state == RequestState.CERTIFIED and row.primary_id == a.keys.operator_id


def find_envelope_with_primary(network: FakeNetwork, operator_id: bytes, quorums: bytes = b"\x00") -> RequestEnvelope:
    operator_set = network.get_operator_set(network.block - 1)
    for nonce in range(500):
        envelope = make_envelope(nonce, "which primary")
        request_hash = compute_request_hash(DOMAIN, envelope.request)
        if select_primary(operator_set, quorums, request_hash, 0).operator_id == operator_id:
            return envelope
    raise AssertionError("no nonce makes this operator the first primary")


@pytest.mark.parametrize("rounds", [2, 1])
def test_verifiers_that_did_not_answer_are_asked_again(db: str, rounds: int) -> None:
    """25% ACCEPT, 25% missed one call, 25% down: short of 66.67% after round 1. Round 2 asks only
    the two that gave no answer and keeps the checked one; with one round the request fails."""
    network = FakeNetwork([{0: 25}] * 4)
    primary, answered, flaky, down = network.operators
    flaky.behaviour, down.behaviour = "verify_down_once", "down"
    pipeline = make_pipeline(network, db, dataclasses.replace(SETTINGS, verify_rounds=rounds))
    request_hash = pipeline.submit(find_envelope_with_primary(network, primary.keys.operator_id))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    pipeline.close()
    assert row is not None
    verify_calls = [op for call, op in network.calls if call == "verify"]
    if rounds == 1:
        assert row.state == RequestState.FAILED and "not enough stake verified" in (row.error or "")
        assert sorted(verify_calls) == sorted(o.keys.operator_id for o in (answered, flaky, down))
        return
    assert row.state == RequestState.CERTIFIED and row.attempt == 0 and row.verify_rounds == 1, row.error
    assert verify_calls.count(answered.keys.operator_id) == 1  # its checked ACCEPT was kept
    assert verify_calls.count(flaky.keys.operator_id) == 2 and verify_calls.count(down.keys.operator_id) == 2


@pytest.mark.parametrize("bad", [1, 2])
def test_a_verifier_whose_signature_does_not_verify_counts_as_not_answering(db: str, bad: int) -> None:
    """The verifiers' signatures are checked in one batch; the bad ones are found and left out (no
    verdict, no evidence, an error outcome) while the good ones still carry the request."""
    network = FakeNetwork([{0: 20}] * 6)
    primary, *verifiers = network.operators
    for op in verifiers[:bad]:
        op.behaviour = "bad_verify_signature"
    registry = CollectorRegistry()
    pipeline = Pipeline(
        DOMAIN,
        Store(db),
        network,
        network,
        network,
        dataclasses.replace(SETTINGS, verify_rounds=1),
        metrics=AggregatorMetrics(registry),
    )
    request_hash = pipeline.submit(find_envelope_with_primary(network, primary.keys.operator_id))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.output_hash is not None
    recorded = pipeline.evidence.find_attestations(request_hash, row.output_hash)
    pipeline.close()
    assert row.state == (RequestState.CERTIFIED if bad == 1 else RequestState.FAILED), row.error
    assert set(recorded) == {o.keys.operator_id for o in [primary, *verifiers[bad:]]}
    for op in verifiers:
        outcome = "error" if op in verifiers[:bad] else "accept"
        labels = {"operator": "0x" + op.keys.operator_id.hex()[:8], "call": "verify", "outcome": outcome}
        assert registry.get_sample_value("avs_aggregator_operator_calls_total", labels) == 1, (op, outcome)


def test_no_second_round_when_the_unanswered_stake_cannot_decide(db: str) -> None:
    """30% primary and 30% ACCEPT, 35% REJECT, 5% down: 65% at most could ACCEPT (< 66.67%) and 40%
    at most REJECT (< 50.01%), so the request fails after one round without asking the down one again."""
    network = FakeNetwork([{0: 30}, {0: 30}, {0: 35}, {0: 5}])
    primary, _, rejecter, down = network.operators
    rejecter.behaviour, down.behaviour = "cheat", "down"  # the cheat, as a verifier, REJECTs a correct output
    pipeline = make_pipeline(network, db, dataclasses.replace(SETTINGS, verify_rounds=3))
    request_hash = pipeline.submit(find_envelope_with_primary(network, primary.keys.operator_id))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    pipeline.close()
    assert row is not None and row.state == RequestState.FAILED and row.verify_rounds == 0
    assert "not enough stake verified" in (row.error or "")
    assert network.calls.count(("verify", down.keys.operator_id)) == 1


def test_a_second_round_when_only_a_rejection_is_still_possible(db: str) -> None:
    """A cheating 10% primary; 45% REJECT, 45% missed the first round: ACCEPT cannot reach 66.67% any
    more (55% at most) but REJECT can reach a majority (90%), so the missing one is asked again, the
    output is rejected, and the retry is certified."""
    network = FakeNetwork([{0: 10}, {0: 45}, {0: 45}])
    cheater, _, flaky = network.operators
    cheater.behaviour, flaky.behaviour = "cheat", "verify_down_once"
    pipeline = make_pipeline(network, db)  # 2 verification rounds
    request_hash = pipeline.submit(find_envelope_with_primary(network, cheater.keys.operator_id))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    rejections = pipeline.store.list_rejections(request_hash)
    pipeline.close()
    assert row is not None
    assert row.state == RequestState.CERTIFIED and row.attempt == 1, row.error
    assert [r.primary_id for r in rejections] == [cheater.keys.operator_id]
    on_the_retry = 0 if row.primary_id == flaky.keys.operator_id else 1
    assert network.calls.count(("verify", flaky.keys.operator_id)) == 2 + on_the_retry  # 2 rounds on the cheat


def test_a_stale_verification_round_cannot_roll_the_round_count_back(db: str) -> None:
    """A leader that lost its lease mid-round must not write its round number over a newer one."""
    network = FakeNetwork([{0: 25}] * 4)
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(1))
    stale = pipeline.store.get_request(request_hash)
    assert stale is not None
    pipeline.store.update_request(request_hash, verify_rounds=2)  # another process's rounds
    with pytest.raises(StaleRowError):
        pipeline._verify_again(stale, missing=1)
    with pytest.raises(StaleRowError):  # nor can it decide the request on an older round's answers
        pipeline._set_state(stale, RequestState.ACCEPTED)
    row = pipeline.store.get_request(request_hash)
    pipeline.close()
    assert row is not None and row.verify_rounds == 2 and row.state == stale.state


def test_a_store_failure_while_recording_evidence_is_not_blamed_on_the_operators(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The primary's and the verifiers' attestations go to the evidence book; the database failing
    then raises out of the step (run again later), it never excludes a primary or fails a request."""
    network = FakeNetwork([{0: 25}] * 4)
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(1))
    assert pipeline.advance_request(request_hash)  # RECEIVED -> GENERATING
    for state in (RequestState.GENERATING, RequestState.VERIFYING):
        with monkeypatch.context() as patched:
            patched.setattr(pipeline.evidence, "record_all", lambda *_: (_ for _ in ()).throw(ConnectionError("db")))
            with pytest.raises(ConnectionError):
                pipeline.advance_request(request_hash)
        row = pipeline.store.get_request(request_hash)
        assert row is not None and row.state == state and row.attempt == 0 and load_hex_list(row.excluded) == []
        assert pipeline.advance_request(request_hash)  # the database is back: the step goes through
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.ACCEPTED
    pipeline.close()


def test_requests_asking_different_thresholds_go_into_different_batches(db: str) -> None:
    """A batch is signed to its highest threshold: one request asking 100% batched with others held
    them to it, and one operator missing SignBatch then cost them every signing round and a rebatch."""
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    network.operators[0].behaviour = "sign_down"  # 90% sign: enough for 6667, not for 10000
    settings = dataclasses.replace(SETTINGS, max_threshold_bps=10_000, sign_rounds=1)
    pipeline = make_pipeline(network, db, settings)
    normal = [pipeline.submit(make_envelope(i, f"p{i}")) for i in range(3)]
    strict = pipeline.submit(make_envelope(9, "strict"), threshold_bps=10_000)
    pipeline.run_until_idle()
    rows = {h: pipeline.store.get_request(h) for h in [*normal, strict]}
    assert all(
        r is not None and r.state == RequestState.CERTIFIED and not r.rebatched for h, r in rows.items() if h in normal
    )
    assert len({r.batch_index for h, r in rows.items() if h in normal and r is not None}) == 1
    assert rows[strict] is not None and rows[strict].state == RequestState.FAILED  # type: ignore[union-attr]
    pipeline.close()


def test_bad_batch_signature_is_dropped(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    network.operators[0].behaviour = "bad_batch_signature"
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(1))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED
    batch = pipeline.store.get_batch(1)
    assert batch is not None and '"non_signer_ids": ["0x' + network.operators[0].keys.operator_id.hex() in (
        batch.certificate or ""
    )
    pipeline.close()


@pytest.mark.parametrize("behaviour", ["wrong_output_hash", "mislabelled_output_hash"])
def test_wrong_output_hash_from_primary_is_retried(db: str, behaviour: str) -> None:
    """A primary's output hash that is not the hash of its tokens (signed, or with the signature over
    the right hash): the primary is excluded and another asked; never stored."""
    network = FakeNetwork([{0: 50}, {0: 50}])
    network.operators[0].behaviour = behaviour
    network.operators[1].behaviour = behaviour
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(1))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.FAILED
    assert "the primary's output hash does not match its tokens" in (row.error or "")
    assert row.output_hash is None and sorted(load_hex_list(row.excluded)) == sorted(
        o.keys.operator_id for o in network.operators
    )
    assert [call for call, _ in network.calls] == ["generate", "generate"]  # no verifier was asked
    pipeline.close()


@pytest.mark.parametrize("behaviour", ["too_many_tokens", "huge_text", "wide_text"])
def test_an_oversized_primary_reply_is_refused_before_it_is_stored(db: str, behaviour: str) -> None:
    """More tokens than max_tokens (correctly hashed and signed) or text far longer than the tokens
    (in bytes: 65 four-byte characters a token passed a count of characters, making a status of a
    long output too big for a client): a failed primary, never stored nor sent to the verifiers."""
    network = FakeNetwork([{0: 50}, {0: 50}])
    for operator in network.operators:
        operator.behaviour = behaviour
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(1))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.FAILED and "primary" in (row.error or "")
    assert row.output_ids is None and not any(call == "verify" for call, _ in network.calls)
    pipeline.close()


@pytest.mark.parametrize("steps", range(6))
def test_restart_after_any_step_certifies_once(db: str, steps: int) -> None:
    """Kill the pipeline after ``steps`` steps (a new Pipeline on the same database), then finish."""
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    first = make_pipeline(network, db)
    request_hash = first.submit(make_envelope(7))
    done = 0
    while done < steps:
        if first.active_request_hashes():
            first.advance_request(request_hash)
        elif not first.active_batch_indices():
            first.form_batches(force=True)
        else:
            first.advance_batch(first.active_batch_indices()[0])
        done += 1
    first.close()
    first.store.close()
    second = make_pipeline(network, db)
    second.run_until_idle()
    row = second.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED
    assert network.certify_calls == [1]
    second.close()


def test_crash_after_the_transaction_does_not_send_it_again(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    first = make_pipeline(network, db)
    request_hash = first.submit(make_envelope(3))
    network.crash_after_certify = True
    with pytest.raises(KeyboardInterrupt):
        first.run_until_idle()
    first.close()
    network.crash_after_certify = False
    second = make_pipeline(network, db)
    second.run_until_idle()
    row = second.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED
    assert network.certify_calls == [1]
    batch = second.store.get_batch(1)
    assert batch is not None and batch.state == BatchState.CERTIFIED and batch.tx_hash == network.certified[1][1]
    second.close()


def test_stale_batch_is_rebatched_under_a_new_index(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(4))
    while pipeline.active_request_hashes():
        pipeline.advance_request(request_hash)
    pipeline.form_batches(force=True)
    pipeline.advance_batch(1)  # signed at reference block 99
    network.block += 200  # the reference block is now too old for the contract
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.batch_index == 2
    assert network.certify_calls == [2]
    old = pipeline.store.get_batch(1)
    assert old is not None and old.state == BatchState.ABANDONED
    pipeline.close()


def test_an_index_certified_by_another_aggregator_is_not_taken_for_ours(db: str) -> None:
    """Another aggregator certifies our batch's index with its own batch while we collect signatures:
    our requests are not CERTIFIED by it (isCertified says the header is not ours); they are
    batched again under a free index and certified there."""
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(5))
    while pipeline.active_request_hashes():
        pipeline.advance_request(request_hash)
    pipeline.form_batches(force=True)
    pipeline.advance_batch(1)  # signed
    network.certify_foreign(1)
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.batch_index == 2
    assert network.certify_calls == [2]
    old = pipeline.store.get_batch(1)
    assert old is not None and old.state == BatchState.ABANDONED and "another batch" in (old.error or "")
    pipeline.close()


def test_an_index_taken_by_another_batch_after_a_reorg_is_batched_again(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(8))
    pipeline.run_until_idle()
    network.certify_foreign(1)  # the reorg dropped ours; another aggregator's batch holds index 1 now
    network.block += 3
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.batch_index == 2
    assert network.certify_calls == [1, 2]
    pipeline.close()


def test_a_demoted_leaders_late_step_cannot_undo_the_new_leaders_work(db: str) -> None:
    """The old leader's generate call outlives its lease: meanwhile the new leader (another pipeline
    on the same database) takes the request all the way to CERTIFIED. When the old call fails, its
    retry must not send the certified request back to RECEIVED (the write is fenced by the state
    and attempt the step read)."""
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    old, new = make_pipeline(network, db), make_pipeline(network, db)
    request_hash = old.submit(make_envelope(9))
    old.advance_request(request_hash)  # RECEIVED -> GENERATING, then the lease is lost
    real_generate = network.generate

    def outlived(*args: object) -> object:
        network.generate = real_generate  # type: ignore[method-assign]
        new.run_until_idle()  # the new leader's turn, while the old call hangs
        raise ConnectionError("the old leader's call timed out")

    network.generate = outlived  # type: ignore[method-assign,assignment]
    assert old.advance_request(request_hash)  # the step ran; its result was dropped
    row = old.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.attempt == 0
    assert row.batch_index == 1 and row.output_hash is not None and network.certify_calls == [1]
    old.close()
    new.close()


def test_a_demoted_leaders_late_signing_round_cannot_overwrite_a_certified_batch(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    old, new = make_pipeline(network, db), make_pipeline(network, db)
    request_hash = old.submit(make_envelope(10))
    while old.active_request_hashes():
        old.advance_request(request_hash)
    old.form_batches(force=True)
    real_sign = network.sign_batch
    calls: list[int] = []

    def outlived(*args: object) -> object:
        if not calls:  # the first operator's signature: the new leader finishes the batch meanwhile
            calls.append(1)
            network.sign_batch = real_sign  # type: ignore[method-assign]
            new.run_until_idle()
        return real_sign(*args)  # type: ignore[arg-type]

    network.sign_batch = outlived  # type: ignore[method-assign,assignment]
    certified = new.store.get_batch(1)
    assert old.advance_batch(1)
    batch = old.store.get_batch(1)
    assert certified is not None and certified.state == BatchState.SIGNING
    assert batch is not None and batch.state == BatchState.CERTIFIED and network.certify_calls == [1]
    assert old.store.get_request(request_hash).state == RequestState.CERTIFIED  # type: ignore[union-attr]
    old.close()
    new.close()


class RaisedThresholdNetwork(FakeNetwork):
    """The task manager's thresholdBps, raised by governance above the aggregator's config."""

    threshold_bps = 9500

    def get_threshold_bps(self) -> int:
        return self.threshold_bps


def test_batches_are_signed_to_the_on_chain_threshold(db: str) -> None:
    """90% of the stake signs: enough for the config's 6667 bps, not for the 9500 bps the contract
    now checks. The batch is held to the contract's threshold instead of a certifyBatch revert."""
    network = RaisedThresholdNetwork([{0: 10}, {0: 30}, {0: 60}])
    network.operators[0].behaviour = "sign_down"
    settings = dataclasses.replace(SETTINGS, sign_rounds=1)
    pipeline = make_pipeline(network, db, settings)
    request_hash = pipeline.submit(make_envelope(11))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.FAILED and "9500 bps" in (row.error or "")
    assert network.certify_calls == []
    network.threshold_bps = 6667  # lowered again: the same stake certifies a new request
    again = pipeline.submit(make_envelope(12))
    pipeline.run_until_idle()
    assert pipeline.store.get_request(again).state == RequestState.CERTIFIED  # type: ignore[union-attr]
    pipeline.close()


def test_an_output_is_accepted_only_at_the_on_chain_threshold(db: str) -> None:
    """90% of the stake ACCEPTs (one verifier down): the request asked 6667 bps, but the contract now
    checks 9500, so no batch could be certified with it. It is not accepted (and batched with
    others, costing them signing rounds): it gets another round, then fails."""
    network = RaisedThresholdNetwork([{0: 10}, {0: 30}, {0: 60}])
    network.operators[0].behaviour = "down"
    envelope = find_envelope_with_primary(network, network.operators[2].keys.operator_id)
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(envelope)
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.FAILED and "not enough stake verified" in (row.error or "")
    assert pipeline.store.get_batch(1) is None and network.certify_calls == []
    pipeline.close()


class RevertingNetwork(FakeNetwork):
    """certifyBatch always reverts with ``error`` (a node whose state disagrees for good, say)."""

    error = "InvalidQuorumApkHash"

    def certify_batch(self, header: BatchHeader, signatures: NonSignerStakesAndSignature) -> tuple[bytes, int]:
        self.certify_calls.append(header.batch_index)
        raise ContractRevertError(self.error, ())


@pytest.mark.parametrize("error", ["InvalidQuorumApkHash", "ThresholdNotMet"])
def test_a_revert_that_never_goes_away_fails_the_request_after_a_few_batches(db: str, error: str) -> None:
    """Re-batching on these reverts heals a reorg or a raised threshold; when the revert stays, the
    request fails after MAX_REBATCHES instead of cycling for ever."""
    network = RevertingNetwork([{0: 10}, {0: 30}, {0: 60}])
    network.error = error
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(13))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.FAILED and "never certified" in (row.error or "")
    assert len(network.certify_calls) == MAX_REBATCHES and row.rebatched == MAX_REBATCHES
    pipeline.close()


class RingNetwork(FakeNetwork):
    """certifyBatch reverts with ``error`` while ``reverts`` lasts, then certifies (the task
    manager's batch record ring: a slot still in its challenge window, or held by a later index)."""

    error = "BatchSlotNotFinal"
    reverts = 1

    def certify_batch(self, header: BatchHeader, signatures: NonSignerStakesAndSignature) -> tuple[bytes, int]:
        if self.reverts > 0:
            self.reverts -= 1
            self.certify_calls.append(header.batch_index)
            raise ContractRevertError(self.error, (header.batch_index,))
        return super().certify_batch(header, signatures)


def test_a_busy_record_slot_keeps_the_batch_and_sends_it_again_later(db: str) -> None:
    network = RingNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(21))
    pipeline.run_until_idle()  # reverted once, then idle: nothing to do until the next poll
    batch = pipeline.store.get_batch(1)
    assert batch is not None and batch.state == BatchState.SUBMITTING and network.certify_calls == [1]
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.batch_index == 1 and row.rebatched == 0
    assert network.certify_calls == [1, 1]
    pipeline.close()


class MempoolNetwork(FakeNetwork):
    """The first certifyBatch is broadcast but not mined in time (the sender gives up after its fee
    bumps); while it sits in the mempool, sending again reverts ``BatchAlreadyCertified`` (gas is
    estimated on the pending state) though the mined state has no certification."""

    def __init__(self, stakes: Sequence[dict[int, int]]) -> None:
        super().__init__(stakes)
        self.mempool: list[tuple[BatchHeader, NonSignerStakesAndSignature]] = []

    def certify_batch(self, header: BatchHeader, signatures: NonSignerStakesAndSignature) -> tuple[bytes, int]:
        if any(pending.batch_index == header.batch_index for pending, _ in self.mempool):
            self.certify_calls.append(header.batch_index)
            raise ContractRevertError("BatchAlreadyCertified", (header.batch_index,))
        if not self.certify_calls:
            self.certify_calls.append(header.batch_index)
            self.mempool.append((header, signatures))
            raise TransactionFailedError("nonce 7 not mined after 5 fee bumps")
        return super().certify_batch(header, signatures)

    def mine(self) -> None:
        for header, signatures in self.mempool:
            FakeNetwork.certify_batch(self, header, signatures)
        self.mempool.clear()


def _advance_batches(pipeline: Pipeline) -> None:
    pipeline.run_until_idle(max_rounds=1)
    for index in pipeline.active_batch_indices():
        with contextlib.suppress(TransactionFailedError):  # the batch loop logs it and tries again later
            pipeline.advance_batch(index)


def test_a_certify_batch_pending_in_the_mempool_is_waited_for_not_batched_again(db: str) -> None:
    network = MempoolNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = make_pipeline(network, db)
    hashes = [pipeline.submit(make_envelope(n)) for n in (31, 32)]
    for _ in range(4):
        _advance_batches(pipeline)
    batch = pipeline.store.get_batch(1)
    assert batch is not None and batch.state == BatchState.SUBMITTING  # waiting, not abandoned
    assert pipeline.store.get_batch(2) is None and network.certify_calls[:2] == [1, 1]
    network.mine()  # mined after all
    pipeline.run_until_idle()
    assert sorted(network.certified) == [1]  # the requests are certified once, in their batch
    for request_hash in hashes:
        row = pipeline.store.get_request(request_hash)
        assert row is not None and row.state == RequestState.CERTIFIED and row.batch_index == 1
    pipeline.close()


def test_a_pending_certify_batch_that_never_mines_is_given_up_once_stale(db: str) -> None:
    network = MempoolNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(33))
    for _ in range(3):
        _advance_batches(pipeline)
    network.block += SETTINGS.max_reference_age + 1  # the contract refuses the stuck transaction now
    network.mempool.clear()  # dropped
    pipeline.run_until_idle()
    first = pipeline.store.get_batch(1)
    assert first is not None and first.state == BatchState.ABANDONED and "stale" in (first.error or "")
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.batch_index == 2
    pipeline.close()


def certify_one(network: FakeNetwork, db: str, nonce: int) -> tuple[Pipeline, RequestRow]:
    """One request through ``network`` until nothing moves: the pipeline and the request's row."""
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(nonce))
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None
    return pipeline, row


def test_a_superseded_index_is_given_up_for_a_higher_one(db: str) -> None:
    network = RingNetwork([{0: 10}, {0: 30}, {0: 60}])
    network.error = "BatchIndexSuperseded"
    pipeline, row = certify_one(network, db, 22)
    assert row.state == RequestState.CERTIFIED and row.batch_index == 2 and row.rebatched == 0
    first = pipeline.store.get_batch(1)
    assert first is not None and first.state == BatchState.ABANDONED
    assert network.certify_calls == [1, 2]
    pipeline.close()


class RingSlotNetwork(FakeNetwork):
    """A task manager with a batch record ring: slots hold this pipeline's certifications, and what
    ``foreign`` says for the other indices (another aggregator's)."""

    reads = 0

    def foreign(self, batch_index: int) -> tuple[int, int]:
        return 0, 0

    def get_ring_slot(self, batch_index: int) -> tuple[int, int]:
        self.reads += 1
        if batch_index in self.certified:
            return batch_index, self.certified[batch_index][0]
        return self.foreign(batch_index)


class HeldSlotNetwork(RingSlotNetwork):
    """Index 1's slot is held by index 9 (another aggregator ran ahead): 1 can never be certified."""

    def foreign(self, batch_index: int) -> tuple[int, int]:
        return (9, 50) if batch_index == 1 else (0, 0)


def test_new_batches_skip_indices_whose_record_slot_a_later_index_holds(db: str) -> None:
    network = HeldSlotNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline, row = certify_one(network, db, 23)
    assert row.state == RequestState.CERTIFIED and row.batch_index == 10
    assert network.certify_calls == [10]  # nothing signed or sent under the dead index
    pipeline.close()


class RunAheadNetwork(RingSlotNetwork):
    """Another aggregator certified indices 1..5000 (each holds its own ring slot)."""

    def foreign(self, batch_index: int) -> tuple[int, int]:
        return (batch_index, 40) if 1 <= batch_index <= 5000 else (0, 0)


def test_a_long_run_of_taken_indices_is_crossed_in_few_reads(db: str) -> None:
    network = RunAheadNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline, row = certify_one(network, db, 24)
    assert row.state == RequestState.CERTIFIED and row.batch_index is not None
    assert row.batch_index > 5000 and network.certify_calls == [row.batch_index]
    assert network.reads <= 16  # galloping, not one read per taken index
    pipeline.close()


def test_batches_wait_for_the_latency_or_size_policy(db: str) -> None:
    network = FakeNetwork([{0: 100}])
    now = [1000.0]
    settings = PipelineSettings(batch_max_size=2, batch_max_latency=5.0, workers=2)
    pipeline = Pipeline(DOMAIN, Store(db), network, network, network, settings, clock=lambda: now[0])
    first = pipeline.submit(make_envelope(1))
    pipeline.run_until_idle(force_batches=False)
    assert pipeline.store.get_request(first).state == RequestState.ACCEPTED  # type: ignore[union-attr]
    now[0] += 5
    pipeline.run_until_idle(force_batches=False)
    assert pipeline.store.get_request(first).state == RequestState.CERTIFIED  # type: ignore[union-attr]
    a, b = pipeline.submit(make_envelope(2)), pipeline.submit(make_envelope(3))
    pipeline.run_until_idle(force_batches=False)  # full at 2: no waiting
    assert {pipeline.store.get_request(h).batch_index for h in (a, b)} == {2}  # type: ignore[union-attr]
    pipeline.close()


def test_certified_batch_is_confirming_until_a_block_is_on_top(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(5))
    pipeline.run_until_idle()
    batch = pipeline.store.get_batch(1)
    assert batch is not None and batch.state == BatchState.CERTIFIED and batch.confirmed_block is None
    assert batch.certified_hash == network.get_block_hash(100)
    assert pipeline.active_batch_indices() == [1]  # confirming: still re-checked, also after a restart
    network.block += 1
    network.fork = b"other"  # the certified block was replaced (same number): recorded, checked again
    assert pipeline.advance_batch(1)
    batch = pipeline.store.get_batch(1)
    assert batch is not None and batch.confirmed_block is None and batch.certified_hash == network.get_block_hash(100)
    pipeline.run_until_idle()
    batch = pipeline.store.get_batch(1)
    assert batch is not None and batch.confirmed_block == 101
    assert pipeline.active_batch_indices() == [] and not pipeline.advance_batch(1)
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and network.certify_calls == [1]
    pipeline.close()


def test_certification_removed_by_a_reorg_is_certified_again(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    first = make_pipeline(network, db)
    hashes = [first.submit(make_envelope(i, f"reorg {i}")) for i in range(2)]
    first.run_until_idle()
    assert {first.store.get_request(h).state for h in hashes} == {RequestState.CERTIFIED}  # type: ignore[union-attr]
    first.close()
    del network.certified[1]  # a reorg deeper than the confirmations removed the certification
    network.block += 3
    second = make_pipeline(network, db)  # a restart re-checks the confirming batch
    second.run_until_idle()
    rows = [second.store.get_request(h) for h in hashes]
    assert all(r is not None and r.state == RequestState.CERTIFIED and r.batch_index == 1 for r in rows)
    assert network.certify_calls == [1, 1] and network.certified[1][0] == 103  # same index, certified once
    batch = second.store.get_batch(1)
    assert batch is not None and batch.state == BatchState.CERTIFIED and batch.certified_block == 103
    second.close()


def test_reorged_certification_with_a_stale_reference_is_rebatched(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = make_pipeline(network, db)
    request_hash = pipeline.submit(make_envelope(6))
    pipeline.run_until_idle()
    del network.certified[1]
    network.block += 200  # batch 1's reference block is too old for the contract now
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.batch_index == 2
    assert network.certify_calls == [1, 2] and 1 not in network.certified
    old = pipeline.store.get_batch(1)
    assert old is not None and old.state == BatchState.ABANDONED
    pipeline.close()


def test_operators_responding_counts_the_last_call_of_each_operator(db: str) -> None:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    network.operators[0].behaviour = "down"
    registry = CollectorRegistry()
    metrics = AggregatorMetrics(registry)
    pipeline = Pipeline(DOMAIN, Store(db), network, network, network, SETTINGS, metrics)
    pipeline.submit(make_envelope(7))
    pipeline.run_until_idle()
    assert registry.get_sample_value("avs_aggregator_operators_responding") == 2
    network.operators[0].behaviour = "honest"
    pipeline.submit(make_envelope(8))
    pipeline.run_until_idle()
    assert registry.get_sample_value("avs_aggregator_operators_responding") == 3
    pipeline.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def signing_pipeline(network: FakeNetwork, db: str, clock: Clock, rounds: int = 3) -> Pipeline:
    settings = dataclasses.replace(SETTINGS, sign_rounds=rounds, sign_backoff=5.0)
    return Pipeline(DOMAIN, Store(db), network, network, network, settings, clock=clock)


def sign_calls(network: FakeNetwork, index: int) -> int:
    return network.calls.count(("sign_batch", network.operators[index].keys.operator_id))


def test_batch_signers_short_of_the_threshold_are_asked_again_after_a_backoff(db: str) -> None:
    network, clock = FakeNetwork([{0: 10}, {0: 30}, {0: 60}]), Clock()
    pipeline = signing_pipeline(network, db, clock)
    request_hash = pipeline.submit(make_envelope(1))
    network.operators[2].behaviour = "sign_down"  # verified, then down for the signing round
    pipeline.run_until_idle()
    batch = pipeline.store.get_batch(1)
    assert batch is not None and batch.state == BatchState.SIGNING and batch.sign_attempts == 1
    assert "60/100" not in (batch.error or "") and "40/100" in (batch.error or "")
    clock.now += 4.9
    pipeline.run_until_idle()
    assert sign_calls(network, 2) == 1  # still backing off
    network.operators[2].behaviour = "honest"
    clock.now += 0.2
    pipeline.run_until_idle()
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED and row.batch_index == 1
    assert sign_calls(network, 2) == 2 and network.certify_calls == [1]
    pipeline.close()


def test_a_batch_short_after_every_round_is_reformed_with_each_request_alone(db: str) -> None:
    """Operator 2 (60%) refuses every batch holding request A (say it never accepted A): A's batch
    mate B is certified in a batch of its own; A fails clearly, after its own rounds."""
    network, clock = FakeNetwork([{0: 10}, {0: 30}, {0: 60}]), Clock()
    pipeline = signing_pipeline(network, db, clock, rounds=2)
    a, b = pipeline.submit(make_envelope(1, "a")), pipeline.submit(make_envelope(2, "b"))
    network.operators[2].refuses_leaves.add(a)
    for _ in range(6):
        pipeline.run_until_idle()
        clock.now += 10
    first = pipeline.store.get_batch(1)
    assert first is not None and first.state == BatchState.ABANDONED and first.sign_attempts == 2
    row_a, row_b = pipeline.store.get_request(a), pipeline.store.get_request(b)
    assert row_b is not None and row_b.state == RequestState.CERTIFIED and row_b.rebatched == 1
    assert row_a is not None and row_a.state == RequestState.FAILED
    assert "after 2 signing rounds" in (row_a.error or "") and "6667 bps" in (row_a.error or "")
    batches = pipeline.store.list_batches([BatchState.CERTIFIED, BatchState.ABANDONED])
    assert sorted(len(load_hex_list(x.request_hashes)) for x in batches) == [1, 1, 2]
    pipeline.close()


def test_stake_that_stays_short_fails_the_request_after_the_rounds(db: str) -> None:
    network, clock = FakeNetwork([{0: 10}, {0: 30}, {0: 60}]), Clock()
    pipeline = signing_pipeline(network, db, clock)
    request_hash = pipeline.submit(make_envelope(1))
    network.operators[2].behaviour = "sign_down"
    for _ in range(4):
        pipeline.run_until_idle()
        clock.now += 100
    row = pipeline.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.FAILED
    assert "quorum 0: 40/100 signed) after 3 signing rounds" in (row.error or "")
    assert sign_calls(network, 2) == 3 and network.certify_calls == []
    pipeline.close()


def test_signing_rounds_survive_a_restart(db: str) -> None:
    network, clock = FakeNetwork([{0: 10}, {0: 30}, {0: 60}]), Clock()
    pipeline = signing_pipeline(network, db, clock)
    request_hash = pipeline.submit(make_envelope(1))
    network.operators[2].behaviour = "sign_down"
    pipeline.run_until_idle()
    pipeline.close()
    network.operators[2].behaviour = "honest"
    again = signing_pipeline(network, db, clock)
    again.run_until_idle()
    assert sign_calls(network, 2) == 1  # the backoff is in the database
    clock.now += 5
    again.run_until_idle()
    row = again.store.get_request(request_hash)
    assert row is not None and row.state == RequestState.CERTIFIED
    batch = again.store.get_batch(1)
    assert batch is not None and batch.sign_attempts == 1
    again.close()


class HangingVerifies:
    """The network's calls, but Verify hangs (an operator whose packets are dropped) until released."""

    def __init__(self, network: FakeNetwork) -> None:
        self.network = network
        self.release = threading.Event()
        self.hanging = 0

    def generate(self, *args: Any) -> Any:
        return self.network.generate(*args)

    def verify(self, *args: Any) -> Any:
        self.hanging += 1
        self.release.wait(30)
        raise TimeoutError("DEADLINE_EXCEEDED")

    def sign_batch(self, *args: Any) -> Any:
        return self.network.sign_batch(*args)


def test_batch_signing_is_not_queued_behind_hanging_verifications(db: str) -> None:
    """Verify calls that hang fill the operator-call threads; the batch's SignBatch calls have their
    own, so an accepted request is still certified in one signing round."""
    network = FakeNetwork([{0: 30}, {0: 30}, {0: 40}])
    settings = dataclasses.replace(SETTINGS, workers=2, sign_timeout=0.2, sign_rounds=1, verify_timeout=30)
    pipeline = make_pipeline(network, db, settings)
    accepted = pipeline.submit(make_envelope(1, "accepted first"))
    while pipeline.advance_request(accepted):
        pass
    assert pipeline.form_batches(force=True) == [1]
    caller = HangingVerifies(network)
    pipeline.caller = caller
    later = pipeline.submit(make_envelope(2, "verified later"))
    verifying = threading.Thread(target=lambda: [None for _ in iter(lambda: pipeline.advance_request(later), False)])
    verifying.start()
    try:
        deadline = time.monotonic() + 10
        while caller.hanging < 2 and time.monotonic() < deadline:  # both operator-call threads are taken
            time.sleep(0.01)
        started = time.monotonic()
        while pipeline.advance_batch(1):
            pass
        assert time.monotonic() - started < 3
        batch = pipeline.store.get_batch(1)
        assert batch is not None and batch.state == BatchState.CERTIFIED, batch and batch.error
    finally:
        caller.release.set()
        verifying.join()
        pipeline.close()
