"""The leader lease (``avs_aggregator.leader``): which of several aggregators on one database drives
the pipeline, until when, and in which term.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("term", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
