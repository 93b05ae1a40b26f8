"""The schema: Alembic's migrations build exactly the models' tables; reopening is idempotent."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from avs_aggregator.store import Base, RequestRow, RequestState, Store


def test_migrations_match_the_models(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    store.close()


def test_reopening_keeps_the_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    row = RequestRow(
        request_hash=b"\x01" * 32,
        state=RequestState.RECEIVED,
        envelope=b"",
        quorum_numbers=b"\x00",
        threshold_bps=6667,
        attempt=0,
        excluded="[]",
    )
    assert store.add_request(row)
    assert not store.add_request(row)
    store.close()
    again = Store(url)
    stored = again.get_request(b"\x01" * 32)
    assert stored is not None and stored.state == RequestState.RECEIVED
    assert again.get_next_batch_index(5) == 5
    again.close()
