"""Slashing protection on a real SQLite file, across restarts and moves between machines."""

from __future__ import annotations

import json
import socket
import sqlite3
import tempfile
import threading
from pathlib import Path

import grpc
import pytest
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from avs.errors import InvalidInputError, SlashingProtectionError, UnavailableError
from avs.merkle import BatchLeaf
from avs.messages import Attestation, BatchHeader, Verdict
from avs.rpc.status import get_status_code
from avs_operator import slashing_protection
from avs_operator.slashing_protection import SCHEMA_VERSION, MetadataRecord, SlashingProtection, _Base
from tests.aggregator.conftest import create_postgres_database, postgres_server  # noqa: F401  (fixture)

DOMAIN = keccak(text="domain A")
OTHER_DOMAIN = keccak(text="domain B")
R1, R2, O1, O2 = (keccak(text=t) for t in ("r1", "r2", "o1", "o2"))
KEY_A, KEY_B = keccak(text="operator A"), keccak(text="operator B")


def database(path: Path) -> SlashingProtection:
    return SlashingProtection(f"sqlite:///{path / 'protection.sqlite'}")


def test_same_attestation_again_is_allowed_a_conflicting_one_is_not(tmp_path: Path) -> None:
    db = database(tmp_path)
    db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))  # re-signing the same: fine
    with pytest.raises(SlashingProtectionError, match="already attested"):
        db.record_attestation(DOMAIN, Attestation(R1, O2, Verdict.ACCEPT))  # a second output accepted
    with pytest.raises(SlashingProtectionError):
        db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.REJECT))  # both verdicts on one output
    db.record_attestation(DOMAIN, Attestation(R1, O2, Verdict.REJECT))  # rejecting another output: honest
    db.record_attestation(OTHER_DOMAIN, Attestation(R1, O2, Verdict.ACCEPT))  # another deployment
    assert db.get_attestations(DOMAIN, R1) == [Attestation(R1, O1, Verdict.ACCEPT), Attestation(R1, O2, Verdict.REJECT)]


def test_a_retry_with_a_new_primary_can_be_accepted_after_a_rejection(tmp_path: Path) -> None:
    db = database(tmp_path)
    db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.REJECT))
    db.record_attestation(DOMAIN, Attestation(R1, O2, Verdict.ACCEPT))


def test_protection_survives_a_restart(tmp_path: Path) -> None:
    db = database(tmp_path)
    db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    db.close()
    reopened = database(tmp_path)
    assert reopened.get_attestations(DOMAIN, R1) == [Attestation(R1, O1, Verdict.ACCEPT)]
    with pytest.raises(SlashingProtectionError):
        reopened.record_attestation(DOMAIN, Attestation(R1, O2, Verdict.ACCEPT))


def test_batches_only_over_accepted_leaves_and_never_two_headers_per_index(tmp_path: Path) -> None:
    db = database(tmp_path)
    db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    db.record_attestation(DOMAIN, Attestation(R2, O2, Verdict.REJECT))
    header = BatchHeader(0, keccak(text="root"), 10, b"\x00")
    with pytest.raises(SlashingProtectionError, match="did not accept"):
        db.record_batch(DOMAIN, header, [BatchLeaf(R1, O1), BatchLeaf(R2, O2)])  # R2 was rejected
    with pytest.raises(SlashingProtectionError, match="did not accept"):
        db.record_batch(DOMAIN, header, [BatchLeaf(R1, O2)])  # wrong output for R1
    with pytest.raises(SlashingProtectionError, match="did not accept"):
        db.record_batch(OTHER_DOMAIN, header, [BatchLeaf(R1, O1)])  # accepted in another domain only
    db.record_batch(DOMAIN, header, [BatchLeaf(R1, O1)])
    db.record_batch(DOMAIN, header, [BatchLeaf(R1, O1)])  # the same again: fine
    with pytest.raises(SlashingProtectionError, match="another header"):
        db.record_batch(DOMAIN, BatchHeader(0, keccak(text="other root"), 10, b"\x00"), [BatchLeaf(R1, O1)])


