"""The block sweep's leader: the server process of the run's leader session that published
the sweep (``pg_backend_pid``). Other workers take units and delete only while that
session holds the run lock, so none goes on with a dead leader's sweep or with the sweep
of an earlier attempt.

Expand step only (a nullable column).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("retention_work", sa.Column("leader_pid", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("retention_work") as batch:
        batch.drop_column("leader_pid")
