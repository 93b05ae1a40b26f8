"""Persistence of every pipeline state: SQLAlchemy (SQLite by default, PostgreSQL by URL).

The schema is owned by Alembic (``migrations/``); ``Store`` upgrades the database to head when it
opens it (``avs_aggregator.database``, shared with the challenger's store). Each pipeline step
commits before the next begins, so a killed aggregator resumes from the last committed state.
Binary values are stored as bytes; lists of them as JSON of hex strings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Float, Integer, LargeBinary, String, Text, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, defer, mapped_column

from avs_aggregator.database import Database, PortableText
from avs_aggregator.evidence import AttestationMixin, EquivocationMixin, ProofState

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


LOOKUP_CHUNK = 500  # keys per IN list (old SQLite builds allow 999 variables in a statement)


class RequestState(StrEnum):
    RECEIVED = "RECEIVED"
    GENERATING = "GENERATING"
    VERIFYING = "VERIFYING"
    ACCEPTED = "ACCEPTED"
    BATCHED = "BATCHED"
    CERTIFIED = "CERTIFIED"
    FAILED = "FAILED"


FINAL_REQUEST_STATES = frozenset({RequestState.CERTIFIED, RequestState.FAILED})


class BatchState(StrEnum):
    SIGNING = "SIGNING"  # header fixed, collecting signatures
    SUBMITTING = "SUBMITTING"  # aggregate made; certifyBatch may have been sent
    CERTIFIED = "CERTIFIED"  # confirming while ``confirmed_block`` is NULL, then final
    ABANDONED = "ABANDONED"  # not certifiable (stale, threshold); its requests moved on


class Base(DeclarativeBase):
    pass


class RequestRow(Base):
    __tablename__ = "requests"

    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)  # avs.operator.v1.InferenceRequest, serialised
    quorum_numbers: Mapped[bytes] = mapped_column(LargeBinary)
    threshold_bps: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    excluded: Mapped[str] = mapped_column(Text, default="[]")  # JSON hex operator ids
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: not tokenized at intake
    reference_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    primary_id: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    output_ids: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list of ints
    output_text: Mapped[str | None] = mapped_column(PortableText, nullable=True)
    output_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    primary_signature: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON [x, y] hex
    batch_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    error: Mapped[str | None] = mapped_column(PortableText, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    accepted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rebatched: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # batches given up
    verify_rounds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # of the current output


# The request columns that can be large (a chat of up to ~256 KiB, an output and its token ids): the
# polling loops read many rows at every tick and need none of them (a client filling the queue with
# large chats made each tick read hundreds of MB; found in review).
PAYLOAD_COLUMNS = (RequestRow.envelope, RequestRow.output_text, RequestRow.output_ids)


class BatchRow(Base):
    __tablename__ = "batches"

    batch_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16), index=True)
    quorum_numbers: Mapped[bytes] = mapped_column(LargeBinary)
    reference_block: Mapped[int] = mapped_column(BigInteger)
    leaves_root: Mapped[bytes] = mapped_column(LargeBinary(32))
    request_hashes: Mapped[str] = mapped_column(Text)  # JSON hex, in leaf order
    certificate: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON, see pipeline
    tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    certified_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    certified_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)  # of certified_block
    confirmed_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # head when found deep enough
    gas_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[str | None] = mapped_column(PortableText, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    sign_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # rounds short of stake
    retry_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # next signing round not before


class RejectionRow(Base):
    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    primary_id: Mapped[bytes] = mapped_column(LargeBinary(32))
    output_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    reference_block: Mapped[int] = mapped_column(BigInteger)
    evidence: Mapped[str] = mapped_column(Text)  # JSON: primary signature, reject signatures
    state: Mapped[str] = mapped_column(String(16), index=True, default=ProofState.PENDING)  # ProofState
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    error: Mapped[str | None] = mapped_column(PortableText, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class PrunedRequestRow(Base):
    """What retention leaves of a finished request: enough to refuse it if it is submitted again
    (it would be generated, verified and certified a second time) and to say why it is not found."""

    __tablename__ = "pruned_requests"

    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # CERTIFIED or FAILED
    batch_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    pruned_at: Mapped[float] = mapped_column(Float)


class LeaseRow(Base):
    """The leader lease of ``avs_aggregator.leader`` (one row per lease name)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Float)
    term: Mapped[int] = mapped_column(BigInteger)  # +1 at every change of holder (a fencing token)


class AttestationRow(AttestationMixin, Base):
    pass


class EquivocationRow(EquivocationMixin, Base):
    pass


def dump_hex_list(values: Sequence[bytes]) -> str:
    return json.dumps(["0x" + bytes(v).hex() for v in values])


def load_hex_list(text: str) -> list[bytes]:
    return [bytes.fromhex(v[2:]) for v in json.loads(text)]