def test_export_import_moves_history_and_refuses_conflicts(tmp_path: Path) -> None:
    old = database(tmp_path / "old")
    old.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    old.record_batch(DOMAIN, BatchHeader(3, keccak(text="root"), 10, b"\x00\x01"), [BatchLeaf(R1, O1)])
    exported = json.loads(json.dumps(old.export_records()))

    new = database(tmp_path / "new")
    assert new.import_records(exported) == (1, 1)
    with pytest.raises(SlashingProtectionError):
        new.record_attestation(DOMAIN, Attestation(R1, O2, Verdict.ACCEPT))
    assert new.export_records() == exported

    conflicting = database(tmp_path / "conflicting")
    conflicting.record_attestation(DOMAIN, Attestation(R1, O2, Verdict.ACCEPT))
    with pytest.raises(SlashingProtectionError):
        conflicting.import_records(exported)
    assert conflicting.export_records()["batches"] == []  # all or nothing


BATCH = {
    "domain_separator": "0x" + DOMAIN.hex(),
    "batch_index": "3",
    "leaves_root": "0x" + O1.hex(),
    "reference_block": "10",
    "quorum_numbers": "0x00",
}


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"interchange_format_version": "2"},
        {"interchange_format_version": "1", "attestations": [{}], "batches": []},
        # a misspelt or missing section imported nothing, and the new history then passed for one
        {"interchange_format_version": "1", "attestation": [], "batches": []},
        {"interchange_format_version": "1", "attestations": []},
        {"interchange_format_version": "1", "attestations": {}, "batches": []},
        # 1.5 was read as batch 1, true as 1
        {"interchange_format_version": "1", "attestations": [], "batches": [{**BATCH, "batch_index": 1.5}]},
        {"interchange_format_version": "1", "attestations": [], "batches": [{**BATCH, "reference_block": True}]},
        {"interchange_format_version": "1", "attestations": [], "batches": [{**BATCH, "batch_index": "-1"}]},
        {"interchange_format_version": "1", "attestations": [], "batches": [{**BATCH, "batch_index": "\u0661\u0662"}]},
        {"interchange_format_version": "1", "operator_id": "0x12", "attestations": [], "batches": []},
    ],
)
def test_malformed_imports_are_clear_errors(tmp_path: Path, document: object) -> None:
    db = database(tmp_path)
    with pytest.raises(InvalidInputError):
        db.import_records(document)
    assert db.export_records()["batches"] == []


def test_a_history_belongs_to_one_key(tmp_path: Path) -> None:
    """Two keys on one history would each sign with none of their own past on record (a swapped
    volume, two configs whose relative default URL is the same file)."""
    url = f"sqlite:///{tmp_path / 'protection.sqlite'}"
    SlashingProtection(url).close()  # `slashing-protection init`: nobody's yet
    first = SlashingProtection(url, operator_id=KEY_A)  # the first `run` binds it
    assert first.operator_id == KEY_A
    first.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    first.close()
    with pytest.raises(SlashingProtectionError, match=f"belongs to operator 0x{KEY_A.hex()}"):
        SlashingProtection(url, operator_id=KEY_B)
    again = SlashingProtection(url, operator_id=KEY_A)
    with pytest.raises(SlashingProtectionError, match="already attested"):
        again.record_attestation(DOMAIN, Attestation(R1, O2, Verdict.ACCEPT))
    again.close()


def test_two_keys_binding_one_new_history_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B read the row while it was nobody's, A bound it first: B's binding is conditional, so B is
    refused rather than taking A's history over."""
    url = f"sqlite:///{tmp_path / 'protection.sqlite'}"
    SlashingProtection(url).close()
    SlashingProtection(url, operator_id=KEY_A).close()
    stale = MetadataRecord(id=1, schema_version=SCHEMA_VERSION, operator_id=None)
    monkeypatch.setattr(Session, "get", lambda self, *args, **kwargs: stale)
    with pytest.raises(SlashingProtectionError, match=f"belongs to operator 0x{KEY_A.hex()}"):
        SlashingProtection(url, operator_id=KEY_B)
    monkeypatch.undo()
    assert SlashingProtection(url).operator_id == KEY_A


