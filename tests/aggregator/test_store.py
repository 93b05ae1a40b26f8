"""The schema, on SQLite and PostgreSQL: Alembic's migrations build exactly the models' tables (the
aggregator's and the challenger's, which can share one database); reopening is idempotent."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.orm.exc import DetachedInstanceError

import avs_aggregator.store as aggregator_store
from avs_aggregator.challenger import store as challenger_store
from avs_aggregator.challenger.store import ChallengeRow, ChallengerStore, ChallengeState
from avs_aggregator.database import create_database_engine
from avs_aggregator.store import Base, RequestRow, RequestState, StaleRowError, Store


def test_migrations_match_the_models(db: str) -> None:
    store = Store(db)
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    store.close()


def test_challenger_migrations_match_the_models_in_a_shared_database(db: str) -> None:
    aggregator = Store(db)  # the same database: separate version tables, no clash
    store = ChallengerStore(db)
    with store.engine.connect() as connection:
        opts = {
            "version_table": challenger_store.VERSION_TABLE,
            # the aggregator's tables (and its version table) are not the challenger's business
            "include_name": lambda name, kind, _: kind != "table" or name.startswith("challenger_"),
        }
        context = MigrationContext.configure(connection, opts=opts)
        assert compare_metadata(context, challenger_store.Base.metadata) == []
    store.close()
    aggregator.close()


def _request_row(request_hash: bytes, state: RequestState) -> RequestRow:
    return RequestRow(
        request_hash=request_hash,
        state=state,
        envelope=b"",
        quorum_numbers=b"\x00",
        threshold_bps=6667,
        attempt=0,
        excluded="[]",
    )


def test_reopening_keeps_the_data(db: str) -> None:
    store = Store(db)
    row = _request_row(b"\x01" * 32, RequestState.RECEIVED)
    assert store.add_request(row)
    assert not store.add_request(row)
    store.close()
    again = Store(db)
    stored = again.get_request(b"\x01" * 32)
    assert stored is not None and stored.state == RequestState.RECEIVED
    assert again.get_next_batch_index(5) == 5
    again.close()


def test_challenger_store_keeps_its_position_and_challenges(db: str) -> None:
    store = ChallengerStore(db)
    assert store.get_next_block() is None
    store.set_next_block(42)
    challenge = ChallengeRow(
        challenge_id=7,
        state=ChallengeState.OPEN,
        batch_index=3,
        request_hash=b"\x02" * 32,
        output_hash=b"\x03" * 32,
        certificate=b"cert",
        opened_block=40,
        attempts=0,
    )
    assert store.add_challenge(challenge) and not store.add_challenge(challenge)
    store.close()
    again = ChallengerStore(db)
    assert again.get_next_block() == 42
    found = again.find_challenge(3, b"\x02" * 32, b"\x03" * 32)
    assert found is not None and found.challenge_id == 7 and found.certificate == b"cert"
    again.update_challenge(7, state=ChallengeState.EXPIRED)
    assert again.find_challenge(3, b"\x02" * 32, b"\x03" * 32) is None  # an expired one may be re-opened
    again.close()


def _upgrade(connection: Connection, migrations: Path, revision: str) -> None:
    """The database of ``connection`` upgraded to ``revision`` of ``migrations`` (a test's old state)."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def test_upgrading_c0004_keeps_the_pending_checks(db: str) -> None:
    """c0004 moves pending checks to a table keyed by the whole leaf: the rows pending before stay,
    and a second output of a request can then be pending beside the first."""
    engine = create_database_engine(db)
    with engine.begin() as connection:
        _upgrade(connection, challenger_store.MIGRATIONS, "c0003")
        connection.execute(
            text(
                "INSERT INTO challenger_pending_checks (batch_index, request_hash, output_hash, leaves_root,"
                " reference_block, quorum_numbers, signatory_record_hash, block, attempts, error, created_at,"
                " updated_at) VALUES (7, :r, :o, :root, 90, :q, :rec, 95, 3, 'down', 1, 2)"
            ),
            {"r": b"\x01" * 32, "o": b"\x02" * 32, "root": b"\x03" * 32, "q": b"\x00", "rec": b"\x04" * 32},
        )
    engine.dispose()
    store = ChallengerStore(db)  # upgrades to head
    [kept] = store.list_pending_checks()
    assert (kept.batch_index, kept.request_hash, kept.output_hash, kept.attempts) == (7, b"\x01" * 32, b"\x02" * 32, 3)
    other = challenger_store.PendingCheckRow(
        **{
            c: getattr(kept, c)
            for c in (
                "batch_index",
                "request_hash",
                "leaves_root",
                "reference_block",
                "quorum_numbers",
                "signatory_record_hash",
                "block",
            )
        },
        output_hash=b"\x05" * 32,
        error="sampled",
    )
    assert store.process_pending_check(other) == 1
    assert sorted(r.output_hash for r in store.list_pending_checks()) == [b"\x02" * 32, b"\x05" * 32]
    store.close()


def test_upgrading_0006_settles_old_rejection_rows_by_what_they_hold(db: str) -> None:
    """Rows from before proof states: sent -> PROVEN; no primary signature -> FAILED (nothing to
    prove); failed or never sent -> PENDING (tried again)."""
    engine = create_database_engine(db)
    with engine.begin() as connection:
        _upgrade(connection, aggregator_store.MIGRATIONS, "0005")
    rows = [  # (tx_hash, error, evidence)
        (b"\x01" * 32, None, '{"primary_signature": ["0x1", "0x2"], "reject_signatures": {}}'),
        (None, None, '{"primary_signature": null, "reject_signatures": {}}'),
        (None, "this aggregator does not hold the leader lease", '{"primary_signature": ["0x1", "0x2"]}'),
        (None, None, '{"primary_signature": ["0x1", "0x2"], "reject_signatures": {}}'),
    ]
    with engine.begin() as connection:
        for i, (tx_hash, error, evidence) in enumerate(rows):
            connection.execute(
                text(
                    "INSERT INTO rejections (request_hash, attempt, primary_id, output_hash, reference_block,"
                    " evidence, tx_hash, error, created_at) VALUES (:r, 0, :p, :o, 1, :e, :t, :err, 0)"
                ),
                {"r": bytes([i]) * 32, "p": b"\x02" * 32, "o": b"\x03" * 32, "e": evidence, "t": tx_hash, "err": error},
            )
    engine.dispose()
    store = Store(db)  # upgrades to head
    assert [(r.state, r.attempts) for r in store.list_rejections()] == [
        ("PROVEN", 0),
        ("FAILED", 0),
        ("PENDING", 0),
        ("PENDING", 0),
    ]
    store.close()


def test_a_fenced_write_waits_for_a_concurrent_one_then_sees_it(tmp_path: Path) -> None:
    """SQLite: another process holds the write lock with the request moved on (uncommitted). The
    fenced write must wait for the lock and then refuse, not check the old state outside the
    transaction and overwrite the new one after the lock is released."""
    path = tmp_path / "shared.sqlite"
    store = Store(f"sqlite:///{path}")
    request_hash = b"\x02" * 32
    assert store.add_request(_request_row(request_hash, RequestState.GENERATING))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE requests SET state = 'CERTIFIED' WHERE request_hash = ?", (request_hash,))
    releases = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    releases.start()
    with pytest.raises(StaleRowError):
        store.update_request(request_hash, expect=(RequestState.GENERATING, 0), state=RequestState.RECEIVED, attempt=1)
    releases.join()
    stored = store.get_request(request_hash)
    assert stored is not None and (stored.state, stored.attempt) == (RequestState.CERTIFIED, 0)
    other.close()
    store.close()


def test_a_rejection_proof_outcome_is_written_only_over_the_attempt_it_read(db: str) -> None:
    """Two processes (an old and a new leader) send the same proof: the first outcome stands, the
    second, read at the same attempt, is refused rather than written over it."""
    store = Store(db)
    rejection_id = store.add_rejection(
        aggregator_store.RejectionRow(
            request_hash=b"\1" * 32,
            attempt=0,
            primary_id=b"\2" * 32,
            output_hash=b"\3" * 32,
            reference_block=5,
            evidence="{}",
        )
    )
    read = store.get_rejection(rejection_id).attempts
    store.update_rejection(rejection_id, expect_attempts=read, state="PROVEN", attempts=read + 1, tx_hash=b"\4" * 32)
    with pytest.raises(StaleRowError):
        store.update_rejection(rejection_id, expect_attempts=read, state="FAILED", attempts=read + 1, error="late")
    row = store.get_rejection(rejection_id)
    assert (row.state, row.tx_hash, row.error) == ("PROVEN", b"\4" * 32, None)
    store.close()


def test_a_migration_interrupted_midway_rolls_back_and_runs_again(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite the driver ran DDL outside the transaction: a process killed inside 0006 (after its
    ALTER, before the version stamp) left a column no later start could add again ("duplicate
    column name: state"), so the aggregator never started again (found by a review helper)."""
    from alembic.operations import Operations

    from avs_aggregator.database import upgrade_database

    engine = create_database_engine(db)
    with engine.begin() as connection:
        _upgrade(connection, aggregator_store.MIGRATIONS, "0005")

    def killed(self: Operations, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed mid-migration")

    with monkeypatch.context() as patch:
        patch.setattr(Operations, "execute", killed)  # 0006 runs an UPDATE after its ALTER
        with pytest.raises(KeyboardInterrupt):
            upgrade_database(engine, aggregator_store.MIGRATIONS)
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == "0005"
    engine.dispose()
    Store(db).close()  # upgrades to head


CONCURRENT_OPEN = """
import sys, time
from avs_aggregator.store import Store
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
Store(sys.argv[1]).close()
print("OK")
"""


def test_two_processes_opening_a_fresh_database_together_both_start(db: str) -> None:
    """A leader and a standby started together both ran `upgrade head`: one crashed on "table
    alembic_version already exists" (SQLite) or a unique violation (PostgreSQL)."""
    import subprocess
    import sys
    import time

    start = str(time.time() + 3)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_OPEN, db, start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [process.communicate(timeout=120) for process in processes]
    assert [out.strip() for out, _ in outcomes] == ["OK", "OK"], [err[-500:] for _, err in outcomes]


def test_opening_a_fresh_file_another_connection_holds_waits_for_it(tmp_path: Path) -> None:
    """SQLite refuses the switch to WAL at once ("database is locked", no busy timeout) while another
    connection holds the file: two processes opening a fresh database together failed so in CI."""
    path = tmp_path / "aggregator.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE elsewhere (x INTEGER)")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        Store(f"sqlite:///{path}").close()
    finally:
        release.join()
        holder.close()


def test_the_polling_loops_read_no_chat_or_output(db: str) -> None:
    """Found in review: each tick read every active request whole, its chat (up to ~256 KiB) and
    output included, to use a few small fields: 300 large requests made one tick take 0.28 s."""
    store = Store(db)
    row = _request_row(b"\x01" * 32, RequestState.ACCEPTED)
    row.envelope, row.created_at, row.updated_at = b"x" * 200_000, 0.0, 0.0
    with store.session() as s:
        s.add(row)
    assert store.list_request_hashes([RequestState.ACCEPTED]) == [b"\x01" * 32]
    [light] = store.list_requests([RequestState.ACCEPTED], payload=False)
    assert light.request_hash == b"\x01" * 32 and light.threshold_bps == 6667
    with pytest.raises(DetachedInstanceError):  # left out, not loaded behind the loop's back
        _ = light.envelope
    [whole] = store.list_requests([RequestState.ACCEPTED])
    assert len(whole.envelope) == 200_000
    store.close()


def test_output_hashes_are_read_in_chunks_without_the_chats(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's leaves need two columns of each request, not its row (which holds its chat)."""
    from avs_aggregator import store as store_module

    monkeypatch.setattr(store_module, "LOOKUP_CHUNK", 2)
    store = Store(db)
    hashes = [bytes([i]) * 32 for i in range(1, 6)]
    for i, request_hash in enumerate(hashes):
        row = _request_row(request_hash, RequestState.ACCEPTED)
        row.output_hash = None if i == 0 else bytes([0x40 + i]) * 32
        assert store.add_request(row)
    found = store.get_output_hashes([*hashes, b"\xee" * 32])
    assert found == {h: (None if i == 0 else bytes([0x40 + i]) * 32) for i, h in enumerate(hashes)}
    store.close()
