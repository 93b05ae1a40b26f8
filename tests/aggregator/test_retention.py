"""Retention (``Store.prune_finished``), on SQLite and PostgreSQL: finished requests and batches
older than the cutoff go, with their attestations and settled proofs; anything still in flight,
unconfirmed or owed a proof stays."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from avs_aggregator.evidence import ProofState
from avs_aggregator.store import (
    AttestationRow,
    BatchRow,
    BatchState,
    RejectionRow,
    RequestRow,
    RequestState,
    Store,
)
from tests.aggregator.fakes import DOMAIN
from tests.aggregator.test_server_insurance import _prepare, _serve
from tests.aggregator.test_store import _request_row


def _hash(name: str) -> bytes:
    return name.encode().ljust(32, b"\x00")


def _request(name: str, state: RequestState, batch_index: int | None = None) -> RequestRow:
    row = _request_row(_hash(name), state)
    row.batch_index, row.created_at, row.updated_at = batch_index, 0.0, 0.0
    return row


def _batch(index: int, state: BatchState, confirmed: bool = False) -> BatchRow:
    return BatchRow(
        batch_index=index,
        state=state,
        quorum_numbers=b"\x00",
        reference_block=1,
        leaves_root=b"\x00" * 32,
        request_hashes="[]",
        confirmed_block=10 if confirmed else None,
        created_at=0.0,
        updated_at=0.0,
    )


def _rejection(name: str, state: ProofState) -> RejectionRow:
    return RejectionRow(
        request_hash=_hash(name),
        attempt=0,
        primary_id=b"\x01" * 32,
        output_hash=b"\x02" * 32,
        reference_block=1,
        evidence="{}",
        state=state,
        created_at=0.0,
    )


def _attestation(name: str) -> AttestationRow:
    return AttestationRow(
        operator_id=b"\x03" * 32,
        request_hash=_hash(name),
        output_hash=b"\x02" * 32,
        verdict=1,
        signature="[]",
        created_at=0.0,
    )


def _fill(store: Store) -> None:
    with store.session() as s:
        s.add_all(
            [
                _batch(1, BatchState.CERTIFIED, confirmed=True),
                _batch(2, BatchState.CERTIFIED),  # not confirmed yet: a reorg may still reopen it
                _batch(3, BatchState.ABANDONED),
                _batch(4, BatchState.SIGNING),
                _request("failed", RequestState.FAILED),
                _request("certified", RequestState.CERTIFIED, batch_index=1),
                _request("unconfirmed", RequestState.CERTIFIED, batch_index=2),
                _request("in flight", RequestState.ACCEPTED),
                _request("owed a proof", RequestState.FAILED),
                _request("proven", RequestState.FAILED),
                _rejection("owed a proof", ProofState.PENDING),
                _rejection("proven", ProofState.PROVEN),
                _attestation("certified"),
                _attestation("in flight"),
            ]
        )


def _requests(store: Store) -> set[str]:
    states = list(RequestState)
    return {r.request_hash.rstrip(b"\x00").decode() for r in store.list_requests(states, limit=100)}


def test_finished_rows_older_than_the_cutoff_go_and_nothing_else(db: str) -> None:
    store = Store(db)
    _fill(store)
    assert not store.prune_finished(before=0.0)  # everything was last changed at 0: not before it
    counts = store.prune_finished(before=1.0)
    assert (counts.requests, counts.attestations, counts.rejections, counts.batches) == (3, 1, 1, 2)
    assert _requests(store) == {"unconfirmed", "in flight", "owed a proof"}
    assert {b.batch_index for b in store.list_batches(list(BatchState))} == {2, 4}
    assert [r.state for r in store.list_rejections()] == [ProofState.PENDING]
    with store.session() as s:
        assert [a.request_hash for a in s.query(AttestationRow)] == [_hash("in flight")]
    assert not store.prune_finished(before=1.0)  # nothing left to prune
    store.close()


def test_the_highest_batch_is_kept_so_no_index_is_formed_twice(db: str) -> None:
    """Found in review: with every batch pruned the next index started over at the first one, and an
    index abandoned after operators had signed it was formed again with another header, which their
    slashing protection refuses: the batch fell short and its requests failed, every operator healthy."""
    store = Store(db)
    with store.session() as s:
        s.add_all([_batch(1, BatchState.ABANDONED), _batch(2, BatchState.CERTIFIED, confirmed=True)])
    assert store.prune_finished(before=1.0).batches == 1
    assert [b.batch_index for b in store.list_batches(list(BatchState))] == [2]
    assert store.get_next_batch_index(1) == 3
    assert not store.prune_finished(before=1.0)
    store.close()


def test_each_pruned_request_leaves_its_final_state_and_batch(db: str) -> None:
    store = Store(db)
    _fill(store)
    store.prune_finished(before=1.0)
    certified, failed = store.get_pruned_request(_hash("certified")), store.get_pruned_request(_hash("failed"))
    assert certified is not None and (certified.state, certified.batch_index) == (RequestState.CERTIFIED, 1)
    assert failed is not None and (failed.state, failed.batch_index) == (RequestState.FAILED, None)
    assert store.get_pruned_request(_hash("in flight")) is None and store.get_pruned_request(_hash("nobody")) is None
    with store.session() as s:  # the same hash taken again (an older release sharing the database)
        s.add(_request("failed", RequestState.FAILED))
    assert store.prune_finished(before=1.0).requests == 1  # replaces its record, no key conflict
    store.close()


def test_a_pruned_request_submitted_again_is_refused_and_its_status_says_why(tmp_path: Path) -> None:
    """Through the intake: once its record is deleted, the same request was taken as new, generated,
    verified and certified a second time; GetStatus answered a bare NOT_FOUND."""
    for intake in _serve(tmp_path, None):
        prepared = _prepare(intake.client)
        request_hash = intake.client.submit_prepared(prepared, domain=DOMAIN)
        store = intake.pipeline.store
        store.update_request(request_hash, state=RequestState.FAILED, error="no operator answered")
        assert store.prune_finished(before=time.time() + 1).requests == 1
        with pytest.raises(grpc.RpcError) as status:
            intake.client.get_status(request_hash)
        assert status.value.code() == grpc.StatusCode.NOT_FOUND
        assert "this request failed; its record was deleted" in str(status.value.details())
        with pytest.raises(grpc.RpcError) as again:
            intake.client.submit_prepared(prepared, domain=DOMAIN)
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "a new request needs another nonce" in str(again.value.details())
        assert store.get_request(request_hash) is None  # not taken again
        assert intake.client.submit_prepared(_prepare(intake.client, nonce=2), domain=DOMAIN) != request_hash


def test_pruning_goes_in_bounded_transactions(db: str) -> None:
    store = Store(db)
    _fill(store)
    assert store.prune_finished(before=1.0, limit=1).requests == 1
    assert store.prune_finished(before=1.0, limit=1).requests == 1
    assert store.prune_finished(before=1.0, limit=1).requests == 1
    assert store.prune_finished(before=1.0, limit=1).requests == 0
    assert _requests(store) == {"unconfirmed", "in flight", "owed a proof"}
    store.close()
