"""Database URLs, engines, and the one seam where driver errors become ours.

PostgreSQL goes through psycopg 3; the embedded default is a SQLite file. A dry-run engine
is read-only at the session level (PostgreSQL ``default_transaction_read_only``, SQLite
``mode=ro``), so even a bug cannot write through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from .errors import DatabaseError, RetentionError, UsageError

SNAPSHOT_OPTION = "retention_snapshot"
SUPPORTED_URLS = "postgresql://, postgres://, postgresql+psycopg://, sqlite:///PATH"
CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Database:
    url: URL

    @property
    def kind(self) -> str:
        return self.url.get_backend_name()

    @property
    def is_sqlite(self) -> bool:
        return self.kind == "sqlite"

    @property
    def sqlite_path(self) -> Path:
        assert self.url.database
        return Path(self.url.database)

    @property
    def display(self) -> str:
        """The URL without its password, for messages."""
        return self.url.render_as_string(hide_password=True)


def parse_database_url(raw: str) -> Database:
    """Accept the URL forms of DESIGN §7; anything else is a usage error (exit 2)."""
    text = raw.strip()
    scheme = text.partition("://")[0].lower()
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        rest = text.partition("://")[2]
        try:
            url = make_url(f"postgresql+psycopg://{rest}")
        except (exc.ArgumentError, ValueError):  # messages may quote the password
            raise UsageError(f"invalid database URL ({scheme}://…): cannot parse it") from None
        return Database(url)
    if scheme == "sqlite":
        if not text.startswith("sqlite:///") or text in ("sqlite:///", "sqlite:///:memory:"):
            raise UsageError("invalid database URL: SQLite needs a file, sqlite:///PATH")
        return Database(make_url(text))
    shown = scheme or text[:20]
    raise UsageError(f"unsupported database URL scheme {shown!r} (supported: {SUPPORTED_URLS})")


def make_engine(database: Database, *, read_only: bool = False, create: bool = False) -> Engine:
    """An engine for ``database``. SQLite files must exist unless ``create`` is set."""
    if database.is_sqlite:
        return _sqlite_engine(database, read_only=read_only, create=create)
    options = "-c TimeZone=UTC"
    if read_only:
        options += " -c default_transaction_read_only=on"
    connect_args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": "retention",
        "options": options,
    }
    return create_engine(database.url, connect_args=connect_args, pool_pre_ping=True)


def _sqlite_engine(database: Database, *, read_only: bool, create: bool) -> Engine:
    path = database.sqlite_path
    if not path.exists():
        if read_only or not create:
            raise DatabaseError(
                f"database unavailable: SQLite file {path} does not exist "
                "(set RETENTION_DATABASE_URL, or run 'retention demo')"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    if read_only:
        url = make_url(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
    else:
        url = database.url
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
    begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"

    # pysqlite opens transactions lazily and only before writes; take control so that a
    # transaction covers reads too (one snapshot) and writers take the write lock up front.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        snapshot = connection.get_execution_options().get(SNAPSHOT_OPTION)
        connection.exec_driver_sql("BEGIN" if snapshot else begin)

    return engine


def read_snapshot(conn: Connection) -> Connection:
    """Make ``conn``'s next transaction one consistent, read-only snapshot.

    PostgreSQL: REPEATABLE READ, READ ONLY. SQLite: a deferred BEGIN, which takes no write
    lock (the writer's transactions use BEGIN IMMEDIATE).
    """
    if conn.dialect.name == "postgresql":
        return conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return conn.execution_options(**{SNAPSHOT_OPTION: True})


def _first_line(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()
    return text[0] if text else type(original).__name__


@contextmanager
def translate_errors(database: Database) -> Iterator[None]:
    """Turn driver errors into ours, chained with ``from``."""
    try:
        yield
    except RetentionError:
        raise
    except (exc.OperationalError, exc.InterfaceError) as error:
        if database.is_sqlite and "locked" in _first_line(error):
            raise DatabaseError(
                f"database {database.display} is locked by another writer: {_first_line(error)}"
            ) from error
        raise DatabaseError(
            f"database unavailable ({database.display}): {_first_line(error)}"
        ) from error
    except exc.DBAPIError as error:
        raise RetentionError(f"database error: {_first_line(error)}") from error
