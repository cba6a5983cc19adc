"""A run's approval: how its first attempt passed the guards (a reviewed plan, recorded
whole, or ``--allow-large-deletes`` with each target's cutoff and kept objects). A resumed
attempt without its own keeps it, so a first run stopped by its time budget is finished
by the next scheduled run instead of stopping at the first-run guard.

Expand step only (a nullable column).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("retention_runs", sa.Column("approval", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("retention_runs") as batch:
        batch.drop_column("approval")
