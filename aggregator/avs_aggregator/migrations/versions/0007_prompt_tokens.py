"""The prompt's token count, when the intake tokenized it (``RequestStatus.prompt_tokens``, the
gateway's ``usage.prompt_tokens``). Existing requests keep NULL (reported as 0).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("prompt_tokens", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("prompt_tokens")
