"""What retention leaves of a finished request (``PrunedRequestRow``): submitted again it is refused,
not generated, verified and certified a second time, and ``GetStatus`` says it was pruned.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pruned_requests",
        sa.Column("request_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("batch_index", sa.BigInteger, nullable=True),
        sa.Column("pruned_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pruned_requests")
