"""Alembic environment of the challenger's store: runs on the connection ``ChallengerStore`` passes
in, or on ``sqlalchemy.url``. Its version table is ``challenger_alembic_version``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from avs_aggregator.challenger.store import VERSION_TABLE, Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True, version_table=VERSION_TABLE
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(config.get_section(config.config_ini_section) or {}, poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(
            connection=conn, target_metadata=target_metadata, render_as_batch=True, version_table=VERSION_TABLE
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
