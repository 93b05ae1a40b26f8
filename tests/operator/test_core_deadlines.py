"""A call whose deadline passes while it waits for the engine, or while the engine works for it, gives
up with DEADLINE_EXCEEDED: no prefill or generation after the deadline, and nothing recorded or signed.
A generation whose caller cancels stops at the next token (CANCELLED) and frees the engine."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from avs.crypto import bls
from avs.errors import (
    CancelledError,
    ContextLimitError,
    DeadlineExceededError,
    InvalidInputError,
    SlashingProtectionError,
    UnavailableError,
)
from avs.inference.engine import FinishReason, StreamEvent, Verification
from avs.inference.params import SamplingParams
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import (
    BatchHeader,
    Domain,
    InferenceOutput,
    InferenceRequest,
    compute_output_hash,
    compute_request_hash,
    compute_stop_sequences_hash,
)
from avs.rpc.status import get_status_code
from avs_operator.config import LimitsConfig
from avs_operator.core import OperatorCore, PreparedRequest
from avs_operator.metrics import OperatorMetrics
from avs_operator.slashing_protection import SlashingProtection

DOMAIN = Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def time_remaining(self) -> float:
        return self.at - time.monotonic()

    def is_active(self) -> bool:
        return True


class PassesOnceWorkStarts:
    """A deadline still open when the call checks it before the work, passed once the engine has started."""

    def __init__(self, engine: GatedEngine) -> None:
        self.engine = engine

    def time_remaining(self) -> float:
        return -1.0 if self.engine.started.is_set() else 30.0

    def is_active(self) -> bool:
        return True


class CancelsAfter:
    """A caller without a deadline that cancels once ``tokens`` tokens have been produced."""

    def __init__(self, engine: EndlessEngine, tokens: int) -> None:
        self.engine = engine
        self.tokens = tokens

    def time_remaining(self) -> None:
        return None

    def is_active(self) -> bool:
        return self.engine.produced < self.tokens


class GatedEngine:
    """Works until ``release`` is set (or for ``work_seconds``); counts the calls it started."""

    profile_hash = b"\x01" * 32

    def __init__(self, work_seconds: float = 10.0) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.work_seconds = work_seconds
        self.calls = 0

    def _work(self) -> None:
        self.calls += 1
        self.started.set()
        self.release.wait(self.work_seconds)

    def verify(self, prompt: Any, output: Any, params: Any) -> Verification:
        self._work()
        return Verification(True, None, None, 0.0, 0.0, 0, ())

    def stream(self, prompt: Any, params: Any) -> Iterator[StreamEvent]:
        self._work()
        yield StreamEvent(0, 5, FinishReason.LENGTH)

    def compute_output_hash(self, request_hash: bytes, ids: Any) -> bytes:
        return compute_output_hash(InferenceOutput(request_hash, self.profile_hash, tuple(ids)))


class EndlessEngine:
    """Produces a token after another until ``limit``, counting them."""

    profile_hash = b"\x01" * 32

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.produced = 0

    def stream(self, prompt: Any, params: Any) -> Iterator[StreamEvent]:
        while self.produced < self.limit:
            self.produced += 1
            yield StreamEvent(self.produced - 1, 5, FinishReason.LENGTH if self.produced == self.limit else None)

    def compute_output_hash(self, request_hash: bytes, ids: Any) -> bytes:
        return compute_output_hash(InferenceOutput(request_hash, self.profile_hash, tuple(ids)))


def make_core(
    tmp_path: Path, max_reply_bytes: int | None = None, busy_timeout: float = 5.0
) -> tuple[OperatorCore, SlashingProtection]:
    protection = SlashingProtection(f"sqlite:///{tmp_path / 'protection.sqlite'}?timeout={busy_timeout}")
    core = OperatorCore(
        DOMAIN,
        bls.compute_key_pair(bls.SecretKey(7)),
        None,  # type: ignore[arg-type]  # prepare() is not used: requests come prepared
        protection,
        OperatorMetrics(CollectorRegistry()),
        LimitsConfig(),
        max_reply_bytes=max_reply_bytes,
    )
    return core, protection


class WordyEngine(EndlessEngine):
    """Eight tokens of 100 bytes of text each."""

    def __init__(self) -> None:
        super().__init__(limit=8)

    def decode(self, ids: Any) -> str:
        return "\u00f1" * 50 * len(ids)


def test_an_output_whose_reply_would_not_fit_is_refused_before_it_is_signed(tmp_path: Path) -> None:
    """gRPC failed to send it (RESOURCE_EXHAUSTED, "overloaded") after it was signed and recorded."""
    core, protection = make_core(tmp_path, max_reply_bytes=1024 + 800)
    with pytest.raises(ContextLimitError, match="8 tokens, 800 bytes of text"):
        core.generate(prepared(WordyEngine(), nonce=1))
    assert protection.export_records()["attestations"] == []
    roomy, roomy_protection = make_core(tmp_path / "roomy", max_reply_bytes=1024 + 800 + 6 * 8)
    assert roomy.generate(prepared(WordyEngine(), nonce=1)).text == "\u00f1" * 400
    assert len(roomy_protection.export_records()["attestations"]) == 1


def prepared(engine: GatedEngine | EndlessEngine, nonce: int) -> PreparedRequest:
    request = InferenceRequest(
        b"\x01" * 32, b"\x02" * 32, 0, 0, 1_000_000, 0, 8, compute_stop_sequences_hash([]), "0x" + "ab" * 20, nonce
    )
    return PreparedRequest(
        request,
        compute_request_hash(DOMAIN, request),
        engine,  # type: ignore[arg-type]
        (1, 2, 3),
        SamplingParams(max_tokens=8),
    )


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[tuple[OperatorCore, SlashingProtection, GatedEngine]]:
    """A core whose engine is held by a first call until the test ends."""
    core, protection = make_core(tmp_path)
    engine = GatedEngine()
    first = threading.Thread(target=core.verify, args=(prepared(engine, 1), [5, 6], Deadline(30)))
    first.start()
    assert engine.started.wait(5)
    yield core, protection, engine
    engine.release.set()
    first.join()
    protection.close()


def test_a_verify_queued_past_its_deadline_gives_up_without_prefill_or_signature(
    busy: tuple[OperatorCore, SlashingProtection, GatedEngine],
) -> None:
    core, protection, engine = busy
    late = prepared(engine, 2)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError, match="deadline passed"):
        core.verify(late, [5, 6], Deadline(0.3))
    assert time.monotonic() - started < 3  # gave up at its deadline, not when the engine came free
    assert engine.calls == 1  # only the first call's prefill ran
    assert protection.get_attestations(DOMAIN.separator, late.request_hash) == []


def test_a_stream_queued_past_its_deadline_gives_up_before_any_token(
    busy: tuple[OperatorCore, SlashingProtection, GatedEngine],
) -> None:
    core, protection, engine = busy
    late = prepared(engine, 3)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError, match="deadline passed"):
        list(core.stream(late, Deadline(0.3)))
    assert time.monotonic() - started < 3
    assert engine.calls == 1
    assert protection.get_attestations(DOMAIN.separator, late.request_hash) == []


@pytest.mark.parametrize("call", ["verify", "generate"])
def test_a_deadline_that_passes_during_the_work_means_nothing_is_signed(tmp_path: Path, call: str) -> None:
    core, protection = make_core(tmp_path)
    engine = GatedEngine(work_seconds=0.1)
    request = prepared(engine, 4)
    deadline = PassesOnceWorkStarts(engine)
    with pytest.raises(DeadlineExceededError):
        if call == "verify":
            core.verify(request, [5], deadline)
        else:
            core.generate(request, deadline)
    assert engine.calls == 1
    assert protection.get_attestations(DOMAIN.separator, request.request_hash) == []
    protection.close()


def test_without_a_deadline_a_queued_call_waits_and_signs(tmp_path: Path) -> None:
    core, protection = make_core(tmp_path)
    engine = GatedEngine()
    first = threading.Thread(target=core.verify, args=(prepared(engine, 5), [5], None))
    first.start()
    assert engine.started.wait(5)
    threading.Timer(0.2, engine.release.set).start()
    result = core.verify(prepared(engine, 6), [5], Deadline(30))
    first.join()
    assert result.attestation.attestation.verdict.name == "ACCEPT"
    assert engine.calls == 2
    protection.close()


def test_a_call_with_an_endless_deadline_waits_like_one_without(tmp_path: Path) -> None:
    """gRPC reports "no deadline" as ~9e18 s remaining, beyond what a lock wait takes."""
    core, protection = make_core(tmp_path)
    engine = GatedEngine()
    engine.release.set()
    result = core.verify(prepared(engine, 7), [5], Deadline(9.2e18))
    assert result.attestation.attestation.verdict.name == "ACCEPT"
    protection.close()


def test_a_verdict_refused_by_slashing_protection_is_not_counted_as_signed(tmp_path: Path) -> None:
    core, protection = make_core(tmp_path)
    engine = GatedEngine()
    engine.release.set()
    request = prepared(engine, 8)
    core.verify(request, [5], Deadline(30))
    with pytest.raises(SlashingProtectionError):
        core.verify(request, [6], Deadline(30))  # ACCEPT of a second output for the request
    counted = core._metrics.verdicts.labels("0x" + engine.profile_hash.hex()[:8], "ACCEPT")._value.get()
    assert counted == 1
    protection.close()


@pytest.mark.parametrize("call", ["generate", "stream"])
def test_a_cancelled_generation_stops_at_the_next_token_and_frees_the_engine(tmp_path: Path, call: str) -> None:
    core, protection = make_core(tmp_path)
    engine = EndlessEngine()
    request = prepared(engine, 9)
    with pytest.raises(CancelledError, match="cancelled"):
        if call == "generate":
            core.generate(request, CancelsAfter(engine, 3))
        else:
            list(core.stream(request, CancelsAfter(engine, 3)))
    assert engine.produced == 3  # not the 10,000 it would have run to
    assert protection.get_attestations(DOMAIN.separator, request.request_hash) == []
    assert core._engine_lock.acquire(blocking=False)  # the next call gets the engine
    protection.close()


def refusals(core: OperatorCore, kind: str) -> float:
    return float(core._metrics.refusals.labels(kind)._value.get())


def test_a_busy_history_is_unavailable_and_no_signing_refusal(tmp_path: Path) -> None:
    """Another process holding the history's write lock (an import) past the busy timeout: the call
    ends UNAVAILABLE (retry), and avs_signing_refusals_total, which counts what slashing protection
    refused, stays 0 (it counted these, and the call ended INTERNAL)."""
    core, protection = make_core(tmp_path, busy_timeout=0.2)
    engine = GatedEngine()
    engine.release.set()
    accepted = core.verify(prepared(engine, 1), [5], Deadline(30)).attestation.attestation
    leaves = [BatchLeaf(accepted.request_hash, accepted.output_hash)]
    header = BatchHeader(1, compute_merkle_tree(leaves).root, 10, b"\x00")
    holder = sqlite3.connect(tmp_path / "protection.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(UnavailableError):
            core.verify(prepared(engine, 2), [5], Deadline(30))
        with pytest.raises(UnavailableError):
            core.sign_batch(header, leaves)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (refusals(core, "attestation"), refusals(core, "batch")) == (0, 0)
    core.sign_batch(header, leaves)  # free again: signs
    protection.close()


class Cancelled:
    def time_remaining(self) -> None:
        return None

    def is_active(self) -> bool:
        return False


@pytest.mark.parametrize(("caller", "error"), [(Deadline(-1), DeadlineExceededError), (Cancelled(), CancelledError)])
def test_a_sign_batch_whose_caller_gave_up_records_and_signs_nothing(
    tmp_path: Path, caller: Any, error: type[Exception]
) -> None:
    """SignBatch never looked at its caller: one whose deadline passed (or who cancelled) while it
    waited for the history still had its header recorded and signed, binding the index for nobody."""
    core, protection = make_core(tmp_path)
    engine = GatedEngine()
    engine.release.set()
    accepted = core.verify(prepared(engine, 1), [5], Deadline(30)).attestation.attestation
    leaves = [BatchLeaf(accepted.request_hash, accepted.output_hash)]
    header = BatchHeader(1, compute_merkle_tree(leaves).root, 10, b"\x00")
    with pytest.raises(error):
        core.sign_batch(header, leaves, caller)
    assert protection.export_records()["batches"] == []
    assert core._metrics.signatures.labels("batch")._value.get() == 0
    protection.close()


@pytest.mark.parametrize("leaf_accepted", [True, False])
def test_a_batch_index_beyond_the_record_is_invalid_input_and_no_refusal(tmp_path: Path, leaf_accepted: bool) -> None:
    """A SignBatch at index 2^63 was counted in avs_signing_refusals_total{kind="batch"} (the critical
    alert AvsSigningRefused fires on it) although it is bad input; over a leaf not accepted it even ended
    FAILED_PRECONDITION. The index is checked first: INVALID_ARGUMENT, and no refusal counted."""
    core, protection = make_core(tmp_path)
    engine = GatedEngine()
    engine.release.set()
    accepted = core.verify(prepared(engine, 1), [5], Deadline(30)).attestation.attestation
    leaves = [BatchLeaf(accepted.request_hash, accepted.output_hash if leaf_accepted else b"\x09" * 32)]
    root = compute_merkle_tree(leaves).root
    with pytest.raises(InvalidInputError, match="beyond what slashing protection records") as refused:
        core.sign_batch(BatchHeader(2**63, root, 10, b"\x00"), leaves)
    assert get_status_code(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert refusals(core, "batch") == 0
    assert protection.export_records()["batches"] == []
    if not leaf_accepted:  # what slashing protection does refuse is still counted
        with pytest.raises(SlashingProtectionError, match="did not accept"):
            core.sign_batch(BatchHeader(1, root, 10, b"\x00"), leaves)
        assert refusals(core, "batch") == 1
    protection.close()


def test_only_what_slashing_protection_refuses_is_counted_as_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug or any other error on the way (here a RuntimeError) is no refusal: it would page someone
    for a slashing-protection refusal that never happened."""
    core, protection = make_core(tmp_path)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(protection, "record_attestation", broken)
    monkeypatch.setattr(protection, "record_batch", broken)
    engine = GatedEngine()
    engine.release.set()
    with pytest.raises(RuntimeError):
        core.verify(prepared(engine, 1), [5], Deadline(30))
    leaves = [BatchLeaf(b"\x01" * 32, b"\x02" * 32)]
    with pytest.raises(RuntimeError):
        core.sign_batch(BatchHeader(1, compute_merkle_tree(leaves).root, 10, b"\x00"), leaves)
    assert (refusals(core, "attestation"), refusals(core, "batch")) == (0, 0)
    protection.close()


def test_the_wait_for_the_engine_is_timed_apart_from_the_prefill(tmp_path: Path) -> None:
    """A verify queued behind another one: its prefill time is its own work, not the queue (a p95
    panel of prefill times showed queueing); the wait goes to the ``engine_wait`` stage."""
    core, protection = make_core(tmp_path)
    engine = GatedEngine()
    first = threading.Thread(target=core.verify, args=(prepared(engine, 5), [5], None))
    first.start()
    assert engine.started.wait(5)
    threading.Timer(0.5, engine.release.set).start()  # the first holds the engine 0.5 s
    core.verify(prepared(engine, 6), [5], Deadline(30))
    first.join()
    registry = core._metrics.registry
    prefill = registry.get_sample_value("avs_inference_seconds_sum", {"stage": "prefill"}) or 0.0
    waited = registry.get_sample_value("avs_inference_seconds_sum", {"stage": "engine_wait"}) or 0.0
    assert registry.get_sample_value("avs_inference_seconds_count", {"stage": "engine_wait"}) == 2
    assert waited >= 0.4 and prefill < 0.65  # the first's 0.5 s of work once; the second's wait apart
    protection.close()