def test_an_export_goes_only_into_its_own_key_s_history(tmp_path: Path) -> None:
    old = SlashingProtection(f"sqlite:///{tmp_path / 'old.sqlite'}", operator_id=KEY_A)
    old.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    exported = json.loads(json.dumps(old.export_records()))
    assert exported["operator_id"] == "0x" + KEY_A.hex()

    others = SlashingProtection(f"sqlite:///{tmp_path / 'others.sqlite'}", operator_id=KEY_B)
    with pytest.raises(SlashingProtectionError, match="belongs to operator"):
        others.import_records(exported)
    assert others.get_attestations(DOMAIN, R1) == []

    new_machine = database(tmp_path / "new")  # `import` on a new machine: no key loaded
    assert new_machine.import_records(exported) == (1, 0)
    assert new_machine.operator_id == KEY_A  # so the wrong key's `run` is refused there too
    unnamed = {**exported, "operator_id": None}  # an export from before the operator id was kept
    assert database(tmp_path / "older").import_records(unnamed) == (1, 0)


def test_a_version_1_history_is_upgraded_and_a_newer_one_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'protection.sqlite'}"
    db = SlashingProtection(url)
    db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    db.close()
    engine = create_engine(url)
    with engine.begin() as connection:  # as written before the metadata row existed
        connection.execute(text("DROP TABLE protection_metadata"))
    upgraded = SlashingProtection(url, create=False, operator_id=KEY_A)
    assert upgraded.operator_id == KEY_A and upgraded.get_attestations(DOMAIN, R1)
    upgraded.close()
    with engine.begin() as connection:  # a later release's database (say, it moved the batches), downgraded
        connection.execute(text("UPDATE protection_metadata SET schema_version = 99"))
        connection.execute(text("DROP TABLE batch_signatures"))
    with pytest.raises(SlashingProtectionError, match="newer release"):
        SlashingProtection(url, create=False, operator_id=KEY_A)
    assert not inspect(engine).has_table("batch_signatures")  # refused before anything was written


