"""The worker's own tables: runs, checkpoints, receipts (expand step, additive only).

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from retention.tables import UTCDateTime, UUIDType

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "retention_runs",
        sa.Column("id", _id, sa.Identity(), primary_key=True),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("heartbeat_at", UTCDateTime),
        sa.Column("pinned_now", UTCDateTime, nullable=False),
        sa.Column("plan_hash", sa.Text, nullable=False),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("segments", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column("host", sa.Text),
        sa.Column("pid", sa.Integer),
        sa.Column("resumed", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("retention_runs_status", "retention_runs", ["status", "id"])
    op.create_table(
        "retention_checkpoints",
        sa.Column("run_id", _id, sa.ForeignKey("retention_runs.id"), primary_key=True),
        sa.Column("target", sa.Text, primary_key=True),
        sa.Column("project_id", UUIDType, nullable=False),
        sa.Column("object_type", sa.Text, nullable=False),
        sa.Column("phase", sa.Text, nullable=False),
        sa.Column("cutoff", UTCDateTime, nullable=False),
        sa.Column("last_created", UTCDateTime),
        sa.Column("last_sequence_id", sa.BigInteger),
        sa.Column("last_object_id", UUIDType),
        sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("objects", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("batches", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "retention_receipts",
        sa.Column("id", _id, sa.Identity(), primary_key=True),
        sa.Column("run_id", _id, sa.ForeignKey("retention_runs.id"), nullable=False),
        sa.Column("project_id", UUIDType, nullable=False),
        sa.Column("object_type", sa.Text, nullable=False),
        sa.Column("policy_source", sa.Text, nullable=False),
        sa.Column("retention_days", sa.Float, nullable=False),
        sa.Column("cutoff", UTCDateTime, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("objects", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("segments", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("first_key", sa.Text),
        sa.Column("last_key", sa.Text),
        sa.Column("keys_digest", sa.Text),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
    )
    op.create_index(
        "retention_receipts_project", "retention_receipts", ["project_id", "recorded_at"]
    )


def downgrade() -> None:
    op.drop_table("retention_receipts")
    op.drop_table("retention_checkpoints")
    op.drop_table("retention_runs")
