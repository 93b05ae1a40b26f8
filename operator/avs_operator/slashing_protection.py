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
refuses anything that conflicts with what is already here, and writes in short transactions so a daemon
running on the same history keeps signing meanwhile (``import_records``). A database that is busy past its
timeout or unreachable is ``UnavailableError`` (gRPC UNAVAILABLE, retry): nothing was recorded, so
nothing is signed, and nothing was refused either. A PostgreSQL server that hangs rather than refusing is
unreachable too, once its timeouts pass (``POSTGRES_CONNECT_ARGS``), and so is this process's lock on the
history when another thread holds it past ``LOCK_WAIT_SECONDS``.

A history belongs to one BLS key: its metadata row records the operator id that first signed with it
(``run`` binds it on its first start), and opening it for another key is refused. Two keys sharing
one history would each sign with none of their own past on record. The row also holds the schema
version: a database written by a newer release is refused rather than half understood.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

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
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from avs.errors import InvalidInputError, SlashingProtectionError, UnavailableError
from avs.merkle import BatchLeaf
from avs.messages import Attestation, BatchHeader, Verdict

logger = logging.getLogger(__name__)

_Item = TypeVar("_Item")
_Key = TypeVar("_Key")
_Entry = TypeVar("_Entry")

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

# The database busy past its timeout (SQLite waits 5 s for another process's write lock), or not
# reachable (a server down, the connection pool exhausted): nothing was recorded, so nothing is
# signed and the caller may retry. Neither a refusal nor a bug, so neither FAILED_PRECONDITION nor
# INTERNAL.
UNREACHABLE_ERRORS = (OperationalError, InterfaceError, PoolTimeoutError)

# An import writes this many records per transaction, then pauses, so a daemon signing on the same
# history waits for one chunk's write (well under a second), never for the whole import: SQLite
# has one writer at a time, and the daemon would give up after its 5 s busy timeout. The pause
# outlasts SQLite's busy handler's longest sleep (100 ms), so a waiting daemon gets the lock.
IMPORT_CHUNK_ROWS = 2000
IMPORT_PAUSE_SECONDS = 0.15
# Keys looked up per query (one IN list; old SQLite builds allow 999 variables in a statement).
LOOKUP_KEYS = 500

# A PostgreSQL server that hangs (a network partition, a stuck server, a lock held by another client)
# would hang every signature, each waiting behind the one before for this process's lock. Bounded
# here, so such a server is unreachable (UNAVAILABLE) within seconds: a connection is given up after
# connect_timeout, a dead peer is noticed by TCP keepalives (idle + interval x count), a statement or
# a row lock runs at most 10 s, and a pooled connection is pinged before use (pool_pre_ping). Passed
# to libpq (psycopg, psycopg2) unless the URL sets the same parameter itself.
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,  # seconds (libpq's minimum is 2)
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "options": "-c statement_timeout=10000 -c lock_timeout=10000",  # ms
}
LIBPQ_DRIVERS = ("psycopg", "psycopg2")
# The longest a check-and-record waits for another thread's (each holds the lock for one short
# transaction, or as long as the timeouts above allow when the server hangs): past it, UNAVAILABLE.
LOCK_WAIT_SECONDS = 15.0


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
    engine = _create_engine(parsed)
    try:
        return inspect(engine).has_table(AttestationRecord.__tablename__)
    except DatabaseError as exc:
        raise _unusable(parsed, exc) from exc
    finally:
        engine.dispose()


def _create_engine(url: URL) -> Engine:
    return create_engine(url, future=True, **get_engine_options(url))


