"""The block sweep's work queue: a run's sweep (targets, cutoffs, held objects) and its
units (block ranges), claimed by the workers of the run.

Expand step only (new tables).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from retention.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "retention_work",
        sa.Column("run_id", _id, sa.ForeignKey("retention_runs.id"), primary_key=True),
        sa.Column("signature", sa.Text, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
        sa.Column("sweep", sa.Text, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "retention_work_units",
        sa.Column("run_id", _id, sa.ForeignKey("retention_runs.id"), primary_key=True),
        sa.Column("unit", sa.Integer, primary_key=True),
        sa.Column("lo", sa.BigInteger, nullable=False),
        sa.Column("hi", sa.BigInteger, nullable=False),
        sa.Column("next_block", sa.BigInteger, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("owner", sa.Text),
        sa.Column("owner_pid", sa.Integer),  # the owner's server process (pg_backend_pid)
        sa.Column("heartbeat_at", UTCDateTime),
        sa.Column("done_by", sa.Text),
        sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("batches", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claims", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("retention_work_units")
    op.drop_table("retention_work")
