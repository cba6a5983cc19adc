"""Database URLs, engines, and the one seam where driver errors become ours.

PostgreSQL goes through psycopg 3; the embedded default is a SQLite file. A dry-run engine
is read-only at the session level (PostgreSQL ``default_transaction_read_only``, SQLite
``mode=ro``), so even a bug cannot write through it.
"""

from __future__ import annotations

import re
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from .errors import DatabaseError, DatabaseUnavailable, UsageError

SNAPSHOT_OPTION = "retention_snapshot"
SUPPORTED_URLS = "postgresql://, postgres://, postgresql+psycopg://, sqlite:///PATH"
CONNECT_TIMEOUT_S = 10
MIN_SQLITE = (3, 35, 0)  # DELETE ... RETURNING
_SECRET_QUERY_KEYS = {"password", "passfile", "sslpassword", "sslkey"}
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")


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
        """The URL without secrets (password, secret query keys), for messages."""
        query = {k: v for k, v in self.url.query.items() if k.lower() not in _SECRET_QUERY_KEYS}
        return self.url.set(query=query).render_as_string(hide_password=True)


def parse_database_url(raw: str) -> Database:
    """Accept the URL forms of DESIGN §7; anything else is a usage error (exit 2)."""
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if sep and scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        authority = rest.split("/", 1)[0].split("?", 1)[0]
        if authority.count("@") > 1:  # an unescaped @ in the password: never quote it
            raise UsageError(
                f"invalid database URL ({scheme}://…): more than one '@' before the host; "
                "percent-encode an '@' in the password as %40"
            )
        try:
            url = make_url(f"postgresql+psycopg://{rest}")
        except (exc.ArgumentError, ValueError):  # messages may quote the password
            raise UsageError(f"invalid database URL ({scheme}://…): cannot parse it") from None
        return Database(url)
    if sep and scheme == "sqlite":
        path = text[len("sqlite:///") :] if text.startswith("sqlite:///") else ""
        # one file by its path, and nothing else: no in-memory database (it would vanish
        # with its connection), no SQLite URI (``file:...``) and no query options (the
        # read-only engine and the run lock open the path itself)
        if not path or "?" in path or path.startswith("file:") or ":memory:" in path:
            raise UsageError(
                "invalid database URL: SQLite needs a file, sqlite:///PATH (no query "
                "options, no ':memory:', no 'file:' URI)"
            )
        return Database(make_url(text))
    if sep and _SCHEME.match(scheme):
        raise UsageError(
            f"unsupported database URL scheme {scheme!r} (supported: {SUPPORTED_URLS})"
        )
    raise UsageError(f"unrecognised database URL (supported: {SUPPORTED_URLS})")


SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
)
CLIENT_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def make_engine(
    database: Database,
    *,
    read_only: bool = False,
    create: bool = False,
    lock_timeout: timedelta | None = None,
    statement_timeout: timedelta | None = None,
) -> Engine:
    """An engine for ``database``. SQLite files must exist unless ``create`` is set."""
    if database.is_sqlite:
        # the lock timeout is SQLite's busy timeout: a file the application holds locked
        # is waited for that long, then the batch counts as a lock wait (and retries)
        busy = lock_timeout.total_seconds() if lock_timeout is not None else 30.0
        return _sqlite_engine(database, read_only=read_only, create=create, busy=busy)
    # The server notices a worker cut off by the network within about a minute (not the
    # system's two hours) and rolls back its batch, releasing its rows and its work unit;
    # first, so that the operator's own options override these.
    options = [SERVER_KEEPALIVES, database.url.query.get("options", "")]
    options.append("-c TimeZone=UTC")
    if read_only:
        options.append("-c default_transaction_read_only=on")
    if lock_timeout is not None:
        options.append(f"-c lock_timeout={int(lock_timeout.total_seconds() * 1000)}")
    if statement_timeout is not None:
        options.append(f"-c statement_timeout={int(statement_timeout.total_seconds() * 1000)}")
    # and the worker notices a server gone silent during a long statement (libpq's own
    # keepalives; the URL's settings win)
    connect_args: dict[str, Any] = {
        key: value for key, value in CLIENT_KEEPALIVES.items() if key not in database.url.query
    }
    connect_args |= {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": "retention",
        "options": " ".join(o for o in options if o and isinstance(o, str)),
    }
    url = database.url.difference_update_query(["options"])
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


def _sqlite_engine(
    database: Database, *, read_only: bool, create: bool, busy: float = 30.0
) -> Engine:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        need = ".".join(map(str, MIN_SQLITE))
        raise UsageError(f"SQLite {sqlite3.sqlite_version} is too old; {need} or newer needed")
    path = database.sqlite_path
    if not path.exists():
        if read_only or not create:
            raise DatabaseError(
                f"database unavailable: SQLite file {path} does not exist "
                "(set RETENTION_DATABASE_URL to the data plane's database, or run "
                "'retention db upgrade' to create this one)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    if read_only:
        uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, timeout=busy, check_same_thread=False)

        engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)
    else:
        engine = create_engine(database.url, poolclass=NullPool, connect_args={"timeout": busy})
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


