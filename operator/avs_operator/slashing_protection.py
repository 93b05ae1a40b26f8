"""Slashing protection: a local record of everything this operator has signed.

Every attestation and batch signature is written here, in a committed transaction, *before* the
signature leaves the process. The rules:

- never two conflicting attestations for one request (``Attestation.is_conflicting``): never
  both verdicts on one output, never ACCEPT of two different outputs; signing the identical
  attestation again is fine, and so is rejecting one output and accepting a retry's;
- a batch index may be signed again only for the identical header;
- a batch is signed only if every leaf ``(request_hash, output_hash)`` is one this operator
  attested ACCEPT.

Records are keyed by the EIP-712 domain separator, so deployments on different chains or
contracts never collide. SQLite by default (a file next to the operator's data), any SQLAlchemy
URL otherwise, but never an in-memory SQLite database (``sqlite://``, ``sqlite:///:memory:``,
``mode=memory``): its history would end with the process, and each pooled connection would see
its own empty database. ``export_records``/``import_records`` move the history to a new machine; an import
refuses anything that conflicts with what is already here.

A history belongs to one BLS key: its metadata row records the operator id that first signed with it
(``run`` binds it on its first start), and opening it for another key is refused. Two keys sharing
one history would each sign with none of their own past on record. The row also holds the schema
version: a database written by a newer release is refused rather than half understood.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from avs.errors import InvalidInputError, SlashingProtectionError
from avs.merkle import BatchLeaf
from avs.messages import Attestation, BatchHeader, Verdict

INTERCHANGE_VERSION = "1"
# 1: attestations and batch signatures; 2: the metadata row (schema version, operator id). A
# version-1 database gets the row when it is opened (nothing else changed).
SCHEMA_VERSION = 2


class _Base(DeclarativeBase):
    pass


class AttestationRecord(_Base):
    __tablename__ = "attestations"
    __table_args__ = (UniqueConstraint("domain_separator", "request_hash", "output_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_separator: Mapped[bytes] = mapped_column(LargeBinary(32))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    output_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    verdict: Mapped[int] = mapped_column(Integer)
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# At most one ACCEPT per request, enforced by the database itself: the unique constraint above stops
# two verdicts on one output, this stops ACCEPT of two outputs, so even two processes writing one
# database (a restart overlapping the old process, an import while the daemon runs) cannot both
# record an equivocation. A partial index: SQLite and PostgreSQL both have them.
_ONE_ACCEPT = AttestationRecord.verdict == int(Verdict.ACCEPT)
ONE_ACCEPT_PER_REQUEST = Index(
    "uq_attestations_one_accept_per_request",
    AttestationRecord.domain_separator,
    AttestationRecord.request_hash,
    unique=True,
    sqlite_where=_ONE_ACCEPT,
    postgresql_where=_ONE_ACCEPT,
)


# The batch index column is a signed 64-bit integer (SQLite and PostgreSQL alike); the contract's
# uint64 indices count up from 1, so the upper half is never reached by an honest aggregator.
MAX_BATCH_INDEX = 2**63 - 1


class BatchRecord(_Base):
    __tablename__ = "batch_signatures"
    __table_args__ = (UniqueConstraint("domain_separator", "batch_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_separator: Mapped[bytes] = mapped_column(LargeBinary(32))
    batch_index: Mapped[int] = mapped_column(BigInteger)
    leaves_root: Mapped[bytes] = mapped_column(LargeBinary(32))
    reference_block: Mapped[int] = mapped_column(BigInteger)
    quorum_numbers: Mapped[str] = mapped_column(String(400))  # hex
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MetadataRecord(_Base):
    """One row (id 1): the schema version, and the operator id this history belongs to (None until
    a key first opens it: ``slashing-protection init`` needs no key)."""

    __tablename__ = "protection_metadata"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schema_version: Mapped[int] = mapped_column(Integer)
    operator_id: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)


def _now() -> datetime:
    return datetime.now(UTC)


def check_database_url(url: str) -> URL:
    """``url`` parsed; ``InvalidInputError`` if it is not a database URL or names an in-memory one."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInputError(f"the slashing protection database URL is not a SQLAlchemy URL: {exc}") from exc
    if is_in_memory_sqlite(parsed):
        raise InvalidInputError(
            "the slashing protection database must outlive the process: "
            "use a SQLite file (sqlite:///path/protection.sqlite) or a server, not an in-memory database"
        )
    return parsed


def is_in_memory_sqlite(url: URL) -> bool:
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:") or url.query.get("mode") == "memory"