def get_engine_options(url: URL) -> dict[str, Any]:
    """``create_engine`` options for the history at ``url``: for PostgreSQL, the timeouts that make a
    hanging server unreachable (``POSTGRES_CONNECT_ARGS``, each unless the URL sets it) and a ping
    before a pooled connection is used; none for SQLite (its busy timeout is in the URL)."""
    if url.get_backend_name() != "postgresql":
        return {}
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.get_driver_name() in LIBPQ_DRIVERS:
        options["connect_args"] = {k: v for k, v in POSTGRES_CONNECT_ARGS.items() if k not in url.query}
    return options


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
        self._engine: Engine = _create_engine(parsed)
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
        _check_owner(session.scalar(select(MetadataRecord.operator_id).where(MetadataRecord.id == 1)), operator_id)

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
            with _unavailable_if_unreachable(), self._locked(), self._sessions.begin() as session:
                yield session
        except IntegrityError as exc:  # another process recorded a conflicting signature meanwhile
            raise SlashingProtectionError(
                f"refusing to sign: a conflicting record was written concurrently ({exc.orig})"
            ) from exc

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold this process's lock on the history, waiting at most ``LOCK_WAIT_SECONDS``."""
        if not self._lock.acquire(timeout=LOCK_WAIT_SECONDS):
            logger.warning("slashing protection history busy in this process", extra={"waited": LOCK_WAIT_SECONDS})
            raise UnavailableError(
                f"the slashing protection history stayed busy in this process for {LOCK_WAIT_SECONDS:g} s"
                " (a slow or hanging database): nothing was recorded or signed; retry shortly"
            )
        try:
            yield
        finally:
            self._lock.release()

    def close(self) -> None:
        self._engine.dispose()

    # --- attestations -----------------------------------------------------------------

    def record_attestation(self, domain_separator: bytes, attestation: Attestation) -> None:
        """Allow signing ``attestation``; raises ``SlashingProtectionError`` if it conflicts."""
        with self._transaction() as session:
            self._record_attestations(session, [(domain_separator, attestation)])

    def _record_attestations(self, session: Session, entries: Sequence[tuple[bytes, Attestation]]) -> None:
        """Add the ``(domain separator, attestation)`` entries not yet on record; ``SlashingProtectionError``
        at the first that conflicts with the history or with an earlier entry."""
        for separator, attestation in _select_new_attestations(
            self._get_signed_attestations(session, entries), entries
        ):
            session.add(
                AttestationRecord(
                    domain_separator=separator,
                    request_hash=attestation.request_hash,
                    output_hash=attestation.output_hash,
                    verdict=int(attestation.verdict),
                    signed_at=_now(),
                )
            )

    @staticmethod
    def _get_signed_attestations(
        session: Session, entries: Iterable[tuple[bytes, Attestation]]
    ) -> dict[tuple[bytes, bytes], list[Attestation]]:
        """What the history holds for the requests of ``entries``, by (domain separator, request hash),
        oldest first."""
        signed: dict[tuple[bytes, bytes], list[Attestation]] = {}
        for separator, request_hashes in _keys_by_domain(entries, lambda a: a.request_hash).items():
            for chunk in _chunked(request_hashes, LOOKUP_KEYS):
                records = session.scalars(
                    select(AttestationRecord)
                    .where(AttestationRecord.domain_separator == separator, AttestationRecord.request_hash.in_(chunk))
                    .order_by(AttestationRecord.id)
                )
                for r in records:
                    stored = Attestation(r.request_hash, r.output_hash, _stored_verdict(r.verdict))
                    signed.setdefault((separator, r.request_hash), []).append(stored)
        return signed

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
        """Allow signing ``header`` over ``leaves`` (whose root the caller has checked): ``InvalidInputError``
        for an index beyond the record, ``SlashingProtectionError`` for a leaf this operator did not accept
        or an index already signed with another header.

        The leaves (up to thousands) are looked up before the lock is taken, ``LOOKUP_KEYS`` to a query,
        so a large batch holds up no other signature: a leaf found accepted stays accepted (no record is
        ever deleted or changed). Only the header's check and record runs under the lock."""
        check_batch_index(header)
        with _unavailable_if_unreachable(), self._sessions() as session:
            accepted = self._get_accepted_leaves(session, domain_separator, leaves)
        _check_leaves_accepted(accepted, leaves)
        with self._transaction() as session:
            self._record_batches(session, [(domain_separator, header)])

    @staticmethod
    def _get_accepted_leaves(
        session: Session, domain_separator: bytes, leaves: Sequence[BatchLeaf]
    ) -> set[tuple[bytes, bytes]]:
        """The (request hash, output hash) pairs this operator accepted, among the requests of ``leaves``."""
        accepted: set[tuple[bytes, bytes]] = set()
        request_hashes = list(dict.fromkeys(leaf.request_hash for leaf in leaves))
        for chunk in _chunked(request_hashes, LOOKUP_KEYS):
            rows = session.execute(
                select(AttestationRecord.request_hash, AttestationRecord.output_hash).where(
                    AttestationRecord.domain_separator == domain_separator,
                    AttestationRecord.request_hash.in_(chunk),
                    AttestationRecord.verdict == int(Verdict.ACCEPT),
                )
            )
            accepted.update((request_hash, output_hash) for request_hash, output_hash in rows)
        return accepted

    def _record_batches(self, session: Session, entries: Sequence[tuple[bytes, BatchHeader]]) -> None:
        """Add the ``(domain separator, header)`` entries not yet on record; ``SlashingProtectionError``
        at the first whose index holds (or an earlier entry gave it) another header."""
        _check_batch_indices(entries)
        for separator, header in _select_new_batches(self._get_signed_batches(session, entries), entries):
            session.add(
                BatchRecord(
                    domain_separator=separator,
                    batch_index=header.batch_index,
                    leaves_root=header.leaves_root,
                    reference_block=header.reference_block,
                    quorum_numbers=header.quorum_numbers.hex(),
                    signed_at=_now(),
                )
            )

    @staticmethod
    def _get_signed_batches(
        session: Session, entries: Iterable[tuple[bytes, BatchHeader]]
    ) -> dict[tuple[bytes, int], BatchHeader]:
        """The headers the history holds for the batch indices of ``entries``, by (domain separator, index)."""
        signed: dict[tuple[bytes, int], BatchHeader] = {}
        for separator, indices in _keys_by_domain(entries, lambda h: h.batch_index).items():
            for chunk in _chunked(indices, LOOKUP_KEYS):
                records = session.scalars(
                    select(BatchRecord).where(
                        BatchRecord.domain_separator == separator, BatchRecord.batch_index.in_(chunk)
                    )
                )
                for r in records:
                    stored = BatchHeader(
                        r.batch_index, r.leaves_root, r.reference_block, bytes.fromhex(r.quorum_numbers)
                    )
                    signed[(separator, r.batch_index)] = stored
        return signed

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
        """Merge an export. Returns (attestations, batches) read. An export that names its operator (from
        this release on) goes only into that operator's history, or into one that belongs to nobody yet
        (which then becomes that operator's).

        All or nothing against the history as it is when the import starts: every entry is checked
        (against the history and the export's other entries) before anything is written. Then the
        records are written ``IMPORT_CHUNK_ROWS`` to a transaction, so a daemon running on this history
        waits for one chunk, not the whole import, to record its own signatures. Each chunk is checked
        again as it is written, so no conflicting record is ever written: a conflict with what was
        signed meanwhile (the daemon signing during the import) stops the import there. The chunks
        written before stay, and that is safe: each record is of a signature this operator made (here
        or where the export comes from), a record only ever adds refusals, and importing the file
        again writes the rest (identical records are skipped). The same holds if the import is killed
        part way."""
        operator_id, attestations, batches = _parse_interchange(document)
        self._check_importable(operator_id, attestations, batches)
        with self._transaction() as session:
            self._check_metadata(session, operator_id)  # an unowned history becomes the export's operator's
        try:
            self._write_in_chunks(attestations, self._record_attestations)
            self._write_in_chunks(batches, self._record_batches)
        except (SlashingProtectionError, UnavailableError) as exc:
            raise type(exc)(
                f"the import stopped part way: {exc}. The records it wrote before stay (each is a signature this"
                " operator made: keeping them only adds refusals); import the file again to write the rest"
            ) from exc
        return len(attestations), len(batches)

    def _check_importable(
        self,
        operator_id: bytes | None,
        attestations: Sequence[tuple[bytes, Attestation]],
        batches: Sequence[tuple[bytes, BatchHeader]],
    ) -> None:
        """Refuse an import that conflicts with the history or with itself, writing nothing: only reads,
        which keep no write lock from the daemon."""
        _check_batch_indices(batches)
        with _unavailable_if_unreachable(), self._sessions() as session:
            metadata = session.get(MetadataRecord, 1)
            self._check_schema_version(metadata)
            if operator_id is not None and metadata is not None and metadata.operator_id is not None:
                _check_owner(metadata.operator_id, operator_id)
            _select_new_attestations(self._get_signed_attestations(session, attestations), attestations)
            _select_new_batches(self._get_signed_batches(session, batches), batches)

    def _write_in_chunks(self, entries: Sequence[_Entry], record: Callable[[Session, Sequence[_Entry]], None]) -> None:
        """``record`` each chunk of ``entries`` in its own transaction, pausing between two so a waiting
        writer (the daemon) gets the database."""
        for number, chunk in enumerate(_chunked(entries, IMPORT_CHUNK_ROWS)):
            if number:
                time.sleep(IMPORT_PAUSE_SECONDS)
            with self._transaction() as session:
                record(session, chunk)


