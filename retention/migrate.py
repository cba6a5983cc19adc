"""Alembic migrations of the worker's tables, run from the installed package."""

from __future__ import annotations

from dataclasses import dataclass

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError as AlembicError
from sqlalchemy import Connection, Engine, text

from .errors import SchemaError

VERSION_TABLE = "retention_alembic_version"
SCRIPT_LOCATION = "retention:migrations"
# PostgreSQL: upgrades take turns (not the run lock's key: an upgrade never waits for a run)
UPGRADE_LOCK_KEY = int.from_bytes(b"retupgrd", "big", signed=True)


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(conn: Connection) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate to ``revision`` in one transaction. Two at once (pods starting together, each
    with its init container) take turns: the second finds the tables migrated and does
    nothing (SQLite's write lock does the same)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY})
        found = current(conn)
        if found is not None and not known(found):
            raise SchemaError(_newer(found))
        command.upgrade(_config(conn), revision)
    with engine.connect() as conn:
        return current(conn)


@dataclass(frozen=True)
class Status:
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def known(revision: str) -> bool:
    """Whether this version's migrations know ``revision`` (a newer worker's do not)."""
    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except AlembicError:
        return False


def _newer(revision: str) -> str:
    return (
        f"the worker's tables are at revision {revision}, unknown to this version (head "
        f"{head()}): a newer worker migrated them; upgrade the worker, not the tables"
    )


def status(conn: Connection) -> Status:
    return Status(current=current(conn), head=head())


def require_current(conn: Connection) -> None:
    """Fail closed when the worker's tables are missing or behind the code."""
    found = status(conn)
    if found.current is None:
        raise SchemaError("the worker's tables are missing: run 'retention db upgrade'")
    if not found.up_to_date:
        if not known(found.current):
            raise SchemaError(_newer(found.current))
        raise SchemaError(
            f"the worker's tables are at revision {found.current}, not {found.head}: "
            "run 'retention db upgrade'"
        )
