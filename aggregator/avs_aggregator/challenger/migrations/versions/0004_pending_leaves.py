"""Pending checks keyed by the whole leaf (batch, request, output), not by (batch, request): a batch
that certifies two outputs of one request must have both looked at, and both may wait for a retry.
A new table (``challenger_pending_leaves``) with the rows copied: SQLite cannot change a unique
key in place, and a renamed PostgreSQL table would keep its key's and sequence's names.

Revision ID: c0004
Revises: c0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c0004"
down_revision = "c0003"
branch_labels = None
depends_on = None

COLUMNS = (
    "batch_index, request_hash, output_hash, leaves_root, reference_block, quorum_numbers,"
    " signatory_record_hash, block, attempts, error, created_at, updated_at"
)


def _create(name: str, *unique: str) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("batch_index", sa.BigInteger, nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("output_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("leaves_root", sa.LargeBinary(32), nullable=False),
        sa.Column("reference_block", sa.BigInteger, nullable=False),
        sa.Column("quorum_numbers", sa.LargeBinary, nullable=False),
        sa.Column("signatory_record_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("block", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint(*unique),
    )


def upgrade() -> None:
    _create("challenger_pending_leaves", "batch_index", "request_hash", "output_hash")
    op.execute(f"INSERT INTO challenger_pending_leaves ({COLUMNS}) SELECT {COLUMNS} FROM challenger_pending_checks")
    op.drop_table("challenger_pending_checks")


def downgrade() -> None:
    # Back to one row per (batch, request): of a request's pending leaves, the first is kept.
    _create("challenger_pending_checks", "batch_index", "request_hash")
    op.execute(
        f"INSERT INTO challenger_pending_checks ({COLUMNS}) SELECT {COLUMNS} FROM challenger_pending_leaves"
        " WHERE id IN (SELECT MIN(id) FROM challenger_pending_leaves GROUP BY batch_index, request_hash)"
    )
    op.drop_table("challenger_pending_leaves")
