"""The challenger's own persistence (SQLAlchemy; SQLite by default, PostgreSQL by URL).

What it keeps, so that a restarted challenger neither challenges a leaf twice nor forgets a
challenge: the next block to scan for ``BatchCertified`` events, every finding (one per batch and
leaf), the leaves whose check is not finished yet (retried at the next polls), every challenge it
opened with what resolving it needs (the leaf's certificate) and where it stands, and the
attestations it has seen (equivocation evidence, ``avs_aggregator.evidence``).

The schema is owned by Alembic (``challenger/migrations/``, version table
``challenger_alembic_version``, every table named ``challenger_*``, so it may share a database with
the aggregator's tables);
``ChallengerStore`` upgrades to head when it opens the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Float, Integer, LargeBinary, Select, String, UniqueConstraint, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from avs_aggregator.database import Database, PortableText
from avs_aggregator.evidence import AttestationMixin, EquivocationMixin

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "challenger_alembic_version"


class ChallengeState(StrEnum):
    """Mirrors ``IFaultManagerTypes.ChallengeStatus`` once the challenge has ended."""

    OPEN = "OPEN"
    UPHELD = "UPHELD"  # the escalation quorum certified REJECT: the batch's signers were slashed
    DISMISSED = "DISMISSED"  # it certified ACCEPT: the bond went to the insurance pool
    EXPIRED = "EXPIRED"  # nobody resolved it within the resolution window: the bond came back


FINAL_CHALLENGE_STATES = frozenset({ChallengeState.UPHELD, ChallengeState.DISMISSED, ChallengeState.EXPIRED})


class Base(DeclarativeBase):
    pass


class CursorRow(Base):
    __tablename__ = "challenger_cursor"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    block: Mapped[int] = mapped_column(BigInteger)


class FindingRow(Base):
    __tablename__ = "challenger_findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_index: Mapped[int] = mapped_column(BigInteger, index=True)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))  # empty: about the whole batch
    output_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    verdict: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: could not be checked
    detail: Mapped[str] = mapped_column(PortableText, default="")
    challenge_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    challenge_tx: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class PendingCheckRow(Base):
    """A sampled leaf (or, with an empty ``request_hash``, a whole batch whose leaves could not be
    fetched) that is not checked yet: retried at each poll until ``check_attempts``. It keeps the
    certified batch as the ``BatchCertified`` event named it. One per leaf (batch, request, output):
    a batch that certifies two outputs of one request has both checked (migration c0004)."""

    __tablename__ = "challenger_pending_leaves"
    __table_args__ = (UniqueConstraint("batch_index", "request_hash", "output_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_index: Mapped[int] = mapped_column(BigInteger)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))  # empty: the batch's leaves
    # The leaf's; empty for the batch's row, or a leaf's row from before rows were kept with it.
    output_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    leaves_root: Mapped[bytes] = mapped_column(LargeBinary(32))
    reference_block: Mapped[int] = mapped_column(BigInteger)
    quorum_numbers: Mapped[bytes] = mapped_column(LargeBinary)
    signatory_record_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    block: Mapped[int] = mapped_column(BigInteger)  # the BatchCertified event's
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(PortableText)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class ChallengeRow(Base):
    __tablename__ = "challenger_challenges"

    challenge_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16), index=True)
    batch_index: Mapped[int] = mapped_column(BigInteger)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    output_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    certificate: Mapped[bytes] = mapped_column(LargeBinary)  # avs.aggregator.v1.Certificate, serialised
    opened_block: Mapped[int] = mapped_column(BigInteger)
    open_tx: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    verdict: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the escalation quorum's
    reference_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # of its certificate
    close_tx: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)  # resolve or expire
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # escalation rounds without a certificate
    error: Mapped[str | None] = mapped_column(PortableText, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class SentChallengeRow(Base):
    """A challenge transaction sent for a leaf whose challenge is not recorded yet. Written before the
    transaction and removed once the challenge is recorded (or the chain shows none long after), so
    that a challenge mined after a receipt timeout, or after a crash, is still adopted and resolved
    whatever becomes of the leaf's check."""

    __tablename__ = "challenger_sent_challenges"
    __table_args__ = (UniqueConstraint("batch_index", "request_hash", "output_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_index: Mapped[int] = mapped_column(BigInteger)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    output_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    certificate: Mapped[bytes] = mapped_column(LargeBinary)  # avs.aggregator.v1.Certificate, serialised
    sent_block: Mapped[int] = mapped_column(BigInteger)  # the head when it was (last) sent
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class AttestationRow(AttestationMixin, Base):
    __tablename__ = "challenger_attestations"


class EquivocationRow(EquivocationMixin, Base):
    __tablename__ = "challenger_equivocations"


def _pending_leaf(row: PendingCheckRow) -> Select[PendingCheckRow]:
    """The pending row of ``row``'s leaf (at most one: the table's unique key)."""
    return select(PendingCheckRow).where(
        PendingCheckRow.batch_index == row.batch_index,
        PendingCheckRow.request_hash == row.request_hash,
        PendingCheckRow.output_hash == row.output_hash,
    )


class ChallengerStore(Database):
    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(url, MIGRATIONS)
        self.clock = clock

    # --- scan position -----------------------------------------------------------------

    def get_next_block(self) -> int | None:
        with self.session() as s:
            row = s.get(CursorRow, "next_block")
            return None if row is None else row.block

    def set_next_block(self, block: int) -> None:
        with self.session() as s:
            row = s.get(CursorRow, "next_block")
            if row is None:
                s.add(CursorRow(name="next_block", block=block))
            else:
                row.block = block

    # --- findings ------------------------------------------------------------------------

    def has_finding(self, batch_index: int, request_hash: bytes, output_hash: bytes) -> bool:
        """Whether the leaf (empty hashes: the batch) has a finding. An empty output hash, asked or
        found, stands for any output of the request: rows written before findings were kept per leaf
        (a request was then checked once per batch) have none."""
        with self.session() as s:
            query = select(FindingRow.id).where(
                FindingRow.batch_index == batch_index, FindingRow.request_hash == request_hash
            )
            if output_hash:
                query = query.where(FindingRow.output_hash.in_([output_hash, b""]))
            return s.scalar(query.limit(1)) is not None

    def add_finding(self, row: FindingRow) -> None:
        with self.session() as s:
            row.created_at = self.clock()
            s.add(row)

    def update_finding_challenge(self, finding: FindingRow) -> None:
        """Give the leaf's finding ``finding``'s challenge (id, transaction) and detail: its challenge
        was opened again (the one it named was lost to a reorg)."""
        with self.session() as s:
            query = select(FindingRow).where(
                FindingRow.batch_index == finding.batch_index,
                FindingRow.request_hash == finding.request_hash,
                FindingRow.output_hash == finding.output_hash,
            )
            for row in s.scalars(query):
                row.challenge_id, row.challenge_tx = finding.challenge_id, finding.challenge_tx
                row.detail = finding.detail

    def list_findings(self) -> list[FindingRow]:
        with self.session() as s:
            return list(s.scalars(select(FindingRow).order_by(FindingRow.id)))

    # --- checks to retry -----------------------------------------------------------------

    def process_pending_check(self, row: PendingCheckRow) -> int:
        """Insert ``row`` (attempts 1) or count one more attempt of its leaf (with ``row``'s error);
        returns the attempts so far."""
        with self.session() as s:
            existing = s.scalars(_pending_leaf(row).limit(1)).first()
            now = self.clock()
            if existing is None:
                row.attempts, row.created_at, row.updated_at = 1, now, now
                s.add(row)
                return 1
            existing.attempts += 1
            existing.error = row.error
            existing.updated_at = now
            return existing.attempts

    def add_pending_checks(self, rows: Sequence[PendingCheckRow], replacing_batch: int | None = None) -> None:
        """Insert the leaves not pending yet (no attempt counted), in one transaction that also removes
        the pending row of batch ``replacing_batch`` (its leaves are these): a crash in between loses
        neither."""
        with self.session() as s:
            now = self.clock()
            for row in rows:
                if s.scalars(_pending_leaf(row).limit(1)).first() is None:
                    row.attempts, row.created_at, row.updated_at = 0, now, now
                    s.add(row)
            if replacing_batch is not None:
                s.execute(
                    delete(PendingCheckRow).where(
                        PendingCheckRow.batch_index == replacing_batch, PendingCheckRow.request_hash == b""
                    )
                )

    def list_pending_checks(self) -> list[PendingCheckRow]:
        with self.session() as s:
            return list(s.scalars(select(PendingCheckRow).order_by(PendingCheckRow.id)))

    def remove_pending_check(self, batch_index: int, request_hash: bytes, output_hash: bytes) -> None:
        """Remove the leaf's pending row (empty hashes: the batch's own), not another leaf's of its request."""
        with self.session() as s:
            s.execute(
                delete(PendingCheckRow).where(
                    PendingCheckRow.batch_index == batch_index,
                    PendingCheckRow.request_hash == request_hash,
                    PendingCheckRow.output_hash == output_hash,
                )
            )

    # --- challenges ----------------------------------------------------------------------

    def add_challenge(self, row: ChallengeRow) -> bool:
        """Insert ``row``; False if that challenge id is already recorded."""
        try:
            with self.session() as s:
                if s.get(ChallengeRow, row.challenge_id) is not None:
                    return False
                row.created_at = row.updated_at = self.clock()
                s.add(row)
            return True
        except IntegrityError:
            return False

    def get_challenge(self, challenge_id: int) -> ChallengeRow | None:
        with self.session() as s:
            return s.get(ChallengeRow, challenge_id)

    def find_challenge(self, batch_index: int, request_hash: bytes, output_hash: bytes) -> ChallengeRow | None:
        """The latest challenge of this leaf that did not expire (an expired one may be opened again)."""
        with self.session() as s:
            query = (
                select(ChallengeRow)
                .where(
                    ChallengeRow.batch_index == batch_index,
                    ChallengeRow.request_hash == request_hash,
                    ChallengeRow.output_hash == output_hash,
                    ChallengeRow.state != str(ChallengeState.EXPIRED),
                )
                .order_by(ChallengeRow.challenge_id.desc())
            )
            return s.scalars(query.limit(1)).first()

    def update_challenge(self, challenge_id: int, **values: Any) -> None:
        with self.session() as s:
            row = s.get(ChallengeRow, challenge_id)
            if row is None:
                raise KeyError(challenge_id)
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = self.clock()

    def requeue_challenge(self, challenge_id: int, reason: str) -> None:
        """Stop taking challenge ``challenge_id`` for its leaf's (a reorg dropped it, or gave its id to
        another challenge): the row ends EXPIRED with ``reason`` and the leaf is marked "to challenge"
        again, so that its challenge is adopted under its new id, or sent again while the window is
        open."""
        with self.session() as s:
            row = s.get(ChallengeRow, challenge_id)
            if row is None:
                raise KeyError(challenge_id)
            now = self.clock()
            row.state, row.updated_at = str(ChallengeState.EXPIRED), now
            row.error = reason + "; the leaf's challenge is looked up again"
            marked = select(SentChallengeRow.id).where(
                SentChallengeRow.batch_index == row.batch_index,
                SentChallengeRow.request_hash == row.request_hash,
                SentChallengeRow.output_hash == row.output_hash,
            )
            if s.scalars(marked.limit(1)).first() is None:
                mark = SentChallengeRow(
                    batch_index=row.batch_index,
                    request_hash=row.request_hash,
                    output_hash=row.output_hash,
                    certificate=row.certificate,
                    sent_block=row.opened_block,
                )
                mark.created_at = mark.updated_at = now
                s.add(mark)

    def replace_challenge(self, row: ChallengeRow) -> None:
        """Record ``row`` in place of the row its id has (of another leaf: an id a reorg reassigned)."""
        with self.session() as s:
            s.execute(delete(ChallengeRow).where(ChallengeRow.challenge_id == row.challenge_id))
            s.flush()
            row.created_at = row.updated_at = self.clock()
            s.add(row)

    def list_challenges(self, states: Sequence[ChallengeState] | None = None) -> list[ChallengeRow]:
        with self.session() as s:
            query = select(ChallengeRow).order_by(ChallengeRow.challenge_id)
            if states is not None:
                query = query.where(ChallengeRow.state.in_([str(x) for x in states]))
            return list(s.scalars(query))

    # --- challenges sent, not recorded yet -------------------------------------------------

    def mark_challenge_sent(self, row: SentChallengeRow) -> None:
        """Insert ``row``, or move an existing mark of the leaf to ``row.sent_block`` (sent again)."""
        with self.session() as s:
            query = select(SentChallengeRow).where(
                SentChallengeRow.batch_index == row.batch_index,
                SentChallengeRow.request_hash == row.request_hash,
                SentChallengeRow.output_hash == row.output_hash,
            )
            existing = s.scalars(query.limit(1)).first()
            now = self.clock()
            if existing is None:
                row.created_at = row.updated_at = now
                s.add(row)
            else:
                existing.sent_block, existing.updated_at = row.sent_block, now

    def list_sent_challenges(self) -> list[SentChallengeRow]:
        with self.session() as s:
            return list(s.scalars(select(SentChallengeRow).order_by(SentChallengeRow.id)))

    def unmark_challenge_sent(self, batch_index: int, request_hash: bytes, output_hash: bytes) -> None:
        with self.session() as s:
            s.execute(
                delete(SentChallengeRow).where(
                    SentChallengeRow.batch_index == batch_index,
                    SentChallengeRow.request_hash == request_hash,
                    SentChallengeRow.output_hash == output_hash,
                )
            )
