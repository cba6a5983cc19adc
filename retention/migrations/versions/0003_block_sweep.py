"""Block-range sweep checkpoints: the next heap block and the sweep's target signature.

Expand step only (new nullable columns).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("retention_checkpoints") as batch:
        batch.add_column(sa.Column("last_block", sa.BigInteger))
        batch.add_column(sa.Column("signature", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("retention_checkpoints") as batch:
        batch.drop_column("signature")
        batch.drop_column("last_block")
