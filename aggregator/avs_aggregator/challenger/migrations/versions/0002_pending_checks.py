"""Leaves whose check is not finished (no operator answered, or only the batch's own signers did):
retried at the next polls.

Revision ID: c0002
Revises: c0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c0002"
down_revision = "c0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "challenger_pending_checks",
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
        sa.UniqueConstraint("batch_index", "request_hash"),
    )


def downgrade() -> None:
    op.drop_table("challenger_pending_checks")
