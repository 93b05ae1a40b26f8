"""Equivocation evidence, shared by the aggregator and the challenger.

Every attestation whose BLS signature the caller has checked is kept (``attestations``). When an
operator's new attestation conflicts with one it signed before for the same request
(``Attestation.is_conflicting``: two verdicts on one output, or ACCEPT of two outputs), the pair is
recorded once per (operator, request) in ``equivocations`` and proven on-chain with
``FaultManager.proveEquivocation``, whose fault id is keccak("EQUIVOCATION", operatorId,
requestHash): one slash per operator and request. A proof not yet sent (a crash, a failed
transaction) stays PENDING and ``report_pending`` sends it again after a restart; a proof the chain
already has (``FaultAlreadySlashed``) counts as proven.

The tables are mixins: the aggregator's and the challenger's stores each declare them on their own
metadata (and migrations).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from enum import StrEnum
from typing import Protocol, TypeVar, runtime_checkable

from sqlalchemy import Float, Integer, LargeBinary, String, Text, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, declared_attr, mapped_column
from web3.exceptions import Web3RPCError

from avs.chain.client import ContractRevertError
from avs.chain.faults import SignedAttestation
from avs.crypto.curve import G1Point
from avs.errors import UnavailableError
from avs.messages import Attestation, Verdict
from avs.types import OperatorId
from avs_aggregator.database import PortableText

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ProofState(StrEnum):
    """Progress of an on-chain fault proof (an equivocation, or the aggregator's rejected output)."""

    PENDING = "PENDING"  # recorded, proof not (yet) accepted on-chain
    PROVEN = "PROVEN"  # the proof succeeded, or the chain already had it
    FAILED = "FAILED"  # the contract refused the proof for good (see ``error``)


class AttestationMixin:
    """One checked, signed attestation of one operator."""

    __tablename__ = "attestations"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[UniqueConstraint]:
        return (UniqueConstraint("operator_id", "request_hash", "output_hash", "verdict"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    operator_id: Mapped[bytes] = mapped_column(LargeBinary(32))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    output_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    verdict: Mapped[int] = mapped_column(Integer)
    signature: Mapped[str] = mapped_column(Text)  # JSON [x, y] hex
    created_at: Mapped[float] = mapped_column(Float)


class EquivocationMixin:
    """Two conflicting attestations of one operator for one request, and the proof's progress."""

    __tablename__ = "equivocations"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[UniqueConstraint]:
        return (UniqueConstraint("operator_id", "request_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    operator_id: Mapped[bytes] = mapped_column(LargeBinary(32))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    evidence: Mapped[str] = mapped_column(Text)  # JSON: the two signed attestations
    tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(PortableText, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


@runtime_checkable
class EquivocationReporter(Protocol):
    """Sends ``FaultManager.proveEquivocation`` and waits for it. Raises ``ContractRevertError``."""

    def prove_equivocation(self, operator_id: OperatorId, a: SignedAttestation, b: SignedAttestation) -> bytes: ...


# Tries of one fault proof that reached the chain (or failed otherwise) before it is given up.
MAX_PROOF_ATTEMPTS = 10
# The chain unreachable (OSError), this aggregator no longer the leader (UnavailableError), or the node
# answering a JSON-RPC error (a rate limit, "header not found", "missing trie node"): a proof waits,
# without counting an attempt, rather than letting a cheater escape over a node's bad minute.
TRANSIENT_CHAIN_ERRORS: tuple[type[Exception], ...] = (OSError, UnavailableError, Web3RPCError)
# Reverts after which sending the same proof again cannot succeed.
FINAL_REVERTS = frozenset({"NotConflicting", "InvalidAttestationSignature", "UnknownOperator", "NotSlashable"})


def signed_to_json(signed: SignedAttestation) -> dict[str, object]:
    a = signed.attestation
    return {
        "request_hash": "0x" + a.request_hash.hex(),
        "output_hash": "0x" + a.output_hash.hex(),
        "verdict": int(a.verdict),
        "signature": [hex(signed.signature.x), hex(signed.signature.y)],
    }


def signed_from_json(data: dict[str, object]) -> SignedAttestation:
    signature = data["signature"]
    assert isinstance(signature, list)
    attestation = Attestation(
        bytes.fromhex(str(data["request_hash"])[2:]),
        bytes.fromhex(str(data["output_hash"])[2:]),
        Verdict(int(str(data["verdict"]))),
    )
    return SignedAttestation(attestation, G1Point(int(signature[0], 16), int(signature[1], 16)))


class InFlight:
    """Ids of the proofs being sent now, so that a worker and the retry tick never send one twice."""

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, key: int) -> Iterator[bool]:
        """True (``key`` is ours for the block) unless another thread is sending it now."""
        with self._lock:
            mine = key not in self._ids
            self._ids.add(key)
        try:
            yield mine
        finally:
            if mine:
                with self._lock:
                    self._ids.discard(key)


class EvidenceBook:
    """Records checked attestations, detects equivocations, proves each once."""

    def __init__(
        self,
        session: Callable[[], AbstractContextManager[Session]],
        attestation_row: type[AttestationMixin],
        equivocation_row: type[EquivocationMixin],
        reporter: EquivocationReporter | None,
        clock: Callable[[], float],
    ) -> None:
        self._session = session
        self._attestation_row = attestation_row
        self._equivocation_row = equivocation_row
        self.reporter = reporter
        self._clock = clock
        self._in_flight = InFlight()

    def record(self, operator_id: bytes, signed: SignedAttestation) -> bool:
        """Keep ``signed`` (its signature already checked by the caller) and, when it conflicts with an
        earlier attestation of ``operator_id`` for the same request, record the equivocation and
        prove it. True if this call found a new equivocation."""
        return self.record_all([(operator_id, signed)]) > 0

    def record_all(self, attestations: Sequence[tuple[bytes, SignedAttestation]]) -> int:
        """``record`` for many (operator id, signed attestation) pairs in one database transaction (a
        verification round: one commit, not one per verifier). Returns the new equivocations found."""
        if not attestations:
            return 0
        row_type = self._attestation_row
        try:
            with self._session() as s:
                earlier: dict[tuple[bytes, bytes], list[AttestationMixin]] = {}
                request_hashes = {signed.attestation.request_hash for _, signed in attestations}  # one, mostly
                for row in s.scalars(select(row_type).where(row_type.request_hash.in_(request_hashes))):
                    earlier.setdefault((row.operator_id, row.request_hash), []).append(row)
                found: list[tuple[bytes, SignedAttestation, AttestationMixin]] = []  # (operator, new, conflict)
                for operator_id, signed in attestations:
                    a = signed.attestation
                    before = earlier.setdefault((operator_id, a.request_hash), [])
                    conflict = next((row for row in before if _attestation(row).is_conflicting(a)), None)
                    if conflict is not None:  # also for a repeat: its equivocation may not have been recorded
                        found.append((operator_id, signed, conflict))
                    if any(_same(row, a) for row in before):
                        continue
                    new = _build(
                        row_type,
                        operator_id=operator_id,
                        request_hash=a.request_hash,
                        output_hash=a.output_hash,
                        verdict=int(a.verdict),
                        signature=json.dumps([hex(signed.signature.x), hex(signed.signature.y)]),
                        created_at=self._clock(),
                    )
                    s.add(new)
                    before.append(new)
        except IntegrityError:  # some recorded concurrently: one transaction each, so the others are kept
            if len(attestations) == 1:
                return 0
            return sum(self.record_all([pair]) for pair in attestations)
        equivocations = 0
        for operator_id, signed, conflict in found:
            first, request_hash = SignedAttestation(_attestation(conflict), _signature(conflict)), conflict.request_hash
            if self._add_equivocation(operator_id, request_hash, first, signed):
                equivocations += 1
                where = {"operator": "0x" + operator_id.hex(), "request": "0x" + request_hash.hex()}
                logger.warning("operator equivocated", extra=where)
        if equivocations:
            self.report_pending()
        return equivocations

    def _add_equivocation(
        self, operator_id: bytes, request_hash: bytes, a: SignedAttestation, b: SignedAttestation
    ) -> bool:
        now = self._clock()
        try:
            with self._session() as s:
                existing = s.scalar(
                    select(self._equivocation_row.id).where(
                        self._equivocation_row.operator_id == operator_id,
                        self._equivocation_row.request_hash == request_hash,
                    )
                )
                if existing is not None:
                    return False
                s.add(
                    _build(
                        self._equivocation_row,
                        operator_id=operator_id,
                        request_hash=request_hash,
                        state=ProofState.PENDING,
                        evidence=json.dumps([signed_to_json(a), signed_to_json(b)]),
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            return False
        return True

    def find_attestations(self, request_hash: bytes, output_hash: bytes) -> dict[bytes, SignedAttestation]:
        """Each operator's recorded (checked) signed attestation on this output, except the request's
        equivocators: an operator that signed conflicting attestations for the request (both verdicts on
        this output, or ACCEPT of two outputs) has no verdict worth counting, neither way."""
        equivocators = self.find_equivocators(request_hash)
        with self._session() as s:
            rows = s.scalars(
                select(self._attestation_row).where(
                    self._attestation_row.request_hash == request_hash,
                    self._attestation_row.output_hash == output_hash,
                )
            )
            found: dict[bytes, SignedAttestation] = {}
            for row in rows:
                earlier = found.get(row.operator_id)
                if earlier is not None and earlier.attestation.verdict != row.verdict:
                    equivocators.add(row.operator_id)  # its equivocation row may not be written yet
                found[row.operator_id] = SignedAttestation(_attestation(row), _signature(row))
            return {operator: signed for operator, signed in found.items() if operator not in equivocators}

    def find_verdicts(self, request_hash: bytes, output_hash: bytes) -> dict[bytes, Verdict]:
        """Each operator's recorded (checked) verdict on this output; none for the request's equivocators."""
        return {
            operator: signed.attestation.verdict
            for operator, signed in self.find_attestations(request_hash, output_hash).items()
        }

    def find_equivocators(self, request_hash: bytes) -> set[bytes]:
        """The operators recorded as having equivocated on this request."""
        row_type = self._equivocation_row
        with self._session() as s:
            return set(s.scalars(select(row_type.operator_id).where(row_type.request_hash == request_hash)))

    def list_equivocations(self, state: ProofState | None = None) -> list[EquivocationMixin]:
        with self._session() as s:
            query = select(self._equivocation_row).order_by(self._equivocation_row.id)
            if state is not None:
                query = query.where(self._equivocation_row.state == str(state))
            return list(s.scalars(query))

    def report_pending(self, max_attempts: int = MAX_PROOF_ATTEMPTS) -> int:
        """Send the proofs still PENDING (after a restart too); returns how many were proven now."""
        if self.reporter is None:
            return 0
        proven = 0
        for row in self.list_equivocations(ProofState.PENDING):
            if row.attempts >= max_attempts:
                continue
            with self._in_flight.hold(row.id) as mine:
                proven += self._report(row, max_attempts) if mine else 0
        return proven

    def _report(self, row: EquivocationMixin, max_attempts: int) -> int:
        assert self.reporter is not None
        with self._session() as s:  # settled by another thread since it was listed?
            current = s.get(self._equivocation_row, row.id)
            if current is None or current.state != ProofState.PENDING:
                return 0
        reporter = self.reporter
        a, b = (signed_from_json(item) for item in json.loads(row.evidence))
        values = send_proof(
            lambda: reporter.prove_equivocation(OperatorId(row.operator_id), a, b),
            row.attempts,
            max_attempts,
            FINAL_REVERTS,
            "equivocation",
        )
        self._update(row.id, values)
        return 1 if values.get("state") == ProofState.PROVEN else 0

    def _update(self, row_id: int, values: dict[str, object]) -> None:
        with self._session() as s:
            row = s.get(self._equivocation_row, row_id)
            assert row is not None
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = self._clock()


def send_proof(
    send: Callable[[], bytes], attempts: int, max_attempts: int, final_reverts: frozenset[str], what: str
) -> dict[str, object]:
    """Send one fault proof; the row's new values: ``attempts``, and ``tx_hash``/``state``/``error``.

    PROVEN when it lands or the chain already has it (``FaultAlreadySlashed``); FAILED on a revert in
    ``final_reverts`` or after ``max_attempts``; otherwise it stays PENDING and is sent again later.
    ``TRANSIENT_CHAIN_ERRORS`` (the chain unreachable or erring, this aggregator no longer the leader)
    keep it PENDING without counting an attempt, so that a long outage does not give it up and the
    next leader sends it; any other failure counts as an attempt."""
    values: dict[str, object] = {}
    try:
        values["tx_hash"] = send()
        values["state"] = ProofState.PROVEN
        values["error"] = None
    except ContractRevertError as exc:
        if exc.name == "FaultAlreadySlashed":
            values["state"] = ProofState.PROVEN
            values["error"] = "already proven on-chain"
        else:
            values["error"] = str(exc)[:2000]
            if exc.name in final_reverts or attempts + 1 >= max_attempts:
                values["state"] = ProofState.FAILED
    except TRANSIENT_CHAIN_ERRORS as exc:
        logger.warning(f"could not prove the {what} yet", extra={"error": str(exc)})
        return {"error": str(exc)[:2000]}
    except Exception as exc:
        logger.warning(f"could not prove the {what}", extra={"error": str(exc)})
        values["error"] = str(exc)[:2000]
        if attempts + 1 >= max_attempts:
            values["state"] = ProofState.FAILED
    values["attempts"] = attempts + 1
    return values


def _attestation(row: AttestationMixin) -> Attestation:
    return Attestation(row.request_hash, row.output_hash, Verdict(row.verdict))


def _signature(row: AttestationMixin) -> G1Point:
    x, y = json.loads(row.signature)
    return G1Point(int(x, 16), int(y, 16))


def _same(row: AttestationMixin, attestation: Attestation) -> bool:
    return row.output_hash == attestation.output_hash and row.verdict == int(attestation.verdict)


def _build(cls: type[T], **values: object) -> T:
    row = cls()
    for key, value in values.items():
        setattr(row, key, value)
    return row