def has_history(url: str) -> bool:
    """Whether ``url`` holds a slashing protection history (its tables), creating nothing: SQLite
    would make a missing file just by connecting."""
    parsed = check_database_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        return False
    engine = create_engine(url, future=True)
    try:
        return inspect(engine).has_table(AttestationRecord.__tablename__)
    except DatabaseError as exc:
        raise _unusable(parsed, exc) from exc
    finally:
        engine.dispose()


def _unusable(url: URL, exc: DatabaseError) -> SlashingProtectionError:
    """Not a database, another program's tables, a server refusing: said with the URL (no password)."""
    where = url.render_as_string(hide_password=True)
    return SlashingProtectionError(f"cannot use {where} as a slashing protection history: {exc.orig}")


def _missing_history(url: str) -> str:
    where = make_url(url).render_as_string(hide_password=True)
    return (
        f"no slashing protection history at {where}: check slashing_protection_url; on this operator's first"
        " start run `avs-operator slashing-protection init`, or `import` the history exported where it ran before"
    )


class SlashingProtection:
    """The operator's signing history. Thread-safe: every check-and-record is one transaction."""

    def __init__(self, url: str, *, create: bool = True, operator_id: bytes | None = None) -> None:
        """The history at ``url``; with ``create=False`` (how ``avs-operator run`` opens it) a missing
        database is refused, not made empty: a mistyped URL, a new volume or a new machine would
        otherwise start with no history, and sign what the old one may have signed the opposite of.
        ``operator_id`` (the loaded BLS key's): the history must be this key's, or nobody's yet (then
        it becomes this key's)."""
        if not create and not has_history(url):
            raise SlashingProtectionError(_missing_history(url))
        parsed = check_database_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self._engine: Engine = create_engine(url, future=True)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._lock = threading.Lock()
        try:
            try:
                self._open(operator_id)
            except DatabaseError:  # another process creating the tables or the metadata row: once more
                self._open(operator_id)
        except DatabaseError as exc:
            self._engine.dispose()
            raise _unusable(parsed, exc) from exc
        except BaseException:
            self._engine.dispose()
            raise

    def _open(self, operator_id: bytes | None) -> None:
        if inspect(self._engine).has_table(MetadataRecord.__tablename__):  # a newer release's: touch nothing
            with self._sessions() as session:
                self._check_schema_version(session.get(MetadataRecord, 1))
        _Base.metadata.create_all(self._engine)
        try:  # create_all adds no index to a table made before the index existed
            ONE_ACCEPT_PER_REQUEST.create(self._engine, checkfirst=True)
        except IntegrityError as exc:
            raise SlashingProtectionError(
                "the slashing protection database already holds two ACCEPTs of different outputs for one request"
            ) from exc
        with self._sessions.begin() as session:
            self._check_metadata(session, operator_id)

    def _check_metadata(self, session: Session, operator_id: bytes | None) -> None:
        metadata = session.get(MetadataRecord, 1)
        if metadata is None:  # new, or written before the metadata row (schema version 1)
            metadata = MetadataRecord(id=1, schema_version=SCHEMA_VERSION, operator_id=None)
            session.add(metadata)
            session.flush()
        self._check_schema_version(metadata)
        if operator_id is None:
            return
        # Conditional, then read back: of two keys binding one new history at once, one is refused.
        unbound = (MetadataRecord.id == 1) & MetadataRecord.operator_id.is_(None)
        session.execute(update(MetadataRecord).where(unbound).values(operator_id=operator_id))
        owner = session.scalar(select(MetadataRecord.operator_id).where(MetadataRecord.id == 1))
        if owner != operator_id:
            raise SlashingProtectionError(
                f"this slashing protection history belongs to operator 0x{(owner or b'').hex()}, not to the"
                f" loaded BLS key's 0x{operator_id.hex()}: check slashing_protection_url and keys.bls_keystore"
                " (each key needs its own history)"
            )

    @staticmethod
    def _check_schema_version(metadata: MetadataRecord | None) -> None:
        if metadata is not None and metadata.schema_version > SCHEMA_VERSION:
            raise SlashingProtectionError(
                f"the slashing protection history was written by a newer release (schema {metadata.schema_version},"
                f" this one knows up to {SCHEMA_VERSION}): run that release, or export there and import here"
            )

    @property
    def operator_id(self) -> bytes | None:
        """The operator id this history belongs to; None until a key opened it."""
        with self._sessions() as session:
            metadata = session.get(MetadataRecord, 1)
            return metadata.operator_id if metadata is not None else None

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        # One check-and-record at a time in this process; the unique constraints are the last
        # line against another process writing the same database.
        try:
            with self._lock, self._sessions.begin() as session:
                yield session
        except IntegrityError as exc:  # another process recorded a conflicting signature meanwhile
            raise SlashingProtectionError(
                f"refusing to sign: a conflicting record was written concurrently ({exc.orig})"
            ) from exc

    def close(self) -> None:
        self._engine.dispose()

    # --- attestations -----------------------------------------------------------------

    def record_attestation(self, domain_separator: bytes, attestation: Attestation) -> None:
        """Allow signing ``attestation``; raises ``SlashingProtectionError`` if it conflicts."""
        with self._transaction() as session:
            self._record_attestation(session, domain_separator, attestation)

    def _record_attestation(self, session: Session, domain_separator: bytes, attestation: Attestation) -> None:
        previous = [
            Attestation(r.request_hash, r.output_hash, _stored_verdict(r.verdict))
            for r in session.scalars(
                select(AttestationRecord).where(
                    AttestationRecord.domain_separator == domain_separator,
                    AttestationRecord.request_hash == attestation.request_hash,
                )
            )
        ]
        for signed in previous:
            if signed.is_conflicting(attestation):
                raise SlashingProtectionError(
                    f"refusing to sign: request 0x{attestation.request_hash.hex()} was already attested "
                    f"{signed.verdict.name} for output 0x{signed.output_hash.hex()}"
                )
        if attestation not in previous:
            session.add(
                AttestationRecord(
                    domain_separator=domain_separator,
                    request_hash=attestation.request_hash,
                    output_hash=attestation.output_hash,
                    verdict=int(attestation.verdict),
                    signed_at=_now(),
                )
            )

    def get_attestations(self, domain_separator: bytes, request_hash: bytes) -> list[Attestation]:
        """Everything this operator signed for one request, oldest first."""
        with self._sessions() as session:
            records = session.scalars(
                select(AttestationRecord)
                .where(
                    AttestationRecord.domain_separator == domain_separator,
                    AttestationRecord.request_hash == request_hash,
                )
                .order_by(AttestationRecord.id)
            )
            return [Attestation(r.request_hash, r.output_hash, _stored_verdict(r.verdict)) for r in records]

    # --- batches ----------------------------------------------------------------------

    def record_batch(self, domain_separator: bytes, header: BatchHeader, leaves: Sequence[BatchLeaf]) -> None:
        """Allow signing ``header`` over ``leaves`` (whose root the caller has checked)."""
        with self._transaction() as session:
            self._check_leaves_accepted(session, domain_separator, leaves)
            self._record_batch(session, domain_separator, header)

    def _check_leaves_accepted(self, session: Session, domain_separator: bytes, leaves: Sequence[BatchLeaf]) -> None:
        for leaf in leaves:
            accepted = session.scalar(
                select(AttestationRecord.id).where(
                    AttestationRecord.domain_separator == domain_separator,
                    AttestationRecord.request_hash == leaf.request_hash,
                    AttestationRecord.output_hash == leaf.output_hash,
                    AttestationRecord.verdict == int(Verdict.ACCEPT),
                )
            )
            if accepted is None:
                raise SlashingProtectionError(
                    f"refusing to sign the batch: this operator did not accept output "
                    f"0x{leaf.output_hash.hex()} for request 0x{leaf.request_hash.hex()}"
                )

    def _record_batch(self, session: Session, domain_separator: bytes, header: BatchHeader) -> None:
        if header.batch_index > MAX_BATCH_INDEX:
            raise InvalidInputError(
                f"batch index {header.batch_index} is beyond what slashing protection records (2^63 - 1)"
            )
        existing = session.scalar(
            select(BatchRecord).where(
                BatchRecord.domain_separator == domain_separator, BatchRecord.batch_index == header.batch_index
            )
        )
        if existing is None:
            session.add(
                BatchRecord(
                    domain_separator=domain_separator,
                    batch_index=header.batch_index,
                    leaves_root=header.leaves_root,
                    reference_block=header.reference_block,
                    quorum_numbers=header.quorum_numbers.hex(),
                    signed_at=_now(),
                )
            )
            return
        signed = BatchHeader(
            existing.batch_index, existing.leaves_root, existing.reference_block, bytes.fromhex(existing.quorum_numbers)
        )
        if signed != header:
            raise SlashingProtectionError(
                f"refusing to sign: batch {header.batch_index} was already signed with another header"
            )

    # --- interchange ------------------------------------------------------------------

    def export_records(self) -> dict[str, Any]:
        """Everything signed, as JSON-ready data (``avs-operator slashing-protection export``)."""
        with self._sessions() as session:
            attestations = session.scalars(select(AttestationRecord).order_by(AttestationRecord.id)).all()
            batches = session.scalars(select(BatchRecord).order_by(BatchRecord.id)).all()
            metadata = session.get(MetadataRecord, 1)
            operator_id = metadata.operator_id if metadata is not None else None
            return {
                "interchange_format_version": INTERCHANGE_VERSION,
                "operator_id": "0x" + operator_id.hex() if operator_id is not None else None,
                "attestations": [
                    {
                        "domain_separator": "0x" + a.domain_separator.hex(),
                        "request_hash": "0x" + a.request_hash.hex(),
                        "output_hash": "0x" + a.output_hash.hex(),
                        "verdict": _stored_verdict(a.verdict).name,
                    }
                    for a in attestations
                ],
                "batches": [
                    {
                        "domain_separator": "0x" + b.domain_separator.hex(),
                        "batch_index": str(b.batch_index),
                        "leaves_root": "0x" + b.leaves_root.hex(),
                        "reference_block": str(b.reference_block),
                        "quorum_numbers": "0x" + b.quorum_numbers,
                    }
                    for b in batches
                ],
            }

    def import_records(self, document: Any) -> tuple[int, int]:
        """Merge an export; all or nothing. Returns (attestations, batches) read. An export that names
        its operator (from this release on) goes only into that operator's history, or into one that
        belongs to nobody yet (which then becomes that operator's)."""
        operator_id, attestations, batches = _parse_interchange(document)
        with self._transaction() as session:
            self._check_metadata(session, operator_id)
            for separator, attestation in attestations:
                self._record_attestation(session, separator, attestation)
            for separator, header in batches:
                self._record_batch(session, separator, header)
        return len(attestations), len(batches)


