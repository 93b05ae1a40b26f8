"""Batch signing rounds: a batch whose signers fall short of the threshold is signed again (with
backoff) before it is given up; a request whose batch was given up is batched again on its own.

``batches.sign_attempts`` counts the rounds that fell short, ``batches.retry_at`` is when the next
round may start; ``requests.rebatched`` counts the batches of the request that were given up.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("sign_attempts", sa.Integer, nullable=False, server_default="0"))
    op.add_column("batches", sa.Column("retry_at", sa.Float, nullable=True))
    op.add_column("requests", sa.Column("rebatched", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("requests") as requests:
        requests.drop_column("rebatched")
    with op.batch_alter_table("batches") as batches:
        batches.drop_column("retry_at")
        batches.drop_column("sign_attempts")
