"""The plumbing the aggregator's and the challenger's stores share: the engine, SQLite's pragmas,
Alembic on open, and a session per transaction.

``database_url`` is any SQLAlchemy URL: SQLite (WAL, ``synchronous=FULL``; its folder is created;
``sqlite://`` in memory is one shared connection) or PostgreSQL (``postgresql+psycopg://``).
Each store's schema is owned by its own Alembic revisions, run to head when the store opens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool


def upgrade_database(engine: Engine, migrations: Path) -> None:
    """``alembic upgrade head`` on ``engine``'s database with the revisions in ``migrations``."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


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


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
