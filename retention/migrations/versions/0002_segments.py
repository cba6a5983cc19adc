"""Segments: receipts of marks, sweeps and restores; a segment cursor in checkpoints.

Expand step only: new nullable columns, and retention_days/cutoff become nullable (a sweep
or restore receipt has no policy). A worker of the previous release refuses tables at a
revision it does not know (exit 2).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from retention.tables import UUIDType

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("retention_receipts") as batch:
        batch.add_column(sa.Column("action", sa.Text, nullable=False, server_default="delete"))
        batch.alter_column("retention_days", existing_type=sa.Float, nullable=True)
        batch.alter_column("cutoff", existing_type=sa.DateTime(timezone=True), nullable=True)
    with op.batch_alter_table("retention_checkpoints") as batch:
        batch.add_column(sa.Column("last_segment_id", UUIDType))
        batch.add_column(sa.Column("segments", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("retention_checkpoints") as batch:
        batch.drop_column("bytes")
        batch.drop_column("segments")
        batch.drop_column("last_segment_id")
    with op.batch_alter_table("retention_receipts") as batch:
        batch.drop_column("action")
