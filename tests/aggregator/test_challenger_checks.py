"""How the challenger re-checks a certified leaf and keeps going: operators that did not sign the
batch are asked first (a signer vouches for its own output), only validly signed answers count, a
leaf only its signers accepted is retried while the others are unreachable (a bounded number of
polls), one leaf that cannot be checked does not stop the others, and open challenges are resolved
even when the scan fails. Also the daemon's edges: its ready line and its database path."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from avs.chain.faults import ChallengeStatus
from avs.messages import Domain, Verdict
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs.rpc.convert import RequestEnvelope
from avs_aggregator.challenger import app as challenger_app
from avs_aggregator.challenger import cli as challenger_cli
from avs_aggregator.challenger import resolution
from avs_aggregator.challenger.app import (
    ChallengerApp,
    ChallengerConfig,
    ChallengerSecrets,
    EndedChallenges,
    load_challenger_config,
)
from avs_aggregator.challenger.chain import OperatorLeafChecker
from avs_aggregator.challenger.core import (
    Challenger,
    LeafCheck,
    compute_check_verdict,
    compute_checker_order,
    is_final_check,
)
from avs_aggregator.challenger.resolution import Resolver
from avs_aggregator.challenger.store import AttestationRow, ChallengerStore, ChallengeState, EquivocationRow
from avs_aggregator.config import ConfigError
from avs_aggregator.evidence import EvidenceBook
from avs_aggregator.pipeline import Pipeline
from avs_aggregator.ports import OperatorInfo, VerifyReply
from tests.aggregator.fakes import DOMAIN, FakeFaultManager, FakeNetwork
from tests.aggregator.test_challenger import Checker, Feed, certified_pipeline, colluded_pipeline, make_challenger


class Caller:
    """``VerifyCaller`` over the fake network; the operators in ``forged`` answer REJECT under a
    signature of their ACCEPT (not a valid attestation)."""

    def __init__(self, network: FakeNetwork) -> None:
        self.network = network
        self.forged: set[bytes] = set()

    @property
    def domain(self) -> Domain:
        return DOMAIN

    def verify(
        self, operator: OperatorInfo, envelope: RequestEnvelope, output_ids: Sequence[int], timeout: float
    ) -> VerifyReply:
        reply = self.network.verify(operator, envelope, output_ids, timeout)
        if operator.operator_id in self.forged:
            return dataclasses.replace(reply, verdict=Verdict.REJECT)
        return reply


def cheated_pipeline(tmp_path: Path) -> tuple[Pipeline, FakeNetwork]:
    """Operator 0 (70% of the stake) certifies its wrong output alone while the others are down;
    they are back (and honest) afterwards: the batch's only signer is the cheater."""
    network = FakeNetwork([{0: 70}, {0: 10}, {0: 10}, {0: 10}])
    network.operators[0].behaviour = "cheat"
    for op in network.operators[1:]:
        op.behaviour = "down"
    pipeline, _ = certified_pipeline(tmp_path, 1, network)
    for op in network.operators[1:]:
        op.behaviour = "honest"
    return pipeline, network


def get_certificate(pipeline: Pipeline, network: FakeNetwork) -> ag.Certificate:
    feed = Feed(pipeline, network)
    [batch] = feed.get_certified_batches(0, network.block)
    return feed.get_certificate(feed.get_batch_leaves(batch.header.batch_index)[0].request_hash)


def checking_challenger(
    db: str, pipeline: Pipeline, network: FakeNetwork, caller: Caller, checkers: int = 2, check_attempts: int = 10
) -> tuple[Challenger, FakeFaultManager, OperatorLeafChecker]:
    store = ChallengerStore(db)
    manager = FakeFaultManager(network)
    feed = Feed(pipeline, network)
    checker = OperatorLeafChecker(network, caller, timeout=5, seed=7, checkers=checkers)
    challenger = Challenger(
        feed, feed, checker, manager, store, sample_rate=1.0, start_block=0, check_attempts=check_attempts
    )
    return challenger, manager, checker


