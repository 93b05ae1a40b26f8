"""Challenges sent whose outcome is not recorded yet (a receipt wait that timed out, a crash after
the transaction): adopted from the chain's ``latestChallengeOfLeaf`` once mined.

Revision ID: c0003
Revises: c0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c0003"
down_revision = "c0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "challenger_sent_challenges",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("batch_index", sa.BigInteger, nullable=False),
        sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("output_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
        sa.Column("sent_block", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("batch_index", "request_hash", "output_hash"),
    )


def downgrade() -> None:
    op.drop_table("challenger_sent_challenges")