def test_another_process_creating_the_tables_at_the_same_moment_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes opening a new (or version-1) history at once: one's CREATE TABLE fails with
    "already exists" (seen on SQLite and PostgreSQL by a review helper); the second try sees the
    tables and opens it."""
    real = _Base.metadata.create_all
    calls: list[int] = []

    def racing(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("CREATE TABLE protection_metadata", {}, Exception("table already exists"))
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_Base.metadata, "create_all", racing)
    db = SlashingProtection(f"sqlite:///{tmp_path / 'protection.sqlite'}", operator_id=KEY_A)
    assert db.operator_id == KEY_A and len(calls) == 2


@pytest.mark.parametrize("contents", [b"this is not a database" * 100, None])
def test_a_file_that_is_no_history_is_a_clear_error(tmp_path: Path, contents: bytes | None) -> None:
    path = tmp_path / "protection.sqlite"
    if contents is None:  # another program's database with a table of the same name
        with create_engine(f"sqlite:///{path}").begin() as connection:
            connection.execute(text("CREATE TABLE attestations (x INTEGER)"))
    else:
        path.write_bytes(contents)
    with pytest.raises(SlashingProtectionError, match=f"cannot use sqlite:///{path} as a slashing protection"):
        SlashingProtection(f"sqlite:///{path}", create=False, operator_id=KEY_A)


@given(st.lists(st.tuples(st.sampled_from([R1, R2]), st.sampled_from([O1, O2]), st.sampled_from(list(Verdict)))))
def test_never_two_conflicting_attestations_per_request(attempts: list[tuple[bytes, bytes, Verdict]]) -> None:
    with tempfile.TemporaryDirectory() as folder:  # a file: an in-memory database is refused
        db = database(Path(folder))
        try:
            _check_no_conflicts(db, attempts)
        finally:
            db.close()


def _check_no_conflicts(db: SlashingProtection, attempts: list[tuple[bytes, bytes, Verdict]]) -> None:
    signed: list[Attestation] = []
    for request, output, verdict in attempts:
        attestation = Attestation(request, output, verdict)
        try:
            db.record_attestation(DOMAIN, attestation)
        except SlashingProtectionError:
            assert any(s.is_conflicting(attestation) for s in signed)
        else:
            assert not any(s.is_conflicting(attestation) for s in signed)
            signed.append(attestation)


def test_two_processes_on_one_database_cannot_both_accept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: both read the history before either writes (a restart overlapping the old process,
    an import while the daemon runs). The database's partial unique index refuses the second ACCEPT."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    first, second = SlashingProtection(url), SlashingProtection(url)
    request = keccak(text="raced request")
    first.record_attestation(DOMAIN, Attestation(request, keccak(text="output A"), Verdict.ACCEPT))
    monkeypatch.setattr(Session, "scalars", lambda self, *args, **kwargs: iter(()))  # second read before it
    with pytest.raises(SlashingProtectionError, match="concurrently"):
        second.record_attestation(DOMAIN, Attestation(request, keccak(text="output B"), Verdict.ACCEPT))
    second.record_attestation(DOMAIN, Attestation(request, keccak(text="output B"), Verdict.REJECT))  # honest
    monkeypatch.undo()
    accepted = [a for a in first.get_attestations(DOMAIN, request) if a.verdict == Verdict.ACCEPT]
    assert [a.output_hash for a in accepted] == [keccak(text="output A")]


def test_an_older_database_gets_the_index_or_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    SlashingProtection(url).close()
    engine = create_engine(url)
    with engine.begin() as connection:  # as a database made before the index existed, with an equivocation
        connection.execute(text("DROP INDEX uq_attestations_one_accept_per_request"))
        for output in (b"\x01" * 32, b"\x02" * 32):
            connection.execute(
                text(
                    "INSERT INTO attestations (domain_separator, request_hash, output_hash, verdict, signed_at) "
                    "VALUES (:d, :r, :o, 1, '2026-11-26 00:00:00')"
                ),
                {"d": DOMAIN, "r": b"\x09" * 32, "o": output},
            )
    with pytest.raises(SlashingProtectionError, match="two ACCEPTs"):
        SlashingProtection(url)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM attestations WHERE output_hash = :o"), {"o": b"\x02" * 32})
    SlashingProtection(url).close()
    assert "uq_attestations_one_accept_per_request" in {i["name"] for i in inspect(engine).get_indexes("attestations")}


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///file:history?mode=memory&uri=true", "sqlite:///file::memory:"],
)
def test_an_in_memory_database_is_refused_at_once(url: str) -> None:
    """It would lose the history at exit, and each pooled connection would see its own empty one
    (the first signature failed later as an INTERNAL error: no such table)."""
    with pytest.raises(InvalidInputError, match="must outlive the process"):
        SlashingProtection(url)


def test_a_url_that_is_not_a_database_url_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="not a SQLAlchemy URL"):
        SlashingProtection("protection.sqlite")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_missing_history_is_refused_unless_created(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """``avs-operator run`` opens the history with ``create=False``: a mistyped URL or a new volume no
    longer starts an operator with no history (it could sign the opposite of what it signed before)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'nested' / 'protection.sqlite'}"
    else:
        url = create_postgres_database(request.getfixturevalue("postgres_server"))
    with pytest.raises(SlashingProtectionError, match="no slashing protection history"):
        SlashingProtection(url, create=False)
    assert not (tmp_path / "nested").exists()  # nothing made on the way
    SlashingProtection(url).close()  # `slashing-protection init`
    SlashingProtection(url, create=False).close()


