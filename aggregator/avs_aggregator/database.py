"""The plumbing the aggregator's and the challenger's stores share: the engine, SQLite's pragmas,
Alembic on open, and a session per transaction.

``database_url`` is any SQLAlchemy URL: SQLite (WAL, ``synchronous=FULL``; its folder is created;
``sqlite://`` in memory is one shared connection) or PostgreSQL (``postgresql+psycopg://``).
Each store's schema is owned by its own Alembic revisions, run to head when the store opens.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Text, create_engine, event, text
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.types import TypeDecorator


class PortableText(TypeDecorator[str]):
    """Text from outside (an operator's output text, an error holding a peer's message) stored the
    same on every database: PostgreSQL refuses the NUL character in text, so one operator returning
    it made every write of its request fail, and the request was retried forever with the same
    primary. NUL is stored as U+FFFD; the signed data (token ids, hashes) is never text."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return value.replace("\x00", "\ufffd") if value is not None else None


# Any constant: PostgreSQL's advisory lock that makes one process migrate at a time.
MIGRATION_LOCK_KEY = 0x6176735F6D6967  # "avs_mig"


def upgrade_database(engine: Engine, migrations: Path) -> None:
    """``alembic upgrade head`` on ``engine``'s database with the revisions in ``migrations``, in
    one transaction that holds the database's write lock: a crash rolls every step back with its
    version stamp (on SQLite too, whose driver otherwise runs DDL outside the transaction and left a
    half-applied revision that no later start could apply), and two processes that open the
    database together (a leader and a standby) migrate one after the other, the second finding
    nothing to do (before, one of them crashed on "table alembic_version already exists")."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    migrating = _serial_sqlite_engine(engine) if _is_sqlite_file(engine) else engine
    try:
        with migrating.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        if migrating is not engine:
            migrating.dispose()


def _is_sqlite_file(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")


def _serial_sqlite_engine(engine: Engine) -> Engine:
    """A one-off engine on ``engine``'s SQLite file whose transactions are the database's own:
    pysqlite leaves BEGIN to us (so DDL is inside the transaction) and BEGIN IMMEDIATE takes the
    write lock at once (a second migrating process waits for it, up to the 30 s timeout)."""
    serial = create_engine(engine.url, connect_args={"timeout": 30}, poolclass=NullPool)

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        _sqlite_pragmas(dbapi_connection, record)
        dbapi_connection.isolation_level = None

    event.listen(serial, "connect", on_connect)
    event.listen(serial, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    return serial


def create_database_engine(url: str) -> Engine:
    """An engine for ``url``: SQLite in WAL mode with ``synchronous=FULL`` (shared across threads;
    its folder is created; ``sqlite://`` in memory is one connection), anything else (PostgreSQL:
    ``postgresql+psycopg://``) as SQLAlchemy makes it."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    database = make_url(url).database
    if database in (None, "", ":memory:"):
        kwargs["poolclass"] = StaticPool
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """An engine on ``url`` upgraded to head with ``migrations``; ``session()`` is one transaction."""

    def __init__(self, url: str, migrations: Path) -> None:
        self.engine = create_database_engine(url)
        upgrade_database(self.engine, migrations)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()


# Switching a file to WAL needs it to itself, and SQLite answers "database is locked" at once, without
# the connection's busy timeout, while another connection holds a lock on it (two processes opening a
# fresh file together): the switch is tried again for up to this long.
WAL_SWITCH_SECONDS = 30.0
WAL_SWITCH_POLL_SECONDS = 0.05


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    deadline = time.monotonic() + WAL_SWITCH_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(WAL_SWITCH_POLL_SECONDS)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