def test_the_checker_asks_the_operators_that_did_not_sign_the_batch(tmp_path: Path) -> None:
    pipeline, network = cheated_pipeline(tmp_path)
    certificate = get_certificate(pipeline, network)
    cheater = network.operators[0].keys.operator_id
    assert cheater not in set(certificate.non_signer_ids) and len(certificate.non_signer_ids) == 3
    for seed in range(20):  # whoever the draw picks, the cheater (70% of the stake) is not asked first
        network.calls.clear()
        checker = OperatorLeafChecker(network, Caller(network), timeout=5, seed=seed, checkers=1)
        check = checker.check(certificate)
        checker.close()
        assert compute_check_verdict(check) == Verdict.REJECT and is_final_check(check)
        assert [a.is_signer for a in check.answers] == [False]
        assert ("verify", cheater) not in network.calls
    pipeline.close()


@pytest.mark.parametrize("unit", [1, 10**18])
def test_the_order_is_non_signers_then_signers_each_stake_weighted(unit: int) -> None:
    """Also with stakes in wei (``unit``), as on chain: there u ** (1 / w) was 1.0 for everyone, and
    the lowest operator id was always asked first (an id is cheap to grind)."""
    network = FakeNetwork([{0: 1 * unit}, {0: 1000 * unit}, {0: 50 * unit}, {0: 50 * unit}, {0: 0, 1: 5 * unit}])
    infos = [op.info for op in network.operators]
    signers = {infos[2].operator_id, infos[3].operator_id}
    firsts = []
    for seed in range(200):
        order = compute_checker_order(infos, signers, b"\x00", random.Random(seed))
        assert {o.operator_id for o in order[:3]} == {infos[i].operator_id for i in (0, 1, 4)}
        assert {o.operator_id for o in order[3:]} == signers
        assert order[2].operator_id == infos[4].operator_id  # no stake in the batch's quorum: last
        firsts.append(order[0].operator_id)
    assert firsts.count(infos[1].operator_id) > 190  # 1000 to 1


def test_a_leaf_only_its_signers_accepted_is_retried_then_challenged(tmp_path: Path, db: str) -> None:
    pipeline, network = cheated_pipeline(tmp_path)
    for op in network.operators[1:]:
        op.behaviour = "down"  # unreachable again when the challenger looks: only the cheater answers
    challenger, manager, checker = checking_challenger(db, pipeline, network, Caller(network))
    assert challenger.poll() == []  # the cheater's ACCEPT of its own output is not a check
    [pending] = challenger.store.list_pending_checks()
    assert pending.attempts == 1 and "only the batch's signers accepted it" in pending.error
    assert challenger.findings == [] and manager.challenges == {}
    network.block += 1
    for op in network.operators[1:]:
        op.behaviour = "honest"
    [finding] = challenger.poll()  # retried: a non-signer rejects it, and it is challenged
    assert finding.verdict == Verdict.REJECT and finding.detail == "challenged" and finding.challenge_id == 1
    assert challenger.store.list_pending_checks() == [] and len(manager.challenges) == 1
    assert challenger.poll() == [] and len(manager.challenges) == 1
    checker.close()
    pipeline.close()


def test_a_retry_asks_the_others_again_but_not_the_signers_it_has_answers_from(tmp_path: Path, db: str) -> None:
    pipeline, network = cheated_pipeline(tmp_path)
    cheater, *others = network.operators
    for op in others:
        op.behaviour = "down"
    store = ChallengerStore(db)
    evidence = EvidenceBook(store.session, AttestationRow, EquivocationRow, None, lambda: 0.0)
    checker = OperatorLeafChecker(network, Caller(network), timeout=5, seed=7, evidence=evidence)
    feed = Feed(pipeline, network)
    manager = FakeFaultManager(network)
    challenger = Challenger(feed, feed, checker, manager, store, sample_rate=1.0, start_block=0)
    network.calls.clear()
    assert challenger.poll() == []
    network.block += 1
    assert challenger.poll() == []  # the others are still down; the cheater's answer is on record
    [pending] = store.list_pending_checks()
    assert pending.attempts == 2 and "only the batch's signers accepted it" in pending.error
    assert network.calls.count(("verify", cheater.keys.operator_id)) == 1
    assert all(network.calls.count(("verify", op.keys.operator_id)) == 2 for op in others)
    for op in others:
        op.behaviour = "honest"
    network.block += 1
    [finding] = challenger.poll()
    assert finding.verdict == Verdict.REJECT and finding.detail == "challenged"
    assert network.calls.count(("verify", cheater.keys.operator_id)) == 1
    checker.close()
    pipeline.close()