def test_a_stored_verdict_no_release_writes_is_a_clear_error(tmp_path: Path) -> None:
    """A row edited by hand (or a corrupt file) with verdict 7: every read names the history, not a
    raw ValueError from the enum."""
    db = database(tmp_path)
    db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    with Session(create_engine(f"sqlite:///{tmp_path / 'protection.sqlite'}")) as session, session.begin():
        session.execute(text("UPDATE attestations SET verdict = 7"))
    reads = [
        lambda: db.get_attestations(DOMAIN, R1),
        lambda: db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.REJECT)),
        db.export_records,
    ]
    for read in reads:
        with pytest.raises(SlashingProtectionError, match="verdict 7, which no release writes"):
            read()


# --- a busy history, and imports while the daemon runs ----------------------------------------


def export_of(attestations: list[tuple[bytes, bytes, Verdict]]) -> dict[str, object]:
    return {
        "interchange_format_version": "1",
        "operator_id": None,
        "attestations": [
            {
                "domain_separator": "0x" + DOMAIN.hex(),
                "request_hash": "0x" + request.hex(),
                "output_hash": "0x" + output.hex(),
                "verdict": verdict.name,
            }
            for request, output, verdict in attestations
        ],
        "batches": [],
    }


REQUESTS = [keccak(text=f"imported request {i}") for i in range(10)]


def test_a_history_another_process_holds_is_unavailable_not_an_internal_error(tmp_path: Path) -> None:
    """An import (or any process) holding SQLite's write lock past the busy timeout made signing fail
    with sqlalchemy's OperationalError: gRPC INTERNAL and an "unexpected error" traceback, after the
    inference was done. It is UNAVAILABLE (retry): nothing was recorded, so nothing was signed."""
    path = tmp_path / "protection.sqlite"
    db = SlashingProtection(f"sqlite:///{path}?timeout=0.2")
    db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # what a long write transaction in another process holds
    try:
        with pytest.raises(UnavailableError, match="busy or unreachable") as refused:
            db.record_attestation(DOMAIN, Attestation(R2, O2, Verdict.ACCEPT))
        assert get_status_code(refused.value) == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(UnavailableError):
            db.record_batch(DOMAIN, BatchHeader(1, keccak(text="root"), 10, b"\x00"), [BatchLeaf(R1, O1)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    db.record_attestation(DOMAIN, Attestation(R2, O2, Verdict.ACCEPT))  # free again: signs


def _daemon_and_importer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int, url_options: str = ""
) -> tuple[SlashingProtection, SlashingProtection]:
    """A running daemon's history and an importer on the same SQLite file, importing ``chunk_rows``
    records a transaction with no pause between chunks."""
    monkeypatch.setattr(slashing_protection, "IMPORT_CHUNK_ROWS", chunk_rows)
    monkeypatch.setattr(slashing_protection, "IMPORT_PAUSE_SECONDS", 0.0)
    url = f"sqlite:///{tmp_path / 'protection.sqlite'}{url_options}"
    return SlashingProtection(url, operator_id=KEY_A), SlashingProtection(url)


def test_an_import_writes_in_chunks_and_the_daemon_signs_between_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import was one transaction holding SQLite's write lock throughout (100k attestations: ~36 s),
    and the daemon's signatures failed after its 5 s busy timeout. Now the daemon records its own
    between two chunks, while the import is still under way."""
    daemon, importer = _daemon_and_importer(tmp_path, monkeypatch, chunk_rows=3, url_options="?timeout=1")
    imported_at_each_commit: list[int] = []

    def daemon_signs(session: Session) -> None:
        daemon.record_attestation(
            DOMAIN, Attestation(keccak(text=f"live {len(imported_at_each_commit)}"), O1, Verdict.ACCEPT)
        )
        imported_at_each_commit.append(sum(bool(daemon.get_attestations(DOMAIN, r)) for r in REQUESTS))

    event.listen(importer._sessions, "after_commit", daemon_signs)
    assert importer.import_records(export_of([(r, O1, Verdict.ACCEPT) for r in REQUESTS])) == (10, 0)
    assert imported_at_each_commit == [0, 3, 6, 9, 10]  # the operator binding, then four chunks
    assert len(daemon.export_records()["attestations"]) == 10 + 5


def test_a_conflict_signed_during_an_import_stops_it_and_what_it_wrote_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk is checked again as it is written: the daemon accepting another output of a request
    the export accepts, between two chunks, stops the import at that chunk. The chunks written before
    stay (records of signatures made: they only add refusals); the conflicting one is never written."""
    daemon, importer = _daemon_and_importer(tmp_path, monkeypatch, chunk_rows=2)
    commits: list[int] = []

    def daemon_signs_the_other_output(session: Session) -> None:
        commits.append(1)
        if len(commits) == 2:  # the operator binding, then the first chunk
            daemon.record_attestation(DOMAIN, Attestation(REQUESTS[5], O2, Verdict.ACCEPT))

    event.listen(importer._sessions, "after_commit", daemon_signs_the_other_output)
    with pytest.raises(SlashingProtectionError, match=r"import stopped part way.*already attested ACCEPT"):
        importer.import_records(export_of([(r, O1, Verdict.ACCEPT) for r in REQUESTS[:6]]))
    assert [bool(daemon.get_attestations(DOMAIN, r)) for r in REQUESTS[:5]] == [True] * 4 + [False]
    assert daemon.get_attestations(DOMAIN, REQUESTS[5]) == [Attestation(REQUESTS[5], O2, Verdict.ACCEPT)]


@pytest.mark.parametrize(
    "conflict",
    [
        [(R1, O2, Verdict.ACCEPT)],  # with the history: it accepted O1 for R1
        [(R2, O1, Verdict.ACCEPT), (R2, O2, Verdict.ACCEPT)],  # within the export itself
        [(R2, O1, Verdict.ACCEPT), (R2, O1, Verdict.REJECT)],
    ],
)
def test_an_import_that_conflicts_writes_nothing_however_many_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conflict: list[tuple[bytes, bytes, Verdict]]
) -> None:
    """Checked whole before the first chunk is written: all or nothing, as when it was one transaction."""
    monkeypatch.setattr(slashing_protection, "IMPORT_CHUNK_ROWS", 1)
    db = database(tmp_path)
    db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    with pytest.raises(SlashingProtectionError, match="already attested"):
        db.import_records(export_of([(r, O1, Verdict.REJECT) for r in REQUESTS] + conflict))
    assert len(db.export_records()["attestations"]) == 1
    two_headers = {
        **export_of([]),
        "batches": [BATCH, {**BATCH, "leaves_root": "0x" + O2.hex()}, {**BATCH, "batch_index": "4"}],
    }
    with pytest.raises(SlashingProtectionError, match="another header"):
        db.import_records(two_headers)
    assert db.export_records()["batches"] == []


