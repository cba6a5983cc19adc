"""Dry runs write nothing; one run at a time; bad databases fail closed."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from retention import engine as engine_module
from retention import state
from retention.db import make_engine, parse_database_url
from retention.errors import DatabaseError, LockedError, SchemaError, UsageError
from tests.conftest import engine_for, prepare
from tests.integration.helpers import purge, worker, write_policies
from tests.pg import free_port
from tests.support import generate, insert, policy_toml

TABLES = (
    "events",
    "objects",
    "segments",
    "retention_runs",
    "retention_checkpoints",
    "retention_receipts",
    "retention_alembic_version",
)


def _fingerprint(url: str) -> dict[str, str]:
    """Every row of every table, hashed in a stable order."""
    engine = engine_for(url)
    found = {}
    with engine.connect() as conn:
        for table in TABLES:
            rows = sorted(repr(tuple(r)) for r in conn.exec_driver_sql(f"SELECT * FROM {table}"))
            found[table] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    engine.dispose()
    return found


def _policies(tmp_path: Path) -> Path:
    return write_policies(
        tmp_path / "p", policy_toml(defaults={"project_logs": 30, "experiment": 60, "dataset": 10})
    )


def test_dry_run_leaves_every_table_unchanged(db_url: str, tmp_path: Path) -> None:
    insert(engine_for(db_url), generate(11, events=800))
    policy_dir = _policies(tmp_path)
    purge(worker(db_url, policy_dir, should_stop=lambda: False, batch_size=5000))
    insert(engine_for(db_url), generate(12, events=800))  # something expired again
    before = _fingerprint(db_url)

    report = engine_module.plan(worker(db_url, policy_dir))

    assert report.dry_run and sum(t.counts.rows for t in report.plan.targets) > 0
    assert _fingerprint(db_url) == before


def test_sqlite_dry_run_does_not_touch_the_file(sqlite_url: str, tmp_path: Path) -> None:
    insert(engine_for(sqlite_url), generate(13, events=300))
    path = Path(parse_database_url(sqlite_url).sqlite_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    mtime = path.stat().st_mtime_ns
    engine_module.plan(worker(sqlite_url, _policies(tmp_path)))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert path.stat().st_mtime_ns == mtime


def test_dry_run_session_refuses_writes(db_url: str) -> None:
    engine = make_engine(parse_database_url(db_url), read_only=True)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as caught:
            conn.exec_driver_sql("DELETE FROM events")
        assert "read-only" in str(caught.value).lower() or "readonly" in str(caught.value).lower()
    finally:
        engine.dispose()


def test_dry_run_needs_no_worker_tables(empty_pg_url: str, tmp_path: Path) -> None:
    prepare(empty_pg_url, worker_tables=False)
    insert(engine_for(empty_pg_url), generate(14, events=200))
    report = engine_module.plan(worker(empty_pg_url, _policies(tmp_path)))
    assert report.plan.targets


def test_purge_refuses_without_worker_tables(empty_pg_url: str, tmp_path: Path) -> None:
    prepare(empty_pg_url, worker_tables=False)
    insert(engine_for(empty_pg_url), generate(15, events=200))
    with pytest.raises(SchemaError, match="retention db upgrade"):
        purge(worker(empty_pg_url, _policies(tmp_path)))
    with engine_for(empty_pg_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 200


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("DROP TABLE segments", "missing table 'segments'"),
        ("DROP TABLE objects", "missing table 'objects'"),
        (
            "ALTER TABLE events RENAME COLUMN created TO created_at",
            "table 'events' is missing column 'created'",
        ),
        (
            "ALTER TABLE objects RENAME COLUMN project_id TO project",
            "table 'objects' is missing column 'project_id'",
        ),
    ],
)
def test_missing_table_or_column_fails_closed(
    db_url: str, tmp_path: Path, statement: str, message: str
) -> None:
    insert(engine_for(db_url), generate(16, events=200))
    with engine_for(db_url).begin() as conn:
        conn.exec_driver_sql(statement)
    policy_dir = _policies(tmp_path)
    for call in (engine_module.plan, purge):
        with pytest.raises(SchemaError, match=message):
            call(worker(db_url, policy_dir))
    with engine_for(db_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 200


def test_schema_check_finds_a_quoted_table_in_another_schema(pg_url: str, tmp_path: Path) -> None:
    """The catalog lookup resolves a configured ``schema.Table`` as the statements will:
    quoted, case kept, outside the search path."""
    insert(engine_for(pg_url), generate(18, events=300))
    with engine_for(pg_url).begin() as conn:
        conn.exec_driver_sql('CREATE SCHEMA "Data Plane"')
        conn.exec_driver_sql('ALTER TABLE events SET SCHEMA "Data Plane"')
        conn.exec_driver_sql('ALTER TABLE "Data Plane".events RENAME TO "Log Rows"')
    policy_dir = _policies(tmp_path)
    with pytest.raises(SchemaError, match="missing table 'events'"):
        engine_module.plan(worker(pg_url, policy_dir))
    with pytest.raises(SchemaError, match=r"missing table 'Data Plane\.log rows'"):
        engine_module.plan(worker(pg_url, policy_dir, table_events="Data Plane.log rows"))
    w = worker(pg_url, policy_dir, table_events="Data Plane.Log Rows")
    planned = engine_module.plan(w)
    assert sum(t.counts.total_rows for t in planned.plan.targets) == 300
    with engine_for(pg_url).begin() as conn:
        conn.exec_driver_sql('ALTER TABLE "Data Plane"."Log Rows" DROP COLUMN object_id')
    with pytest.raises(
        SchemaError, match=r"table 'Data Plane\.Log Rows' is missing column 'object_id'"
    ):
        engine_module.plan(w)


def test_configured_table_and_column_names(pg_url: str, tmp_path: Path) -> None:
    insert(engine_for(pg_url), generate(17, events=300))
    with engine_for(pg_url).begin() as conn:
        conn.exec_driver_sql("ALTER TABLE events RENAME TO log_rows")
        conn.exec_driver_sql("ALTER TABLE log_rows RENAME COLUMN created TO ts")
    policy_dir = _policies(tmp_path)
    w = worker(pg_url, policy_dir, table_events="log_rows", table_columns="events.ts_typo=x")
    with pytest.raises(UsageError, match=r"unknown column 'events\.ts_typo'"):
        engine_module.plan(w)
    w = worker(pg_url, policy_dir, table_events="log_rows")
    with pytest.raises(SchemaError, match="table 'log_rows' is missing column 'created'"):
        engine_module.plan(w)
    w = worker(pg_url, policy_dir, table_events="log_rows", table_columns="events.created=ts")
    planned = engine_module.plan(w)
    done = purge(w)
    assert sum(t.counts.rows for t in planned.plan.targets) == sum(o.rows for o in done.outcomes)
    assert sum(o.rows for o in done.outcomes) > 0


def test_unreachable_postgres_is_exit_4(tmp_path: Path) -> None:
    url = f"postgresql://nobody:secret-pw@127.0.0.1:{free_port()}/nothing"
    for call in (engine_module.plan, purge):
        with pytest.raises(DatabaseError) as caught:
            call(worker(url, _policies(tmp_path)))
        assert caught.value.exit_code == 4
        assert "secret-pw" not in caught.value.message
        assert "127.0.0.1" in caught.value.message


def test_missing_sqlite_file_is_exit_4(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nope.sqlite3'}"
    with pytest.raises(DatabaseError, match="does not exist"):
        purge(worker(url, _policies(tmp_path)))
    assert not (tmp_path / "nope.sqlite3").exists()


def test_second_run_is_locked_out_on_postgres(pg_url: str, tmp_path: Path) -> None:
    insert(engine_for(pg_url), generate(18, events=200))
    holder = engine_for(pg_url)
    with holder.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": state.LOCK_KEY})
        with pytest.raises(LockedError) as caught:
            purge(worker(pg_url, _policies(tmp_path)))
        assert caught.value.exit_code == 7
        # a dry run takes no lock
        engine_module.plan(worker(pg_url, _policies(tmp_path)))
    with engine_for(pg_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 200
        assert conn.exec_driver_sql("SELECT count(*) FROM retention_runs").scalar() == 0
    # released with the session: the next run goes ahead
    purge(worker(pg_url, _policies(tmp_path)))


def test_second_run_is_locked_out_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    insert(engine_for(sqlite_url), generate(19, events=200))
    path = parse_database_url(sqlite_url).sqlite_path
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockedError):
            purge(worker(sqlite_url, _policies(tmp_path)))
    finally:
        os.close(fd)
    purge(worker(sqlite_url, _policies(tmp_path)))


def test_sqlite_lock_holds_through_a_symlinked_path(sqlite_url: str, tmp_path: Path) -> None:
    insert(engine_for(sqlite_url), generate(20, events=100))
    real = parse_database_url(sqlite_url).sqlite_path
    link = tmp_path / "elsewhere.sqlite3"
    link.symlink_to(real)
    fd = os.open(real.with_name(real.name + ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockedError):
            purge(worker(f"sqlite:///{link}", _policies(tmp_path)))
    finally:
        os.close(fd)
