"""The pure core: primary selection, the tally, multi-quorum aggregation."""

from __future__ import annotations

from collections import Counter

import pytest
from eth_abi.packed import encode_packed
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from avs.crypto import bls
from avs.messages import BatchHeader, Verdict, compute_digest
from avs_aggregator import protocol
from avs_aggregator.ports import OperatorSet
from tests.aggregator.fakes import DOMAIN, FakeNetwork

STAKES = [{0: 10}, {0: 30}, {0: 60}]


def test_selection_is_reproducible_and_depends_on_request_block_and_attempt() -> None:
    operator_set = FakeNetwork(STAKES).get_operator_set(99)
    request = keccak(text="r")
    first = protocol.select_primary(operator_set, b"\x00", request, 0)
    assert protocol.select_primary(operator_set, b"\x00", request, 0) == first
    picks = {protocol.select_primary(operator_set, b"\x00", keccak(text=f"r{i}"), 0).operator_id for i in range(40)}
    assert len(picks) == 3


@given(st.binary(min_size=32, max_size=32), st.integers(0, 5))
def test_selection_never_picks_excluded_or_stakeless(request_hash: bytes, attempt: int) -> None:
    network = FakeNetwork([{0: 10}, {0: 0}, {1: 50}, {0: 5, 1: 5}])
    operator_set = network.get_operator_set(99)
    excluded = {network.operators[0].keys.operator_id}
    primary = protocol.select_primary(operator_set, b"\x00", request_hash, attempt, excluded)
    assert primary.operator_id == network.operators[3].keys.operator_id


def test_selection_with_nobody_left_raises() -> None:
    network = FakeNetwork([{0: 10}])
    with pytest.raises(protocol.NoOperatorError):
        protocol.select_primary(
            network.get_operator_set(1), b"\x00", b"\x01" * 32, 0, {network.operators[0].keys.operator_id}
        )


def test_selection_is_stake_weighted() -> None:
    network = FakeNetwork(STAKES)
    operator_set = network.get_operator_set(99)
    counts = Counter(
        protocol.select_primary(operator_set, b"\x00", keccak(i.to_bytes(4, "big")), 0).operator_id for i in range(3000)
    )
    for op, stake in zip(network.operators, (10, 30, 60), strict=True):
        share = counts[op.keys.operator_id] / 3000
        assert abs(share - stake / 100) < 0.04


@given(st.lists(st.sampled_from([None, Verdict.ACCEPT, Verdict.REJECT]), min_size=3, max_size=3))
def test_tally_sums_stake_per_verdict(verdicts: list[Verdict | None]) -> None:
    network = FakeNetwork([{0: 10, 1: 7}, {0: 30}, {0: 60, 1: 3}])
    operator_set = network.get_operator_set(99)
    given_verdicts = {o.keys.operator_id: v for o, v in zip(network.operators, verdicts, strict=True) if v is not None}
    tally = protocol.compute_tally(operator_set, b"\x00\x01", given_verdicts)
    q0, q1 = tally.quorums
    assert q0.total_stake == 100 and q1.total_stake == 10
    assert q0.accept_stake == sum(s for s, v in zip((10, 30, 60), verdicts, strict=True) if v == Verdict.ACCEPT)
    assert q1.reject_stake == sum(s for s, v in zip((7, 0, 3), verdicts, strict=True) if v == Verdict.REJECT)
    assert tally.is_accepted(6667) == (q0.accept_stake * 3 >= 200 + 1 and q1.accept_stake * 10000 >= 10 * 6667)


def _contract_apk(operator_set: OperatorSet, quorums: bytes, aggregate: protocol.Aggregate) -> object:
    """What BLSSignatureChecker computes: Σ quorum apks − Σ non-signers × their quorum count."""
    keys = []
    for q in quorums:
        keys += [o.pubkey_g1 for o in operator_set.operators if o.is_in(q) and o.operator_id in aggregate.signer_ids]
    return bls.aggregate_g1(keys)


@given(st.sets(st.integers(0, 3), min_size=1))
def test_multi_quorum_aggregate_counts_a_signer_once_per_quorum(signer_indexes: set[int]) -> None:
    network = FakeNetwork([{0: 10, 1: 10}, {0: 10}, {1: 10}, {0: 5, 1: 5}])
    operator_set = network.get_operator_set(99)
    header = BatchHeader(1, keccak(text="root"), 99, b"\x00\x01")
    digest = compute_digest(DOMAIN, header)
    signatures = {
        network.operators[i].keys.operator_id: bls.sign(network.operators[i].keys.secret, digest)
        for i in signer_indexes
    }
    aggregate = protocol.compute_aggregate(operator_set, b"\x00\x01", digest, signatures)
    assert aggregate is not None
    assert aggregate.apk_g1 == _contract_apk(operator_set, b"\x00\x01", aggregate)
    assert [o.operator_id for o in aggregate.non_signers] == sorted(o.operator_id for o in aggregate.non_signers)
    assert set(aggregate.non_signer_ids) | set(aggregate.signer_ids) == {o.keys.operator_id for o in network.operators}
    for op in network.operators:
        if op.keys.operator_id in signatures:
            assert aggregate.multiplicity[op.keys.operator_id] == len(op.stakes)
    # The fake chain runs the contract's arithmetic on it.
    from avs.chain.client import CheckSignaturesIndices

    network.certify_batch(header, aggregate.to_signatures(CheckSignaturesIndices((), (), (), ())))


def test_bad_signature_fails_the_aggregate_and_is_found() -> None:
    network = FakeNetwork(STAKES)
    operator_set = network.get_operator_set(99)
    digest = keccak(text="digest")
    signatures = {o.keys.operator_id: bls.sign(o.keys.secret, digest) for o in network.operators}
    bad = network.operators[1].keys.operator_id
    signatures[bad] = bls.sign(network.operators[1].keys.secret, keccak(text="other"))
    assert protocol.compute_aggregate(operator_set, b"\x00", digest, signatures) is None
    assert protocol.find_invalid_signers(operator_set, digest, signatures) == [bad]


def test_signatory_record_hash_is_abi_encode_packed() -> None:
    ids = [keccak(text="a"), keccak(text="b")]
    expected = keccak(encode_packed(["uint32", "bytes32[]"], [7, ids]))
    assert protocol.compute_signatory_record_hash(7, ids) == expected
    assert protocol.compute_signatory_record_hash(7, []) == keccak((7).to_bytes(4, "big"))