def test_a_leaf_still_unchecked_after_the_attempts_is_recorded_unchecked(tmp_path: Path) -> None:
    pipeline, network = cheated_pipeline(tmp_path)
    for op in network.operators[1:]:
        op.behaviour = "down"
    challenger, manager, checker = checking_challenger(
        "sqlite://", pipeline, network, Caller(network), check_attempts=3
    )
    assert challenger.poll() == [] and challenger.poll() == []
    [finding] = challenger.poll()
    assert finding.verdict is None and finding.detail.startswith("unchecked after 3 attempts: only the batch's signers")
    assert challenger.store.list_pending_checks() == [] and challenger.poll() == [] and manager.challenges == {}
    checker.close()
    pipeline.close()


def test_a_reject_that_is_not_validly_signed_opens_no_challenge(tmp_path: Path) -> None:
    pipeline, network = certified_pipeline(tmp_path, 1)  # an honest output, signed by everyone
    caller = Caller(network)
    caller.forged = {op.keys.operator_id for op in network.operators}
    challenger, manager, checker = checking_challenger("sqlite://", pipeline, network, caller, checkers=3)
    assert challenger.poll() == [] and manager.challenges == {}
    [pending] = challenger.store.list_pending_checks()
    assert "no checker answered" in pending.error and "not a valid attestation" in pending.error
    caller.forged = {network.operators[0].keys.operator_id}  # the others answer (ACCEPT): final
    [finding] = challenger.poll()
    assert finding.verdict == Verdict.ACCEPT and manager.challenges == {}
    checker.close()
    pipeline.close()


def test_every_operator_signed_the_batch_so_their_accepts_are_final(tmp_path: Path) -> None:
    pipeline, network = certified_pipeline(tmp_path, 1)
    store = ChallengerStore("sqlite://")
    evidence = EvidenceBook(store.session, AttestationRow, EquivocationRow, None, store.clock)
    checker = OperatorLeafChecker(network, Caller(network), timeout=5, seed=1, evidence=evidence, checkers=2)
    check = checker.check(get_certificate(pipeline, network))
    assert isinstance(check, LeafCheck) and not check.has_independent and is_final_check(check)
    assert [a.verdict for a in check.answers] == [Verdict.ACCEPT] * 2 and all(a.is_signer for a in check.answers)
    with store.session() as s:  # both signed answers are kept as evidence
        assert s.query(AttestationRow).count() == 2
    checker.close()
    pipeline.close()


class Flaky:
    """A checker that cannot reach a verifier for the leaves in ``failing``."""

    def __init__(self, failing: set[bytes]) -> None:
        self.failing = failing

    def check(self, certificate: ag.Certificate) -> Verdict:
        if bytes(certificate.request_hash) in self.failing:
            raise ConnectionError("verifier unreachable")
        return Verdict.ACCEPT


def test_one_leaf_that_cannot_be_checked_does_not_stop_the_others(tmp_path: Path) -> None:
    pipeline, network = certified_pipeline(tmp_path, 3)
    feed = Feed(pipeline, network)
    [batch] = feed.get_certified_batches(0, network.block)
    first = feed.get_batch_leaves(batch.header.batch_index)[0].request_hash
    checker = Flaky({first})
    challenger = Challenger(feed, feed, checker, None, ChallengerStore("sqlite://"), sample_rate=1.0, start_block=0)
    findings = challenger.poll()
    assert len(findings) == 2 and first not in {f.request_hash for f in findings}
    [pending] = challenger.store.list_pending_checks()
    assert pending.request_hash == first and "verifier unreachable" in pending.error
    checker.failing = set()
    [finding] = challenger.poll()
    assert finding.request_hash == first and finding.verdict == Verdict.ACCEPT
    assert challenger.store.list_pending_checks() == [] and len(challenger.findings) == 3
    pipeline.close()


VERIFY_TIMEOUT = 1.0