def _stored_verdict(value: int) -> Verdict:
    """A verdict read back from the history; one outside the enum is a corrupt (or foreign) row."""
    try:
        return Verdict(value)
    except ValueError:
        raise SlashingProtectionError(
            f"the slashing protection history holds an attestation with verdict {value!r}, which no release"
            " writes: the database is corrupt or was edited; restore it from a backup or an export"
        ) from None


def _hex32(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x") or len(value) != 66:
        raise InvalidInputError(f"{name} must be a 0x-prefixed 32-byte hex string")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise InvalidInputError(f"{name} is not hex") from exc


def _uint(value: Any, name: str) -> int:
    """An exported integer: a decimal string (or an int); 1.5 or true would be silently truncated."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, str))
        or not str(value).isascii()
        or not str(value).isdigit()
    ):
        raise InvalidInputError(f"{name} must be a non-negative integer, as a decimal string")
    return int(value)


INTERCHANGE_KEYS = {"interchange_format_version", "operator_id", "attestations", "batches"}


def _parse_interchange(
    document: Any,
) -> tuple[bytes | None, list[tuple[bytes, Attestation]], list[tuple[bytes, BatchHeader]]]:
    if not isinstance(document, dict) or document.get("interchange_format_version") != INTERCHANGE_VERSION:
        raise InvalidInputError(f"not a slashing-protection export (version {INTERCHANGE_VERSION} expected)")
    unknown = sorted(set(document) - INTERCHANGE_KEYS)
    if unknown:  # a misspelt section would import nothing and still pass for a history
        raise InvalidInputError(f"unknown keys in the slashing-protection export: {', '.join(unknown)}")
    for section in ("attestations", "batches"):
        if not isinstance(document.get(section), list):
            raise InvalidInputError(f"the slashing-protection export has no {section} list")
    raw_id = document.get("operator_id")
    operator_id = None if raw_id is None else _hex32(raw_id, "operator_id")
    try:
        attestations = [
            (
                _hex32(item["domain_separator"], "domain_separator"),
                Attestation(
                    _hex32(item["request_hash"], "request_hash"),
                    _hex32(item["output_hash"], "output_hash"),
                    Verdict[item["verdict"]],
                ),
            )
            for item in document["attestations"]
        ]
        batches = [
            (
                _hex32(item["domain_separator"], "domain_separator"),
                BatchHeader(
                    _uint(item["batch_index"], "batch_index"),
                    _hex32(item["leaves_root"], "leaves_root"),
                    _uint(item["reference_block"], "reference_block"),
                    bytes.fromhex(str(item["quorum_numbers"]).removeprefix("0x")),
                ),
            )
            for item in document["batches"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"malformed slashing-protection export: {exc!r}") from exc
    return operator_id, attestations, batches
