"""The intake's ``Prepare`` and its insurance check at ``Submit``, over real gRPC: the SDK talks to
the aggregator's servicer (with its error interceptor) in-process; the coverage reads are a fake
``CoverageReader`` (``tests/test_insurance_anvil.py`` runs the real one on anvil)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from eth_account import Account
from eth_utils import keccak

from avs.chain.faults import Coverage, CoverageStatus
from avs.client import AggregatorClient, PreparedRequest
from avs.errors import InvalidInputError
from avs.messages import compute_request_hash
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.server import AggregatorServicer, IntakeLimits, ServedModel, build_server
from avs_aggregator.store import RequestState, Store
from tests.aggregator.fakes import DOMAIN, MODEL_ID, FakeNetwork

REQUESTER = Account.from_key(keccak(text="insured requester"))
BLOCK = 1_000
NO_COVERAGE = Coverage("0x" + "00" * 20, 0, CoverageStatus.NONE, 0, 0, 0)


@dataclass
class FakeCoverageReader:
    coverages: dict[bytes, Coverage] = field(default_factory=dict)
    block: int = BLOCK
    broken: bool = False

    def get_coverage(self, request_hash: bytes) -> Coverage:
        if self.broken:
            raise ConnectionError("rpc down")
        return self.coverages.get(request_hash, NO_COVERAGE)

    def get_block_number(self) -> int:
        return self.block


@dataclass
class Intake:
    client: AggregatorClient
    pipeline: Pipeline
    coverage: FakeCoverageReader


def _serve(tmp_path: Path, coverage: FakeCoverageReader | None) -> Iterator[Intake]:
    network = FakeNetwork([{0: 60, 1: 10}, {0: 40, 1: 10}])
    settings = PipelineSettings(workers=1, allowed_quorums=frozenset({0, 1}))
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{tmp_path / 'agg.sqlite'}"), network, network, network, settings)
    servicer = AggregatorServicer(
        pipeline, {MODEL_ID: ServedModel("tiny", MODEL_ID)}, IntakeLimits(max_new_tokens=64), coverage
    )
    server, port, _ = build_server(servicer, "127.0.0.1:0", max_workers=4)
    server.start()
    client = AggregatorClient(f"127.0.0.1:{port}")
    try:
        yield Intake(client, pipeline, coverage or FakeCoverageReader())
    finally:
        client.close()
        server.stop(None).wait()
        pipeline.close()


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[Intake]:
    yield from _serve(tmp_path, FakeCoverageReader())


def _prepare(client: AggregatorClient, nonce: int = 1, **kwargs: object) -> PreparedRequest:
    return client.prepare(
        [{"role": "user", "content": "insure me"}],
        requester=REQUESTER.address,
        model="tiny",
        prompt_hash=keccak(text="insure me"),
        nonce=nonce,
        **kwargs,  # type: ignore[arg-type]
    )


def _coverage(
    status: CoverageStatus = CoverageStatus.ACTIVE,
    quorum: int = 0,
    holder: str = REQUESTER.address,
    expires: int = BLOCK + 100,
) -> Coverage:
    return Coverage(holder, quorum, status, expires, 10**18, 0)


def _refusal(intake: Intake, prepared: PreparedRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        intake.client.submit_prepared(prepared, domain=DOMAIN, requester_key=bytes(REQUESTER.key), insured=True)
    assert intake.pipeline.store.get_request(prepared.request_hash) is None  # nothing was accepted
    return info.value


def test_prepare_completes_the_request_without_accepting_it(intake: Intake) -> None:
    prepared = _prepare(intake.client)
    assert prepared.request.model_id == MODEL_ID  # resolved from the model name
    assert prepared.quorums == b"\x00" and prepared.threshold_bps == 6667  # the aggregator's defaults
    assert prepared.request_hash == compute_request_hash(DOMAIN, prepared.request)
    assert intake.pipeline.store.get_request(prepared.request_hash) is None
    chosen = _prepare(intake.client, quorums=b"\x00\x01", threshold_bps=9000)
    assert (chosen.quorums, chosen.threshold_bps) == (b"\x00\x01", 9000)
    with pytest.raises(grpc.RpcError) as info:
        _prepare(intake.client, threshold_bps=100)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_insured_request_with_active_coverage_is_accepted(intake: Intake) -> None:
    prepared = _prepare(intake.client)
    intake.coverage.coverages[prepared.request_hash] = _coverage()
    request_hash = intake.client.submit_prepared(
        prepared, domain=DOMAIN, requester_key=bytes(REQUESTER.key), insured=True
    )
    assert request_hash == prepared.request_hash
    row = intake.pipeline.store.get_request(request_hash)
    assert row is not None and row.quorum_numbers == b"\x00" and row.threshold_bps == 6667
    # Submitting it again answers the same hash, even once the coverage has moved on after the
    # certificate (a fraud recorded against it); in flight, coverage that can no longer pay is refused.
    intake.coverage.coverages[prepared.request_hash] = _coverage(CoverageStatus.CLAIMABLE)
    with pytest.raises(grpc.RpcError) as refused:
        intake.client.submit_prepared(prepared, domain=DOMAIN, requester_key=bytes(REQUESTER.key), insured=True)
    assert "is claimable, not active" in str(refused.value.details())
    intake.pipeline.store.update_request(request_hash, state=RequestState.CERTIFIED)
    assert intake.client.submit_prepared(prepared, domain=DOMAIN, insured=True) == request_hash


@pytest.mark.parametrize(
    ("coverage", "message"),
    [
        (None, "has no coverage in the insurance pool"),
        (_coverage(holder="0x" + "77" * 20), "not by its requester"),
        (_coverage(quorum=1), "against quorum 1, not one of its quorums [0]"),
    ],
)
def test_an_insured_retry_of_a_request_sent_uninsured_is_checked(
    intake: Intake, coverage: Coverage | None, message: str
) -> None:
    """The check ran only for a request not stored yet: sent uninsured, then again as insured, it
    was answered as accepted with no coverage (the requester believing itself insured)."""
    prepared = _prepare(intake.client)
    assert intake.client.submit_prepared(prepared, domain=DOMAIN) == prepared.request_hash
    if coverage is not None:
        intake.coverage.coverages[prepared.request_hash] = coverage
    with pytest.raises(grpc.RpcError) as info:
        intake.client.submit_prepared(prepared, domain=DOMAIN, insured=True)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert message in str(info.value.details())
    assert intake.pipeline.store.get_request(prepared.request_hash) is not None  # the request is kept
    intake.coverage.coverages[prepared.request_hash] = _coverage(CoverageStatus.EXPIRED)  # its own, but expired
    with pytest.raises(grpc.RpcError) as expired:  # while the request is in flight: it cannot insure it
        intake.client.submit_prepared(prepared, domain=DOMAIN, insured=True)
    assert "expired at block" in str(expired.value.details())
    # Active with only a few blocks left: a new request is refused (too soon to certify it within the
    # term), the retry of one already on its way is not.
    intake.coverage.coverages[prepared.request_hash] = _coverage(expires=BLOCK + 5)
    assert intake.client.submit_prepared(prepared, domain=DOMAIN, insured=True) == prepared.request_hash
    intake.pipeline.store.update_request(prepared.request_hash, state=RequestState.FAILED)  # final: moved on
    assert intake.client.submit_prepared(prepared, domain=DOMAIN, insured=True) == prepared.request_hash


@pytest.mark.parametrize(
    ("coverage", "message"),
    [
        (None, "has no coverage in the insurance pool"),
        (
            _coverage(holder="0x" + "77" * 20),
            "held by 0x7777777777777777777777777777777777777777, not by its requester",
        ),
        (_coverage(quorum=1), "against quorum 1, not one of its quorums [0]"),
        (_coverage(CoverageStatus.EXPIRED), "expired at block"),
        (_coverage(expires=BLOCK - 1), f"expired at block {BLOCK - 1} (now {BLOCK})"),
        (_coverage(expires=BLOCK + 31), f"ends at block {BLOCK + 31}, 31 blocks from now: too soon"),
        (_coverage(CoverageStatus.CLAIMED), "is claimed, not active"),
    ],
)
def test_an_insured_request_without_valid_coverage_is_refused(
    intake: Intake, coverage: Coverage | None, message: str
) -> None:
    prepared = _prepare(intake.client)
    if coverage is not None:
        intake.coverage.coverages[prepared.request_hash] = coverage
    error = _refusal(intake, prepared)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert message in str(error.details())


def test_coverage_on_one_of_several_quorums_is_enough(intake: Intake) -> None:
    prepared = _prepare(intake.client, quorums=b"\x00\x01")
    intake.coverage.coverages[prepared.request_hash] = _coverage(quorum=1)
    assert intake.client.submit_prepared(prepared, domain=DOMAIN, insured=True) == prepared.request_hash


def test_an_unreadable_pool_is_unavailable_and_no_pool_is_a_refusal(intake: Intake, tmp_path: Path) -> None:
    prepared = _prepare(intake.client)
    intake.coverage.broken = True
    assert _refusal(intake, prepared).code() == grpc.StatusCode.UNAVAILABLE
    intake.coverage.broken = False
    assert intake.client.submit_prepared(prepared, domain=DOMAIN) == prepared.request_hash  # not insured: no check
    (tmp_path / "no-pool").mkdir()
    for other in _serve(tmp_path / "no-pool", None):
        error = _refusal(other, _prepare(other.client, nonce=2))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "cannot check insurance" in str(error.details())


def test_a_prepared_request_whose_hash_does_not_match_is_not_signed(intake: Intake) -> None:
    prepared = _prepare(intake.client)
    forged = PreparedRequest(
        prepared.request, prepared.message, keccak(text="something else"), prepared.quorums, prepared.threshold_bps
    )
    with pytest.raises(InvalidInputError, match="not the digest"):
        intake.client.submit_prepared(forged, domain=DOMAIN, requester_key=bytes(REQUESTER.key), insured=True)