def _hung_members(tmp_path: Path) -> tuple[Pipeline, FakeNetwork, ag.Certificate]:
    """A certified leaf, then 24 of the 32 operators take a Verify call and never answer (each until
    its timeout)."""
    network = FakeNetwork([{0: 10}] * 32)
    pipeline, _ = certified_pipeline(tmp_path, 1, network)
    certificate = get_certificate(pipeline, network)
    for op in network.operators[8:]:
        op.behaviour = "hung"
    return pipeline, network, certificate


def _time_round(resolver: Resolver, certificate: ag.Certificate) -> tuple[float, str]:
    """One escalation round (``predict_verdict``): its time and the stake shares it saw."""
    started = time.monotonic()
    _, shares = resolver.predict_verdict(certificate)
    elapsed = time.monotonic() - started
    resolver.close()
    return elapsed, shares


def test_an_escalation_round_with_hung_members_costs_one_verify_timeout(tmp_path: Path) -> None:
    """Eight threads asked 32 members: 24 hung ones cost three verify_timeouts a round (each round:
    the confirmation before a challenge, and every open challenge at every poll)."""
    pipeline, network, certificate = _hung_members(tmp_path)
    store = ChallengerStore("sqlite://")
    resolver = Resolver(DOMAIN, store, FakeFaultManager(network), network, network, VERIFY_TIMEOUT)
    elapsed, shares = _time_round(resolver, certificate)
    assert elapsed < 2 * VERIFY_TIMEOUT
    assert shares == "quorum 0: accept 80 reject 0 of 320"  # the 8 that answered count
    pipeline.close()


def test_an_escalation_round_ends_at_its_deadline_whatever_the_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fewer threads than members (more than the threads allow for): the round still ends one
    verify_timeout (and its grace) after it began; the calls still queued then do not count."""
    monkeypatch.setattr(resolution, "CALL_GRACE_SECONDS", 0.2, raising=False)
    pipeline, network, certificate = _hung_members(tmp_path)
    store = ChallengerStore("sqlite://")
    resolver = Resolver(DOMAIN, store, FakeFaultManager(network), network, network, VERIFY_TIMEOUT, workers=8)
    elapsed, _ = _time_round(resolver, certificate)
    assert elapsed < 2 * VERIFY_TIMEOUT
    pipeline.close()


class BrokenFeed(Feed):
    def get_block_number(self) -> int:
        raise ConnectionError("rpc down")


def test_open_challenges_are_resolved_when_the_scan_fails(tmp_path: Path, db: str) -> None:
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    challenger, _, store = make_challenger(db, pipeline, network, manager)
    challenger.poll()  # challenged; the escalation certificate needs a later reference block
    challenger.feed = BrokenFeed(pipeline, network)
    network.block += 1
    with pytest.raises(ConnectionError):
        challenger.poll()
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD
    assert [c.state for c in store.list_challenges()] == [ChallengeState.UPHELD]
    pipeline.close()


def test_the_daemons_poll_resolves_and_counts_even_when_the_scan_fails(tmp_path: Path) -> None:
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    store = ChallengerStore("sqlite://")
    feed = Feed(pipeline, network)
    resolver = Resolver(DOMAIN, store, manager, network, network, verify_timeout=5)
    advancer = EndedChallenges(resolver)  # as ChallengerApp.start wires them
    challenger = Challenger(
        feed, feed, Checker(Verdict.REJECT), manager, store, advancer, sample_rate=1.0, start_block=0
    )
    config = ChallengerConfig(deployment_file=tmp_path / "d.json", ecdsa_keystore=tmp_path / "k.json")
    app = ChallengerApp(config, ChallengerSecrets())
    app.store, app.challenger, app.resolver, app._advancer = store, challenger, resolver, advancer
    app.evidence = EvidenceBook(store.session, AttestationRow, EquivocationRow, None, store.clock)
    app.poll_once()
    assert manager.get_challenge(1).status == ChallengeStatus.OPEN
    challenger.feed = BrokenFeed(pipeline, network)
    network.block += 1
    app.poll_once()  # the scan fails; the challenge is resolved all the same
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD
    assert app.metrics.challenges_closed.labels("upheld")._value.get() == 1
    resolver.close()
    pipeline.close()


def test_a_requeued_challenge_is_counted_once_with_how_it_ended(tmp_path: Path) -> None:
    """A reorg drops our challenge; its leaf is challenged again and upheld. The metrics counted the
    row given up as an expired challenge besides the upheld one: one challenge, opened and upheld."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    store = ChallengerStore("sqlite://")
    feed = Feed(pipeline, network)
    resolver = Resolver(DOMAIN, store, manager, network, network, verify_timeout=5)
    advancer = EndedChallenges(resolver)
    challenger = Challenger(feed, feed, Checker(Verdict.REJECT), manager, store, None, sample_rate=1.0, start_block=0)
    config = ChallengerConfig(deployment_file=tmp_path / "d.json", ecdsa_keystore=tmp_path / "k.json")
    app = ChallengerApp(config, ChallengerSecrets())
    app.store, app.challenger, app.resolver, app._advancer = store, challenger, resolver, advancer
    app.evidence = EvidenceBook(store.session, AttestationRow, EquivocationRow, None, store.clock)
    app.keeper = None
    app.poll_once()  # opened, not resolved yet
    [row] = store.list_challenges()
    manager.challenges.clear()  # a reorg drops it
    manager.leaves.clear()
    network.block = row.opened_block + 64
    challenger.resolver = advancer
    for _ in range(4):
        app.poll_once()
        network.block += 1
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD
    metrics = app.metrics
    assert metrics.challenges._value.get() == 1
    closed = {state: metrics.challenges_closed.labels(state)._value.get() for state in ("upheld", "expired")}
    assert closed == {"upheld": 1, "expired": 0}
    resolver.close()
    pipeline.close()


