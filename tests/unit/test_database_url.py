"""Database URLs (DESIGN §7): PostgreSQL through psycopg 3, or a SQLite file; else exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from retention.db import parse_database_url
from retention.errors import ExitCode, UsageError


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:s3cr3t@db.internal:5433/brainstore",
        "postgres://alice:s3cr3t@db.internal:5433/brainstore",
        "postgresql+psycopg://alice:s3cr3t@db.internal:5433/brainstore",
        "POSTGRESQL://alice:s3cr3t@db.internal:5433/brainstore",
        "  postgresql://alice:s3cr3t@db.internal:5433/brainstore\n",
    ],
)
def test_postgres_urls_all_go_through_psycopg(url: str) -> None:
    database = parse_database_url(url)
    assert database.kind == "postgresql"
    assert not database.is_sqlite
    assert database.url.drivername == "postgresql+psycopg"
    assert database.url.get_driver_name() == "psycopg"
    assert database.url.username == "alice"
    assert database.url.password == "s3cr3t"
    assert database.url.host == "db.internal"
    assert database.url.port == 5433
    assert database.url.database == "brainstore"


def test_postgres_url_keeps_query_options() -> None:
    database = parse_database_url("postgres://u@h/db?sslmode=require&application_name=x")
    assert database.url.query == {"sslmode": "require", "application_name": "x"}


def test_postgres_url_without_host_or_password() -> None:
    database = parse_database_url("postgresql:///brainstore")
    assert database.kind == "postgresql"
    assert database.url.database == "brainstore"
    assert database.url.password is None
    assert database.display == "postgresql+psycopg:///brainstore"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:s3cr3t@db.internal:5433/brainstore",
        "postgres://alice:s3cr3t@db.internal/brainstore",
        "postgresql+psycopg://alice:s3cr3t@db.internal/brainstore",
    ],
)
def test_display_hides_the_password(url: str) -> None:
    display = parse_database_url(url).display
    assert "s3cr3t" not in display
    assert "alice:***@db.internal" in display


def test_display_exact() -> None:
    database = parse_database_url("postgres://alice:s3cr3t@db.internal:5433/brainstore")
    assert database.display == "postgresql+psycopg://alice:***@db.internal:5433/brainstore"


def test_password_with_special_characters_is_hidden() -> None:
    database = parse_database_url("postgresql://alice:p%40ss%2Fw0rd@db/brainstore")
    assert database.url.password == "p@ss/w0rd"
    assert "p%40ss" not in database.display
    assert "p@ss" not in database.display


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///retention.sqlite3", Path("retention.sqlite3")),
        ("sqlite:///state/retention.sqlite3", Path("state/retention.sqlite3")),
        (
            "sqlite:////var/lib/retention/retention.sqlite3",
            Path("/var/lib/retention/retention.sqlite3"),
        ),
    ],
)
def test_sqlite_file_urls(url: str, path: Path) -> None:
    database = parse_database_url(url)
    assert database.kind == "sqlite"
    assert database.is_sqlite
    assert database.sqlite_path == path
    assert database.display == url


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:p@h/db",
        "mysql+pymysql://u:p@h/db",
        "http://db.internal:5432/brainstore",
        "postgresql+asyncpg://u@h/db",
        "postgresql+psycopg2://u@h/db",
        "sqlite+pysqlite:///x.db",
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:/relative.db",
        "",
        "   ",
        "brainstore",
        "/var/lib/retention.sqlite3",
    ],
)
def test_unsupported_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_database_url(url)
    assert info.value.exit_code == ExitCode.USAGE == 2


def test_unsupported_scheme_message_names_it_and_the_supported_ones() -> None:
    with pytest.raises(UsageError) as info:
        parse_database_url("mysql://root:hunter2@db/brainstore")
    message = info.value.message
    assert "'mysql'" in message
    assert "postgresql://" in message
    assert "sqlite:///PATH" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_sqlite_without_a_file_says_so(url: str) -> None:
    with pytest.raises(UsageError, match=r"sqlite:///PATH"):
        parse_database_url(url)


def test_malformed_postgres_port_is_a_usage_error_without_the_password() -> None:
    with pytest.raises(UsageError) as info:
        parse_database_url("postgresql://alice:s3cr3t@db.internal:notaport/brainstore")
    assert info.value.exit_code == ExitCode.USAGE
    assert "s3cr3t" not in info.value.message