class StaleRowError(Exception):
    """The row is no longer in the state the step read it in: another process moved it on."""


def _update_if(s: Session, model: Any, key: Any, values: dict[str, Any], **expected: Any) -> None:
    """Write ``values`` to the row only while it still has the ``expected`` column values, in one
    conditional UPDATE that must hit the row (``StaleRowError`` otherwise). A read then a write
    would race on SQLite, which ignores FOR UPDATE and whose driver reads outside the transaction
    until the first write."""
    conditions = [getattr(model, column) == value for column, value in expected.items()]
    statement = (
        update(model)
        .where(model.__mapper__.primary_key[0] == key, *conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if s.execute(statement).rowcount == 0:  # type: ignore[attr-defined]
        current = s.get(model, key)
        if current is None:
            raise KeyError(key)
        found = {column: getattr(current, column) for column in expected}
        raise StaleRowError(f"{model.__tablename__} row is {found}, not {expected}")


def _claim(s: Session, model: Any, key: Any, now: float, **expected: Any) -> None:
    """Check the row and take its write lock in one statement (``_update_if`` of ``updated_at``)."""
    _update_if(s, model, key, {"updated_at": now}, **expected)


def _claimed_batch(s: Session, batch_index: int, expect_state: str | None, now: float) -> BatchRow:
    if expect_state is not None:
        _claim(s, BatchRow, batch_index, now, state=expect_state)
    row = s.get(BatchRow, batch_index)
    if row is None:
        raise KeyError(batch_index)
    return row


PRUNE_BATCH_ROWS = 1000  # requests (and batches) deleted per transaction: short write locks


@dataclass
class PruneCounts:
    requests: int = 0
    attestations: int = 0
    rejections: int = 0
    batches: int = 0

    def __bool__(self) -> bool:
        return bool(self.requests or self.batches)


def _delete(s: Session, model: type[Base], condition: Any) -> int:
    result = s.execute(delete(model).where(condition).execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)


class Store(Database):
    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(url, MIGRATIONS)
        self.clock = clock

    # --- requests ------------------------------------------------------------------------

    def add_request(self, row: RequestRow) -> bool:
        """Insert ``row``; False if a request with that hash already exists."""
        try:
            with self.session() as s:
                if s.get(RequestRow, row.request_hash) is not None:
                    return False
                row.created_at = row.updated_at = self.clock()
                s.add(row)
            return True
        except IntegrityError:  # the same request submitted concurrently
            return False

    def get_request(self, request_hash: bytes) -> RequestRow | None:
        with self.session() as s:
            return s.get(RequestRow, request_hash)

    def get_output_hashes(self, request_hashes: Sequence[bytes]) -> dict[bytes, bytes | None]:
        """The output hash of each request found (two columns: a request's row holds its chat, up to
        hundreds of KiB, which a batch's leaves do not need), a bounded IN list per query."""
        found: dict[bytes, bytes | None] = {}
        with self.session() as s:
            for start in range(0, len(request_hashes), LOOKUP_CHUNK):
                chunk = list(request_hashes[start : start + LOOKUP_CHUNK])
                query = select(RequestRow.request_hash, RequestRow.output_hash).where(
                    RequestRow.request_hash.in_(chunk)
                )
                found.update((bytes(h), None if o is None else bytes(o)) for h, o in s.execute(query))
        return found

    def get_pruned_request(self, request_hash: bytes) -> PrunedRequestRow | None:
        with self.session() as s:
            return s.get(PrunedRequestRow, request_hash)

    def update_request(
        self,
        request_hash: bytes,
        expect: tuple[str, int] | None = None,
        expect_verify_rounds: int | None = None,
        **values: Any,
    ) -> RequestRow:
        """Write ``values``; with ``expect`` = (state, attempt) only if the row still is there
        (else ``StaleRowError``): a step that read the row must not overwrite what another process
        (a new leader, after this one lost its lease mid-step) did with it since. A verification
        round also fences on its round number (``expect_verify_rounds``)."""
        if expect is None and expect_verify_rounds is not None:
            raise ValueError("expect_verify_rounds fences only together with expect")
        with self.session() as s:
            if expect is not None:
                rounds = {} if expect_verify_rounds is None else {"verify_rounds": expect_verify_rounds}
                _claim(s, RequestRow, request_hash, self.clock(), state=expect[0], attempt=expect[1], **rounds)
            row = s.get(RequestRow, request_hash)
            if row is None:
                raise KeyError(request_hash.hex())
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = self.clock()
            return row

    def list_requests(
        self, states: Sequence[RequestState], limit: int = 1000, *, payload: bool = True
    ) -> list[RequestRow]:
        """The requests in ``states``, oldest first; ``payload=False`` leaves out the columns that can
        be large (``PAYLOAD_COLUMNS``: reading one raises), for loops over many rows that need only
        the small fields."""
        with self.session() as s:
            query = (
                select(RequestRow)
                .where(RequestRow.state.in_([str(st) for st in states]))
                .order_by(RequestRow.created_at)
                .limit(limit)
            )
            if not payload:
                query = query.options(*(defer(column, raiseload=True) for column in PAYLOAD_COLUMNS))
            return list(s.scalars(query))

    def list_request_hashes(self, states: Sequence[RequestState], limit: int = 1000) -> list[bytes]:
        """The hashes of ``list_requests`` (only that column is read)."""
        with self.session() as s:
            query = (
                select(RequestRow.request_hash)
                .where(RequestRow.state.in_([str(st) for st in states]))
                .order_by(RequestRow.created_at)
                .limit(limit)
            )
            return [bytes(h) for h in s.scalars(query)]

    def count_requests(self, states: Sequence[RequestState]) -> int:
        with self.session() as s:
            query = select(func.count()).select_from(RequestRow).where(RequestRow.state.in_([str(x) for x in states]))
            return int(s.scalar(query) or 0)

    # --- batches -------------------------------------------------------------------------

    def create_batch(self, row: BatchRow, request_hashes: Sequence[bytes]) -> None:
        """Insert the batch and move its requests from ACCEPTED to BATCHED, in one transaction
        (``StaleRowError``, nothing written, if one is no longer ACCEPTED)."""
        with self.session() as s:
            row.created_at = row.updated_at = self.clock()
            for request_hash in request_hashes:
                _claim(s, RequestRow, request_hash, row.created_at, state=RequestState.ACCEPTED)
            s.add(row)
            for request_hash in request_hashes:
                request = s.get(RequestRow, request_hash)
                assert request is not None
                request.state = RequestState.BATCHED
                request.batch_index = row.batch_index
                request.updated_at = row.created_at

    def get_batch(self, batch_index: int) -> BatchRow | None:
        with self.session() as s:
            return s.get(BatchRow, batch_index)

    def update_batch(self, batch_index: int, expect_state: str | None = None, **values: Any) -> None:
        with self.session() as s:
            row = _claimed_batch(s, batch_index, expect_state, self.clock())
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = self.clock()

    def finish_batch(
        self, batch_index: int, state: BatchState, request_state: RequestState, rebatch: bool = False, **values: Any
    ) -> None:
        """Set the batch's final state and move its requests, in one transaction (``rebatch``: count
        the given-up batch on each request, which then goes into a batch of its own)."""
        with self.session() as s:
            row = _claimed_batch(s, batch_index, values.pop("expect_state", None), self.clock())
            for key, value in values.items():
                setattr(row, key, value)
            row.state = state
            row.updated_at = now = self.clock()
            for request in s.scalars(select(RequestRow).where(RequestRow.batch_index == batch_index)):
                if request.state != RequestState.BATCHED:
                    continue
                request.state = request_state
                request.updated_at = now
                if rebatch:
                    request.rebatched = (request.rebatched or 0) + 1
                if request_state != RequestState.CERTIFIED:
                    request.batch_index = None

    def reopen_batch(self, batch_index: int, error: str) -> None:
        """A CERTIFIED batch whose certification a reorg removed: back to SUBMITTING and its requests
        from CERTIFIED back to BATCHED, in one transaction."""
        with self.session() as s:
            row = _claimed_batch(s, batch_index, BatchState.CERTIFIED, self.clock())
            row.state = BatchState.SUBMITTING
            row.tx_hash = row.certified_block = row.certified_hash = row.confirmed_block = row.gas_used = None
            row.error = error
            row.updated_at = now = self.clock()
            for request in s.scalars(select(RequestRow).where(RequestRow.batch_index == batch_index)):
                if request.state == RequestState.CERTIFIED:
                    request.state = RequestState.BATCHED
                    request.updated_at = now

    def list_confirming_batches(self) -> list[BatchRow]:
        """CERTIFIED batches not yet found ``confirmations`` blocks deep."""
        with self.session() as s:
            query = (
                select(BatchRow)
                .where(BatchRow.state == str(BatchState.CERTIFIED), BatchRow.confirmed_block.is_(None))
                .order_by(BatchRow.batch_index)
            )
            return list(s.scalars(query))

    def list_batches(self, states: Sequence[BatchState]) -> list[BatchRow]:
        with self.session() as s:
            query = select(BatchRow).where(BatchRow.state.in_([str(x) for x in states])).order_by(BatchRow.batch_index)
            return list(s.scalars(query))

    def get_next_batch_index(self, start: int) -> int:
        with self.session() as s:
            highest = s.scalar(select(func.max(BatchRow.batch_index)))
            return max(start, (highest or 0) + 1 if highest is not None else start)

    # --- retention -----------------------------------------------------------------------

    def prune_finished(self, before: float, limit: int = PRUNE_BATCH_ROWS) -> PruneCounts:
        """Delete what is finished and last changed before ``before``: FAILED requests, CERTIFIED
        ones whose batch is confirmed, with their checked attestations and settled rejection proofs
        (a request with a proof still PENDING is kept), then the confirmed or ABANDONED batches no
        request refers to any more. At most ``limit`` requests and batches per call, each call one
        transaction. Each request pruned leaves a ``PrunedRequestRow`` (its hash, final state and
        batch: tens of bytes, kept for good). Equivocation records are kept, and so is the batch with
        the highest index (the next index follows it)."""
        confirmed = (BatchRow.state == str(BatchState.CERTIFIED)) & BatchRow.confirmed_block.is_not(None)
        with self.session() as s:
            pending_proof = select(RejectionRow.request_hash).where(RejectionRow.state == str(ProofState.PENDING))
            confirmed_batches = select(BatchRow.batch_index).where(confirmed)
            failed = RequestRow.state == str(RequestState.FAILED)
            certified = (RequestRow.state == str(RequestState.CERTIFIED)) & RequestRow.batch_index.in_(
                confirmed_batches
            )
            finished = s.execute(
                select(RequestRow.request_hash, RequestRow.state, RequestRow.batch_index)
                .where(
                    failed | certified,
                    RequestRow.updated_at < before,
                    RequestRow.request_hash.not_in(pending_proof),
                )
                .limit(limit)
            ).all()
            requests = [r.request_hash for r in finished]
            counts = PruneCounts()
            if requests:
                now = self.clock()
                # One left by an earlier pruning of the same hash (taken again by an older release
                # sharing the database) is replaced, not a key conflict failing every pruning after.
                _delete(s, PrunedRequestRow, PrunedRequestRow.request_hash.in_(requests))
                s.add_all(
                    PrunedRequestRow(request_hash=h, state=state, batch_index=index, pruned_at=now)
                    for h, state, index in finished
                )
                counts.attestations = _delete(s, AttestationRow, AttestationRow.request_hash.in_(requests))
                counts.rejections = _delete(s, RejectionRow, RejectionRow.request_hash.in_(requests))
                counts.requests = _delete(s, RequestRow, RequestRow.request_hash.in_(requests))
            referenced = select(RequestRow.batch_index).where(RequestRow.batch_index.is_not(None))
            # The highest batch stays: it is the record of the indices used (``get_next_batch_index``).
            # Pruned, the next index started over, and an index abandoned after operators signed it was
            # formed again with another header, which their slashing protection refuses for good.
            highest = select(func.max(BatchRow.batch_index)).scalar_subquery()
            batches = list(
                s.scalars(
                    select(BatchRow.batch_index)
                    .where(confirmed | (BatchRow.state == str(BatchState.ABANDONED)), BatchRow.updated_at < before)
                    .where(BatchRow.batch_index.not_in(referenced), BatchRow.batch_index < highest)
                    .limit(limit)
                )
            )
            if batches:
                counts.batches = _delete(s, BatchRow, BatchRow.batch_index.in_(batches))
            return counts

    # --- rejections ----------------------------------------------------------------------

    def add_rejection(self, row: RejectionRow) -> int:
        with self.session() as s:
            row.created_at = self.clock()
            s.add(row)
            s.flush()
            return row.id

    def get_rejection(self, rejection_id: int) -> RejectionRow:
        with self.session() as s:
            row = s.get(RejectionRow, rejection_id)
            assert row is not None
            return row

    def update_rejection(self, rejection_id: int, expect_attempts: int | None = None, **values: Any) -> None:
        """With ``expect_attempts``: only while the row is still PENDING after that many attempts, in
        one conditional UPDATE (``StaleRowError`` otherwise): another process sent the proof
        meanwhile, and its outcome stands."""
        with self.session() as s:
            if expect_attempts is not None:
                expected = {"state": str(ProofState.PENDING), "attempts": expect_attempts}
                _update_if(s, RejectionRow, rejection_id, values, **expected)
                return
            row = s.get(RejectionRow, rejection_id)
            assert row is not None
            for key, value in values.items():
                setattr(row, key, value)

    def list_rejections(self, request_hash: bytes | None = None, state: ProofState | None = None) -> list[RejectionRow]:
        with self.session() as s:
            query = select(RejectionRow).order_by(RejectionRow.id)
            if request_hash is not None:
                query = query.where(RejectionRow.request_hash == request_hash)
            if state is not None:
                query = query.where(RejectionRow.state == str(state))
            return list(s.scalars(query))