def write_config(folder: Path, **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "challenger.yaml"
    path.write_text(yaml.safe_dump({"deployment_file": "deployment.json", "ecdsa_keystore": "key.json", **extra}))
    return path


def test_a_relative_sqlite_path_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "etc" / "challenger"
    config = load_challenger_config(write_config(folder))
    assert config.database_url == f"sqlite:///{folder.resolve()}/challenger-data/challenger.sqlite"
    config = load_challenger_config(write_config(folder, database_url="sqlite:///own.sqlite"))
    assert config.database_url == f"sqlite:///{folder.resolve()}/own.sqlite"
    for url in (f"sqlite:///{tmp_path}/abs.sqlite", "sqlite://", "postgresql+psycopg://u@db:5432/challenger"):
        assert load_challenger_config(write_config(folder, database_url=url)).database_url == url


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("poll_seconds", float("inf")),
        ("verify_seconds", float("nan")),
        ("poll_seconds", 1e10),
        ("sample_rate", float("nan")),
    ],
)
def test_infinite_or_huge_waits_are_refused(tmp_path: Path, key: str, value: float) -> None:
    """YAML reads ``.inf`` as a float: ``poll_seconds: .inf`` made ``Event.wait`` raise
    ``OverflowError`` at the first poll, long after start."""
    with pytest.raises(ConfigError, match=key):
        load_challenger_config(write_config(tmp_path, **{key: value}))


def test_escalating_without_resolving_is_refused(tmp_path: Path) -> None:
    """Without the resolver, one operator's REJECT opened a challenge with no confirmation by the
    escalation quorum, never expired: the bond locked, or taken by whoever resolved it ACCEPT."""
    with pytest.raises(ConfigError, match="escalate needs resolve"):
        load_challenger_config(write_config(tmp_path, escalate=True, resolve=False))
    assert not load_challenger_config(write_config(tmp_path, escalate=False, resolve=False)).escalate


