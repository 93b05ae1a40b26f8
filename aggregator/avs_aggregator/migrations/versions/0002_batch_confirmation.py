"""Certified batches wait for their confirmations: the certified block's hash and the head block
at which the certification was found deep enough (NULL while the batch is still confirming).

Batches certified before this revision have no ``confirmed_block``, so they are re-checked once
against the chain after the upgrade.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("certified_hash", sa.LargeBinary(32), nullable=True))
    op.add_column("batches", sa.Column("confirmed_block", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("confirmed_block")
        batch.drop_column("certified_hash")
