"""The challenger's initial schema: scan position, findings, challenges, equivocation evidence.

Revision ID: c0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "challenger_cursor",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("block", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "challenger_findings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("batch_index", sa.BigInteger, nullable=False, index=True),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("output_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("verdict", sa.Integer, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("challenge_id", sa.BigInteger, nullable=True),
        sa.Column("challenge_tx", sa.LargeBinary(32), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "challenger_challenges",
        sa.Column("challenge_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("batch_index", sa.BigInteger, nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False, index=True),
        sa.Column("output_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
        sa.Column("opened_block", sa.BigInteger, nullable=False),
        sa.Column("open_tx", sa.LargeBinary(32), nullable=True),
        sa.Column("verdict", sa.Integer, nullable=True),
        sa.Column("reference_block", sa.BigInteger, nullable=True),
        sa.Column("close_tx", sa.LargeBinary(32), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    create_evidence_tables()


def create_evidence_tables() -> None:
    """``avs_aggregator.evidence``'s tables (as in the aggregator's migration 0003, prefixed)."""
    op.create_table(
        "challenger_attestations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("operator_id", sa.LargeBinary(32), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False, index=True),
        sa.Column("output_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("verdict", sa.Integer, nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("operator_id", "request_hash", "output_hash", "verdict"),
    )
    op.create_table(
        "challenger_equivocations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("operator_id", sa.LargeBinary(32), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("operator_id", "request_hash"),
    )


def downgrade() -> None:
    tables = ("equivocations", "attestations", "challenges", "findings", "cursor")
    for table in tables:
        op.drop_table(f"challenger_{table}")