def use_wal(engine: Engine) -> None:
    """SQLite: write-ahead logging, so readers (a dry run) never block the purge."""
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()  # outside any transaction, as the pragma requires
        try:
            raw.driver_connection.execute("PRAGMA journal_mode=WAL")  # type: ignore[union-attr]
        finally:
            raw.close()


@contextmanager
def snapshot(conn: Connection) -> Iterator[Connection]:
    """One consistent, read-only transaction on ``conn``; its settings are restored after.

    PostgreSQL: REPEATABLE READ, READ ONLY. SQLite: a deferred BEGIN, which takes no write
    lock (the writer's transactions use BEGIN IMMEDIATE).
    """
    if conn.dialect.name == "postgresql":
        default = conn.default_isolation_level or "READ COMMITTED"
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        try:
            with conn.begin():
                yield conn
        finally:
            conn.execution_options(isolation_level=default, postgresql_readonly=False)
        return
    conn.execution_options(**{SNAPSHOT_OPTION: True})
    try:
        with conn.begin():
            yield conn
    finally:
        conn.execution_options(**{SNAPSHOT_OPTION: False})


_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


@contextmanager
def same_snapshot(conn: Connection) -> Iterator[Connection]:
    """Another connection of ``conn``'s engine reading in ``conn``'s snapshot (PostgreSQL,
    with ``conn`` inside ``snapshot``): reads split over both agree exactly, as pg_dump's
    parallel jobs do (``pg_export_snapshot``, ``SET TRANSACTION SNAPSHOT``)."""
    exported = str(conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one())
    if not _SNAPSHOT_ID.fullmatch(exported):  # it goes into SQL text: only its own format
        raise DatabaseError(f"unexpected snapshot id from the server: {exported[:40]!r}")
    with conn.engine.connect() as other, snapshot(other):
        other.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{exported}'")
        yield other


def server_now(conn: Connection) -> datetime:
    """The database server's clock (UTC); leaves no transaction open that it began."""
    began = not conn.in_transaction()
    if conn.dialect.name == "postgresql":
        value = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
        found: datetime = value.astimezone(UTC)
    else:
        text = conn.exec_driver_sql("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").scalar_one()
        found = datetime.fromisoformat(str(text)).replace(tzinfo=UTC)
    if began:
        conn.commit()
    return found


def first_line(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()
    return text[0] if text else type(original).__name__


_CONFIG_HINTS = ("invalid connection option", "invalid dsn", "invalid integer value")
_CONFIG_VALUE = re.compile(r"\binvalid [a-z_]+ value\b")  # libpq: invalid sslmode value: ...


@contextmanager
def translate_errors(database: Database) -> Iterator[None]:
    """Turn driver errors into ours, chained with ``from``.

    Connection-option mistakes are configuration (exit 2); everything else the database
    says is exit 4. Messages name the database without its secrets.
    """
    try:
        yield
    except exc.DBAPIError as error:
        line = first_line(error)
        lowered = line.lower()
        if any(hint in lowered for hint in _CONFIG_HINTS) or _CONFIG_VALUE.search(lowered):
            raise UsageError(f"invalid database settings ({database.display}): {line}") from error
        if database.is_sqlite and "locked" in line:
            raise DatabaseError(
                f"database {database.display} is busy (another writer or a long reader): {line}"
            ) from error
        if connection_lost(error):
            raise DatabaseUnavailable(
                f"database unavailable ({database.display}): {line}"
            ) from error
        if isinstance(error, exc.OperationalError | exc.InterfaceError):
            raise DatabaseError(f"database unavailable ({database.display}): {line}") from error
        raise DatabaseError(f"database error ({database.display}): {line}") from error
    except exc.ArgumentError as error:  # a URL option SQLAlchemy or the driver cannot take
        raise UsageError(
            f"invalid database settings ({database.display}): {type(error).__name__}"
        ) from error


# SQLSTATEs of a lost or refused connection: class 08, and the server shutting down.
_LOST = ("08", "57P01", "57P02", "57P03")
# A batch that waited too long: lock_timeout (55P03) or statement_timeout (57014).
_TIMEOUTS = ("55P03", "57014")


def _sqlstate(error: BaseException) -> str:
    original = getattr(error, "orig", None)
    return str(getattr(original, "sqlstate", None) or "")


def connection_lost(error: BaseException) -> bool:
    """The connection is gone (or never came): the run may reconnect and resume."""
    if getattr(error, "connection_invalidated", False):
        return True
    state = _sqlstate(error)
    if state:
        return state.startswith(_LOST)
    # no SQLSTATE: a failure to connect at all (refused, unreachable, timed out)
    return isinstance(error, exc.OperationalError | exc.InterfaceError) and "sqlite" not in (
        type(getattr(error, "orig", error)).__module__
    )


def timed_out(error: BaseException) -> bool:
    """A statement gave up waiting: lock_timeout, statement_timeout, or a busy SQLite."""
    if _sqlstate(error) in _TIMEOUTS:
        return True
    return isinstance(error, exc.OperationalError) and "database is locked" in first_line(error)


def deadlocked(error: BaseException) -> bool:
    """The server broke a deadlock by aborting this transaction (40P01)."""
    return _sqlstate(error) == "40P01"
