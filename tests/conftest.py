"""Shared fixtures: a real PostgreSQL server, per-test databases from a template, SQLite files.

PostgreSQL: ``RETENTION_TEST_DATABASE_URL`` names a server to use (it must allow CREATE
DATABASE); otherwise a throwaway cluster starts from the installed server binaries.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from retention import migrate
from retention.db import make_engine, parse_database_url
from tests.fakecp import FakeControlPlane
from tests.pg import Cluster, free_port, throwaway_cluster
from tests.stores import FileStore, S3Store, new_bucket
from tests.support import create_reference_schema

TEMPLATE = "retention_template"


class PgServer:
    def __init__(self, url: str, cluster: Cluster | None) -> None:
        self.url = url
        self.cluster = cluster
        self.admin = sa.create_engine(
            parse_database_url(url).url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
        )

    def url_for(self, database: str) -> str:
        return (
            parse_database_url(self.url)
            .url.set(database=database)
            .render_as_string(hide_password=False)
        )

    def create(self, name: str, template: str | None = None) -> str:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"{suffix}')
        return self.url_for(name)

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get("RETENTION_TEST_DATABASE_URL")
    if url:
        server = PgServer(url, None)
        yield server
        server.admin.dispose()
        return
    with throwaway_cluster() as cluster:
        server = PgServer(cluster.url, cluster)
        yield server
        server.admin.dispose()


def prepare(url: str, *, worker_tables: bool = True) -> None:
    """Reference schema, and the worker's tables at head."""
    database = parse_database_url(url)
    engine = make_engine(database, create=True)
    try:
        create_reference_schema(engine)
        if worker_tables:
            migrate.upgrade(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> str:
    url = pg_server.create(TEMPLATE)
    prepare(url)
    return TEMPLATE


@pytest.fixture
def pg_url(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_server.create(name, template=pg_template)
    yield url
    pg_server.drop(name)


@pytest.fixture
def empty_pg_url(pg_server: PgServer) -> Iterator[str]:
    name = f"e_{uuid.uuid4().hex[:12]}"
    url = pg_server.create(name)
    yield url
    pg_server.drop(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    prepare(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "dataplane.sqlite3"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on the embedded default and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


def engine_for(url: str) -> sa.Engine:
    """An engine for checking test databases; unpooled, so nothing stays open."""
    database = parse_database_url(url)
    if database.is_sqlite:
        return make_engine(database)
    return sa.create_engine(database.url, poolclass=sa.NullPool)


@pytest.fixture
def fake_cp() -> Iterator[FakeControlPlane]:
    """A fake control plane on loopback; its token is ``fake_cp.tokens`` (one)."""
    fake = FakeControlPlane().start()
    yield fake
    fake.stop()


@pytest.fixture
def token_file(tmp_path: Path, fake_cp: FakeControlPlane) -> Path:
    """The fake's token in a file, as a mounted Kubernetes secret would hold it."""
    path = tmp_path / "secrets" / "token"
    path.parent.mkdir()
    path.write_text(next(iter(fake_cp.tokens)) + "\n")
    return path


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """An S3-compatible server (moto) on loopback, for the s3:// tests."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def file_store(tmp_path: Path) -> FileStore:
    root = tmp_path / "store"
    root.mkdir()
    return FileStore(root)


@pytest.fixture
def s3_store(moto_endpoint: str) -> S3Store:
    return new_bucket(moto_endpoint)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest) -> FileStore | S3Store:
    """The same test on real files and on an S3-compatible server."""
    name = "file_store" if request.param == "file" else "s3_store"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def at_revision(url: str, revision: str) -> None:
    """The worker's tables at an older ``revision`` (a database an older worker migrated)."""
    engine = make_engine(parse_database_url(url), create=True)
    try:
        with engine.begin() as conn:
            command.upgrade(migrate._config(conn), revision)
        with engine.connect() as conn:
            assert migrate.current(conn) == revision
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def bare_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A data plane with no worker tables, on either dialect."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    else:
        url = str(request.getfixturevalue("empty_pg_url"))
    prepare(url, worker_tables=False)
    return url