@contextmanager
def _unavailable_if_unreachable() -> Iterator[None]:
    """The database busy past its timeout or unreachable, as ``UnavailableError`` (UNREACHABLE_ERRORS)."""
    try:
        yield
    except UNREACHABLE_ERRORS as exc:
        cause = getattr(exc, "orig", None) or exc
        logger.warning("slashing protection history unavailable", extra={"error": str(cause)})
        raise UnavailableError(
            f"the slashing protection history is busy or unreachable ({cause}): nothing was recorded or"
            " signed; retry shortly (another process, such as an import, may be writing it)"
        ) from exc


def _check_owner(owner: bytes | None, operator_id: bytes) -> None:
    if owner != operator_id:
        raise SlashingProtectionError(
            f"this slashing protection history belongs to operator 0x{(owner or b'').hex()}, not to the"
            f" loaded BLS key's 0x{operator_id.hex()}: check slashing_protection_url and keys.bls_keystore"
            " (each key needs its own history)"
        )


def _select_new_attestations(
    signed: dict[tuple[bytes, bytes], list[Attestation]], entries: Iterable[tuple[bytes, Attestation]]
) -> list[tuple[bytes, Attestation]]:
    """The entries not in ``signed`` yet, each added to it as it goes (so an entry is checked against
    the earlier ones too); ``SlashingProtectionError`` at the first that conflicts."""
    new = []
    for separator, attestation in entries:
        previous = signed.setdefault((separator, attestation.request_hash), [])
        for earlier in previous:
            if earlier.is_conflicting(attestation):
                raise SlashingProtectionError(
                    f"refusing to sign: request 0x{attestation.request_hash.hex()} was already attested "
                    f"{earlier.verdict.name} for output 0x{earlier.output_hash.hex()}"
                )
        if attestation not in previous:
            previous.append(attestation)
            new.append((separator, attestation))
    return new


