"""Alembic environment for the worker's own tables.

Run through ``retention db upgrade|current|check`` (``retention.migrate``), which passes an
open connection in ``config.attributes["connection"]``; works from an installed package.
"""

from __future__ import annotations

from alembic import context

from retention.migrate import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
