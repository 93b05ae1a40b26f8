"""Rejected-output proofs get the equivocation proofs' progress (``state``, ``attempts``), so that a
proof not sent yet (the chain unreachable, a leader demoted mid-send) is sent again, by whichever
aggregator leads then. Existing rows: with a transaction PROVEN; without the primary's signature
(nothing to prove) FAILED; the others PENDING, so that a proof that failed before (e.g. refused by
the fence during a demotion) is tried again: a revert that cannot succeed settles it at once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rejections") as batch:
        batch.add_column(sa.Column("state", sa.String(16), nullable=False, server_default="PENDING"))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.create_index("ix_rejections_state", ["state"])
    op.execute("UPDATE rejections SET state = 'PROVEN' WHERE tx_hash IS NOT NULL")
    op.execute(
        "UPDATE rejections SET state = 'FAILED' WHERE tx_hash IS NULL AND evidence LIKE '%\"primary_signature\": null%'"
    )


def downgrade() -> None:
    with op.batch_alter_table("rejections") as batch:
        batch.drop_index("ix_rejections_state")
        batch.drop_column("attempts")
        batch.drop_column("state")