def _select_new_batches(
    signed: dict[tuple[bytes, int], BatchHeader], entries: Iterable[tuple[bytes, BatchHeader]]
) -> list[tuple[bytes, BatchHeader]]:
    """The entries not in ``signed`` yet, each added to it as it goes; ``SlashingProtectionError`` at
    the first whose index already has another header."""
    new = []
    for separator, header in entries:
        existing = signed.get((separator, header.batch_index))
        if existing is None:
            signed[(separator, header.batch_index)] = header
            new.append((separator, header))
        elif existing != header:
            raise SlashingProtectionError(
                f"refusing to sign: batch {header.batch_index} was already signed with another header"
            )
    return new


def _check_leaves_accepted(accepted: set[tuple[bytes, bytes]], leaves: Iterable[BatchLeaf]) -> None:
    for leaf in leaves:
        if (leaf.request_hash, leaf.output_hash) not in accepted:
            raise SlashingProtectionError(
                f"refusing to sign the batch: this operator did not accept output "
                f"0x{leaf.output_hash.hex()} for request 0x{leaf.request_hash.hex()}"
            )


def check_batch_index(header: BatchHeader) -> None:
    """``InvalidInputError`` for a batch index the history cannot record (bad input, not a refusal)."""
    if header.batch_index > MAX_BATCH_INDEX:
        raise InvalidInputError(
            f"batch index {header.batch_index} is beyond what slashing protection records (2^63 - 1)"
        )


def _check_batch_indices(entries: Iterable[tuple[bytes, BatchHeader]]) -> None:
    for _, header in entries:
        check_batch_index(header)


def _keys_by_domain(entries: Iterable[tuple[bytes, _Item]], key: Callable[[_Item], _Key]) -> dict[bytes, list[_Key]]:
    """The distinct ``key`` of the entries' items, by domain separator, in order of appearance."""
    grouped: dict[bytes, dict[_Key, None]] = {}
    for separator, item in entries:
        grouped.setdefault(separator, {})[key(item)] = None
    return {separator: list(keys) for separator, keys in grouped.items()}


def _chunked(items: Sequence[_Item], size: int) -> Iterator[Sequence[_Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
