"""Slashing protection on a real SQLite file, across restarts and moves between machines."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from avs.errors import InvalidInputError, SlashingProtectionError
from avs.merkle import BatchLeaf
from avs.messages import Attestation, BatchHeader, Verdict
from avs_operator.slashing_protection import SlashingProtection
from tests.aggregator.conftest import create_postgres_database, postgres_server  # noqa: F401  (fixture)

DOMAIN = keccak(text="domain A")
OTHER_DOMAIN = keccak(text="domain B")
R1, R2, O1, O2 = (keccak(text=t) for t in ("r1", "r2", "o1", "o2"))


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


@pytest.mark.parametrize(
    "document",
    [None, [], {"interchange_format_version": "2"}, {"interchange_format_version": "1", "attestations": [{}]}],
)
def test_malformed_imports_are_clear_errors(tmp_path: Path, document: object) -> None:
    with pytest.raises(InvalidInputError):
        database(tmp_path).import_records(document)


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
