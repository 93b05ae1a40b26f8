"""The initial schema: requests, batches, rejections.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("request_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("quorum_numbers", sa.LargeBinary, nullable=False),
        sa.Column("threshold_bps", sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("excluded", sa.Text, nullable=False),
        sa.Column("reference_block", sa.BigInteger, nullable=True),
        sa.Column("primary_id", sa.LargeBinary(32), nullable=True),
        sa.Column("output_ids", sa.Text, nullable=True),
        sa.Column("output_text", sa.Text, nullable=True),
        sa.Column("output_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("primary_signature", sa.Text, nullable=True),
        sa.Column("batch_index", sa.BigInteger, nullable=True, index=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("accepted_at", sa.Float, nullable=True),
    )
    op.create_table(
        "batches",
        sa.Column("batch_index", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("quorum_numbers", sa.LargeBinary, nullable=False),
        sa.Column("reference_block", sa.BigInteger, nullable=False),
        sa.Column("leaves_root", sa.LargeBinary(32), nullable=False),
        sa.Column("request_hashes", sa.Text, nullable=False),
        sa.Column("certificate", sa.Text, nullable=True),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("certified_block", sa.BigInteger, nullable=True),
        sa.Column("gas_used", sa.BigInteger, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False, index=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("primary_id", sa.LargeBinary(32), nullable=False),
        sa.Column("output_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("reference_block", sa.BigInteger, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rejections")
    op.drop_table("batches")
    op.drop_table("requests")
