"""The challenger's logic over fakes: sampling, checking against the chain, escalating a REJECT."""

from __future__ import annotations

import random
from collections.abc import Sequence

from avs.messages import BatchHeader, Verdict
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs_aggregator.challenger.core import CertifiedBatch, Challenger
from avs_aggregator.pipeline import Pipeline
from avs_aggregator.server import build_status
from avs_aggregator.store import Store
from tests.aggregator.fakes import DOMAIN, FakeNetwork, make_envelope
from tests.aggregator.test_pipeline import SETTINGS


class Feed:
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
                record = self.pipeline.get_header(batch)
                status = build_status(self.pipeline, self.pipeline.store.get_request(self.get_batch_requests(index)[0]))  # type: ignore[arg-type]
                batches.append(CertifiedBatch(record, bytes(status.certificate.signatory_record_hash), block))
        return batches

    def get_batch_requests(self, batch_index: int) -> list[bytes]:
        from avs_aggregator.store import load_hex_list

        batch = self.pipeline.store.get_batch(batch_index)
        assert batch is not None
        return load_hex_list(batch.request_hashes)

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


class Escalator:
    def __init__(self) -> None:
        self.challenged: list[tuple[int, bytes]] = []

    def challenge(
        self, header: BatchHeader, signatory_record_hash: bytes, leaf: tuple[bytes, bytes], proof: Sequence[bytes]
    ) -> bytes:
        self.challenged.append((header.batch_index, leaf[0]))
        return b"\x01" * 32


def certified_pipeline(tmp_path: object, count: int) -> tuple[Pipeline, FakeNetwork]:
    network = FakeNetwork([{0: 10}, {0: 30}, {0: 60}])
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{tmp_path}/agg.sqlite"), network, network, network, SETTINGS)
    for i in range(count):
        pipeline.submit(make_envelope(i, f"leaf {i}"))
    pipeline.run_until_idle()
    return pipeline, network


def test_accepted_leaves_are_not_escalated_and_each_batch_is_seen_once(tmp_path: object) -> None:
    pipeline, network = certified_pipeline(tmp_path, 3)
    feed, checker, escalator = Feed(pipeline, network), Checker(Verdict.ACCEPT), Escalator()
    challenger = Challenger(feed, feed, checker, escalator, sample_rate=1.0, next_block=0)
    findings = challenger.poll()
    assert len(findings) == 3 and all(f.verdict == Verdict.ACCEPT for f in findings)
    assert challenger.poll() == [] and escalator.challenged == []
    pipeline.close()


def test_a_rejected_leaf_is_escalated(tmp_path: object) -> None:
    pipeline, network = certified_pipeline(tmp_path, 2)
    feed, escalator = Feed(pipeline, network), Escalator()
    challenger = Challenger(feed, feed, Checker(Verdict.REJECT), escalator, sample_rate=1.0)
    findings = challenger.poll()
    assert [f.detail for f in findings] == ["challenged", "challenged"]
    assert {index for index, _ in escalator.challenged} == {1}
    pipeline.close()


def test_sampling_checks_a_share_of_the_leaves(tmp_path: object) -> None:
    pipeline, network = certified_pipeline(tmp_path, 4)
    feed, checker = Feed(pipeline, network), Checker(Verdict.ACCEPT)
    challenger = Challenger(feed, feed, checker, None, sample_rate=0.5, rng=random.Random(3))
    challenger.poll()
    assert 0 < len(checker.checked) < 4
    pipeline.close()


def test_a_certificate_that_does_not_match_the_chain_is_reported_not_checked(tmp_path: object) -> None:
    pipeline, network = certified_pipeline(tmp_path, 1)
    feed, checker = Feed(pipeline, network), Checker(Verdict.REJECT)
    [batch] = feed.get_certified_batches(0, network.block)
    forged = CertifiedBatch(batch.header, b"\x00" * 32, batch.block)
    challenger = Challenger(feed, feed, checker, Escalator(), sample_rate=1.0)
    [finding] = challenger.process_batch(forged)
    assert finding.verdict is None and "signatory record" in finding.detail and checker.checked == []
    pipeline.close()