# --- a large batch, a hanging PostgreSQL server -------------------------------------------------


def test_a_batch_s_leaves_are_looked_up_in_chunks_before_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SignBatch of 4096 leaves ran one SELECT per leaf while holding the history's lock (~0.7 s on
    SQLite, seconds on PostgreSQL), and every other signature waited meanwhile. The leaves are looked up
    ``LOOKUP_KEYS`` to a query before the lock is taken; only the header's record is under it."""
    monkeypatch.setattr(slashing_protection, "LOOKUP_KEYS", 4)
    db = database(tmp_path)
    db.import_records(export_of([(r, O1, Verdict.ACCEPT) for r in REQUESTS]))
    leaves = [BatchLeaf(r, O1) for r in REQUESTS]
    statements: list[tuple[str, bool]] = []

    def note(connection: object, cursor: object, statement: str, *args: object) -> None:
        statements.append((statement, db._lock.locked()))

    event.listen(db._engine, "before_cursor_execute", note)
    db.record_batch(DOMAIN, BatchHeader(1, keccak(text="root"), 10, b"\x00"), leaves + leaves[:2])
    assert [locked for statement, locked in statements if "FROM attestations" in statement] == [False] * 3
    assert [locked for statement, locked in statements if "INSERT INTO batch_signatures" in statement] == [True]
    for unaccepted in (BatchLeaf(REQUESTS[9], O2), BatchLeaf(R1, O1)):  # in the last chunk: still refused
        with pytest.raises(SlashingProtectionError, match="did not accept"):
            db.record_batch(DOMAIN, BatchHeader(2, keccak(text="root 2"), 10, b"\x00"), [*leaves[:9], unaccepted])
    assert [b["batch_index"] for b in db.export_records()["batches"]] == ["1"]