class StubApp:
    def __init__(self, config: ChallengerConfig, secrets: ChallengerSecrets) -> None:
        self.metrics_port = 9123
        self.challenger = dataclasses.make_dataclass("Position", [("next_block", int)])(42)
        self.stopped = False

    def start(self) -> None:
        pass

    def wait(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True


def test_the_cli_prints_a_ready_line_once_watching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(challenger_app, "ChallengerApp", StubApp)
    monkeypatch.setattr(challenger_cli, "configure_json_logging", lambda level: None)
    assert challenger_cli.main(["run", "--config", str(write_config(tmp_path))]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [{"event": "ready", "metrics_port": 9123, "next_block": 42}]


def _app_over(tmp_path: Path, challenger: Challenger, resolver: Resolver, store: ChallengerStore) -> ChallengerApp:
    """A ``ChallengerApp`` around ``challenger`` and its resolver, as ``ChallengerApp.start`` wires them."""
    advancer = EndedChallenges(resolver)
    challenger.resolver = advancer
    config = ChallengerConfig(deployment_file=tmp_path / "d.json", ecdsa_keystore=tmp_path / "k.json")
    app = ChallengerApp(config, ChallengerSecrets())
    app.store, app.challenger, app.resolver, app._advancer = store, challenger, resolver, advancer
    app.evidence = EvidenceBook(store.session, AttestationRow, EquivocationRow, None, store.clock)
    app.keeper = None
    return app


def _counts(app: ChallengerApp) -> tuple[float, dict[str, float]]:
    metrics = app.metrics
    states = ("upheld", "dismissed", "expired", "lost")
    return metrics.challenges._value.get(), {s: metrics.challenges_closed.labels(s)._value.get() for s in states}


def test_a_requeued_challenge_refused_for_good_is_counted_lost(tmp_path: Path) -> None:
    """A reorg drops our challenge after the challenge window closed: sent again, it is refused
    (ChallengeWindowClosed). It was counted opened and never closed; it is counted closed, lost."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01", challenge_window=10)
    store = ChallengerStore("sqlite://")
    feed = Feed(pipeline, network)
    resolver = Resolver(DOMAIN, store, manager, network, network, verify_timeout=5)
    challenger = Challenger(feed, feed, Checker(Verdict.REJECT), manager, store, None, sample_rate=1.0, start_block=0)
    app = _app_over(tmp_path, challenger, resolver, store)
    challenger.resolver = None
    app.poll_once()  # opened, not resolved yet
    [row] = store.list_challenges()
    manager.challenges.clear()  # a reorg drops it
    manager.leaves.clear()
    network.block = row.opened_block + 64  # past the challenge window too
    challenger.resolver = app._advancer
    for _ in range(3):
        app.poll_once()
        network.block += 1
    [finding] = store.list_findings()
    assert "ChallengeWindowClosed" in finding.detail and finding.challenge_id is None
    assert store.list_sent_challenges() == [] and manager.challenges == {}
    assert _counts(app) == (1, {"upheld": 0, "dismissed": 0, "expired": 0, "lost": 1})
    assert app.metrics.open_challenges._value.get() == 0
    resolver.close()
    pipeline.close()


def test_a_challenge_adopted_after_a_crash_is_counted_opened(tmp_path: Path) -> None:
    """Killed after its challenge was mined, before its database write: the restarted challenger
    adopts the challenge and resolves it. It was counted closed (upheld) and never opened."""
    pipeline, network = colluded_pipeline(tmp_path)
    manager = FakeFaultManager(network, escalation_quorums=b"\x01")
    manager.crash_after_challenge = True
    db = f"sqlite:///{tmp_path}/challenger.sqlite"
    first, _, store = make_challenger(db, pipeline, network, manager)
    with pytest.raises(KeyboardInterrupt):
        first.poll()
    store.close()
    manager.crash_after_challenge = False
    network.block += 1
    again, resolver, store = make_challenger(db, pipeline, network, manager)
    app = _app_over(tmp_path, again, resolver, store)
    app.poll_once()
    assert manager.get_challenge(1).status == ChallengeStatus.UPHELD
    [finding] = store.list_findings()
    assert finding.detail == "challenged (adopted from the chain)"
    assert _counts(app) == (1, {"upheld": 1, "dismissed": 0, "expired": 0, "lost": 0})
    resolver.close()
    pipeline.close()


def test_a_client_certificate_for_mutual_tls_is_a_pair_relative_to_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="operator_tls_client_cert_file and operator_tls_client_key_file go together"):
        load_challenger_config(write_config(tmp_path, operator_tls_client_key_file="tls/challenger.key"))
    pair = {"operator_tls_client_cert_file": "tls/challenger.crt", "operator_tls_client_key_file": "tls/challenger.key"}
    config = load_challenger_config(write_config(tmp_path, **pair))
    assert config.operator_tls_client_cert_file == (tmp_path / "tls/challenger.crt").resolve()
    assert config.operator_tls_client_key_file == (tmp_path / "tls/challenger.key").resolve()