def test_a_postgresql_history_is_opened_with_timeouts_and_sqlite_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connect_timeout, keepalives, statement_timeout or pool_pre_ping: a PostgreSQL server that hangs
    rather than refusing hung the operator, where UNAVAILABLE is promised. (No server needed: the engine
    is a SQLite stand-in; what is checked is how it is asked for.)"""
    asked: list[dict[str, object]] = []

    def create_engine_spy(url: object, **options: object) -> object:
        asked.append(options)
        return create_engine(f"sqlite:///{tmp_path / 'stand-in.sqlite'}", future=True)

    monkeypatch.setattr(slashing_protection, "create_engine", create_engine_spy)
    SlashingProtection("postgresql+psycopg://operator@db.example/history").close()
    SlashingProtection("postgresql+psycopg://operator@db.example/history?connect_timeout=30").close()
    SlashingProtection(f"sqlite:///{tmp_path / 'protection.sqlite'}").close()
    default, url_sets_its_own, sqlite = asked
    assert default["pool_pre_ping"] is True
    connect_args = default["connect_args"]
    assert isinstance(connect_args, dict)
    assert connect_args["connect_timeout"] == 5
    assert connect_args["keepalives"] == 1
    assert "statement_timeout=10000" in connect_args["options"]
    assert "lock_timeout=10000" in connect_args["options"]
    assert "connect_timeout" not in url_sets_its_own["connect_args"]  # type: ignore[operator]
    assert sqlite == {"future": True}


def test_a_postgresql_server_that_hangs_is_unavailable_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that takes the connection and never answers (what a stuck server or a half-open network
    path looks like): the call ends UNAVAILABLE after connect_timeout, instead of waiting for ever."""
    pytest.importorskip("psycopg")
    quick = {"connect_timeout": 2, "keepalives": 1}  # libpq's shortest connect_timeout
    monkeypatch.setattr(slashing_protection, "POSTGRES_CONNECT_ARGS", quick, raising=False)
    monkeypatch.setattr(SlashingProtection, "_open", lambda self, operator_id: None)  # nothing answers to open it
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes the handshake; nobody ever reads
    port = silent.getsockname()[1]
    db = SlashingProtection(f"postgresql+psycopg://operator@127.0.0.1:{port}/history?sslmode=disable")
    outcome: list[BaseException] = []

    def sign() -> None:
        try:
            db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
        except BaseException as exc:
            outcome.append(exc)

    signer = threading.Thread(target=sign, daemon=True)
    signer.start()
    try:
        signer.join(20)
        assert not signer.is_alive(), "still waiting for a server that never answers"
    finally:
        silent.close()  # lets a hung connection go
        signer.join(10)
        db.close()
    assert len(outcome) == 1 and isinstance(outcome[0], UnavailableError)
    assert get_status_code(outcome[0]) == grpc.StatusCode.UNAVAILABLE


def test_a_history_busy_in_this_process_past_the_lock_wait_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread's transaction holding the history (a hanging server, up to its timeouts): a call
    waits at most ``LOCK_WAIT_SECONDS``, then ends UNAVAILABLE, instead of queueing without end."""
    monkeypatch.setattr(slashing_protection, "LOCK_WAIT_SECONDS", 0.2, raising=False)
    db = database(tmp_path)
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with db._lock:
            held.set()
            done.wait(3)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    try:
        with pytest.raises(UnavailableError, match="busy in this process"):
            db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))
    finally:
        done.set()
        holder.join()
    assert db.get_attestations(DOMAIN, R1) == []  # nothing recorded
    db.record_attestation(DOMAIN, Attestation(R1, O1, Verdict.ACCEPT))  # free again: signs
